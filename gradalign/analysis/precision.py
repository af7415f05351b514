"""How many branched nodes' alignment is resolved, per config (and loss).

Owns: `resolved_counts`: per group, the alignment rows with a defined cosine, how many of them
are `resolved` (the sign of cos determined at 95%, `gradalign.precision`), the share, and the
mean bootstrap se. Reports, `compare` and the CLI summary quote it so that a per-token number is
never shown without saying how many of them are noise. Does not own computing `resolved`
(`gradalign.precision`, at alignment time).
"""

from __future__ import annotations

from typing import Sequence

from gradalign.analysis.schema import _require


def resolved_counts(alignment, by: Sequence[str] = ("config", "loss")):
    """DataFrame: the `by` columns, rows (defined cos), resolved, share, mean_se; groups sorted."""
    import numpy as np
    import pandas as pd

    by = list(by)
    cols = [*by, "rows", "resolved", "share", "mean_se"]
    _require(alignment, ["cos", *by], "resolved_counts")
    if "resolved" not in alignment.columns:  # a run written before per-row precision existed
        return pd.DataFrame(columns=cols)
    d = alignment[np.isfinite(alignment["cos"].to_numpy(float))]
    if d.empty:
        return pd.DataFrame(columns=cols)
    g = d.groupby(by, sort=True, observed=True) if by else d.groupby(lambda _: 0)
    out = g.agg(rows=("cos", "size"), resolved=("resolved", "sum"), mean_se=("cos_se", "mean")).reset_index()
    if not by:
        out = out.drop(columns=out.columns[0])
    out["resolved"] = out["resolved"].astype(int)
    out["share"] = out["resolved"] / out["rows"]
    return out[cols]
