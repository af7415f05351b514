"""The coloured token view of the page: a few rollouts as text, one line per config.

Owns: choosing which rollouts to show (`pick_rollouts`), colouring branched tokens by alignment
(RdBu: red = against success, blue = toward success; a node whose cosine sign is not resolved at
95% is shown neutral with a dotted outline instead), marking rock-token types (bold) and TIP Q3
tokens (underlined), the hover details (`title` attributes only, no JavaScript) and the legend.
Returns an HTML fragment.

Does not own: the rest of the page or its CSS classes (`page`), any statistic (`gradalign.analysis`:
`node_delta_v`, the report's TIP quadrants and rock tokens), or the PNG figures (`figures`).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

from gradalign import analysis as A
from gradalign.report.data import ReportData
from gradalign.report.options import ReportOptions
from gradalign.report.rows import fmt_num


@dataclass(frozen=True)
class _Marks:
    """What a token's span shows besides its text: the branched rows of the loss and the rock-token types."""

    branched: dict        # (question_id, rollout_id, position, config) -> alignment row with delta V
    rocks: set            # (config, token_id) of the rock-token candidates
    loss: str
    options: ReportOptions


def _cos_color(v: float) -> tuple[str, str]:
    """Background (RdBu: red = against success, blue = toward success) and a readable text colour."""
    import matplotlib
    from matplotlib import colors as mcolors

    if v is None or v != v:
        return "#dddddd", "#000000"
    rgba = matplotlib.colormaps["RdBu"]((max(-1.0, min(1.0, v)) + 1) / 2)
    lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
    return mcolors.to_hex(rgba), ("#000000" if lum > 0.55 else "#ffffff")


def _tok_text(s: str) -> str:
    s = "" if s is None else str(s)
    if s == "\n":
        return "↵\n"
    return html.escape(s.replace("\n", "↵\n")) if s else "∅"


def pick_rollouts(tables, n: int) -> list[tuple[str, int]]:
    """Rollouts to render: most branched nodes first, alternating incorrect and correct verdicts."""
    a = tables.alignment
    counts = a.drop_duplicates(A.NODE_KEY).groupby(["question_id", "rollout_id"]).size().rename("n_nodes").reset_index()
    r = tables.rollouts[["question_id", "rollout_id", "correct"]].merge(counts, on=["question_id", "rollout_id"], how="inner")
    r = r.sort_values(["n_nodes", "question_id", "rollout_id"], ascending=[False, True, True], kind="stable")
    pools = [list(r[~r["correct"]].itertuples(index=False)), list(r[r["correct"]].itertuples(index=False))]
    out: list[tuple[str, int]] = []
    seen_q: set = set()
    k = 0
    while len(out) < n and (pools[0] or pools[1]):
        pool = pools[k % 2] or pools[(k + 1) % 2]
        # prefer a question not shown yet
        idx = next((i for i, x in enumerate(pool) if x.question_id not in seen_q), 0)
        x = pool.pop(idx)
        out.append((x.question_id, int(x.rollout_id)))
        seen_q.add(x.question_id)
        k += 1
    return out


def token_heatmap_html(tables, data: ReportData, options: ReportOptions) -> str:
    """A few rollouts as text, one line per config; branched tokens coloured by alignment (hover: details)."""
    a = A.node_delta_v(tables.alignment[tables.alignment["loss"] == data.loss], tables.nodes)
    akey = {(r.question_id, int(r.rollout_id), int(r.position), r.config): r for r in a.itertuples(index=False)}
    marks = _Marks(akey, set(zip(data.rocks["config"], data.rocks["token_id"])), data.loss, options)
    qt = data.extras["quadrant_tokens"]
    roll = tables.rollouts.set_index(["question_id", "rollout_id"])
    configs = sorted(A._distinct(tables.tokens["config"]))
    parts = []
    for qid, rid in pick_rollouts(tables, options.heatmap_rollouts):
        tq = qt[(qt["question_id"] == qid) & (qt["rollout_id"] == rid)].sort_values("position")
        parts += _rollout_html(qid, rid, roll.loc[(qid, rid)], tq, configs, marks)
    return _legend(options.metric) + "\n".join(parts)


