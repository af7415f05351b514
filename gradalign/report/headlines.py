"""The take-aways: the few sentences a reader should leave with, read off the report's tables.

Owns: `headlines` (one list of sentences, shown on the page, in summary.md and by the CLI), built
from one small function per topic: ranking, questions won, decisive nodes, divergence, TIP
quadrants, rock tokens, how many nodes' cosine signs are resolved per config, and where two configs
that tie on average differ (`tie_lines`). Warnings (few questions, ...) are `analysis.run_caveats`,
shown above these.

Does not own: any statistic (every number is already in `ReportData`), or markup.
"""

from __future__ import annotations

from gradalign import analysis as A
from gradalign.report.data import ReportData
from gradalign.report.options import ReportOptions
from gradalign.report.rows import MEASURE_LABELS, fmt_ci, fmt_num, fmt_pct


def headlines(data: ReportData, tables, options: ReportOptions) -> list[str]:
    """The few sentences a reader should take away, computed from the report's tables."""
    m = options.metric
    return [*_ranking_lines(data, m), *tie_lines(data, m), *_winner_lines(data), *_decisive_lines(data), *_divergence_lines(data),
            *_quadrant_lines(data, m), *_rock_lines(data, options), *_space_lines(data), *_resolved_lines(tables, data.loss)]


def _space_lines(data: ReportData) -> list[str]:
    """Whether the config ranking changes between logit and parameter space (runs with cos_params)."""
    from gradalign.report.rows import spaces_sentence

    comp = data.extras.get("spaces")
    return [] if comp is None else [spaces_sentence(comp, data.loss)]


def _ranking_lines(data: ReportData, m: str) -> list[str]:
    """Best and worst config x loss, whether the top two separate (paired difference over the same
    questions, not overlapping marginal intervals), correct vs incorrect rollouts."""
    r, out = data.ranking, []
    if len(r):
        b, w = r.iloc[0], r.iloc[-1]
        out.append(f"Best: {b.config} with {b.loss}, mean {m} {fmt_ci(b['mean'], b.ci_low, b.ci_high)} over {b.n} nodes in "
                   f"{b.n_questions} questions; worst: {w.config} with {w.loss}, {fmt_ci(w['mean'], w.ci_low, w.ci_high)}.")
        s = data.extras.get("separation")
        if s is not None and s.n_questions:
            verdict = (f"{s.a[0]}/{s.a[1]} is ahead" if s.diff > 0 else f"{s.b[0]}/{s.b[1]} is ahead") if s.separated \
                else "the data do not separate them"
            out.append(f"Top two: {s.a[0]}/{s.a[1]} minus {s.b[0]}/{s.b[1]} = {fmt_ci(s.diff, s.low, s.high)} over "
                       f"{s.n_questions} shared questions (paired: both means on the same resampled questions): {verdict}.")
        both = r.dropna(subset=["mean_correct", "mean_incorrect"])
        if len(both):
            k = int((both["mean_incorrect"] > both["mean_correct"]).sum())
            out.append(f"Alignment is higher on incorrect than on correct rollouts for {k} of {len(both)} config x loss pairs.")
    return out


def tie_lines(data: ReportData, m: str) -> list[str]:
    """When the best config of the report's loss ties with another on average (paired interval
    covers 0), say where they still differ: the branched nodes with the largest alignment gap, and
    the tokens (branched or not) where the two teachers' probabilities of the student's token differ
    most, each with its largest example (token and the text before it)."""
    s = data.extras.get("tie")
    if s is None:
        return []
    dis, tdis = data.extras.get("disagreements"), data.extras.get("teacher_disagreements")
    a, b = s.a[0], s.b[0]
    bits = [f"{a} and {b} tie on average ({data.loss}: {a} − {b} = {fmt_ci(s.diff, s.low, s.high)} over {s.n_questions} "
            f"questions, paired)"]
    if dis is not None and len(dis):
        low_b = int((dis["gap"] > 0).sum())
        worse, better = (b, a) if low_b >= len(dis) - low_b else (a, b)
        side = dis[dis["gap"] > 0] if worse == b else dis[dis["gap"] < 0]
        x = side.iloc[0]
        w, v = (x.metric_b, x.metric_a) if worse == b else (x.metric_a, x.metric_b)
        bits.append(f"yet at {len(side)} of the {len(dis)} branched nodes where they part (|Δ{m}| > 0.25) {worse} is the less "
                    f"aligned, e.g. token {str(x.token_text)!r} after {str(x.context)!r} ({worse} {fmt_num(w)} vs {better} "
                    f"{fmt_num(v)})")
    if tdis is not None and len(tdis):
        y = tdis.iloc[0]
        lo_cfg, hi_cfg, lo_q, hi_q = (b, a, y.q_b, y.q_a) if y.q_a >= y.q_b else (a, b, y.q_a, y.q_b)
        nb = int(tdis["branched"].sum())
        bits.append(f"over every token the two teachers disagree most on the student's token {str(y.token_text)!r} after "
                    f"{str(y.context)!r} ({lo_cfg} gives it {fmt_num(lo_q, '.3f')}, {hi_cfg} {fmt_num(hi_q, '.3f')}); "
                    f"{nb} of the {len(tdis)} tokens where they disagree most were branched, so an average over branched "
                    f"nodes cannot see a teacher that is wrong only there")
    if len(bits) == 1:
        return []
    return ["; ".join(bits) + f". Both lists: “Where {a} and {b} differ”."]


