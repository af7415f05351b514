"""The split-half noise correction of the alignment cosine, as an aggregate estimator.

Owns: `split_half_alignment`: the mean over nodes of ``<g*, d> / (sqrt(<g*_A, g*_B>) ||d||)`` per
group (by default config x loss), with a cluster-bootstrap interval (clusters = questions). Per
node ``<g*, d> / ||d||`` is ``cos * norm_ideal`` (unbiased: linear in S) and ``<g*_A, g*_B>``
(the alignment table's `norm2_ideal_split`, from two independent halves of the continuations) is
unbiased for ``||E g*||^2``, whereas the naive cosine divides by ``||g*||``, which Monte Carlo noise
inflates, shrinking weak-signal cosines toward 0. The per-node ratio is very noisy and can leave
[-1, 1] (at M = 8 on long horizons it ranged from -8 to +9), so it is never a table column; only
its mean over many nodes is an estimate. Rows whose split product is <= 0 (the ideal gradient not
resolved above the noise) have no ratio and are counted in `n_below_noise`; the mean is over the
other rows, hence over nodes with some signal.

Does not own: the per-node precision columns (`gradalign.precision`) or the bootstrap
(`stats.cluster_bootstrap`).
"""

from __future__ import annotations

from typing import Sequence

from gradalign.analysis.schema import _require
from gradalign.analysis.stats import cluster_bootstrap


def split_half_alignment(alignment, by: Sequence[str] = ("config", "loss"), *, n_boot: int = 2000, ci: float = 0.95,
                         seed: int = 0):
    """Split-half corrected mean cosine per group of `by`: a DataFrame with the `by` columns and
    mean, ci_low, ci_high, n (rows with a ratio), n_clusters, n_below_noise."""
    import numpy as np

    by = list(by)
    _require(alignment, ["cos", "norm_ideal", "norm2_ideal_split", "question_id", *by], "split_half_alignment")
    d = alignment[[*by, "question_id", "cos", "norm_ideal", "norm2_ideal_split"]].copy()
    d = d[np.isfinite(d["cos"].to_numpy(float)) & np.isfinite(d["norm2_ideal_split"].to_numpy(float))]
    split = d["norm2_ideal_split"].to_numpy(float)
    ok = split > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        d["ratio"] = np.where(ok, d["cos"].to_numpy(float) * d["norm_ideal"].to_numpy(float) / np.sqrt(np.where(ok, split, 1.0)),
                              np.nan)
    out = cluster_bootstrap(d, "ratio", by, n_boot=n_boot, ci=ci, seed=seed)
    below = (d.assign(_b=~ok).groupby(by, observed=True)["_b"].sum().rename("n_below_noise").reset_index() if by
             else None)
    if by:
        out = out.merge(below, on=by, how="left")
        out["n_below_noise"] = out["n_below_noise"].fillna(0).astype(int)
    else:
        out["n_below_noise"] = int((~ok).sum())
    return out
