"""summary.md: the key tables and take-aways in Markdown, linking the PNGs beside it.

Owns: Markdown tables (pipes escaped) and the order of summary.md's sections: head, warnings, take-aways,
ranking, questions won, along the rollout, divergence vs alignment, token types.

Does not own: the rows it shows (`rows`, shared with the page), the figures (`figures`; linked by
file name only), the HTML page (`page`), or writing the file (`write`).
"""

from __future__ import annotations

from typing import Sequence

from gradalign.report.data import ReportContext
from gradalign.report.rows import (
    RANK_HEADER,
    SPACES_HEADER,
    correlation_header,
    correlation_rows,
    counts_line,
    disagreement_header,
    disagreement_rows,
    quadrant_header,
    quadrant_pivot_rows,
    ranking_rows,
    rock_summary_rows,
    shares_table,
    spaces_rows,
    spaces_sentence,
    teacher_disagreement_header,
    teacher_disagreement_rows,
)


def render_summary(ctx: ReportContext) -> str:
    """The whole summary.md, sections in order."""
    return "\n".join(line for section in SECTIONS for line in section(ctx))


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(s):
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def _section(heading: str, *blocks: str) -> list[str]:
    """A heading and its blocks, each followed by a blank line."""
    out = [heading, ""]
    for b in blocks:
        out += [b, ""]
    return out


def _head(ctx: ReportContext) -> list[str]:
    return _section(f"# {ctx.title}", f"{counts_line(ctx.tables)}; metric `{ctx.options.metric}`; one-loss views use "
                                      f"`{ctx.data.loss}`. Full page: [index.html](index.html).")


def _warnings(ctx: ReportContext) -> list[str]:
    return ["## Warnings", "", *[f"- {c.message}" for c in ctx.caveats], ""] if ctx.caveats else []


def _takeaways(ctx: ReportContext) -> list[str]:
    return ["## Take-aways", "", *[f"- {h}" for h in ctx.headlines], ""]


def _ranking(ctx: ReportContext) -> list[str]:
    out = _section("## Ranking", "![ranking](ranking.png)", _md_table(RANK_HEADER, ranking_rows(ctx.data.ranking)))
    tie, dis = ctx.data.extras.get("tie"), ctx.data.extras.get("disagreements")
    tdis = ctx.data.extras.get("teacher_disagreements")
    blocks = []
    if tie is not None and dis is not None and len(dis):
        blocks.append("Branched nodes where their alignment differs most:\n\n"
                      + _md_table(disagreement_header(tie, ctx.options.metric), disagreement_rows(dis)))
    if tie is not None and tdis is not None and len(tdis):
        blocks.append("Every token, branched or not: where the two teachers' probabilities of the student's token differ most:\n\n"
                      + _md_table(teacher_disagreement_header(tie), teacher_disagreement_rows(tdis)))
    if blocks:
        out += _section(f"### Where {tie.a[0]} and {tie.b[0]} differ ({ctx.data.loss})", *blocks)
    return out


def _winners(ctx: ReportContext) -> list[str]:
    return _section("## Questions won", "![winners](winners.png)", _md_table(*shares_table(ctx.data.shares, ctx.configs)))


def _position(ctx: ReportContext) -> list[str]:
    return _section("## Along the rollout", "![position](position.png)")


def _divergence(ctx: ReportContext) -> list[str]:
    return _section("## Divergence vs alignment", "![divergence](divergence.png)",
                    _md_table(correlation_header(), correlation_rows(ctx.data.correlations)))


def _token_types(ctx: ReportContext) -> list[str]:
    """TIP quadrant pivot and the rock-token summary (headers shortened from the page's)."""
    d, m = ctx.data, ctx.options.metric
    q = d.quadrants[d.quadrants["loss"] == d.loss]
    rock_header = ["config", "rock types", "share of tokens", "share of summed KL(p||q)", "share of OPD norm (est.)",
                   "share of norm_distill (branched)", f"mean {m} rock", f"mean {m} other"]
    return _section("## Token types", "![token types](token_types.png)", _md_table(quadrant_header(), quadrant_pivot_rows(q, m)),
                    _md_table(rock_header, rock_summary_rows(d.rock_summary)))


def _spaces(ctx: ReportContext) -> list[str]:
    comp = ctx.data.extras.get("spaces")
    if comp is None:
        return []
    return _section("## Logit vs parameter space", spaces_sentence(comp, ctx.data.loss), "![spaces](spaces.png)",
                    _md_table(SPACES_HEADER, spaces_rows(comp)))


SECTIONS = (_head, _warnings, _takeaways, _ranking, _winners, _position, _divergence, _token_types, _spaces)
