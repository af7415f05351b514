"""Alignment along the rollout: by relative position and at decisive nodes.

Owns: `node_delta_v` (the advantage delta_v = S(sampled token) - V of each node, from the nodes
table), `relative_position` / `alignment_by_position` (alignment per equal-width bin of
position / n_tokens) and `decisive_nodes` / `alignment_at_decisive` (the `top` nodes per rollout by
|delta_v| against the rest).

Does not own: the success estimates themselves (`gradalign.estimates`, written to the nodes table),
nor the bootstrap (`stats`).

Input: alignment rows keyed by `NODE_KEY`; the nodes table (one row per node x source, `source ==
"sampled"` giving S of the sampled token) and the rollouts table (n_tokens per rollout).
"""

from __future__ import annotations

from gradalign.analysis.schema import NODE_KEY, AnalysisError, _check_metric, _require
from gradalign.analysis.stats import cluster_bootstrap


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
    """Alignment rows with rel_pos = position / n_tokens in [0, 1) and its bin (0 .. bins-1, equal width);
    a stop node (`branching.eos_node`, position n_tokens) has rel_pos 1 and falls in the last bin."""
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
