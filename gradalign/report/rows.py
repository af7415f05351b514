"""Numbers as text, and the table rows both the page and summary.md show.

Owns: number formatting (`fmt_num`, `fmt_pct`, `fmt_ci`: NaN and None print as "–"), the labels of
the divergence measures, and the headers and rows of the tables that appear on both the HTML page
and in summary.md (ranking, questions won, correlations, TIP quadrants, rock-token summary), as
lists of plain strings.

Does not own: HTML or Markdown markup (`page`, `markdown`), tables shown only on the page (those
live beside their page section), or any statistic.
"""

from __future__ import annotations

import math

from gradalign import analysis as A

MEASURE_LABELS = {"kl_pq": "KL(p||q)", "kl_qp": "KL(q||p)", "jsd": "JSD", "dist_cos": "cos(p, q)"}

RANK_HEADER = ["rank", "config", "loss", "mean [95% CI]", "correct rollouts", "incorrect rollouts", "nodes (all / c / i)", "questions"]


def fmt_num(v, spec: str = "+.3f") -> str:
    """`v` formatted with `spec`; "–" for None or NaN, str(v) when `spec` does not apply."""
    try:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def fmt_pct(v) -> str:
    """A share as a percentage with one decimal ("–" for None or NaN)."""
    return fmt_num(100 * v if v is not None and v == v else float("nan"), ".1f") + ("%" if v is not None and v == v else "")


def fmt_ci(m, lo, hi) -> str:
    """A mean and its interval: "+0.123 [+0.100, +0.150]"."""
    return f"{fmt_num(m)} [{fmt_num(lo)}, {fmt_num(hi)}]"


def counts_line(tables) -> str:
    """How much data the report rests on: "N rollouts of Q questions (C correct), B branched nodes"."""
    r = tables.rollouts
    n_nodes = len(tables.alignment.drop_duplicates(A.NODE_KEY))
    return f"{len(r)} rollouts of {r['question_id'].nunique()} questions ({int(r['correct'].sum())} correct), {n_nodes} branched nodes"


def ranking_rows(r) -> list[list[str]]:
    """One row per config x loss of `analysis.rank_configs`, in RANK_HEADER's columns."""
    return [[str(x.rank), x.config, x.loss, fmt_ci(x.mean, x.ci_low, x.ci_high), fmt_ci(x.mean_correct, x.ci_low_correct, x.ci_high_correct),
             fmt_ci(x.mean_incorrect, x.ci_low_incorrect, x.ci_high_incorrect), f"{x.n} / {x.n_correct} / {x.n_incorrect}", str(x.n_questions)]
            for x in r.itertuples()]


def disagreement_header(tie, metric: str) -> list[str]:
    a, b = tie.a[0], tie.b[0]
    return ["question", "rollout", "position", "text before", "token", f"{metric} {a}", f"{metric} {b}", f"q_{a}(token)",
            f"q_{b}(token)"]


def disagreement_rows(dis, limit: int = 20) -> list[list[str]]:
    """The nodes of `analysis.disagreement_nodes` (largest gap first, at most `limit`) as text."""
    return [[str(x.question_id), str(x.rollout_id), str(x.position), repr(str(x.context)), repr(str(x.token_text)),
             fmt_num(x.metric_a), fmt_num(x.metric_b), fmt_num(x.q_a, ".3f"), fmt_num(x.q_b, ".3f")]
            for x in dis.head(limit).itertuples()]


def teacher_disagreement_header(tie) -> list[str]:
    a, b = tie.a[0], tie.b[0]
    return ["question", "rollout", "position", "text before", "token", f"q_{a}(token)", f"q_{b}(token)", "branched"]


def teacher_disagreement_rows(tdis) -> list[list[str]]:
    """The tokens of `analysis.teacher_disagreements` as text."""
    return [[str(x.question_id), str(x.rollout_id), str(x.position), repr(str(x.context)), repr(str(x.token_text)),
             fmt_num(x.q_a, ".3f"), fmt_num(x.q_b, ".3f"), "yes" if x.branched else "no"] for x in tdis.itertuples()]


