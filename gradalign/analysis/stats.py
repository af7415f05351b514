"""Statistics with no knowledge of the run tables: cluster bootstrap and Spearman correlation.

Owns: `cluster_bootstrap` (group means with a percentile interval from resampling whole clusters,
by default questions, never tokens), `bootstrap_ci` (the same for one flat list, as an
`Interval`), `ratio_interval` (a ratio of sums, e.g. a share, with the same resampling) and `spearman` (rank correlation with average ranks for ties).

Does not own: which groups or columns an analysis bootstraps (the family modules decide), nor
validation of metric or loss names (`schema`).

Shapes: `cluster_bootstrap` takes a long DataFrame (one row per observation, a `value` column, a
`cluster` column and the `by` columns) and returns one row per group: the `by` columns, mean,
ci_low, ci_high, n (rows with a defined value), n_clusters. Randomness is a seeded
`numpy.random.Generator`, so equal arguments give equal intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from gradalign.analysis.schema import AnalysisError, _require


@dataclass(frozen=True)
class Interval:
    """A mean with its cluster-bootstrap percentile interval."""

    mean: float
    low: float
    high: float
    n: int  # rows with a defined value
    n_clusters: int


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


def ratio_interval(num, den, clusters, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of sum(num) / sum(den) when whole clusters (one label per row) are resampled
    with replacement; (NaN, NaN) without rows or when every replicate's denominator is 0."""
    import numpy as np
    import pandas as pd

    d = pd.DataFrame({"n": np.asarray(num, dtype=float), "d": np.asarray(den, dtype=float), "c": list(clusters)})
    if d.empty:
        return math.nan, math.nan
    g = d.groupby("c", sort=True)[["n", "d"]].sum().to_numpy()
    Q = len(g)
    W = np.random.default_rng(seed).multinomial(Q, np.full(Q, 1.0 / Q), size=n_boot).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (W @ g[:, 0]) / (W @ g[:, 1])
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return math.nan, math.nan
    lo, hi = np.quantile(boot, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(lo), float(hi)


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