def answer_label(rr) -> str:
    """What the grader read from a rollout: "answer 42", or "no answer (reason)" when it extracted
    none (a null `extracted_answer`, which pandas reads as NaN: never printed as "nan")."""
    ans = rr["extracted_answer"]
    if ans is None or (isinstance(ans, float) and ans != ans):
        reason = rr.get("reason") if hasattr(rr, "get") else None
        return f"no answer ({reason})" if isinstance(reason, str) and reason else "no answer"
    return f"answer {ans}"


def _rollout_html(qid, rid: int, rr, tq, configs: list[str], marks: _Marks) -> list[str]:
    """One rollout: a head line (question, verdict, answer), the prompt, and a token line per config."""
    verdict = "correct" if bool(rr["correct"]) else "incorrect"
    parts = [f'<div class="rollout"><div class="rhead"><b>{html.escape(str(qid))}</b> · rollout {rid} · '
             f'<span class="{verdict}">{verdict}</span> · {html.escape(answer_label(rr))}</div>',
             f'<div class="prompt">{html.escape(str(rr["prompt"]))}</div>']
    for c in configs:
        spans = [_token_span(t, qid, rid, c, marks) for t in tq[tq["config"] == c].itertuples(index=False)]
        parts.append(f'<div class="cfgline"><span class="cfg">{html.escape(c)}</span><span class="toks">{"".join(spans)}</span></div>')
    parts.append("</div>")
    return parts


def _token_span(t, qid, rid: int, c: str, marks: _Marks) -> str:
    """One token as a span: classes (rock, q3, branched), background by alignment, details on hover."""
    o, metric = marks.options, marks.options.metric
    lt = float(t.student_logprob) - float(t.teacher_logprob)
    cls = ["t"]
    if (c, t.token_id) in marks.rocks:
        cls.append("rock")
    if t.quadrant == "Q3":
        cls.append("q3")
    tip = (f"pos {t.position} · p(y)={math.exp(float(t.student_logprob)):.3f} · l_t=log p−log q={lt:+.3f} · "
           f"H={float(t.student_entropy):.3f} · {o.divergence}={float(t.divergence):.3f} · {t.quadrant}")
    row = marks.branched.get((qid, rid, int(t.position), c))
    style = ""
    if row is not None:
        resolved = bool(getattr(row, "resolved", True))
        bg, fg = _cos_color(getattr(row, metric)) if resolved else ("#f2f2f2", "#000000")
        style = f' style="background:{bg};color:{fg}"' if resolved else f' style="background:{bg};color:{fg};outline:1px dotted #888"'
        cls.append("br")
        unc = ""
        if hasattr(row, "cos_low"):
            unc = f" [{fmt_num(row.cos_low)}, {fmt_num(row.cos_high)}]" + ("" if resolved else " unresolved")
        tip = (f"{metric}={fmt_num(getattr(row, metric))}{unc} ({marks.loss}) · V={fmt_num(row.value, '.3f')} · "
               f"S(y)={fmt_num(row.s_sampled, '.3f')} · ΔV={fmt_num(row.delta_v)} · teacher advantage={fmt_num(row.teacher_advantage)} · " + tip)
    return f'<span class="{" ".join(cls)}"{style} title="{html.escape(tip)}">{_tok_text(t.token_text)}</span>'


def _legend(metric: str) -> str:
    """The colour bar and the key to bold, underlined and grey tokens."""
    stops = ", ".join(f"{_cos_color(v)[0]} {int((v + 1) * 50)}%" for v in (-1, -0.5, 0, 0.5, 1))
    return (f'<div class="legend"><span>{metric} −1 (against success)</span><span class="bar" style="background:linear-gradient(to right, {stops})"></span>'
            f'<span>+1 (toward success)</span> · <span class="t" style="outline:1px dotted #888">dotted</span>: branched, sign '
            f'not resolved at 95% (noise) · grey text: not branched · <span class="t rock">bold</span>: rock-token type · '
            f'<span class="t q3">underlined</span>: TIP Q3 (low H / high D) · hover a token for cos, V, S(y), ΔV, teacher advantage</div>')
