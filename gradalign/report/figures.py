"""Every matplotlib figure of a report, written as PNG files.

Owns: the plotting style (Agg backend, no display; PNGs without a Software tag so reruns give the
same bytes), one colour per config, and the five figures: ranking (forest plot), winners (shares
and per-question heatmap), position (along the rollout, decisive nodes), divergence (scatter per
measure) and token types (TIP quadrants, rock tokens). `write_figures` draws them all into a folder.

Does not own: any statistic (tables arrive from `data`), the colours of the HTML token view
(`heatmap`), or embedding the PNGs in the page (`page`). matplotlib is imported only when a figure
is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from gradalign import analysis as A
from gradalign.report.data import ReportData
from gradalign.report.options import ReportOptions
from gradalign.report.rows import MEASURE_LABELS, fmt_num


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100,
                         "svg.hashsalt": "gradalign", "axes.titlesize": 10})
    return plt


def _err(mean, low, high):
    """Matplotlib yerr/xerr (below, above) from a mean and its interval; 0 where unknown."""
    m = mean.astype(float)
    return [(m - low.astype(float)).clip(lower=0).fillna(0), (high.astype(float) - m).clip(lower=0).fillna(0)]


def _n_labels(ax, xs, tops, ns, *, fontsize: float = 5.5) -> None:
    """Write "n=N" above each bar (at the top of its interval), so every bar says what it rests on."""
    import math

    for x, top, n in zip(xs, tops, ns):
        if n is None or n != n:
            continue
        top = 0.0 if top is None or (isinstance(top, float) and math.isnan(top)) else float(top)
        ax.annotate(f"n={int(n)}", (x, max(top, 0.0)), xytext=(0, 1.5), textcoords="offset points", ha="center",
                    va="bottom", fontsize=fontsize, rotation=90, color="#444")


def config_colors(configs: Sequence[str]) -> dict[str, str]:
    """One tab10 colour per config, in sorted order (the same config keeps its colour in every figure)."""
    import matplotlib
    from matplotlib import colors as mcolors

    cmap = matplotlib.colormaps["tab10"]
    return {c: mcolors.to_hex(cmap(i % 10)) for i, c in enumerate(sorted(configs))}


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png", bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_figures(tables, data: ReportData, options: ReportOptions, configs: Sequence[str], out: Path) -> dict[str, Path]:
    """Draw every figure of a report into `out`; returns figure name -> PNG path, in page order."""
    colors = config_colors(configs)
    m, loss = options.metric, data.loss
    joined = A.join_tokens(tables.alignment, tables.tokens, A.DIVERGENCES)
    spaces = {"spaces": fig_spaces(tables.alignment, data.extras["spaces"], loss, out / "spaces.png", colors)} \
        if "spaces" in data.extras else {}
    return {
        "ranking": fig_ranking(data.ranking, out / "ranking.png", metric=m, ci=options.ci),
        "winners": fig_winners(data.winners, data.shares, loss, out / "winners.png", colors, max_rows=options.max_question_rows, metric=m),
        "position": fig_position(data.position, data.decisive, loss, out / "position.png", colors, metric=m, top=options.decisive_top),
        "divergence": fig_divergence(joined, data.correlations, loss, out / "divergence.png", colors, metric=m),
        "token_types": fig_token_types(data.quadrants, data.rock_summary, loss, out / "token_types.png", colors, metric=m),
        **spaces,
    }


# ----------------------------------------------------------------------------- logit vs parameter space


def fig_spaces(alignment, comparison, loss: str, path: Path, colors: dict) -> Path:
    """Scatter of cos (logit space, x) against cos_params (parameter space, y) per config for `loss`,
    one panel per config with the diagonal, titled with Spearman rho and both ranks."""
    plt = _plt()
    a = alignment[(alignment["loss"] == loss)].dropna(subset=["cos", "cos_params"])
    configs = sorted(set(a["config"])) or ["(none)"]
    fig, axes = plt.subplots(1, len(configs), figsize=(3.2 * len(configs), 3.2), squeeze=False)
    comp = comparison[comparison["loss"] == loss].set_index("config")
    for ax, c in zip(axes[0], configs):
        g = a[a["config"] == c]
        ax.plot([-1, 1], [-1, 1], color="#bbb", lw=0.8, zorder=0)
        ax.scatter(g["cos"], g["cos_params"], s=10, alpha=0.7, color=colors.get(c, "#333"))
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("cos (logit space)")
        if c in comp.index:
            r = comp.loc[c]
            ax.set_title(f"{c}: rho {fmt_num(r.rho, '+.2f')}, rank {int(r.rank_logit)} -> {int(r.rank_params)}")
        else:
            ax.set_title(c)
    axes[0][0].set_ylabel("cos_params (parameter space)")
    fig.suptitle(f"{loss}: one point per branched node", y=1.02)
    return _save(fig, path)


# ----------------------------------------------------------------------------- ranking


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


# ----------------------------------------------------------------------------- winners


def fig_winners(winners, shares, loss: str, path: Path, colors: dict, *, max_rows: int, metric: str) -> Path:
    """Share of questions won per config (every loss) and the per-question means of `loss`."""
    plt = _plt()
    configs = sorted(colors)
    w = winners[winners["loss"] == loss].sort_values("question_id").head(max_rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, max(3.2, 0.22 * len(w) + 1.6)), gridspec_kw={"width_ratios": [1, 1.2]})
    _share_bars(ax1, shares, loss, configs)
    _winner_heatmap(fig, ax2, w, loss, configs, metric)
    fig.tight_layout()
    return _save(fig, path)


def _share_bars(ax, shares, loss: str, configs: list[str]) -> None:
    """Grouped bars: share of questions each config wins, one bar per loss (`loss` outlined), with
    Wilson 95% intervals and the number of questions."""
    import numpy as np

    losses = sorted(set(shares["loss"]))
    width = 0.8 / max(1, len(losses))
    for i, ls in enumerate(losses):
        s = shares[shares["loss"] == ls].set_index("config").reindex(configs)
        xs = np.arange(len(configs)) + (i - (len(losses) - 1) / 2) * width
        ax.bar(xs, s["share"].fillna(0), width, yerr=_err(s["share"], s["share_low"], s["share_high"]), capsize=1.5,
               error_kw={"lw": 0.6}, label=ls, edgecolor="black" if ls == loss else "none", lw=0.8,
               alpha=1.0 if ls == loss else 0.55)
        _n_labels(ax, xs, s["share_high"], s["questions"].fillna(0))
    ax.set_xticks(range(len(configs)))
    ax.set_xticklabels(configs, rotation=20, ha="right")
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("share of questions where the config aligns best (95% Wilson; n = questions)")
    ax.axhline(1.0, color="grey", lw=0.6, ls=":")
    ax.legend(fontsize=7, frameon=False, title="loss", title_fontsize=7)
    ax.set_title("Share of questions won")


def _winner_heatmap(fig, ax, w, loss: str, configs: list[str], metric: str) -> None:
    """Question x config heatmap of mean alignment, the winner of each question boxed."""
    import matplotlib.pyplot as plt
    import numpy as np

    mat = w[configs].to_numpy(dtype=float) if len(w) else np.zeros((0, len(configs)))
    lim = max(0.05, float(np.nanmax(np.abs(mat)))) if mat.size and np.isfinite(mat).any() else 1.0
    im = ax.imshow(mat, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for i, win in enumerate(w["winner"]):
        if win in configs:
            j = configs.index(win)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=1.6))
    ax.set_xticks(range(len(configs)))
    ax.set_xticklabels(configs, rotation=20, ha="right")
    ax.set_yticks(range(len(w)))
    ax.set_yticklabels(w["question_id"].astype(str), fontsize=7)
    fig.colorbar(im, ax=ax, label=f"mean {metric} ({loss})", fraction=0.05)
    ax.set_title(f"Mean {metric} per question ({loss}); box = winner")


# ----------------------------------------------------------------------------- position


def fig_position(position, decisive, loss: str, path: Path, colors: dict, *, metric: str, top: int) -> Path:
    """Mean alignment by relative position in the rollout, and at decisive vs other nodes."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.3, 1]})
    _position_lines(ax1, position[position["loss"] == loss], loss, colors, metric)
    _decisive_bars(ax2, decisive[decisive["loss"] == loss], loss, colors, metric, top)
    fig.tight_layout()
    return _save(fig, path)


