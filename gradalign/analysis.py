"""Analysis of run tables: pure functions over pandas DataFrames (notebooks and the CLI share them).

Owns: every number a report or a decision rests on, computed from the tables exactly as
`gradalign.load` returns them: summaries, config x loss rankings with cluster-bootstrap intervals
(questions are resampled, never tokens), per-question winners, alignment along the rollout and at
decisive nodes, divergence-vs-alignment rank correlations, TIP token quadrants, Rock-token rankings
and per-token loss weights for an OPD trainer.

Does not own: reading or writing files (`gradalign.tables` reads, `gradalign.report` and the CLI
write), plotting or any rendering, and computing the tables themselves (`gradalign.engine`).

Conventions used throughout:
- `metric` is an alignment column (`cos`, `cos_candidates` or `cos_debiased`); rows where it is NaN
  (an undefined cosine, see the `reason` column) are dropped before averaging.
- A "mean alignment" is the mean over branched-node rows (nodes pooled across questions); its
  interval comes from resampling whole questions with replacement (cluster bootstrap, percentile
  interval, seeded `numpy.random.Generator`), because nodes of one question are not independent.
- l_t = student_logprob - teacher_logprob = log p(y_t) - log q(y_t) (the sampled reverse-KL term of
  the Rock Tokens paper); it is per config because q is.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from gradalign.errors import GradalignError

log = logging.getLogger(__name__)

METRICS = ("cos", "cos_candidates", "cos_debiased")
DIVERGENCES = ("kl_pq", "kl_qp", "jsd", "dist_cos")
QUADRANTS = ("Q1", "Q2", "Q3", "Q4")
QUADRANT_NAMES = {
    "Q1": "high H / high D",
    "Q2": "high H / low D",
    "Q3": "low H / high D (overconfident and wrong)",
    "Q4": "low H / low D",
}
NODE_KEY = ["question_id", "rollout_id", "position"]
TOKEN_KEY = ["question_id", "rollout_id", "position", "config"]
LOSS_PREFERENCE = ("reverse_kl", "sampled_token", "forward_kl", "jsd")


class AnalysisError(GradalignError, ValueError):
    """Bad input to an analysis function (unknown column, config, loss, rule or option)."""


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Interval:
    """A mean with its cluster-bootstrap percentile interval."""

    mean: float
    low: float
    high: float
    n: int  # rows with a defined value
    n_clusters: int


@dataclass(frozen=True)
class WeightRule:
    """One per-token weighting rule for `token_weights` (rules multiply).

    kind: `zero-negative` (weight 0 at branched nodes whose alignment is < 0; others keep 1),
    `keep-tip` (weight 1 on tokens in `quadrants`, 0 elsewhere), `freeze-rocks` (weight 0 on
    occurrences of rock-token types).
    """

    kind: str
    quadrants: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.kind}:{','.join(self.quadrants)}" if self.quadrants else self.kind


RULE_KINDS = ("zero-negative", "keep-tip", "freeze-rocks")
RULE_HELP = (
    "zero-negative (weight 0 at branched nodes where alignment < 0), "
    "keep-tip:Q3 or keep-tip:Q1,Q3 (keep only tokens of those TIP quadrants), "
    "freeze-rocks (weight 0 on rock-token types)"
)


# ----------------------------------------------------------------------------- helpers


def _require(df, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise AnalysisError(f"{what}: missing column(s) {', '.join(missing)}")


def _check_metric(alignment, metric: str) -> None:
    if metric not in alignment.columns:
        raise AnalysisError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def default_loss(alignment) -> str:
    """The loss used where a report shows one loss: reverse_kl if present, else the first present."""
    losses = list(dict.fromkeys(alignment["loss"]))
    if not losses:
        raise AnalysisError("the alignment table is empty")
    for name in LOSS_PREFERENCE:
        if name in losses:
            return name
    return losses[0]


def _check_loss(alignment, loss: str | None) -> str:
    if loss is None:
        return default_loss(alignment)
    present = sorted(set(alignment["loss"]))
    if loss not in present:
        raise AnalysisError(f"unknown loss {loss!r}; this run has {', '.join(present) or 'none'}")
    return loss


def _check_quantile(q: float, name: str) -> None:
    if not (0.0 < q < 1.0):
        raise AnalysisError(f"{name} must lie strictly between 0 and 1, got {q}")


# ----------------------------------------------------------------------------- summaries


def summary_table(alignment, *, metric: str = "cos"):
    """Mean `metric` per config x loss, split by rollout verdict.

    Returns a DataFrame indexed by (config, loss) with columns: mean_correct, mean_incorrect,
    mean_all, n_correct, n_incorrect (numbers of node rows with a defined metric).
    """
    import pandas as pd

    df = alignment[["config", "loss", "correct", metric]].dropna(subset=[metric])
    g = df.groupby(["config", "loss", "correct"], sort=True)[metric].agg(["mean", "count"]).unstack("correct")
    out = pd.DataFrame(index=g.index)
    for flag, label in ((True, "correct"), (False, "incorrect")):
        out[f"mean_{label}"] = g[("mean", flag)] if ("mean", flag) in g.columns else float("nan")
        out[f"n_{label}"] = g[("count", flag)].fillna(0).astype(int) if ("count", flag) in g.columns else 0
    out = out.astype({"n_correct": int, "n_incorrect": int})
    out["mean_all"] = df.groupby(["config", "loss"])[metric].mean()
    return out[["mean_correct", "mean_incorrect", "mean_all", "n_correct", "n_incorrect"]]


def combine_runs(runs: Sequence, names: Sequence[str] | None = None):
    """Concatenate several runs' Tables (e.g. one per context or teacher family) into one Tables.

    Rollout ids are offset per run so (question_id, rollout_id) stays unique; each table gets a
    `run` column. A config name used by more than one run is relabelled `run/config` so configs of
    different runs never merge. The manifest becomes {"runs": [manifest, ...]}.
    """
    import pandas as pd

    from gradalign.tables import Tables

    runs = list(runs)
    if not runs:
        raise AnalysisError("no runs to combine")
    if len(runs) == 1:
        return runs[0]
    names = list(names) if names is not None else [
        str((r.manifest.get("config", {}).get("run", {}) or {}).get("name") or f"run{i}") for i, r in enumerate(runs)
    ]
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    seen: dict[str, int] = {}
    for r in runs:
        for c in set(r.tokens["config"]) | set(r.alignment["config"]):
            seen[c] = seen.get(c, 0) + 1
    frames: dict[str, list] = {k: [] for k in ("rollouts", "tokens", "nodes", "alignment")}
    offset = 0
    for r, name in zip(runs, names):
        for k in frames:
            df = getattr(r, k).copy()
            df["rollout_id"] = (df["rollout_id"].astype("int64") + offset).astype("int32")
            if "config" in df.columns:
                df["config"] = [f"{name}/{c}" if seen.get(c, 0) > 1 else c for c in df["config"]]
            if k == "nodes" and "source_config" in df.columns:
                df["source_config"] = [f"{name}/{c}" if c and seen.get(c, 0) > 1 else c for c in df["source_config"]]
            df["run"] = name
            frames[k].append(df)
        ids = pd.concat([r.rollouts["rollout_id"], r.alignment["rollout_id"]])
        offset += int(ids.max()) + 1 if len(ids) else 0
    return Tables(manifest={"runs": [r.manifest for r in runs], "run_names": names},
                  **{k: pd.concat(v, ignore_index=True) for k, v in frames.items()})


# ----------------------------------------------------------------------------- bootstrap


def cluster_bootstrap(df, value: str, by: Sequence[str], *, cluster: str = "question_id", n_boot: int = 2000,
                      ci: float = 0.95, seed: int = 0):
    """Mean of `value` per group of `by`, with a cluster-bootstrap percentile interval.

    Each replicate draws the clusters (questions) with replacement, once for all groups (so
    groups are compared on the same resampled questions), and recomputes every group's pooled mean
    (sum over the drawn clusters' rows / their row count). Rows with NaN `value` are dropped.
    Returns a DataFrame with the `by` columns and mean, ci_low, ci_high, n, n_clusters.
    """
    import numpy as np
    import pandas as pd

    by = list(by)
    _require(df, [value, cluster, *by], "cluster_bootstrap")
    if not (0 < ci < 1):
        raise AnalysisError(f"ci must lie strictly between 0 and 1, got {ci}")
    if n_boot < 1:
        raise AnalysisError(f"n_boot must be >= 1, got {n_boot}")
    d = df[[*by, cluster, value]].dropna(subset=[value, cluster, *by])
    cols = [*by, "mean", "ci_low", "ci_high", "n", "n_clusters"]
    if d.empty:
        return pd.DataFrame(columns=cols)
    gkeys = d.groupby(by, sort=True, observed=True).ngroup().to_numpy() if by else np.zeros(len(d), dtype=int)
    ccodes, _ = pd.factorize(d[cluster], sort=True)
    G, Q = int(gkeys.max()) + 1, int(ccodes.max()) + 1
    vals = d[value].to_numpy(dtype=float)
    sums = np.zeros((Q, G))
    cnts = np.zeros((Q, G))
    np.add.at(sums, (ccodes, gkeys), vals)
    np.add.at(cnts, (ccodes, gkeys), 1.0)
    rng = np.random.default_rng(seed)
    W = rng.multinomial(Q, np.full(Q, 1.0 / Q), size=n_boot).astype(float)  # B x Q draw counts
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (W @ sums) / (W @ cnts)
        point = sums.sum(0) / cnts.sum(0)
    alpha = (1.0 - ci) / 2.0
    lo = np.full(G, np.nan)
    hi = np.full(G, np.nan)
    for g in range(G):
        b = boot[:, g]
        b = b[np.isfinite(b)]
        if len(b):
            lo[g], hi[g] = np.quantile(b, [alpha, 1.0 - alpha])
    if by:
        keys = d.groupby(by, sort=True, observed=True).size().reset_index()[by]
    else:
        keys = pd.DataFrame(index=[0])
    out = keys.reset_index(drop=True)
    out["mean"], out["ci_low"], out["ci_high"] = point, lo, hi
    out["n"] = cnts.sum(0).astype(int)
    out["n_clusters"] = (cnts > 0).sum(0).astype(int)
    return out[cols]


def bootstrap_ci(values, clusters, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> Interval:
    """Pooled mean of `values` with a cluster-bootstrap interval, resampling `clusters` (one label per value)."""
    import pandas as pd

    df = pd.DataFrame({"v": list(values), "c": list(clusters)})
    r = cluster_bootstrap(df, "v", [], cluster="c", n_boot=n_boot, ci=ci, seed=seed)
    if r.empty:
        return Interval(math.nan, math.nan, math.nan, 0, 0)
    row = r.iloc[0]
    return Interval(float(row["mean"]), float(row.ci_low), float(row.ci_high), int(row.n), int(row.n_clusters))


def rank_configs(alignment, *, metric: str = "cos", n_boot: int = 2000, ci: float = 0.95, seed: int = 0):
    """Configs x losses ranked by mean alignment, with cluster-bootstrap intervals, split by verdict.

    Returns one row per (config, loss), best first: rank, config, loss, mean, ci_low, ci_high, n,
    n_questions, and the same for rows of correct rollouts (`*_correct`) and incorrect rollouts
    (`*_incorrect`). Intervals resample questions; a NaN interval means no row in that split.
    """
    import pandas as pd

    _require(alignment, ["config", "loss", "correct", "question_id"], "alignment")
    _check_metric(alignment, metric)
    allr = cluster_bootstrap(alignment, metric, ["config", "loss"], n_boot=n_boot, ci=ci, seed=seed)
    cols = ["rank", "config", "loss", "mean", "ci_low", "ci_high", "n", "n_questions"]
    for s in ("correct", "incorrect"):
        cols += [f"mean_{s}", f"ci_low_{s}", f"ci_high_{s}", f"n_{s}"]
    if allr.empty:
        return pd.DataFrame(columns=cols)
    out = allr.rename(columns={"n_clusters": "n_questions"})
    a = alignment.assign(correct=alignment["correct"].astype(bool))
    split = cluster_bootstrap(a, metric, ["config", "loss", "correct"], n_boot=n_boot, ci=ci, seed=seed)
    for flag, s in ((True, "correct"), (False, "incorrect")):
        part = split[split["correct"] == flag].drop(columns=["correct", "n_clusters"])
        part = part.rename(columns={"mean": f"mean_{s}", "ci_low": f"ci_low_{s}", "ci_high": f"ci_high_{s}", "n": f"n_{s}"})
        out = out.merge(part, on=["config", "loss"], how="left")
        out[f"n_{s}"] = out[f"n_{s}"].fillna(0).astype(int)
    out = out.sort_values(["mean", "config", "loss"], ascending=[False, True, True], kind="stable").reset_index(drop=True)
    out.insert(0, "rank", range(1, len(out) + 1))
    return out[cols]


# ----------------------------------------------------------------------------- per question


def question_winners(alignment, *, metric: str = "cos", loss: str | None = None):
    """Mean alignment per question and config, and which config aligns best on each question.

    With `loss` given only that loss is used, otherwise every loss present. Returns a DataFrame
    with columns loss, question_id, one column per config (mean `metric`), winner (config with the
    highest mean; ties go to the config that sorts first) and margin (best minus second best).
    Questions where no config has a defined mean get winner None.
    """
    import numpy as np

    _check_metric(alignment, metric)
    a = alignment.dropna(subset=[metric])
    if loss is not None:
        _check_loss(alignment, loss)
        a = a[a["loss"] == loss]
    configs = sorted(set(alignment["config"]))
    m = a.groupby(["loss", "question_id", "config"])[metric].mean().unstack("config")
    m = m.reindex(columns=configs)
    vals = m.to_numpy(dtype=float)
    winner, margin = [], []
    for row in vals:
        ok = np.isfinite(row)
        if not ok.any():
            winner.append(None)
            margin.append(np.nan)
            continue
        order = sorted((i for i in range(len(row)) if ok[i]), key=lambda i: (-row[i], configs[i]))
        winner.append(configs[order[0]])
        margin.append(row[order[0]] - row[order[1]] if len(order) > 1 else np.nan)
    out = m.reset_index()
    out.columns.name = None
    out["winner"] = winner
    out["margin"] = margin
    return out


def winner_shares(winners):
    """Share of questions each config wins, per loss (from `question_winners`).

    Returns loss, config, wins, questions, share; every config appears (0 wins included),
    best first within a loss.
    """
    import pandas as pd

    configs = [c for c in winners.columns if c not in ("loss", "question_id", "winner", "margin")]
    rows = []
    for loss, g in winners.groupby("loss", sort=True):
        g = g[g["winner"].notna()]
        n = len(g)
        counts = g["winner"].value_counts()
        for c in configs:
            w = int(counts.get(c, 0))
            rows.append({"loss": loss, "config": c, "wins": w, "questions": n, "share": w / n if n else math.nan})
    out = pd.DataFrame(rows, columns=["loss", "config", "wins", "questions", "share"])
    return out.sort_values(["loss", "wins", "config"], ascending=[True, False, True], kind="stable").reset_index(drop=True)


def single_winner(shares, loss: str) -> str | None:
    """The config that wins every question for `loss`, or None when no single config wins everywhere."""
    s = shares[(shares["loss"] == loss) & (shares["questions"] > 0)]
    top = s[s["share"] >= 1.0]
    return str(top.iloc[0]["config"]) if len(top) else None


# ----------------------------------------------------------------------------- along the rollout


def node_delta_v(alignment, nodes):
    """Alignment rows with s_sampled (S of the sampled token, from the nodes table) and
    delta_v = s_sampled - value: how much taking the sampled token changed the estimated success
    probability at that node (its advantage). Large |delta_v| marks a decisive node."""
    _require(nodes, [*NODE_KEY, "source", "success"], "nodes")
    s = nodes[nodes["source"] == "sampled"][[*NODE_KEY, "success"]].drop_duplicates(NODE_KEY)
    out = alignment.merge(s.rename(columns={"success": "s_sampled"}), on=NODE_KEY, how="left")
    out["delta_v"] = out["s_sampled"] - out["value"]
    return out


def relative_position(alignment, rollouts, *, bins: int = 5):
    """Alignment rows with rel_pos = position / n_tokens in [0, 1) and its bin (0 .. bins-1, equal width)."""
    import numpy as np

    if bins < 1:
        raise AnalysisError(f"bins must be >= 1, got {bins}")
    _require(rollouts, ["question_id", "rollout_id", "n_tokens"], "rollouts")
    r = rollouts[["question_id", "rollout_id", "n_tokens"]]
    out = alignment.merge(r, on=["question_id", "rollout_id"], how="left")
    n = out["n_tokens"].astype(float).clip(lower=1.0)
    out["rel_pos"] = out["position"].astype(float) / n
    out["pos_bin"] = np.minimum((out["rel_pos"] * bins).fillna(0).astype(int), bins - 1)
    return out


def alignment_by_position(alignment, rollouts, *, metric: str = "cos", bins: int = 5, n_boot: int = 1000,
                          ci: float = 0.95, seed: int = 0):
    """Mean alignment per config x loss x relative-position bin (bin_start, bin_end), with intervals."""
    _check_metric(alignment, metric)
    a = relative_position(alignment, rollouts, bins=bins)
    out = cluster_bootstrap(a, metric, ["config", "loss", "pos_bin"], n_boot=n_boot, ci=ci, seed=seed)
    out["bin_start"] = out["pos_bin"] / bins
    out["bin_end"] = (out["pos_bin"] + 1) / bins
    return out


def decisive_nodes(alignment, nodes, *, top: int = 1):
    """Alignment rows with delta_v (see `node_delta_v`) and `decisive`: the node is among the
    `top` nodes of its rollout by |delta_v| (nodes with delta_v == 0 or undefined are never decisive)."""
    if top < 1:
        raise AnalysisError(f"top must be >= 1, got {top}")
    a = node_delta_v(alignment, nodes)
    u = a.drop_duplicates(NODE_KEY)[[*NODE_KEY, "delta_v"]].copy()
    u["abs_dv"] = u["delta_v"].abs()
    u = u[u["abs_dv"] > 0].sort_values(["question_id", "rollout_id", "abs_dv", "position"],
                                      ascending=[True, True, False, True], kind="stable")
    chosen = u.groupby(["question_id", "rollout_id"]).head(top)
    keys = set(map(tuple, chosen[NODE_KEY].itertuples(index=False, name=None)))
    a["decisive"] = [k in keys for k in a[NODE_KEY].itertuples(index=False, name=None)]
    return a


def alignment_at_decisive(alignment, nodes, *, metric: str = "cos", top: int = 1, n_boot: int = 1000,
                          ci: float = 0.95, seed: int = 0):
    """Mean alignment at decisive nodes vs the other nodes, per config x loss (with intervals).

    Returns config, loss, decisive (bool), mean, ci_low, ci_high, n, n_clusters, mean_abs_delta_v.
    """
    _check_metric(alignment, metric)
    a = decisive_nodes(alignment, nodes, top=top)
    out = cluster_bootstrap(a, metric, ["config", "loss", "decisive"], n_boot=n_boot, ci=ci, seed=seed)
    dv = a.assign(abs_dv=a["delta_v"].abs()).groupby(["config", "loss", "decisive"])["abs_dv"].mean().rename("mean_abs_delta_v")
    return out.merge(dv.reset_index(), on=["config", "loss", "decisive"], how="left")


# ----------------------------------------------------------------------------- divergences


def join_tokens(alignment, tokens, columns: Sequence[str] = ("student_logprob", "student_entropy", "teacher_logprob",
                                                              "teacher_entropy", "kl_pq", "kl_qp", "jsd", "dist_cos")):
    """Alignment rows with the tokens-table statistics of the same node and config."""
    cols = [c for c in columns if c not in alignment.columns or c in TOKEN_KEY]
    _require(tokens, [*TOKEN_KEY, *cols], "tokens")
    t = tokens[[*TOKEN_KEY, *cols]].drop_duplicates(TOKEN_KEY)
    return alignment.merge(t, on=TOKEN_KEY, how="left")


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties) over pairs where both are finite; NaN if
    fewer than 3 pairs or a constant side."""
    import numpy as np
    import pandas as pd

    d = pd.DataFrame({"x": np.asarray(x, dtype=float), "y": np.asarray(y, dtype=float)})
    d = d[np.isfinite(d["x"]) & np.isfinite(d["y"])]
    if len(d) < 3:
        return math.nan
    rx, ry = d["x"].rank().to_numpy(), d["y"].rank().to_numpy()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else math.nan


def divergence_correlations(alignment, tokens, *, metric: str = "cos", measures: Sequence[str] = DIVERGENCES):
    """Spearman correlation between each divergence measure of the tokens table (KL(p||q), KL(q||p),
    JSD, distribution cosine) and alignment, per config x loss, over branched nodes.

    Returns config, loss, measure, rho, n.
    """
    import pandas as pd

    _check_metric(alignment, metric)
    bad = [m for m in measures if m not in DIVERGENCES]
    if bad:
        raise AnalysisError(f"unknown measure(s) {', '.join(bad)}; choose from {', '.join(DIVERGENCES)}")
    j = join_tokens(alignment, tokens, measures)
    rows = []
    for (config, loss), g in j.groupby(["config", "loss"], sort=True):
        for m in measures:
            ok = g[[m, metric]].dropna()
            rows.append({"config": config, "loss": loss, "measure": m, "rho": spearman(ok[m], ok[metric]), "n": len(ok)})
    return pd.DataFrame(rows, columns=["config", "loss", "measure", "rho", "n"])


# ----------------------------------------------------------------------------- TIP quadrants


def _divergence_values(tokens, divergence: str):
    if divergence not in DIVERGENCES:
        raise AnalysisError(f"unknown divergence {divergence!r}; choose from {', '.join(DIVERGENCES)}")
    _require(tokens, [divergence, "student_entropy", "config"], "tokens")
    v = tokens[divergence].astype(float)
    return 1.0 - v if divergence == "dist_cos" else v  # a cosine is a similarity: divergence = 1 - cos


def tip_thresholds(tokens, *, divergence: str = "kl_pq", h_quantile: float = 0.5, d_quantile: float = 0.5,
                   per_config: bool = True):
    """Entropy and divergence thresholds of the TIP quadrants: quantiles of student_entropy and of the
    divergence column (for `dist_cos`, of 1 - dist_cos), within each config (default, since the
    divergence depends on the teacher) or pooled over configs.

    Returns config, measure, h_quantile, d_quantile, entropy_threshold, divergence_threshold.
    """
    import pandas as pd

    _check_quantile(h_quantile, "h_quantile")
    _check_quantile(d_quantile, "d_quantile")
    dv = _divergence_values(tokens, divergence)
    h = tokens["student_entropy"].astype(float)
    configs = sorted(set(tokens["config"]))
    rows = []
    for c in configs:
        mask = (tokens["config"] == c) if per_config else slice(None)
        rows.append({"config": c, "measure": divergence, "h_quantile": h_quantile, "d_quantile": d_quantile,
                     "entropy_threshold": float(h[mask].quantile(h_quantile)),
                     "divergence_threshold": float(dv[mask].quantile(d_quantile))})
    return pd.DataFrame(rows, columns=["config", "measure", "h_quantile", "d_quantile", "entropy_threshold", "divergence_threshold"])


def tip_quadrants(tokens, *, divergence: str = "kl_pq", h_quantile: float = 0.5, d_quantile: float = 0.5,
                  per_config: bool = True):
    """Tokens with their TIP quadrant (arXiv 2604.14084 axes: student entropy H x teacher-student
    divergence D). "High" means strictly above the threshold of `tip_thresholds`.

    Q1 = high H / high D, Q2 = high H / low D, Q3 = low H / high D (overconfident and wrong),
    Q4 = low H / low D. Adds columns divergence (the value used), high_entropy, high_divergence,
    quadrant.
    """
    import numpy as np

    th = tip_thresholds(tokens, divergence=divergence, h_quantile=h_quantile, d_quantile=d_quantile, per_config=per_config)
    out = tokens.copy()
    out["divergence"] = _divergence_values(tokens, divergence)
    m = out[["config"]].merge(th[["config", "entropy_threshold", "divergence_threshold"]], on="config", how="left")
    out["high_entropy"] = out["student_entropy"].astype(float).to_numpy() > m["entropy_threshold"].to_numpy()
    out["high_divergence"] = out["divergence"].to_numpy() > m["divergence_threshold"].to_numpy()
    hi_h, hi_d = out["high_entropy"].to_numpy(), out["high_divergence"].to_numpy()
    out["quadrant"] = np.select([hi_h & hi_d, hi_h & ~hi_d, ~hi_h & hi_d], ["Q1", "Q2", "Q3"], "Q4")
    return out


def quadrant_summary(quadrant_tokens, alignment, *, metric: str = "cos", loss: str | None = None):
    """Share of tokens and mean alignment per config x loss x TIP quadrant.

    `quadrant_tokens` comes from `tip_quadrants`. Alignment is only known at branched nodes, so the
    mean joins alignment rows (of `loss`, or every loss) to the token row of the same node and config.
    Returns config, loss, quadrant, n_tokens, share_tokens (within the config), mean_entropy,
    mean_divergence, n_nodes, mean_alignment.
    """
    import pandas as pd

    _check_metric(alignment, metric)
    _require(quadrant_tokens, [*TOKEN_KEY, "quadrant", "divergence"], "quadrant tokens")
    a = alignment if loss is None else alignment[alignment["loss"] == _check_loss(alignment, loss)]
    qt = quadrant_tokens
    tok = qt.groupby(["config", "quadrant"]).agg(n_tokens=("quadrant", "size"), mean_entropy=("student_entropy", "mean"),
                                                mean_divergence=("divergence", "mean"))
    total = qt.groupby("config").size()
    j = a.merge(qt[[*TOKEN_KEY, "quadrant"]].drop_duplicates(TOKEN_KEY), on=TOKEN_KEY, how="inner").dropna(subset=[metric])
    al = j.groupby(["config", "loss", "quadrant"])[metric].agg(["count", "mean"])
    rows = []
    for config in sorted(set(qt["config"])):
        for ls in sorted(set(a["loss"])):
            for qd in QUADRANTS:
                n_tok = int(tok["n_tokens"].get((config, qd), 0))
                rows.append({
                    "config": config, "loss": ls, "quadrant": qd, "n_tokens": n_tok,
                    "share_tokens": n_tok / int(total.get(config, 0)) if total.get(config, 0) else math.nan,
                    "mean_entropy": float(tok["mean_entropy"].get((config, qd), math.nan)),
                    "mean_divergence": float(tok["mean_divergence"].get((config, qd), math.nan)),
                    "n_nodes": int(al["count"].get((config, ls, qd), 0)),
                    "mean_alignment": float(al["mean"].get((config, ls, qd), math.nan)),
                })
    return pd.DataFrame(rows, columns=["config", "loss", "quadrant", "n_tokens", "share_tokens", "mean_entropy",
                                       "mean_divergence", "n_nodes", "mean_alignment"])


# ----------------------------------------------------------------------------- Rock tokens


def token_loss(tokens):
    """Per-token loss l_t = log p(y_t) - log q(y_t) = student_logprob - teacher_logprob."""
    _require(tokens, ["student_logprob", "teacher_logprob"], "tokens")
    return tokens["student_logprob"].astype(float) - tokens["teacher_logprob"].astype(float)


def opd_norm_estimate(tokens):
    """Estimated norm of the sampled-token OPD gradient |l_t| * ||onehot(y) - p|| from the tokens table.

    Exactly, ||onehot(y) - p||^2 = (1 - p_y)^2 + sum_{j != y} p_j^2, but the tokens table has only
    p_y and H(p). Since the collision probability sum_j p_j^2 >= exp(-H) (Renyi-2 entropy <= Shannon
    entropy), we use sum_{j != y} p_j^2 ~= clip(exp(-H) - p_y^2, 0, (1 - p_y)^2): a lower bound on
    the true norm, exact when p is uniform on its support, and never off by more than a factor
    sqrt(2) (the true norm lies in [(1 - p_y), sqrt(2) (1 - p_y)] times |l_t|). At branched nodes
    the exact value is alignment.norm_distill of the sampled_token loss (see `opd_norm_check`).
    """
    import numpy as np

    _require(tokens, ["student_logprob", "student_entropy"], "tokens")
    py = np.exp(tokens["student_logprob"].astype(float).to_numpy())
    rest = np.clip(np.exp(-tokens["student_entropy"].astype(float).to_numpy()) - py * py, 0.0, (1.0 - py) ** 2)
    return np.abs(token_loss(tokens).to_numpy()) * np.sqrt((1.0 - py) ** 2 + rest)


def opd_norm_check(tokens, alignment):
    """Ratio of `opd_norm_estimate` to the exact sampled_token norm_distill at branched nodes.

    Returns config, n, median_ratio, min_ratio, max_ratio (empty if the run has no sampled_token loss).
    """
    import numpy as np
    import pandas as pd

    a = alignment[(alignment["loss"] == "sampled_token") & (alignment["norm_distill"] > 0)]
    cols = ["config", "n", "median_ratio", "min_ratio", "max_ratio"]
    if a.empty:
        return pd.DataFrame(columns=cols)
    t = tokens.assign(norm_est=opd_norm_estimate(tokens))[[*TOKEN_KEY, "norm_est"]]
    j = a.merge(t, on=TOKEN_KEY, how="inner")
    j["ratio"] = j["norm_est"] / j["norm_distill"]
    g = j.groupby("config")["ratio"]
    out = pd.DataFrame({"n": g.size(), "median_ratio": g.median(), "min_ratio": g.min(), "max_ratio": g.max()}).reset_index()
    return out[cols].replace([np.inf, -np.inf], np.nan)


def rock_tokens(tokens, *, min_freq: int = 2, drop_top: int = 5, top_n: int = 20):
    """Rock-token candidates per config, ranked as in the Rock Tokens paper (arXiv 2605.09253).

    A token type is a token_id. Per config: frequency = occurrences in the student's rollouts,
    mean_loss = mean l_t over them, score = mean_loss x frequency (= summed loss). The `drop_top`
    most frequent types are dropped first (ties broken by token_id), then types with frequency
    below `min_freq` and types whose mean loss is not positive (the teacher already likes them at
    least as much as the student: not high-loss); the rest are ranked by score (descending) and the
    first `top_n` kept. The paper's extra filter (occurrences that stay high-loss before and after
    training) needs a trained checkpoint and is not applied. Returns config, rank, token_id,
    token_text, freq, mean_loss, score.
    """
    import pandas as pd

    if min_freq < 1 or drop_top < 0 or top_n < 1:
        raise AnalysisError(f"need min_freq >= 1, drop_top >= 0, top_n >= 1 (got {min_freq}, {drop_top}, {top_n})")
    _require(tokens, ["config", "token_id", "token_text"], "tokens")
    t = tokens[["config", "token_id", "token_text"]].assign(loss=token_loss(tokens))
    cols = ["config", "rank", "token_id", "token_text", "freq", "mean_loss", "score"]
    parts = []
    for config, g in t.groupby("config", sort=True):
        s = g.groupby("token_id").agg(token_text=("token_text", "first"), freq=("loss", "size"), mean_loss=("loss", "mean"))
        s = s.reset_index().sort_values(["freq", "token_id"], ascending=[False, True], kind="stable")
        s = s.iloc[drop_top:]
        s = s[(s["freq"] >= min_freq) & (s["mean_loss"] > 0)].copy()
        s["score"] = s["mean_loss"] * s["freq"]
        s = s.sort_values(["score", "token_id"], ascending=[False, True], kind="stable").head(top_n)
        s.insert(0, "rank", range(1, len(s) + 1))
        s.insert(0, "config", config)
        parts.append(s)
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def rock_summary(tokens, alignment, rocks, *, metric: str = "cos", loss: str | None = "sampled_token"):
    """What rock-token types (from `rock_tokens`) account for, per config.

    Columns: config, n_types, share_tokens (of all tokens), share_kl (of the summed exact per-token
    KL(p||q) of the tokens table: the corpus-level KL of the paper), share_norm_est (of the summed estimated sampled-token OPD norm over all tokens, see
    `opd_norm_estimate`), share_norm_branched (of the summed exact alignment.norm_distill of `loss`
    at branched nodes only), loss, n_nodes_rock, mean_alignment_rock, mean_alignment_other.
    `loss` None or absent from the run falls back to `default_loss`.
    """
    import pandas as pd

    _check_metric(alignment, metric)
    if loss is None or loss not in set(alignment["loss"]):
        loss = default_loss(alignment)
    rock_keys = set(zip(rocks["config"], rocks["token_id"]))
    t = tokens[[*TOKEN_KEY, "token_id", "kl_pq"]].copy()
    t["rock"] = [k in rock_keys for k in zip(t["config"], t["token_id"])]
    t["norm_est"] = opd_norm_estimate(tokens)
    a = alignment[alignment["loss"] == loss].merge(t[[*TOKEN_KEY, "rock"]], on=TOKEN_KEY, how="left")
    a["rock"] = a["rock"].fillna(False).astype(bool)
    rows = []
    for config in sorted(set(tokens["config"])):
        tc, ac = t[t["config"] == config], a[a["config"] == config]
        r, ar = tc["rock"], ac["rock"]

        def share(num, den):
            return float(num) / float(den) if den else math.nan

        am = ac.dropna(subset=[metric])
        rows.append({
            "config": config, "n_types": int(sum(1 for c, _ in rock_keys if c == config)),
            "share_tokens": share(r.sum(), len(tc)),
            "share_kl": share(tc.loc[r, "kl_pq"].sum(), tc["kl_pq"].sum()),
            "share_norm_est": share(tc.loc[r, "norm_est"].sum(), tc["norm_est"].sum()),
            "share_norm_branched": share(ac.loc[ar, "norm_distill"].sum(), ac["norm_distill"].sum()),
            "loss": loss, "n_nodes_rock": int(ar.sum()),
            "mean_alignment_rock": float(am.loc[am["rock"], metric].mean()) if am["rock"].any() else math.nan,
            "mean_alignment_other": float(am.loc[~am["rock"], metric].mean()) if (~am["rock"]).any() else math.nan,
        })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- loss weights


def parse_rule(text: str) -> WeightRule:
    """Parse a weighting rule: `zero-negative`, `keep-tip:Q3` (or `keep-tip:Q1,Q3`), `freeze-rocks`."""
    kind, _, arg = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in RULE_KINDS:
        raise AnalysisError(f"unknown rule {text!r}; rules: {RULE_HELP}")
    if kind == "keep-tip":
        qs = tuple(q.strip().upper() for q in arg.split(",") if q.strip())
        bad = [q for q in qs if q not in QUADRANTS]
        if not qs or bad:
            raise AnalysisError(f"rule {text!r}: keep-tip needs quadrants from {', '.join(QUADRANTS)}, e.g. keep-tip:Q3")
        return WeightRule(kind, qs)
    if arg:
        raise AnalysisError(f"rule {text!r}: {kind} takes no argument")
    return WeightRule(kind)


def token_weights(tokens, alignment, *, config: str, rules: Sequence[WeightRule | str], loss: str | None = None,
                  metric: str = "cos", divergence: str = "kl_pq", h_quantile: float = 0.5, d_quantile: float = 0.5,
                  min_freq: int = 2, drop_top: int = 5, top_n: int = 20):
    """Per-token loss weights for one config: question_id, rollout_id, position, weight (float32).

    One row per rollout token of the run (position = index into the completion's token ids, as in
    the tokens table). Every weight starts at 1 and each rule multiplies it by 0 or 1:
    `zero-negative` zeroes branched nodes whose `metric` for `loss` is < 0 (unbranched tokens and
    undefined cosines keep 1); `keep-tip:Qs` keeps only tokens in those TIP quadrants (thresholds as
    in `tip_quadrants`); `freeze-rocks` zeroes occurrences of the config's rock-token types
    (`rock_tokens` with min_freq, drop_top, top_n). `out.attrs["gradalign_weights"]` records what a
    trainer needs to apply the same rules to fresh rollouts: the rock token ids, the TIP thresholds.
    """
    import numpy as np

    parsed = [parse_rule(r) if isinstance(r, str) else r for r in rules]
    if not parsed:
        raise AnalysisError(f"give at least one rule: {RULE_HELP}")
    configs = sorted(set(tokens["config"]))
    if config not in configs:
        raise AnalysisError(f"unknown config {config!r}; this run has {', '.join(configs)}")
    t = tokens[tokens["config"] == config].sort_values(["question_id", "rollout_id", "position"], kind="stable").reset_index(drop=True)
    w = np.ones(len(t), dtype=np.float32)
    params: dict = {"config": config, "rules": [str(r) for r in parsed]}
    for rule in parsed:
        if rule.kind == "zero-negative":
            _check_metric(alignment, metric)
            ls = _check_loss(alignment, loss)
            a = alignment[(alignment["config"] == config) & (alignment["loss"] == ls)]
            neg = set(map(tuple, a.loc[a[metric] < 0, NODE_KEY].itertuples(index=False, name=None)))
            params.update(loss=ls, metric=metric)
            w *= np.array([k not in neg for k in t[NODE_KEY].itertuples(index=False, name=None)], dtype=np.float32)
        elif rule.kind == "keep-tip":
            q = tip_quadrants(t, divergence=divergence, h_quantile=h_quantile, d_quantile=d_quantile)
            th = tip_thresholds(t, divergence=divergence, h_quantile=h_quantile, d_quantile=d_quantile).iloc[0]
            params["tip"] = {"divergence": divergence, "entropy_threshold": float(th.entropy_threshold),
                             "divergence_threshold": float(th.divergence_threshold), "quadrants": list(rule.quadrants)}
            w *= q["quadrant"].isin(rule.quadrants).to_numpy().astype(np.float32)
        elif rule.kind == "freeze-rocks":
            rocks = rock_tokens(t, min_freq=min_freq, drop_top=drop_top, top_n=top_n)
            params["rock_token_ids"] = [int(x) for x in rocks["token_id"]]
            w *= (~t["token_id"].isin(set(rocks["token_id"]))).to_numpy().astype(np.float32)
    out = t[["question_id", "rollout_id", "position"]].copy()
    out["weight"] = w
    out.attrs["gradalign_weights"] = params
    log.info("token_weights %s %s: %d tokens, %.1f%% kept", config, ",".join(map(str, parsed)), len(out),
             100.0 * float(w.mean()) if len(w) else 0.0)
    return out
