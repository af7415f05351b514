"""Logit space vs parameter space: does the config ranking survive the move to the parameters?

Owns: `has_param_space` (whether an alignment table carries `cos_params` values),
`space_comparison` (per config x loss, mean `cos` and mean `cos_params` over the same rows, their
cluster-bootstrap intervals, the rank of the config within its loss in each space, and the Spearman
correlation of the two cosines over nodes) and `ranking_changes` (whether the config order of one loss
differs between the spaces).

Does not own: computing `cos_params` (`gradalign.param_space`), the bootstrap (`stats`), or drawing
the scatter (`gradalign.report.figures`).

Input: the alignment table with `cos` and `cos_params`. Output of `space_comparison`: one row per
(config, loss): config, loss, n, mean_logit, ci_low_logit, ci_high_logit, mean_params, ci_low_params,
ci_high_params, rank_logit, rank_params, rho.
"""

from __future__ import annotations

from gradalign.analysis.schema import _require
from gradalign.analysis.stats import cluster_bootstrap, spearman

COLUMNS = ["config", "loss", "n", "mean_logit", "ci_low_logit", "ci_high_logit", "mean_params", "ci_low_params",
           "ci_high_params", "rank_logit", "rank_params", "rho"]


def has_param_space(alignment) -> bool:
    """True when the table has a `cos_params` column with at least one defined value."""
    return "cos_params" in alignment.columns and bool(alignment["cos_params"].notna().any())


def space_comparison(alignment, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0):
    """Mean cos and cos_params per config x loss over the rows where BOTH are defined (so the two
    spaces are compared on the same nodes), intervals resampling questions, ranks within each loss
    (1 = best; ties by config name) and Spearman rho(cos, cos_params) over the rows."""
    import pandas as pd

    _require(alignment, ["config", "loss", "question_id", "cos", "cos_params"], "alignment")
    both = alignment.dropna(subset=["cos", "cos_params"])
    if both.empty:
        return pd.DataFrame(columns=COLUMNS)
    lo = cluster_bootstrap(both, "cos", ["config", "loss"], n_boot=n_boot, ci=ci, seed=seed)
    pa = cluster_bootstrap(both, "cos_params", ["config", "loss"], n_boot=n_boot, ci=ci, seed=seed)
    out = lo[["config", "loss", "n", "mean", "ci_low", "ci_high"]].rename(
        columns={"mean": "mean_logit", "ci_low": "ci_low_logit", "ci_high": "ci_high_logit"})
    out = out.merge(pa[["config", "loss", "mean", "ci_low", "ci_high"]].rename(
        columns={"mean": "mean_params", "ci_low": "ci_low_params", "ci_high": "ci_high_params"}), on=["config", "loss"])
    for space in ("logit", "params"):
        out = out.sort_values(["loss", f"mean_{space}", "config"], ascending=[True, False, True], kind="stable")
        out[f"rank_{space}"] = out.groupby("loss").cumcount() + 1
    rho = {k: spearman(g["cos"], g["cos_params"]) for k, g in both.groupby(["config", "loss"])}
    out["rho"] = [rho[(c, loss)] for c, loss in zip(out["config"], out["loss"])]
    return out.sort_values(["loss", "rank_logit"]).reset_index(drop=True)[COLUMNS]


def ranking_changes(comparison, loss: str) -> bool:
    """Whether the configs of `loss` are ordered differently by mean cos_params than by mean cos."""
    c = comparison[comparison["loss"] == loss]
    return bool((c["rank_logit"] != c["rank_params"]).any())
