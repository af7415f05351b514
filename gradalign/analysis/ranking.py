"""Config x loss rankings: which teacher/config aligns best, overall and by rollout verdict.

Owns: `summary_table` (plain means per config x loss split by correct / incorrect rollouts) and
`rank_configs` (the same ranked best first, with cluster-bootstrap intervals that resample
questions).

Does not own: the bootstrap itself (`stats`), per-question comparisons (`winners`), or where along
a rollout alignment is measured (`position`).

Input: the alignment table (one row per node x config x loss, with config, loss, correct,
question_id and the `metric` column). Output: one row per (config, loss).
"""

from __future__ import annotations

from gradalign.analysis.schema import _check_metric, _require
from gradalign.analysis.stats import cluster_bootstrap


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
