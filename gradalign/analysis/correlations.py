"""Divergence vs alignment: does a larger teacher-student divergence mean a better or worse gradient?

Owns: `join_tokens` (alignment rows with the tokens-table statistics of the same node and config)
and `divergence_correlations` (Spearman rho between each measure in `DIVERGENCES` and alignment,
per config x loss, over branched nodes).

Does not own: the rank correlation (`stats.spearman`) nor the TIP quadrant split of the same
measures (`tip`).

Output of `divergence_correlations`: long, one row per (config, loss, measure): rho, n.
"""

from __future__ import annotations

from typing import Sequence

from gradalign.analysis.schema import DIVERGENCES, TOKEN_KEY, AnalysisError, _at_nodes, _check_metric, _require
from gradalign.analysis.stats import spearman


def join_tokens(alignment, tokens, columns: Sequence[str] = ("student_logprob", "student_entropy", "teacher_logprob",
                                                              "teacher_entropy", "kl_pq", "kl_qp", "jsd", "dist_cos")):
    """Alignment rows with the tokens-table statistics of the same node and config."""
    cols = [c for c in columns if c not in alignment.columns or c in TOKEN_KEY]
    _require(tokens, [*TOKEN_KEY, *cols], "tokens")
    t = _at_nodes(tokens, alignment)[[*TOKEN_KEY, *cols]].drop_duplicates(TOKEN_KEY)
    return alignment.merge(t, on=TOKEN_KEY, how="left")


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