def _position_lines(ax, p, loss: str, colors: dict, metric: str) -> None:
    """One line (with its interval band) per config: mean alignment per relative-position bin."""
    for c, g in p.groupby("config"):
        g = g.sort_values("pos_bin")
        mid = (g["bin_start"] + g["bin_end"]) / 2
        ax.plot(mid, g["mean"], "-o", color=colors[c], label=c, ms=3.5)
        ax.fill_between(mid, g["ci_low"].astype(float), g["ci_high"].astype(float), color=colors[c], alpha=0.08, lw=0)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("relative position in the rollout (position / length)")
    ax.set_ylabel(f"mean {metric} ({loss})")
    ax.set_title("Alignment along the rollout")
    ax.legend(fontsize=7, frameon=False)


def _decisive_bars(ax, d, loss: str, colors: dict, metric: str, top: int) -> None:
    """Per config: mean alignment at decisive nodes (solid) vs other nodes (hatched), with intervals."""
    import numpy as np

    configs = sorted(colors)
    xs = np.arange(len(configs))
    for k, (flag, label, hatch) in enumerate(((True, f"decisive (top {top} |ΔV| per rollout)", None), (False, "other nodes", "//"))):
        s = d[d["decisive"] == flag].set_index("config").reindex(configs)
        m = s["mean"].astype(float)
        ax.bar(xs + (k - 0.5) * 0.38, m.fillna(0), 0.38, yerr=_err(m, s["ci_low"], s["ci_high"]), capsize=2, label=label,
               color=[colors[c] for c in configs], alpha=1.0 if flag else 0.45, hatch=hatch, edgecolor="black", lw=0.4)
        _n_labels(ax, xs + (k - 0.5) * 0.38, s["ci_high"], s["n"].fillna(0))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(xs)
    ax.set_xticklabels(configs, rotation=20, ha="right")
    ax.set_ylabel(f"mean {metric} ({loss})")
    ax.set_title("At decisive nodes vs elsewhere")
    ax.legend(fontsize=7, frameon=False)


