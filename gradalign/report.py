"""Reports: one self-contained HTML page per task, PNG figures and a Markdown summary beside it.

Owns: turning the numbers of `gradalign.analysis` into files a person can look at: matplotlib
figures (Agg backend, no display), an HTML page with the figures inlined as data URIs, its tables,
a coloured token view and hover details (CSS and `title` attributes only: no JavaScript, no network,
no CDN), and a Markdown summary linking the PNGs. Reads runs only through `gradalign.load`.

Does not own: any statistic (every number comes from `gradalign.analysis`), terminal output (the
CLI renders with rich), or the run tables themselves.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from gradalign import analysis as A

log = logging.getLogger(__name__)

MEASURE_LABELS = {"kl_pq": "KL(p||q)", "kl_qp": "KL(q||p)", "jsd": "JSD", "dist_cos": "cos(p, q)"}


@dataclass(frozen=True)
class ReportOptions:
    """Choices behind a report (all have CLI flags)."""

    metric: str = "cos"              # alignment column: cos | cos_candidates | cos_debiased
    loss: str | None = None          # loss of the one-loss views (winners, position, heatmaps, scatter, quadrants); None: reverse_kl if present
    n_boot: int = 2000               # bootstrap replicates (questions resampled)
    ci: float = 0.95
    seed: int = 0
    position_bins: int = 5
    decisive_top: int = 1            # decisive nodes per rollout (largest |delta V|)
    heatmap_rollouts: int = 4
    divergence: str = "kl_pq"        # TIP divergence axis
    h_quantile: float = 0.5
    d_quantile: float = 0.5
    rock_min_freq: int = 2
    rock_drop_top: int = 5
    rock_top_n: int = 20
    rock_loss: str = "sampled_token"  # loss whose exact norm_distill gives the branched-node gradient share
    max_question_rows: int = 60       # per-question table/heatmap rows shown (all are counted)


@dataclass(frozen=True)
class ReportFiles:
    """What one report wrote."""

    task: str
    out_dir: Path
    html: Path
    markdown: Path
    figures: tuple[Path, ...]
    headlines: tuple[str, ...]


@dataclass(frozen=True)
class ReportData:
    """Every table a report shows (DataFrames from `gradalign.analysis`)."""

    loss: str
    ranking: Any
    winners: Any
    shares: Any
    position: Any
    decisive: Any
    correlations: Any
    thresholds: Any
    quadrants: Any
    rocks: Any
    rock_summary: Any
    norm_check: Any
    extras: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- data


def task_name(tables) -> str:
    """Task name of a run from its manifest (`config.task.name`, else the task file's stem, else 'task')."""
    man = tables.manifest or {}
    if man.get("runs"):
        man = man["runs"][0]  # combined runs (`analysis.combine_runs`) share a task
    cfg = man.get("config", {}) or {}
    task = cfg.get("task", {}) or {}
    name = task.get("name") or (Path(task["path"]).stem if task.get("path") else None)
    return str(name or "task")


def report_data(tables, options: ReportOptions = ReportOptions()) -> ReportData:
    """Compute every table of the report from one run's (or combined runs') Tables."""
    o = options
    a, t = tables.alignment, tables.tokens
    if a.empty:
        raise A.AnalysisError("the alignment table is empty: the run branched no node")
    A._check_metric(a, o.metric)
    loss = A._check_loss(a, o.loss)
    ranking = A.rank_configs(a, metric=o.metric, n_boot=o.n_boot, ci=o.ci, seed=o.seed)
    winners = A.question_winners(a, metric=o.metric)
    shares = A.winner_shares(winners)
    nb = max(200, o.n_boot // 2)
    position = A.alignment_by_position(a, tables.rollouts, metric=o.metric, bins=o.position_bins, n_boot=nb, ci=o.ci, seed=o.seed)
    decisive = A.alignment_at_decisive(a, tables.nodes, metric=o.metric, top=o.decisive_top, n_boot=nb, ci=o.ci, seed=o.seed)
    correlations = A.divergence_correlations(a, t, metric=o.metric)
    thresholds = A.tip_thresholds(t, divergence=o.divergence, h_quantile=o.h_quantile, d_quantile=o.d_quantile)
    qt = A.tip_quadrants(t, divergence=o.divergence, h_quantile=o.h_quantile, d_quantile=o.d_quantile)
    quadrants = A.quadrant_summary(qt, a, metric=o.metric)
    rocks = A.rock_tokens(t, min_freq=o.rock_min_freq, drop_top=o.rock_drop_top, top_n=o.rock_top_n)
    rsum = A.rock_summary(t, a, rocks, metric=o.metric, loss=o.rock_loss)
    norm_check = A.opd_norm_check(t, a)
    return ReportData(loss, ranking, winners, shares, position, decisive, correlations, thresholds, quadrants, rocks, rsum,
                      norm_check, {"quadrant_tokens": qt})


# ----------------------------------------------------------------------------- formatting


def _f(v, spec: str = "+.3f") -> str:
    try:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _pct(v) -> str:
    return _f(100 * v if v is not None and v == v else float("nan"), ".1f") + ("%" if v is not None and v == v else "")


def _ci(m, lo, hi) -> str:
    return f"{_f(m)} [{_f(lo)}, {_f(hi)}]"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "tbl", raw: bool = False) -> str:
    esc = (lambda s: s) if raw else html.escape
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(s):
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def _ranking_rows(r) -> list[list[str]]:
    return [[str(x.rank), x.config, x.loss, _ci(x.mean, x.ci_low, x.ci_high), _ci(x.mean_correct, x.ci_low_correct, x.ci_high_correct),
             _ci(x.mean_incorrect, x.ci_low_incorrect, x.ci_high_incorrect), f"{x.n} / {x.n_correct} / {x.n_incorrect}", str(x.n_questions)]
            for x in r.itertuples()]


RANK_HEADER = ["rank", "config", "loss", "mean [95% CI]", "correct rollouts", "incorrect rollouts", "nodes (all / c / i)", "questions"]


# ----------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100,
                         "svg.hashsalt": "gradalign", "axes.titlesize": 10})
    return plt