def _winner_lines(data: ReportData) -> list[str]:
    """Whether one config wins on every question, for the report's loss and for the others."""
    out = []
    sw = A.single_winner(data.shares, data.loss)
    s = data.shares[data.shares["loss"] == data.loss]
    if len(s) and s["questions"].iloc[0] > 0:
        desc = ", ".join(f"{x.config} {fmt_pct(x.share)}" for x in s.itertuples())
        out.append(f"{sw} wins on every question ({data.loss})." if sw else
                   f"No single config wins on every question ({data.loss}): {desc} of {int(s['questions'].iloc[0])} questions.")
    others = [(ls, A.single_winner(data.shares, ls)) for ls in sorted(set(data.shares["loss"])) if ls != data.loss]
    everywhere = [f"{w} for {ls}" for ls, w in others if w]
    if everywhere:
        out.append("A single config wins on every question for another loss: " + ", ".join(everywhere) + ".")
    elif others and not sw:
        out.append("No single config wins on every question for any other loss either.")
    return out


def _decisive_lines(data: ReportData) -> list[str]:
    """The config that aligns best at decisive nodes, against its other nodes."""
    d = data.decisive[data.decisive["loss"] == data.loss]
    dd = d[d["decisive"]].sort_values("mean", ascending=False)
    if not len(dd):
        return []
    x = dd.iloc[0]
    oth = d[(~d["decisive"]) & (d["config"] == x.config)]
    return [f"At decisive nodes (largest |ΔV| per rollout) {x.config} aligns best ({data.loss}): {fmt_num(x['mean'])} vs "
            f"{fmt_num(oth['mean'].iloc[0]) if len(oth) else '–'} at its other nodes."]


def _divergence_lines(data: ReportData) -> list[str]:
    """The range of Spearman rho across configs, per divergence measure."""
    c = data.correlations[data.correlations["loss"] == data.loss]
    if not len(c):
        return []
    bits = []
    for meas in A.DIVERGENCES:
        v = c[c["measure"] == meas]["rho"].dropna()
        if len(v):
            bits.append(f"{MEASURE_LABELS[meas]} {fmt_num(v.min(), '+.2f')}..{fmt_num(v.max(), '+.2f')}")
    return [f"Spearman ρ of alignment with divergence across configs ({data.loss}): " + "; ".join(bits) + "."] if bits else []


def _quadrant_lines(data: ReportData, m: str) -> list[str]:
    """Share of tokens and node-weighted mean alignment per TIP quadrant, over all configs."""
    q = data.quadrants[data.quadrants["loss"] == data.loss]
    if not len(q):
        return []
    g = q.groupby("quadrant").apply(lambda x: (x["mean_alignment"] * x["n_nodes"]).sum() / max(1, x["n_nodes"].sum()),
                                     include_groups=False)
    sh = q.groupby("quadrant")["share_tokens"].mean()
    return ["TIP quadrants (all configs): " + "; ".join(
        f"{k} {fmt_pct(sh.get(k))} of tokens, mean {m} {fmt_num(g.get(k))}" for k in A.QUADRANTS) + "."]


def _rock_lines(data: ReportData, options: ReportOptions) -> list[str]:
    """What the rock-token candidates account for, averaged over configs."""
    rs = data.rock_summary
    if not len(rs):
        return []
    return [f"Rock-token candidates (top {options.rock_top_n} types per config) are {fmt_pct(rs['share_tokens'].mean())} of tokens, "
            f"{fmt_pct(rs['share_kl'].mean())} of summed KL(p||q) and {fmt_pct(rs['share_norm_est'].mean())} of the estimated "
            f"sampled-token OPD gradient norm (means over configs)."]


def _resolved_lines(tables, loss: str) -> list[str]:
    """How many nodes per config have a cosine whose sign is determined at 95% (the report's loss)."""
    rc = A.resolved_counts(tables.alignment[tables.alignment["loss"] == loss], by=["config"])
    if rc.empty:
        return []
    parts = ", ".join(f"{x.config} {int(x.resolved)}/{int(x.rows)}" for x in rc.itertuples())
    return [f"Resolved nodes ({loss}; cosine sign determined at 95%): {parts}. The others are within their Monte Carlo "
            f"noise: their colour and value are not evidence on their own."]
