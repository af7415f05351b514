"""Stage 2: which positions of each rollout become branched nodes.

Owns: `select_nodes`, the lockstep loop that runs every rollout's selector (`gradalign.selectors`:
`every`, `stride:S`, `logspace`, `refine`) together, so refine's value queries (V at a position,
estimated from `branching.value_continuations` plain continuations) are batched across rollouts
into one sampler call per round; and `fit_branches`, the budget priced with each node's actual
candidate count once candidates are built (after scoring): a static selector (every/stride/logspace)
first plans with the fewest slots a node can take (the sampled token alone, M continuations), refine
with `candidates.slots_per_node` (its reserve must not undershoot); `fit_branches` then re-admits the
nodes at their real cost (candidates + residual bucket, times M) and drops what no longer fits, so a
budget is never spent on slots a node does not have. Continuations are priced at their true cap,
`sampling.max_new_tokens - t - 1` (value queries `- t`). With `branching.eos_node`, a rollout that
ended with EOS has the stop node (`rollouts.node_tokens`): its selector sees positions 0..T and
refine's free pseudo-node moves to T + 1. Does not own the selectors' rules and cost model
(`gradalign.selectors`) or how a continuation is graded (`rollouts.continue_and_grade`).
"""

from __future__ import annotations

import logging
from typing import Sequence

from gradalign import progress
from gradalign.candidates import slots_per_node
from gradalign.pipeline.branching import Branch
from gradalign.pipeline.resources import Resources
from gradalign.pipeline.rollouts import Continuation, Rollout, continue_and_grade, node_tokens
from gradalign.sampling import stable_seed
from gradalign.selectors import Budget, SelectionPlan, ValueObs, branch_cost, budget_note, fit_to_budget, make_selector

log = logging.getLogger(__name__)


def select_nodes(res: Resources, rollouts: Sequence[Rollout]) -> list[SelectionPlan]:
    """One `SelectionPlan` per rollout, in order. A value query at a rollout's own end (t = T, or
    T + 1 with the stop node) is its graded outcome; every other query is answered by graded
    continuations of y_<t (at t = T: the whole completion, its stop decision drawn afresh)."""
    cfg = res.cfg
    b = cfg.branching
    # refine reserves budget for its final nodes before querying: price them at the usual slot count;
    # static rules plan at the fewest slots (1: the sampled token) and `fit_branches` prices the real count
    per_node = slots_per_node(b, len(res.teachers)) if b.selector.kind == "refine" else 1
    scores = _student_entropy(res, rollouts) if b.selector.kind == "entropy" else [None] * len(rollouts)
    sels = [
        make_selector(
            b.selector.kind, b.selector.stride, n_tokens=len(r.token_ids),
            budget=_budget(res), branch_continuations=per_node * b.continuations,
            nodes_per_window=b.nodes_per_window, value_continuations=b.value_continuations, refine_nodes=b.refine_nodes,
            max_new_tokens=cfg.sampling.max_new_tokens, scores=h,
            stop_node=len(node_tokens(res, r)) > len(r.token_ids),
        )
        for r, h in zip(rollouts, scores)
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
            if t >= sels[i].n_positions:  # the rollout's own end: its graded outcome, no continuation needed
                obs.setdefault(i, {})[t] = ValueObs(int(r.correct), 1)
                continue
            for m in range(b.value_continuations):
                jobs.append((i, t))
                items.append(Continuation(r.row, r.prompt_ids, r.token_ids[:t],
                                          stable_seed(cfg.run.seed, "value", r.question_id, r.rollout_id, t, m)))
        progress.expect(len(items))
        acc: dict[tuple[int, int], list[int]] = {}
        for (i, t), o in zip(jobs, continue_and_grade(res, items) if items else []):
            acc.setdefault((i, t), []).append(int(o.success))
        for (i, t), outs in acc.items():
            obs.setdefault(i, {})[t] = ValueObs(sum(outs), len(outs))
        for i, o in obs.items():
            sels[i].observe(o)
        log.info("refine round %d: %d value queries, %d continuations", round_, len(queries), len(items))
    return [s.plan() for s in sels]


def _student_entropy(res: Resources, rollouts: Sequence[Rollout]) -> list[list[float]]:
    """The student's next-token entropy at every node position of each rollout ([T] per rollout,
    [T + 1] with the stop node: the entropy where it chose EOS; at the sampling temperature), for
    the `entropy` selector: one forward per rollout."""
    from gradalign.scoring import ScoreRequest, score

    tok = res.tokenizer
    reqs = [ScoreRequest(r.prompt_ids, node_tokens(res, r)) for r in rollouts]
    out = score(res.student, reqs, temperature=res.cfg.sampling.temperature, pad_id=tok.pad_token_id, vocab_size=len(tok))
    return [s.entropy.tolist() for s in out]


def _budget(res: Resources) -> Budget:
    b = res.cfg.branching
    return Budget(b.budget_tokens, b.budget_continuations)


def branch_slots(branch: Branch) -> int:
    """Estimation slots a built node really takes: its candidates plus the residual bucket when drawn."""
    return len(branch.candidates) + int(bool(branch.residual_tokens))


def fit_branches(res: Resources, rollouts: Sequence[Rollout], plans: Sequence[SelectionPlan],
                 branches: Sequence[Branch]) -> tuple[list[SelectionPlan], list[Branch]]:
    """The plans and branches the budget affords at each node's actual cost (`branch_slots` x M
    continuations of at most `max_new_tokens - t - 1` tokens; see `selectors.fit_to_budget`).
    `plans` are per rollout, `branches` `plan_branches`' output for them (rollout then plan order);
    kept branches stay in that order. Logs a warning when some rollout keeps fewer nodes than its
    rule asked for."""
    cfg = res.cfg
    budget, M, L = _budget(res), cfg.branching.continuations, cfg.sampling.max_new_tokens
    built: dict[tuple[str, int], dict[int, Branch]] = {}
    for br in branches:
        built.setdefault((br.rollout.question_id, br.rollout.rollout_id), {})[br.position] = br
    out_plans: list[SelectionPlan] = []
    kept: set[tuple[str, int, int]] = set()
    for r, plan in zip(rollouts, plans):
        key = (r.question_id, r.rollout_id)
        if not budget.unlimited and plan.nodes:
            T = len(r.token_ids)
            costs = {t: branch_cost(T, t, branch_slots(br) * M, L) for t, br in built.get(key, {}).items()}
            plan = fit_to_budget(plan, budget, costs, rank_order=cfg.branching.selector.kind in ("refine", "entropy"))
        out_plans.append(plan)
        kept.update((*key, t) for t in plan.positions)
    out_branches = [br for br in branches if (br.rollout.question_id, br.rollout.rollout_id, br.position) in kept]
    note = budget_note(out_plans, budget)
    if note:
        log.warning("%s; raise branching.budget_tokens / budget_continuations to branch them all", note)
    return out_plans, out_branches


def mark_branched(tokens: dict, plans_of: dict) -> None:
    """Set the tokens table's `branched` column (column-wise dict, see `scoring.Scores.tokens`) from
    the final plans: `plans_of` maps (question_id, rollout_id) to a `SelectionPlan`."""
    pos = {k: set(p.positions) for k, p in plans_of.items()}
    tokens["branched"] = [t in pos.get((q, r), ()) for q, r, t in
                          zip(tokens["question_id"], tokens["rollout_id"], tokens["position"])]