def _colors(configs: Sequence[str]) -> dict[str, str]:
    from matplotlib import colors as mcolors
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {c: mcolors.to_hex(cmap(i % 10)) for i, c in enumerate(sorted(configs))}


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png", bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def fig_ranking(ranking, path: Path, *, metric: str, ci: float) -> Path:
    """Forest plot: mean alignment per config x loss with intervals, all / correct / incorrect rollouts."""
    plt = _plt()
    r = ranking.reset_index(drop=True)
    n = len(r)
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * n + 1.4))
    y = list(range(n))[::-1]
    for off, (suffix, label, color, marker) in zip((0.0, 0.22, -0.22), (("", "all rollouts", "black", "o"),
                                                                      ("_correct", "correct rollouts", "#1a9850", "^"),
                                                                      ("_incorrect", "incorrect rollouts", "#d73027", "v"))):
        m = r[f"mean{suffix}"].astype(float)
        lo, hi = r[f"ci_low{suffix}"].astype(float), r[f"ci_high{suffix}"].astype(float)
        err = [(m - lo).clip(lower=0).fillna(0), (hi - m).clip(lower=0).fillna(0)]
        ax.errorbar(m, [v + off for v in y], xerr=err, fmt=marker, color=color, ms=5 if suffix == "" else 4, capsize=2,
                    lw=1.2 if suffix == "" else 0.8, label=label, alpha=1.0 if suffix == "" else 0.8)
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{c}  ·  {l}" for c, l in zip(r.config, r.loss)])
    ax.set_xlabel(f"mean {metric}(ideal gradient, distillation gradient)   ({int(ci * 100)}% interval: questions resampled)")
    ax.set_title("Which config x loss pushes the student toward success?", pad=20)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    return _save(fig, path)


def fig_winners(winners, shares, loss: str, path: Path, colors: dict, *, max_rows: int, metric: str) -> Path:
    """Share of questions won per config (every loss) and the per-question means of `loss`."""
    import numpy as np

    plt = _plt()
    configs = sorted(colors)
    losses = sorted(set(shares["loss"]))
    w = winners[winners["loss"] == loss].sort_values("question_id").head(max_rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, max(3.2, 0.22 * len(w) + 1.6)), gridspec_kw={"width_ratios": [1, 1.2]})
    width = 0.8 / max(1, len(losses))
    for i, ls in enumerate(losses):
        s = shares[shares["loss"] == ls].set_index("config").reindex(configs)
        xs = np.arange(len(configs)) + (i - (len(losses) - 1) / 2) * width
        ax1.bar(xs, s["share"].fillna(0), width, label=ls, edgecolor="black" if ls == loss else "none", lw=0.8,
                alpha=1.0 if ls == loss else 0.55)
    ax1.set_xticks(range(len(configs)))
    ax1.set_xticklabels(configs, rotation=20, ha="right")
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("share of questions where the config aligns best")
    ax1.axhline(1.0, color="grey", lw=0.6, ls=":")
    ax1.legend(fontsize=7, frameon=False, title="loss", title_fontsize=7)
    ax1.set_title("Share of questions won")
    mat = w[configs].to_numpy(dtype=float) if len(w) else np.zeros((0, len(configs)))
    lim = max(0.05, float(np.nanmax(np.abs(mat)))) if mat.size and np.isfinite(mat).any() else 1.0
    im = ax2.imshow(mat, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for i, win in enumerate(w["winner"]):
        if win in configs:
            j = configs.index(win)
            ax2.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=1.6))
    ax2.set_xticks(range(len(configs)))
    ax2.set_xticklabels(configs, rotation=20, ha="right")
    ax2.set_yticks(range(len(w)))
    ax2.set_yticklabels(w["question_id"].astype(str), fontsize=7)
    fig.colorbar(im, ax=ax2, label=f"mean {metric} ({loss})", fraction=0.05)
    ax2.set_title(f"Mean {metric} per question ({loss}); box = winner")
    fig.tight_layout()
    return _save(fig, path)


