"""Stage 2: which positions of each rollout become branched nodes.

Owns: `select_nodes`, the lockstep loop that runs every rollout's selector (`gradalign.selectors`:
`every`, `stride:S`, `logspace`, `refine`) together, so refine's value queries (V at a position,
estimated from `branching.value_continuations` plain continuations) are batched across rollouts
into one sampler call per round. Does not own the selectors' rules and cost model
(`gradalign.selectors`), the per-node slot count (`candidates.slots_per_node`) or how a
continuation is graded (`rollouts.continue_and_grade`).
"""

from __future__ import annotations

import logging
from typing import Sequence

from gradalign.candidates import slots_per_node
from gradalign.pipeline.resources import Resources
from gradalign.pipeline.rollouts import Continuation, Rollout, continue_and_grade
from gradalign.sampling import stable_seed
from gradalign.selectors import Budget, SelectionPlan, ValueObs, make_selector

log = logging.getLogger(__name__)


def select_nodes(res: Resources, rollouts: Sequence[Rollout]) -> list[SelectionPlan]:
    """One `SelectionPlan` per rollout, in order. A value query at a rollout's own end (t = T) is
    its graded outcome; every other query is answered by graded continuations of y_<t."""
    cfg = res.cfg
    b = cfg.branching
    per_node = slots_per_node(b, len(res.teachers))
    sels = [
        make_selector(
            b.selector.kind, b.selector.stride, n_tokens=len(r.token_ids),
            budget=Budget(b.budget_tokens, b.budget_continuations), branch_continuations=per_node * b.continuations,
            nodes_per_window=b.nodes_per_window, value_continuations=b.value_continuations, refine_nodes=b.refine_nodes,
        )
        for r in rollouts
    ]
    round_ = 0
    while True:
        queries = [(i, t) for i, s in enumerate(sels) for t in s.pending()]
        if not queries:
            break
        round_ += 1
        obs: dict[int, dict[int, ValueObs]] = {}
        jobs = []  # (selector index, position)
        items = []
        for i, t in queries:
            r = rollouts[i]
            if t >= len(r.token_ids):  # the rollout's own end: its graded outcome, no continuation needed
                obs.setdefault(i, {})[t] = ValueObs(int(r.correct), 1)
                continue
            for m in range(b.value_continuations):
                jobs.append((i, t))
                items.append(Continuation(r.row, r.prompt_ids, r.token_ids[:t],
                                          stable_seed(cfg.run.seed, "value", r.question_id, r.rollout_id, t, m)))
        acc: dict[tuple[int, int], list[int]] = {}
        for (i, t), o in zip(jobs, continue_and_grade(res, items) if items else []):
            acc.setdefault((i, t), []).append(int(o.success))
        for (i, t), outs in acc.items():
            obs.setdefault(i, {})[t] = ValueObs(sum(outs), len(outs))
        for i, o in obs.items():
            sels[i].observe(o)
        log.info("refine round %d: %d value queries, %d continuations", round_, len(queries), len(items))
    return [s.plan() for s in sels]
