"""Input conventions of the analysis: table keys, metric and measure names, `AnalysisError`, checks.

Owns: `AnalysisError` (the one error of `gradalign.analysis`, a `GradalignError`), the column
names every analysis function reads (`METRICS` alignment columns, `DIVERGENCES` tokens-table
measures, `NODE_KEY` / `TOKEN_KEY` join keys), `LOSS_PREFERENCE` and `default_loss`, and the
argument checks shared by the families (`_require`, `_check_metric`, `_check_loss`,
`_check_quantile`), `_distinct` (a column's values without a per-row loop) and `_at_nodes` (the
tokens rows a join with alignment can reach).

Does not own: the loss names themselves (`gradalign.config.LOSSES`; `LOSS_PREFERENCE` is only an
order over them and is checked against them at import), the table schemas as written to disk
(`gradalign.tables`), or any statistic.

Conventions:
- A node is one branched position of one rollout: `NODE_KEY` = (question_id, rollout_id, position).
- The tokens table and the alignment table have one row per node and config (and, for alignment,
  per loss): `TOKEN_KEY` = `NODE_KEY` + config; joins between them use `TOKEN_KEY`.
- `metric` is an alignment column from `METRICS`; NaN rows (undefined cosine, see `reason`) are
  dropped before averaging.
"""

from __future__ import annotations

from typing import Iterable

from gradalign.config import LOSSES
from gradalign.errors import GradalignError

METRICS = ("cos", "cos_candidates", "cos_params")
DIVERGENCES = ("kl_pq", "kl_qp", "jsd", "dist_cos")
NODE_KEY = ["question_id", "rollout_id", "position"]
TOKEN_KEY = ["question_id", "rollout_id", "position", "config"]
LOSS_PREFERENCE = ("reverse_kl", "sampled_token", "forward_kl", "jsd")  # which loss a report shows; see default_loss

if sorted(LOSS_PREFERENCE) != sorted(LOSSES):  # an explicit raise, not `assert`: it must hold under -O too
    raise AssertionError(f"analysis.LOSS_PREFERENCE {LOSS_PREFERENCE} must order exactly config.LOSSES {LOSSES}")


class AnalysisError(GradalignError, ValueError):
    """Bad input to an analysis function (unknown column, config, loss, rule or option)."""


def _require(df, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise AnalysisError(f"{what}: missing column(s) {', '.join(missing)}")


def _distinct(column) -> set:
    """The distinct values of a column, as a set. `set(column)` iterates every row in Python: on a
    10M-row categorical that costs ~0.7 GB and tens of seconds; `unique` does not."""
    return set(column.unique().tolist())


def _at_nodes(tokens, alignment):
    """The tokens rows that can join `alignment` on `TOKEN_KEY`: a pre-filter on the integer key
    columns (rollout ids and positions that occur in `alignment`) keeping every joinable row and
    dropping most others, so a join or de-duplication then runs over about the branched rows, not
    over a whole (10M-row) tokens table. Not itself a join: callers still merge on `TOKEN_KEY`."""
    keep = (tokens["position"].isin(alignment["position"].unique()).to_numpy()
            & tokens["rollout_id"].isin(alignment["rollout_id"].unique()).to_numpy())
    return tokens[keep]


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