def fig_position(position, decisive, loss: str, path: Path, colors: dict, *, metric: str, top: int) -> Path:
    """Mean alignment by relative position in the rollout, and at decisive vs other nodes."""
    import numpy as np

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.3, 1]})
    p = position[position["loss"] == loss]
    for c, g in p.groupby("config"):
        g = g.sort_values("pos_bin")
        mid = (g["bin_start"] + g["bin_end"]) / 2
        ax1.plot(mid, g["mean"], "-o", color=colors[c], label=c, ms=3.5)
        ax1.fill_between(mid, g["ci_low"].astype(float), g["ci_high"].astype(float), color=colors[c], alpha=0.08, lw=0)
    ax1.axhline(0, color="grey", lw=0.8, ls="--")
    ax1.set_xlim(0, 1)
    ax1.set_xlabel("relative position in the rollout (position / length)")
    ax1.set_ylabel(f"mean {metric} ({loss})")
    ax1.set_title("Alignment along the rollout")
    ax1.legend(fontsize=7, frameon=False)
    d = decisive[decisive["loss"] == loss]
    configs = sorted(colors)
    xs = np.arange(len(configs))
    for k, (flag, label, hatch) in enumerate(((True, f"decisive (top {top} |ΔV| per rollout)", None), (False, "other nodes", "//"))):
        s = d[d["decisive"] == flag].set_index("config").reindex(configs)
        m = s["mean"].astype(float)
        err = [(m - s["ci_low"].astype(float)).clip(lower=0).fillna(0), (s["ci_high"].astype(float) - m).clip(lower=0).fillna(0)]
        ax2.bar(xs + (k - 0.5) * 0.38, m.fillna(0), 0.38, yerr=err, capsize=2, label=label,
                color=[colors[c] for c in configs], alpha=1.0 if flag else 0.45, hatch=hatch, edgecolor="black", lw=0.4)
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_xticks(xs)
    ax2.set_xticklabels(configs, rotation=20, ha="right")
    ax2.set_ylabel(f"mean {metric} ({loss})")
    ax2.set_title("At decisive nodes vs elsewhere")
    ax2.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def fig_divergence(joined, correlations, loss: str, path: Path, colors: dict, *, metric: str) -> Path:
    """Scatter of each divergence measure against alignment, per config, with Spearman rho."""
    plt = _plt()
    measures = list(A.DIVERGENCES)
    fig, axes = plt.subplots(1, len(measures), figsize=(12, 3.3), sharey=True)
    j = joined[joined["loss"] == loss]
    cor = correlations[correlations["loss"] == loss].set_index(["config", "measure"])["rho"]
    for ax, m in zip(axes, measures):
        for c, g in j.groupby("config"):
            rho = cor.get((c, m), float("nan"))
            ax.scatter(g[m], g[metric], s=9, alpha=0.55, color=colors[c], label=f"{c} ρ={_f(rho, '+.2f')}", lw=0)
        ax.axhline(0, color="grey", lw=0.6, ls="--")
        ax.set_xlabel(MEASURE_LABELS[m])
        if m in ("kl_pq", "kl_qp") and (j[m] > 0).any():
            ax.set_xscale("symlog", linthresh=0.01)
            ax.set_xlim(left=0)
        ax.legend(fontsize=6, frameon=False, loc="best", handletextpad=0.1, markerscale=1.2)
    axes[0].set_ylabel(f"{metric} ({loss})")
    fig.suptitle("Divergence vs alignment at branched nodes (Spearman ρ per config)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def fig_token_types(quadrants, rock_summary, loss: str, path: Path, colors: dict, *, metric: str) -> Path:
    """TIP quadrants (mean alignment, share of tokens) and what rock tokens account for."""
    import numpy as np

    plt = _plt()
    configs = sorted(colors)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.5))
    q = quadrants[quadrants["loss"] == loss]
    width = 0.8 / max(1, len(configs))
    xs = np.arange(len(A.QUADRANTS))
    for i, c in enumerate(configs):
        s = q[q["config"] == c].set_index("quadrant").reindex(list(A.QUADRANTS))
        off = (i - (len(configs) - 1) / 2) * width
        ax1.bar(xs + off, s["mean_alignment"].fillna(0), width, color=colors[c], label=c)
        ax2.bar(xs + off, s["share_tokens"].fillna(0), width, color=colors[c], label=c)
    labels = [f"{k}\n{A.QUADRANT_NAMES[k].split(' (')[0]}" for k in A.QUADRANTS]
    for ax in (ax1, ax2):
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=7)
    ax1.axhline(0, color="grey", lw=0.8)
    ax1.set_ylabel(f"mean {metric} ({loss}) at branched nodes")
    ax1.set_title("TIP quadrants: alignment")
    ax1.legend(fontsize=7, frameon=False)
    ax2.set_ylabel("share of the config's tokens")
    ax2.set_title("TIP quadrants: share of tokens")
    cols = [("share_tokens", "tokens"), ("share_kl", "summed KL(p||q)"), ("share_norm_est", "OPD norm (all, est.)"),
            ("share_norm_branched", "norm_distill (branched)")]
    xs3 = np.arange(len(cols))
    for i, c in enumerate(configs):
        s = rock_summary[rock_summary["config"] == c]
        vals = [float(s[k].iloc[0]) if len(s) else 0.0 for k, _ in cols]
        ax3.bar(xs3 + (i - (len(configs) - 1) / 2) * width, np.nan_to_num(vals), width, color=colors[c], label=c)
    ax3.set_xticks(xs3)
    ax3.set_xticklabels([lbl for _, lbl in cols], fontsize=7, rotation=10)
    ax3.set_ylabel("share taken by rock-token candidates")
    ax3.axhline(0, color="grey", lw=0.6)
    ax3.set_title("Rock-token candidates")
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- token heatmap (HTML)


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
    qt = data.extras["quadrant_tokens"]
    rock_keys = set(zip(data.rocks["config"], data.rocks["token_id"]))
    roll = tables.rollouts.set_index(["question_id", "rollout_id"])
    configs = sorted(set(tables.tokens["config"]))
    parts = []
    metric = options.metric
    for qid, rid in pick_rollouts(tables, options.heatmap_rollouts):
        rr = roll.loc[(qid, rid)]
        verdict = "correct" if bool(rr["correct"]) else "incorrect"
        parts.append(f'<div class="rollout"><div class="rhead"><b>{html.escape(str(qid))}</b> · rollout {rid} · '
                     f'<span class="{verdict}">{verdict}</span> · answer {html.escape(str(rr["extracted_answer"]))}</div>')
        parts.append(f'<div class="prompt">{html.escape(str(rr["prompt"]))}</div>')
        tq = qt[(qt["question_id"] == qid) & (qt["rollout_id"] == rid)].sort_values("position")
        for c in configs:
            spans = []
            for t in tq[tq["config"] == c].itertuples(index=False):
                lt = float(t.student_logprob) - float(t.teacher_logprob)
                cls = ["t"]
                if (c, t.token_id) in rock_keys:
                    cls.append("rock")
                if t.quadrant == "Q3":
                    cls.append("q3")
                tip = (f"pos {t.position} · p(y)={math.exp(float(t.student_logprob)):.3f} · l_t=log p−log q={lt:+.3f} · "
                       f"H={float(t.student_entropy):.3f} · {options.divergence}={float(t.divergence):.3f} · {t.quadrant}")
                row = akey.get((qid, rid, int(t.position), c))
                style = ""
                if row is not None:
                    bg, fg = _cos_color(getattr(row, metric))
                    style = f' style="background:{bg};color:{fg}"'
                    cls.append("br")
                    tip = (f"{metric}={_f(getattr(row, metric))} ({data.loss}) · V={_f(row.value, '.3f')} · "
                           f"S(y)={_f(row.s_sampled, '.3f')} · ΔV={_f(row.delta_v)} · teacher advantage={_f(row.teacher_advantage)} · " + tip)
                spans.append(f'<span class="{" ".join(cls)}"{style} title="{html.escape(tip)}">{_tok_text(t.token_text)}</span>')
            parts.append(f'<div class="cfgline"><span class="cfg">{html.escape(c)}</span><span class="toks">{"".join(spans)}</span></div>')
        parts.append("</div>")
    stops = ", ".join(f"{_cos_color(v)[0]} {int((v + 1) * 50)}%" for v in (-1, -0.5, 0, 0.5, 1))
    legend = (f'<div class="legend"><span>{metric} −1 (against success)</span><span class="bar" style="background:linear-gradient(to right, {stops})"></span>'
              f'<span>+1 (toward success)</span> · grey text: not branched · <span class="t rock">bold</span>: rock-token type · '
              f'<span class="t q3">underlined</span>: TIP Q3 (low H / high D) · hover a token for cos, V, S(y), ΔV, teacher advantage</div>')
    return legend + "\n".join(parts)


