"""Stage 5, allocation across nodes (`branching.node_rounds` > 0): sequential rounds that add
continuations where a node's cosine is still unresolved and its signal large, within the budget.

Owns: how much of each node's (K + 1) x M continuations is held back from its first round
(`held_back`), each node's priority between rounds (`node_priority`), the split of a round's pool
across nodes (`split_pool`, the largest-remainder split `branching.allocate`), and `run_rounds`,
which runs the first round (`branching.run_branches` on each node's reduced budget) and then the
rounds. Does NOT own drawing or grading continuations, the split within a node (by
`branching.allocation`: equal counts per slot, or the pilot rule p_k x sd_k; `branching.split_within`), or how a node's cosines and their precision are estimated
(`alignment.node_estimate` / `node_row_estimates`, the functions `align` uses, so the rounds see exactly
what the alignment table will say).

Budget: the shard's planned continuations are what they are with the switch off: node i plans
``B_i = slots_i x M``; ``H_i = held_back(...)`` of them go to a pool shared by the shard's nodes;
round r of R spends ``pool_left // (R - r)`` (the last one the rest). Continuations move between
nodes (and rollouts), so a node may end with more or fewer than B_i; generated tokens differ from
the switch off as far as the nodes that gain have longer or shorter continuations.

Unbiasedness: a node's sample size now depends on its earlier outcomes (optional stopping), which can
bias a proportion; continuation m of a slot is still seeded by (node, m) alone, so the new draws are
independent of the old ones. Measured against exact enumeration (tiny world, top_k 0, 24 rollouts,
6 seeds, M = 8, 280 candidates; tests/integration/test_exact_enumeration.py): S z mean -0.08 +- 0.06,
variance 1.12 (2 rounds, share 0.5) and -0.05 +- 0.07, 1.22 (4 rounds, share 0.75), against
-0.06 +- 0.06, 1.13 with the rounds off. A first rule that gave a node whose slots all read alike no
priority biased S down (-0.18 +- 0.04, variance 0.44): see `ZERO_IDEAL_SE`.

Measured (bench/bench_precision.py, long-horizon exact world, 3 seeds, M = 8): the rounds do not cut
the error at equal continuations there. On the default equal allocation: rounds off, mean |cos - exact|
0.273 over every row, corr 0.27, coverage 0.84; 2 rounds with share 0.25 / 0.5: 0.278 / 0.275, corr
0.27, coverage 0.84. On pilot allocation (where the rule was chosen; error over the rows with a
cosine): off 0.330 / corr 0.27 / coverage 0.82; 2 rounds, share 0.5: `shrink` 0.340 / 0.23 / 0.79,
`spread` 0.347 / 0.21 / 0.80, `signal` 0.350 / 0.20 / 0.82 (and S z variance 0.85: it leaves nodes
with g* estimated as 0 locked). Hence off by default. `shrink` is the rule kept: the least error of
the three, and the one that follows from the goal (the most narrowing per continuation spent). Why
no gain: a cosine is unresolved mostly where the true ideal gradient is weak, so the pool flows
toward weak nodes (correlation of a node's gain with its exact |cos|: -0.20), where more
continuations barely move the error (nodes that gained, +27% continuations: 0.356 -> 0.354), and
away from the rest (-19%: 0.310 -> 0.329). Weighting by the estimated snr (`signal`,
`shrink_signal`, or with a floor) did not fix it: 0.340-0.355.

Sequential testing: a node that reads resolved after a round gets priority 0 and keeps its verdict,
while unresolved nodes get more looks, so over R + 1 looks `resolved` is no longer an exact 95% sign
test (nor the interval an exact 95% one). Another reason the switch is off.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

from gradalign.pipeline.alignment import (
    NodeEstimate,
    RowEstimate,
    node_estimate,
    node_row_estimates,
)
from gradalign.pipeline.branching import (
    Branch,
    BranchOutcomes,
    allocate,
    draw,
    extend_residual,
    split_within,
    run_branches,
    slot_list,
)
from gradalign.pipeline.resources import Resources
from gradalign.pipeline.scoring import NodeDists

log = logging.getLogger(__name__)

PRIORITIES = ("spread", "shrink", "signal", "shrink_signal")
PRIORITY = "shrink"
"""The priority rule `run_rounds` uses (one of `PRIORITIES`, see `node_priority`; chosen by
measurement, see the module docstring). The others stay for measuring them again."""


ZERO_IDEAL_SE = 1.0 / math.sqrt(3.0)
"""The spread `node_priority` gives a row whose ideal gradient is estimated as exactly 0 (every slot
observed at the same rate, so its cosine is undefined): that of a cosine known to lie in [-1, 1]
and nothing more (uniform). Giving it 0 instead locked such nodes at their first-round counts, and a
node whose slots all read 0/n then kept a rate below the truth (tiny exact world, M = 8, 4 rounds,
share 0.75: S z mean -0.18 +- 0.04, variance 0.44; see the module docstring)."""


def held_back(slots: int, M: int, floor: int, share: float) -> int:
    """Continuations held back from a node's first round for the pool: ``floor(share x slots x M)``,
    never so many that a slot would get fewer than ``min(floor, M)`` in the first round."""
    budget = slots * M
    return max(0, min(int(share * budget), budget - min(floor, M) * slots))


def node_priority(est: NodeEstimate, rows: Sequence[RowEstimate], n: int, rule: str) -> float:
    """A node's claim on the next round's pool, >= 0. ``rows``: its config x loss rows; n: the
    continuations it has. ``spread`` = the mean over rows of `cos_se` where the row is not resolved
    (0 where resolved or undefined); ``shrink`` = spread / n, the expected narrowing per added
    continuation (a standard error falls as 1/sqrt(n), so d se / dn = -se / 2n); a row whose
    estimated ideal gradient is exactly 0 counts as unresolved with `ZERO_IDEAL_SE`; ``signal`` =
    spread x s / (1 + s) with s = max(snr, 0) the ideal gradient's signal-to-noise (0 where the
    ideal gradient is not distinguishable from its noise: the node's cosine is undetermined however
    many continuations it gets only if g* is truly ~0, which is then its answer);
    ``shrink_signal`` = both."""
    if rule not in PRIORITIES:
        raise ValueError(f"rule must be one of {PRIORITIES}, got {rule!r}")
    se = [ZERO_IDEAL_SE if r.cos.reason == "zero_ideal" else
          r.precision.se if not r.precision.resolved and math.isfinite(r.precision.se) else 0.0 for r in rows]
    spread = sum(se) / len(se) if se else 0.0
    if rule in ("shrink", "shrink_signal"):
        spread /= max(n, 1)
    if rule in ("signal", "shrink_signal"):
        s = est.noise.snr
        s = max(s, 0.0) if math.isfinite(s) else 0.0
        spread *= s / (1.0 + s)
    return spread


def split_pool(pool: int, priorities: Sequence[float]) -> list[int]:
    """A round's pool split across nodes in proportion to priority (largest remainders,
    `branching.allocate`); all zero: an equal split. Sums to ``pool``; deterministic."""
    return allocate(pool, list(priorities), [0] * len(priorities))


def _node_count(outcomes: dict, bi: int, br: Branch) -> int:
    """The continuations branch ``bi`` has, over all its slots."""
    return sum(len(outcomes[(bi, s)]) for s in slot_list(br))


def _priorities(res: Resources, branches: Sequence[Branch], outcomes: BranchOutcomes,
                dists: dict[tuple[str, int], NodeDists]) -> list[float]:
    out = []
    for bi, br in enumerate(branches):
        est = node_estimate(res, br, bi, outcomes, dists)
        rows = [row for _, _, row in node_row_estimates(res, br, est, dists[(br.rollout.question_id, br.rollout.rollout_id)])]
        out.append(node_priority(est, rows, _node_count(outcomes.outcomes, bi, br), PRIORITY))
    return out


def run_rounds(res: Resources, branches: Sequence[Branch],
               dists: dict[tuple[str, int], NodeDists]) -> tuple[list[Branch], BranchOutcomes]:
    """The first round on each node's budget less its held-back share, then `branching.node_rounds`
    rounds each spending its part of the pool: nodes scored by `node_priority`, the part split by
    `split_pool`, each node's extra split across its slots by `branching.split_within`. Returns the branches
    (residual buckets extended with fresh first tokens where a round gives them more than they had
    drawn) and all outcomes."""
    b = res.cfg.branching
    M = b.continuations
    branches = list(branches)
    budgets = [len(slot_list(br)) * M for br in branches]
    held = [held_back(len(slot_list(br)), M, b.allocation_floor, b.node_share) for br in branches]
    first = run_branches(res, branches, totals={bi: B - h for bi, (B, h) in enumerate(zip(budgets, held))})
    outcomes, total = dict(first.outcomes), first.continuations
    pool = sum(held)
    for rnd in range(b.node_rounds):
        part = pool // (b.node_rounds - rnd)
        pool -= part
        if part <= 0 or not branches:
            continue
        pri = _priorities(res, branches, BranchOutcomes(outcomes, total), dists)
        extra = split_pool(part, pri)
        totals = {}
        for bi, e in enumerate(extra):
            if e:
                br = branches[bi]
                totals[bi] = _node_count(outcomes, bi, br) + e
                p = dists[(br.rollout.question_id, br.rollout.rollout_id)].student[br.node_index].exp()
                branches[bi] = extend_residual(res, br, p, totals[bi])
        more, n = draw(res, branches, split_within(res, branches, outcomes, totals))
        for key, outs in more.items():
            outcomes[key] = outcomes[key] + outs
        total += n
        log.debug("node round %d: %d continuations over %d nodes (priority > 0 at %d)", rnd + 1, part,
                  sum(1 for e in extra if e), sum(1 for x in pri if x > 0))
    return branches, BranchOutcomes(outcomes, total)