def shares_table(shares, configs) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the questions-won table: per config, share (wins) for every loss."""
    losses = sorted(set(shares["loss"]))
    sh = shares.set_index(["config", "loss"])
    header = ["config", *[f"{ls} (of {int(sh.xs(ls, level='loss')['questions'].max())})" for ls in losses]]
    rows = [[c, *[f"{fmt_pct(sh.loc[(c, ls), 'share'])} ({int(sh.loc[(c, ls), 'wins'])})" if (c, ls) in sh.index else "–"
                  for ls in losses]] for c in configs]
    return header, rows


SPACES_HEADER = ["config", "loss", "nodes", "mean cos [CI]", "mean cos_params [CI]", "rank (logit)", "rank (params)",
                 "Spearman ρ"]


def spaces_rows(comparison) -> list[list[str]]:
    """Rows of the logit-vs-parameter-space table (`analysis.space_comparison`)."""
    return [[x.config, x.loss, str(x.n), fmt_ci(x.mean_logit, x.ci_low_logit, x.ci_high_logit),
             fmt_ci(x.mean_params, x.ci_low_params, x.ci_high_params), str(x.rank_logit), str(x.rank_params), fmt_num(x.rho, "+.2f")]
            for x in comparison.itertuples()]


def spaces_sentence(comparison, loss: str) -> str:
    """Whether the config ranking of `loss` changes between logit and parameter space, in words."""
    from gradalign import analysis as A

    c = comparison[comparison["loss"] == loss]
    if c.empty:
        return f"No node has both cosines for {loss}."
    order = lambda col: " > ".join(c.sort_values(col)["config"])  # noqa: E731
    if A.ranking_changes(comparison, loss):
        return (f"The config ranking ({loss}) CHANGES between the spaces: logit {order('rank_logit')}; "
                f"parameters {order('rank_params')}.")
    return f"The config ranking ({loss}) is the same in logit and parameter space: {order('rank_logit')}."


def correlation_header() -> list[str]:
    """Columns of the divergence-vs-alignment table."""
    return ["config", "loss", *[MEASURE_LABELS[x] for x in A.DIVERGENCES], "nodes"]


def correlation_rows(correlations) -> list[list[str]]:
    """Spearman rho per config x loss and divergence measure, with the node count."""
    cor = correlations.pivot_table(index=["config", "loss"], columns="measure", values="rho", dropna=False).reset_index()
    ncor = correlations.groupby(["config", "loss"])["n"].max()
    return [[x["config"], x["loss"], *[fmt_num(x.get(meas), "+.2f") for meas in A.DIVERGENCES], str(ncor.get((x["config"], x["loss"]), 0))]
            for _, x in cor.iterrows()]


def quadrant_header() -> list[str]:
    """Columns of the TIP quadrant pivot: config, then Q1..Q4 with their names."""
    return ["config", *[f"{k} {A.QUADRANT_NAMES[k]}" for k in A.QUADRANTS]]


def quadrant_pivot_rows(quadrants, metric: str) -> list[list[str]]:
    """`quadrants` of one loss: per config, for each TIP quadrant: share of tokens, mean alignment and branched-node count."""
    qi = quadrants.set_index(["config", "quadrant"])

    def cell(c, k):
        if (c, k) not in qi.index:
            return "–"
        return (f"{fmt_pct(qi.loc[(c, k), 'share_tokens'])} of tokens · {metric} {fmt_num(qi.loc[(c, k), 'mean_alignment'])} "
                f"(n={qi.loc[(c, k), 'n_nodes']})")

    return [[c, *[cell(c, k) for k in A.QUADRANTS]] for c in sorted(set(quadrants["config"]))]


def rock_summary_rows(rock_summary) -> list[list[str]]:
    """Per config: what the rock-token candidates account for, and alignment at their nodes vs elsewhere."""
    return [[x.config, str(x.n_types), fmt_pct(x.share_tokens), fmt_pct(x.share_kl), fmt_pct(x.share_norm_est), fmt_pct(x.share_norm_branched),
             f"{fmt_num(x.mean_alignment_rock)} (n={x.n_nodes_rock})", fmt_num(x.mean_alignment_other)] for x in rock_summary.itertuples()]