# ----------------------------------------------------------------------------- headlines


def headlines(data: ReportData, tables, options: ReportOptions) -> list[str]:
    """The few sentences a reader should take away, computed from the report's tables."""
    out = []
    r = data.ranking
    nq = tables.rollouts["question_id"].nunique()
    m = options.metric
    if len(r):
        b, w = r.iloc[0], r.iloc[-1]
        out.append(f"Best: {b.config} with {b.loss}, mean {m} {_ci(b['mean'], b.ci_low, b.ci_high)} over {b.n} nodes in "
                   f"{b.n_questions} questions; worst: {w.config} with {w.loss}, {_ci(w['mean'], w.ci_low, w.ci_high)}.")
        overlap = (r["ci_low"].iloc[0] <= r["ci_high"].iloc[1]) if len(r) > 1 else False
        if overlap:
            out.append(f"The top two intervals overlap ({r.iloc[0].config}/{r.iloc[0].loss} vs {r.iloc[1].config}/{r.iloc[1].loss}): "
                       f"the data do not separate them.")
        both = r.dropna(subset=["mean_correct", "mean_incorrect"])
        if len(both):
            k = int((both["mean_incorrect"] > both["mean_correct"]).sum())
            out.append(f"Alignment is higher on incorrect than on correct rollouts for {k} of {len(both)} config x loss pairs.")
    sw = A.single_winner(data.shares, data.loss)
    s = data.shares[data.shares["loss"] == data.loss]
    if len(s) and s["questions"].iloc[0] > 0:
        desc = ", ".join(f"{x.config} {_pct(x.share)}" for x in s.itertuples())
        out.append(f"{sw} wins on every question ({data.loss})." if sw else
                   f"No single config wins on every question ({data.loss}): {desc} of {int(s['questions'].iloc[0])} questions.")
    others = [(ls, A.single_winner(data.shares, ls)) for ls in sorted(set(data.shares["loss"])) if ls != data.loss]
    everywhere = [f"{w} for {ls}" for ls, w in others if w]
    if everywhere:
        out.append("A single config wins on every question for another loss: " + ", ".join(everywhere) + ".")
    elif others and not sw:
        out.append("No single config wins on every question for any other loss either.")
    d = data.decisive[data.decisive["loss"] == data.loss]
    dd = d[d["decisive"]].sort_values("mean", ascending=False)
    if len(dd):
        x = dd.iloc[0]
        oth = d[(~d["decisive"]) & (d["config"] == x.config)]
        out.append(f"At decisive nodes (largest |ΔV| per rollout) {x.config} aligns best ({data.loss}): {_f(x['mean'])} vs "
                   f"{_f(oth['mean'].iloc[0]) if len(oth) else '–'} at its other nodes.")
    c = data.correlations[data.correlations["loss"] == data.loss]
    if len(c):
        bits = []
        for meas in A.DIVERGENCES:
            v = c[c["measure"] == meas]["rho"].dropna()
            if len(v):
                bits.append(f"{MEASURE_LABELS[meas]} {_f(v.min(), '+.2f')}..{_f(v.max(), '+.2f')}")
        if bits:
            out.append(f"Spearman ρ of alignment with divergence across configs ({data.loss}): " + "; ".join(bits) + ".")
    q = data.quadrants[data.quadrants["loss"] == data.loss]
    if len(q):
        g = q.groupby("quadrant").apply(lambda x: (x["mean_alignment"] * x["n_nodes"]).sum() / max(1, x["n_nodes"].sum()),
                                         include_groups=False)
        sh = q.groupby("quadrant")["share_tokens"].mean()
        out.append("TIP quadrants (all configs): " + "; ".join(
            f"{k} {_pct(sh.get(k))} of tokens, mean {m} {_f(g.get(k))}" for k in A.QUADRANTS) + ".")
    rs = data.rock_summary
    if len(rs):
        out.append(f"Rock-token candidates (top {options.rock_top_n} types per config) are {_pct(rs['share_tokens'].mean())} of tokens, "
                   f"{_pct(rs['share_kl'].mean())} of summed KL(p||q) and {_pct(rs['share_norm_est'].mean())} of the estimated "
                   f"sampled-token OPD gradient norm (means over configs).")
    if nq < 20:
        out.append(f"Only {nq} questions: intervals are wide; treat the ranking as provisional and run more questions.")
    return out