# ----------------------------------------------------------------------------- divergence


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
            ax.scatter(g[m], g[metric], s=9, alpha=0.55, color=colors[c], label=f"{c} ρ={fmt_num(rho, '+.2f')}", lw=0)
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


# ----------------------------------------------------------------------------- token types


def fig_token_types(quadrants, rock_summary, loss: str, path: Path, colors: dict, *, metric: str) -> Path:
    """TIP quadrants (mean alignment, share of tokens) and what rock tokens account for."""
    plt = _plt()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.5))
    _quadrant_bars(ax1, ax2, quadrants[quadrants["loss"] == loss], loss, colors, metric)
    _rock_bars(ax3, rock_summary, colors)
    fig.tight_layout()
    return _save(fig, path)


def _quadrant_bars(ax1, ax2, q, loss: str, colors: dict, metric: str) -> None:
    """Per TIP quadrant and config: mean alignment at branched nodes (ax1, n = nodes) and share of
    tokens (ax2, n = tokens), each with its question-resampled interval."""
    import numpy as np

    configs = sorted(colors)
    width = 0.8 / max(1, len(configs))
    xs = np.arange(len(A.QUADRANTS))
    for i, c in enumerate(configs):
        s = q[q["config"] == c].set_index("quadrant").reindex(list(A.QUADRANTS))
        off = (i - (len(configs) - 1) / 2) * width
        ax1.bar(xs + off, s["mean_alignment"].fillna(0), width, color=colors[c], label=c, capsize=1.5, error_kw={"lw": 0.6},
                yerr=_err(s["mean_alignment"], s["ci_low"], s["ci_high"]))
        ax2.bar(xs + off, s["share_tokens"].fillna(0), width, color=colors[c], label=c, capsize=1.5, error_kw={"lw": 0.6},
                yerr=_err(s["share_tokens"], s["share_low"], s["share_high"]))
        _n_labels(ax1, xs + off, s["ci_high"], s["n_nodes"])
        _n_labels(ax2, xs + off, s["share_high"], s["n_tokens"])
    labels = [f"{k}\n{A.QUADRANT_NAMES[k].split(' (')[0]}" for k in A.QUADRANTS]
    for ax in (ax1, ax2):
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=7)
    ax1.axhline(0, color="grey", lw=0.8)
    ax1.set_ylabel(f"mean {metric} ({loss}) at branched nodes\n(interval: questions resampled; n = nodes)", fontsize=8)
    ax1.set_title("TIP quadrants: alignment")
    ax1.legend(fontsize=7, frameon=False)
    ax2.set_ylabel("share of the config's tokens\n(interval: questions resampled; n = tokens)", fontsize=8)
    ax2.set_title("TIP quadrants: share of tokens")


def _rock_bars(ax, rock_summary, colors: dict) -> None:
    """Per config: the shares of tokens, KL and gradient norm that rock-token candidates take."""
    import numpy as np

    configs = sorted(colors)
    width = 0.8 / max(1, len(configs))
    cols = [("share_tokens", "tokens"), ("share_kl", "summed KL(p||q)"), ("share_norm_est", "OPD norm (all, est.)"),
            ("share_norm_branched", "norm_distill (branched)")]
    xs = np.arange(len(cols))
    for i, c in enumerate(configs):
        s = rock_summary[rock_summary["config"] == c]
        get = lambda k: float(s[k].iloc[0]) if len(s) and k in s else float("nan")  # noqa: E731
        vals = np.array([get(k) for k, _ in cols])
        lo, hi = np.array([get(f"{k}_low") for k, _ in cols]), np.array([get(f"{k}_high") for k, _ in cols])
        err = [np.nan_to_num(np.clip(vals - lo, 0, None)), np.nan_to_num(np.clip(hi - vals, 0, None))]
        x = xs + (i - (len(configs) - 1) / 2) * width
        ax.bar(x, np.nan_to_num(vals), width, yerr=err, capsize=1.5, error_kw={"lw": 0.6}, color=colors[c], label=c)
        _n_labels(ax, x, hi, [get("n_tokens")] * 3 + [get("n_nodes")])
    ax.set_xticks(xs)
    ax.set_xticklabels([lbl for _, lbl in cols], fontsize=7, rotation=10)
    ax.set_ylabel("share taken by rock-token candidates\n(interval: questions resampled; n = tokens / nodes)", fontsize=8)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_title("Rock-token candidates")
