"""Analysis of run tables: pure functions over pandas DataFrames (notebooks and the CLI share them).

Owns: summaries and rankings computed from the alignment/tokens/nodes tables as returned by
`gradalign.load`. Does not read or write files, and does not render (the CLI does).
"""

from __future__ import annotations


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
    out["mean_all"] = df.groupby(["config", "loss"])[metric].mean()
    return out[["mean_correct", "mean_incorrect", "mean_all", "n_correct", "n_incorrect"]]