# ----------------------------------------------------------------------------- page


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1180px;padding:18px 24px;color:#222;line-height:1.4}
h1{font-size:22px;margin:4px 0} h2{font-size:17px;margin-top:30px;border-bottom:1px solid #ddd;padding-bottom:3px}
.meta{color:#555;font-size:13px} .meta code{background:#f3f3f3;padding:0 3px}
ul.head li{margin:3px 0} img{max-width:100%;border:1px solid #eee}
table.tbl{border-collapse:collapse;font-size:12px;margin:8px 0} .tbl th,.tbl td{border:1px solid #ddd;padding:3px 7px;text-align:right}
.tbl th{background:#f5f5f5} .tbl td:first-child,.tbl td:nth-child(2){text-align:left}
.note{color:#666;font-size:12px} details{margin:6px 0} summary{cursor:pointer;color:#336}
.rollout{border:1px solid #ddd;border-radius:4px;padding:6px 10px;margin:10px 0}
.rhead{font-size:13px;margin-bottom:3px} .correct{color:#1a7f37;font-weight:bold} .incorrect{color:#c62828;font-weight:bold}
.prompt{font-family:monospace;font-size:12px;color:#777;white-space:pre-wrap}
.cfgline{display:flex;gap:8px;align-items:flex-start;margin:2px 0}
.cfg{min-width:120px;font-size:12px;color:#333;font-weight:bold}
.toks{font-family:monospace;font-size:13px;white-space:pre-wrap;color:#999;line-height:1.6}
.t.br{color:#000;border-radius:2px;padding:0 1px} .t.rock{font-weight:bold} .t.q3{text-decoration:underline}
.legend{font-size:12px;display:flex;flex-wrap:wrap;align-items:center;gap:6px;margin:6px 0}
.legend .bar{display:inline-block;width:160px;height:12px;border:1px solid #aaa}
.win{font-weight:bold;background:#fff3c4}
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _run_meta(tables) -> tuple[list[str], list[list[str]]]:
    mans = tables.manifest.get("runs") or [tables.manifest]
    names = tables.manifest.get("run_names") or [str(((m.get("config") or {}).get("run") or {}).get("name", "run")) for m in mans]
    lines, teachers = [], []
    for name, m in zip(names, mans):
        cfg = m.get("config") or {}
        st = (cfg.get("student") or {}).get("model", "?")
        br = cfg.get("branching") or {}
        lines.append(f"run <code>{html.escape(str(name))}</code>: student <code>{html.escape(str(st))}</code>, "
                     f"selector {html.escape(str(br.get('selector', '?')))}, {br.get('continuations', '?')} continuations per candidate, "
                     f"created {html.escape(str(m.get('created', '?')))}, gradalign {html.escape(str(m.get('gradalign_version', '?')))}")
        for t in cfg.get("teachers") or []:
            teachers.append([str(t.get("name")), str(name), str(t.get("model")), repr(t.get("context", ""))])
    return lines, teachers


def build_report(tables, out_dir: str | Path, *, options: ReportOptions = ReportOptions(), title: str | None = None) -> ReportFiles:
    """Write index.html (self-contained), summary.md and the PNG figures for one task into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    o = options
    task = task_name(tables)
    data = report_data(tables, o)
    configs = sorted(set(tables.tokens["config"]) | set(tables.alignment["config"]))
    colors = _colors(configs)
    m = o.metric
    joined = A.join_tokens(tables.alignment, tables.tokens)
    figs = {
        "ranking": fig_ranking(data.ranking, out / "ranking.png", metric=m, ci=o.ci),
        "winners": fig_winners(data.winners, data.shares, data.loss, out / "winners.png", colors, max_rows=o.max_question_rows, metric=m),
        "position": fig_position(data.position, data.decisive, data.loss, out / "position.png", colors, metric=m, top=o.decisive_top),
        "divergence": fig_divergence(joined, data.correlations, data.loss, out / "divergence.png", colors, metric=m),
        "token_types": fig_token_types(data.quadrants, data.rock_summary, data.loss, out / "token_types.png", colors, metric=m),
    }
    heads = headlines(data, tables, o)
    r = tables.rollouts
    n_nodes = len(tables.alignment.drop_duplicates(A.NODE_KEY))
    title = title or f"gradalign report: {task}"
    meta_lines, teachers = _run_meta(tables)

    # --- tables
    rank_html = _html_table(RANK_HEADER, _ranking_rows(data.ranking))
    share_losses = sorted(set(data.shares["loss"]))
    sh = data.shares.set_index(["config", "loss"])
    shares_header = ["config", *[f"{ls} (of {int(sh.xs(ls, level='loss')['questions'].max())})" for ls in share_losses]]
    shares_rows = [[c, *[f"{_pct(sh.loc[(c, ls), 'share'])} ({int(sh.loc[(c, ls), 'wins'])})" if (c, ls) in sh.index else "–"
                         for ls in share_losses]] for c in configs]
    w = data.winners[data.winners["loss"] == data.loss].sort_values("question_id")
    wrows = []
    for x in w.head(o.max_question_rows).itertuples(index=False):
        d = x._asdict()
        cells = [html.escape(str(x.question_id))]
        for c in configs:
            v = _f(d.get(c)) if c in w.columns else "–"
            cells.append(f'<span class="win">{v}</span>' if c == x.winner else v)
        cells += [html.escape(str(x.winner)), _f(x.margin, ".3f")]
        wrows.append(cells)
    win_html = _html_table(["question", *configs, "winner", "margin"], wrows, raw=True)
    pos = data.position[data.position["loss"] == data.loss]
    pos_rows = [[x.config, f"{x.bin_start:.1f}–{x.bin_end:.1f}", _ci(x.mean, x.ci_low, x.ci_high), str(x.n)] for x in pos.itertuples()]
    dec = data.decisive[data.decisive["loss"] == data.loss]
    dec_rows = [[x.config, "decisive" if x.decisive else "other", _ci(x.mean, x.ci_low, x.ci_high), str(x.n), _f(x.mean_abs_delta_v, ".3f")]
                for x in dec.itertuples()]
    cor = data.correlations.pivot_table(index=["config", "loss"], columns="measure", values="rho", dropna=False).reset_index()
    ncor = data.correlations.groupby(["config", "loss"])["n"].max()
    cor_rows = [[x["config"], x["loss"], *[_f(x.get(meas), "+.2f") for meas in A.DIVERGENCES], str(ncor.get((x["config"], x["loss"]), 0))]
                for _, x in cor.iterrows()]
    q = data.quadrants[data.quadrants["loss"] == data.loss]
    q_rows = [[x.config, f"{x.quadrant} {A.QUADRANT_NAMES[x.quadrant]}", _pct(x.share_tokens), str(x.n_tokens), _f(x.mean_entropy, ".3f"),
               _f(x.mean_divergence, ".3f"), str(x.n_nodes), _f(x.mean_alignment)] for x in q.itertuples()]
    qi = q.set_index(["config", "quadrant"])
    qpiv_rows = [[c, *[f"{_pct(qi.loc[(c, k), 'share_tokens'])} of tokens · {m} {_f(qi.loc[(c, k), 'mean_alignment'])} (n={qi.loc[(c, k), 'n_nodes']})"
                      if (c, k) in qi.index else "–" for k in A.QUADRANTS]] for c in sorted(set(q["config"]))]
    th_rows = [[x.config, x.measure, f"{x.h_quantile:g}", _f(x.entropy_threshold, ".4f"), f"{x.d_quantile:g}", _f(x.divergence_threshold, ".4f")]
               for x in data.thresholds.itertuples()]
    rs_rows = [[x.config, str(x.n_types), _pct(x.share_tokens), _pct(x.share_kl), _pct(x.share_norm_est), _pct(x.share_norm_branched),
                f"{_f(x.mean_alignment_rock)} (n={x.n_nodes_rock})", _f(x.mean_alignment_other)] for x in data.rock_summary.itertuples()]
    rock_rows = [[x.config, str(x.rank), repr(str(x.token_text)), str(x.token_id), str(x.freq), _f(x.mean_loss, "+.3f"), _f(x.score, "+.2f")]
                 for x in data.rocks.itertuples()]
    nc = data.norm_check
    norm_note = ("; ".join(f"{x.config}: median {x.median_ratio:.2f} (range {x.min_ratio:.2f}–{x.max_ratio:.2f}, n={x.n})" for x in nc.itertuples())
                 if len(nc) else "no sampled_token loss in this run")

    # --- page
    H = []
    H.append(f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>")
    H.append(f"<h1>{html.escape(title)}</h1>")
    H.append(f"<p class='meta'>{len(r)} rollouts of {r['question_id'].nunique()} questions ({int(r['correct'].sum())} correct), "
             f"{n_nodes} branched nodes, configs: {', '.join(html.escape(c) for c in configs)}; losses: "
             f"{', '.join(sorted(set(tables.alignment['loss'])))}. Alignment metric <code>{m}</code> = cosine between the ideal "
             f"gradient (what raises the student's success) and each config's distillation gradient; one-loss views use "
             f"<code>{data.loss}</code>.<br>{'<br>'.join(meta_lines)}</p>")
    H.append("<h2>Take-aways</h2><ul class='head'>" + "".join(f"<li>{html.escape(h)}</li>" for h in heads) + "</ul>")
    H.append("<h2>1. Ranking: configs x losses</h2>")
    undefined = tables.alignment[tables.alignment[m].isna()]
    why = ", ".join(f"{k or '?'} ({v})" for k, v in undefined["reason"].value_counts().head(3).items()) if len(undefined) else ""
    H.append(f"<p class='note'>Mean {m} over branched nodes; {int(o.ci * 100)}% percentile intervals from {o.n_boot} bootstrap "
             f"replicates that resample questions (not tokens), seed {o.seed}. Split by the rollout's verdict. "
             f"{len(undefined)} of {len(tables.alignment)} node x config x loss rows have an undefined {m} and are left out"
             f"{' (reasons: ' + html.escape(why) + ')' if why else ''}.</p>")
    H.append(_img(figs["ranking"]) + rank_html)
    H.append("<h2>2. Which config wins on each question</h2>")
    sw = A.single_winner(data.shares, data.loss)
    H.append(f"<p><b>{html.escape(sw + ' wins on every question' if sw else 'No single config wins on every question')}</b> "
             f"({html.escape(data.loss)}). Winner = highest mean {m} over the question's nodes; ties go to the name that sorts first.</p>")
    H.append(_img(figs["winners"]))
    H.append("<p class='note'>Share of questions won (count), per loss:</p>" + _html_table(shares_header, shares_rows))
    more = f" (first {o.max_question_rows} of {len(w)})" if len(w) > o.max_question_rows else ""
    H.append(f"<details><summary>Per-question means ({html.escape(data.loss)}){more}</summary>{win_html}</details>")
    H.append("<h2>3. Along the rollout and at decisive nodes</h2>")
    H.append(f"<p class='note'>Relative position = position / completion length, {o.position_bins} equal bins. ΔV = S(sampled token) − V "
             f"at the node (how much the token the student took changed its estimated success); decisive nodes are the top "
             f"{o.decisive_top} per rollout by |ΔV| (ΔV = 0 is never decisive).</p>")
    H.append(_img(figs["position"]))
    H.append(f"<details><summary>Tables</summary>{_html_table(['config', 'relative position', 'mean [CI]', 'nodes'], pos_rows)}"
             f"{_html_table(['config', 'nodes', 'mean [CI]', 'n', 'mean |ΔV|'], dec_rows)}</details>")
    H.append("<h2>4. Token heatmaps</h2>")
    H.append(f"<p class='note'>{o.heatmap_rollouts} rollouts (most branched nodes, incorrect and correct alternating); one line per config. "
             f"Branched tokens are coloured by {m} ({html.escape(data.loss)}).</p>")
    H.append(token_heatmap_html(tables, data, o))
    H.append("<h2>5. Divergence vs alignment</h2>")
    H.append("<p class='note'>Spearman ρ between each token-level divergence of the teacher from the student and alignment at branched "
             "nodes, per config. KL axes use a symlog scale.</p>")
    H.append(_img(figs["divergence"]))
    cor_main = [row for row in cor_rows if row[1] == data.loss]
    H.append(_html_table(["config", "loss", *[MEASURE_LABELS[x] for x in A.DIVERGENCES], "nodes"], cor_main))
    H.append(f"<details><summary>Every loss</summary>{_html_table(['config', 'loss', *[MEASURE_LABELS[x] for x in A.DIVERGENCES], 'nodes'], cor_rows)}</details>")
    H.append("<h2>6. Token types</h2>")
    H.append(f"<p class='note'>TIP quadrants (arXiv 2604.14084): student entropy H x teacher-student divergence D = "
             f"<code>{html.escape(o.divergence)}</code>{' (1 − cosine)' if o.divergence == 'dist_cos' else ''}, thresholds at the "
             f"{o.h_quantile:g} / {o.d_quantile:g} quantiles within each config, “high” = strictly above. Q1 high H / high D, Q2 high H / low D, "
             f"Q3 low H / high D (overconfident and wrong), Q4 low H / low D. Share of tokens counts every rollout token; mean alignment "
             f"only branched ones.</p>")
    H.append(_img(figs["token_types"]))
    H.append(_html_table(["config", *[f"{k} {A.QUADRANT_NAMES[k]}" for k in A.QUADRANTS]], qpiv_rows))
    H.append(f"<details><summary>Quadrant details</summary>"
             f"{_html_table(['config', 'quadrant', 'share of tokens', 'tokens', 'mean H', 'mean D', 'branched nodes', f'mean {m}'], q_rows)}</details>")
    H.append(f"<details><summary>Thresholds</summary>{_html_table(['config', 'D', 'H quantile', 'H threshold', 'D quantile', 'D threshold'], th_rows)}</details>")
    H.append(f"<p class='note'>Rock-token candidates (arXiv 2605.09253): per config, token types ranked by mean l_t x frequency with "
             f"l_t = log p(y_t) − log q(y_t); the {o.rock_drop_top} most frequent types are dropped, then types seen fewer than "
             f"{o.rock_min_freq} times and types with mean l_t ≤ 0; top {o.rock_top_n} kept (fewer when fewer qualify). The paper's before/after-training filter needs a trained checkpoint and is "
             f"not applied. “OPD norm (all, est.)” sums |l_t|·‖onehot(y) − p‖ over all tokens, estimated from p(y) and H(p) "
             f"(a lower bound within a factor √2; estimate / exact at branched nodes: {html.escape(norm_note)}); “norm_distill (branched)” "
             f"sums the exact ‖d‖ of the {html.escape(data.rock_summary['loss'].iloc[0] if len(data.rock_summary) else o.rock_loss)} loss at branched nodes only.</p>")
    H.append(_html_table(["config", "rock types", "share of tokens", "share of summed KL(p||q)", "share of OPD norm (est., all tokens)",
                          "share of norm_distill (branched)", f"mean {m} at rock nodes", f"mean {m} elsewhere"], rs_rows))
    H.append(f"<details><summary>Rock-token candidates per config</summary>{_html_table(['config', 'rank', 'token', 'id', 'freq', 'mean l_t', 'score'], rock_rows)}</details>")
    H.append("<h2>Configs</h2>" + _html_table(["config", "run", "model", "context template"], teachers))
    H.append("<p class='note'>Generated by <code>gradalign report</code>; numbers from <code>gradalign.analysis</code> "
             "(the same functions a notebook calls). Figures are also saved as PNG beside this page; summary.md has the key tables.</p>")
    H.append("</body></html>")
    html_path = out / "index.html"
    html_path.write_text("\n".join(H), encoding="utf-8")

    # --- markdown
    md = [f"# {title}", "",
          f"{len(r)} rollouts of {r['question_id'].nunique()} questions ({int(r['correct'].sum())} correct), {n_nodes} branched nodes; "
          f"metric `{m}`; one-loss views use `{data.loss}`. Full page: [index.html](index.html).", "", "## Take-aways", ""]
    md += [f"- {h}" for h in heads]
    md += ["", "## Ranking", "", "![ranking](ranking.png)", "", _md_table(RANK_HEADER, _ranking_rows(data.ranking)), "",
           "## Questions won", "", "![winners](winners.png)", "", _md_table(shares_header, shares_rows), "",
           "## Along the rollout", "", "![position](position.png)", "", "## Divergence vs alignment", "", "![divergence](divergence.png)", "",
           _md_table(["config", "loss", *[MEASURE_LABELS[x] for x in A.DIVERGENCES], "nodes"], cor_rows), "",
           "## Token types", "", "![token types](token_types.png)", "",
           _md_table(["config", *[f"{k} {A.QUADRANT_NAMES[k]}" for k in A.QUADRANTS]], qpiv_rows), "",
           _md_table(["config", "rock types", "share of tokens", "share of summed KL(p||q)", "share of OPD norm (est.)",
                      "share of norm_distill (branched)", f"mean {m} rock", f"mean {m} other"], rs_rows), ""]
    md_path = out / "summary.md"
    md_path.write_text("\n".join(md), encoding="utf-8")
    log.info("report for %s written to %s", task, out)
    return ReportFiles(task, out, html_path, md_path, tuple(figs.values()), tuple(heads))


def write_reports(run_dirs: Sequence[str | Path], out: str | Path, *, options: ReportOptions = ReportOptions()) -> list[ReportFiles]:
    """Load runs with `gradalign.load`, group them by task, and write one report per task.

    With one task the report goes to `out` itself; with several, to `out/<task>/`.
    """
    from gradalign.tables import load

    if not run_dirs:
        raise A.AnalysisError("give at least one run folder")
    by_task: dict[str, list] = {}
    names: dict[str, list] = {}
    for d in run_dirs:
        t = load(d)
        by_task.setdefault(task_name(t), []).append(t)
        names.setdefault(task_name(t), []).append(Path(d).name)
    results = []
    for task, runs in by_task.items():
        tables = A.combine_runs(runs, names[task]) if len(runs) > 1 else runs[0]
        target = Path(out) if len(by_task) == 1 else Path(out) / task
        results.append(build_report(tables, target, options=options))
    return results
