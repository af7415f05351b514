"""Stages 4-5: candidates at each node and their graded continuations.

Owns: `plan_branches` (the candidate set K at each node via `candidates.candidate_set`, and the
residual bucket's first tokens: M draws from p renormalised outside K, seeded by the node, when the
mass outside K is at least `branching.residual_min_mass`), and `run_branches` (M continuations per
candidate and for the residual bucket in one batched round, then, with adaptive M, further rounds
for candidates whose Wilson interval is wider than `branching.adaptive_target_width`, up to
`branching.adaptive_max`; with `branching.allocation = "pilot"`, a pilot round and a second one
that splits each node's budget by p_k * sd_k, or with a budget `rounds` set, the floor and then an
equal or pilot split (`allocate`, `split_within`); with `branching.common_random_numbers`, continuation m of every slot at
a node is seeded by (node, m) alone, so all slots share its noise stream), `draw` (one batched call
for any (branch, slot) -> continuation indices) and `extend_residual` (more residual first tokens,
for `rounds`). Does not own the allocation across nodes (`rounds`), how a
continuation is graded (`rollouts`), the interval rules (`gradalign.estimates`) or turning outcomes
into S, V and cosines (`alignment`).

Slots: a branch's candidates are slots 0..K-1; the residual bucket is slot -1.

The stop node (`branching.eos_node`, position T of a rollout that ended with EOS): the sampled
candidate is the EOS id the rollout ended with (`rollouts.node_tokens`), the top-k and residual as
anywhere; a continuation's head is the whole completion + its first token, so an EOS candidate (the
sampled one or any other of the student's EOS ids) is the finished completion, graded without
sampling (S is its verdict, exactly), and any other token writes on with allowance
max_new_tokens - T - 1 (0: cut at once, a failure).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from gradalign.candidates import Candidate, candidate_set
from gradalign.estimates import Halves, SuccessEstimate, adaptive_needed, split_halves
from gradalign.pipeline.resources import Resources
from gradalign.pipeline.rollouts import Continuation, Rollout, continue_and_grade, node_tokens
from gradalign.pipeline.scoring import NodeDists
from gradalign.sampling import stable_seed
from gradalign.selectors import SelectionPlan

RESIDUAL = -1  # the residual bucket's slot
MAX_ADAPTIVE_ROUNDS = 8


@dataclass(frozen=True)
class Branch:
    """One node's candidates, ready to branch."""

    rollout: Rollout
    position: int  # completion position t: node = prompt + y_<t (t = T: the stop node)
    node_index: int  # row of the node in its rollout's `NodeDists`
    reason: str  # why the selector chose the node
    candidates: tuple[Candidate, ...]  # K
    residual_tokens: tuple[int, ...]  # first tokens drawn outside K (empty: no residual bucket)
    residual_mass: float  # student mass outside K
    probs: tuple[float, ...] = ()  # student probability of each candidate (K), for allocation


@dataclass(frozen=True)
class SlotEstimate:
    """One slot's success estimate and its two independent halves (even/odd continuations)."""

    estimate: SuccessEstimate
    halves: Halves


@dataclass(frozen=True)
class BranchOutcomes:
    """Graded continuations of every branch: (branch index, slot) -> [(success, truncated, grader
    status)] in continuation order, and how many continuations were sampled. A continuation whose
    grader erred or timed out counts as a failure in the estimate and is counted by `grader_faults`."""

    outcomes: dict
    continuations: int

    def estimate(self, branch: int, slot: int) -> SlotEstimate:
        outs = self.outcomes[(branch, slot)]
        ok, tr = [o[0] for o in outs], [o[1] for o in outs]
        return SlotEstimate(SuccessEstimate.from_outcomes(ok, tr), split_halves(ok, tr))

    def successes(self, branch: int, slot: int) -> list[bool]:
        """The slot's per-continuation successes (graded correct and not truncated), in order."""
        return [bool(o[0]) and not o[1] for o in self.outcomes[(branch, slot)]]

    def grader_faults(self, branch: int, slot: int) -> tuple[int, int]:
        """(errors, timeouts): the slot's continuations whose grader status was "error" / "timeout"."""
        statuses = [o[2] for o in self.outcomes[(branch, slot)]]
        return statuses.count("error"), statuses.count("timeout")


def plan_branches(res: Resources, rollouts: Sequence[Rollout], plans: Sequence[SelectionPlan],
                  dists: dict[tuple[str, int], NodeDists]) -> list[Branch]:
    """Candidates (and residual first tokens) at every selected node, in rollout then plan order."""
    cfg = res.cfg
    b = cfg.branching
    out = []
    for r, plan in zip(rollouts, plans):
        d = dists[(r.question_id, r.rollout_id)]
        ys = node_tokens(res, r)
        for k, node in enumerate(plan.nodes):
            t = node.position
            lp = d.student[k]
            cands = candidate_set(
                ys[t], lp, {n: v[k] for n, v in d.teachers.items()},
                top_k=b.top_k, coverage=b.coverage, max_candidates=b.max_candidates,
            )
            p = lp.exp()
            ids = torch.tensor([c.token_id for c in cands])
            outside = float(1.0 - p[ids].sum().clamp(max=1.0))
            resid: tuple[int, ...] = ()
            if b.residual and outside >= b.residual_min_mass:
                # pilot allocation may give the residual bucket up to the node's whole budget
                n_draw = b.continuations * (len(cands) + 1) if b.allocation == "pilot" else b.continuations
                resid = _residual_draws(p, ids, n_draw, stable_seed(cfg.run.seed, "residual", r.question_id, r.rollout_id, t))
            out.append(Branch(r, t, k, node.reason, cands, resid, outside, tuple(float(p[c.token_id]) for c in cands)))
    return out


def _residual_draws(p: torch.Tensor, ids: torch.Tensor, n: int, seed: int) -> tuple[int, ...]:
    """n first tokens drawn with replacement from p ``[V]`` renormalised outside the candidates ``ids``."""
    w = p.clone()
    w[ids] = 0
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.multinomial(w / w.sum(), n, replacement=True, generator=g).tolist())


def extend_residual(res: Resources, br: Branch, p: torch.Tensor, n: int) -> Branch:
    """``br`` with at least n residual first tokens (p ``[V]``: the student at the node): the tokens
    it has, then fresh draws seeded by the node and how many it had (so a run is deterministic). A
    branch without a residual bucket is returned unchanged."""
    have = len(br.residual_tokens)
    if not br.residual_tokens or have >= n:
        return br
    r, ids = br.rollout, torch.tensor([c.token_id for c in br.candidates])
    more = _residual_draws(p, ids, n - have, stable_seed(res.cfg.run.seed, "residual", r.question_id, r.rollout_id,
                                                         br.position, "from", have))
    return dataclasses.replace(br, residual_tokens=br.residual_tokens + more)


def draw(res: Resources, branches: Sequence[Branch], want: dict) -> tuple[dict, int]:
    """Continue each (branch, slot) from y_<t + its first token for the given continuation
    indices, in one `continue_and_grade` call. Returns ({(branch, slot): [(success, truncated,
    status)]} in continuation order, continuations sampled (a first token that is EOS needs none))."""
    seed, crn = res.cfg.run.seed, res.cfg.branching.common_random_numbers
    keys, items = [], []
    for (bi, slot), firsts in want.items():
        r, t = branches[bi].rollout, branches[bi].position
        for first, m in firsts:
            keys.append((bi, slot))
            # common random numbers: continuation m of every slot at the node shares one noise stream
            key = ("crn", m) if crn else (slot < 0, first, m)
            items.append(Continuation(r.row, r.prompt_ids, r.token_ids[:t] + (first,),
                                      stable_seed(seed, "branch", r.question_id, r.rollout_id, t, *key)))
    drawn: dict[tuple[int, int], list[tuple[bool, bool, str]]] = {}
    sampled = 0
    for key, o in zip(keys, continue_and_grade(res, items)):
        drawn.setdefault(key, []).append((o.success, o.truncated, o.status))
        sampled += o.sampled
    return drawn, sampled


def allocate(total: int, weights: Sequence[float], have: Sequence[int]) -> list[int]:
    """Extra continuations per slot so that slot s ends with about ``total * w_s / sum w`` (never
    fewer than it has): the largest-remainder split of ``total - sum(have)`` in proportion to the
    shortfall. ``weights`` >= 0; all zero gives an equal split. Deterministic."""
    left = total - sum(have)
    if left <= 0 or not weights:
        return [0] * len(have)
    wsum = sum(weights)
    w = [x / wsum for x in weights] if wsum > 0 else [1.0 / len(weights)] * len(weights)
    want = [max(0.0, total * x - h) for x, h in zip(w, have)]
    wsum = sum(want)
    if wsum <= 0:
        return [0] * len(have)
    share = [left * x / wsum for x in want]
    extra = [int(math.floor(x)) for x in share]
    for i in sorted(range(len(share)), key=lambda i: (extra[i] - share[i], i))[: left - sum(extra)]:
        extra[i] += 1
    return extra


def slot_list(br: Branch) -> list[int]:
    """The branch's slots: its candidates 0..K-1, then `RESIDUAL` when it has a residual bucket."""
    return list(range(len(br.candidates))) + ([RESIDUAL] if br.residual_tokens else [])


def split_within(res: Resources, branches: Sequence[Branch], outcomes: dict, totals: dict | None = None) -> dict:
    """The continuations still due at each node, split across its slots by `branching.allocation`:
    each node's (K + 1) x M (``totals[bi]`` instead where given: the node's continuations after this
    round; a node missing from ``totals`` gets none) less what its slots have.

    ``pilot``: in proportion to p_k * sd_k, sd_k = sqrt(r (1 - r)) at the smoothed pilot rate r =
    (successes + 0.5) / (n + 1) (the residual bucket weighs its mass). ``equal``: toward the same
    count in every slot (largest remainders), so under common random numbers all slots keep sharing
    their continuation indices. Either way an EOS candidate weighs 0: its continuations are the
    finished completion graded again, so its rate is exact after one (at the stop node that is the
    sampled token, often nearly all of p). Under ``equal`` this is called only with ``totals``
    (`rounds`); without rounds every slot gets its M at once (`run_branches`). Returns the `draw` request: {(branch, slot): [(first token,
    continuation index)]}, new indices only. A residual slot needs its `residual_tokens` to reach
    the indices asked (`extend_residual`)."""
    b = res.cfg.branching
    eos = set(res.end_ids)
    want = {}
    for bi, br in enumerate(branches):
        if totals is not None and bi not in totals:
            continue
        slots = slot_list(br)
        have = [len(outcomes[(bi, s)]) for s in slots]
        weights = []
        for s, n in zip(slots, have):
            if s != RESIDUAL and br.candidates[s].token_id in eos:  # exact: more continuations add nothing
                weights.append(0.0)
            elif b.allocation == "equal":
                weights.append(1.0)
            else:
                r = (sum(bool(o[0]) and not o[1] for o in outcomes[(bi, s)]) + 0.5) / (n + 1)
                weights.append((br.residual_mass if s == RESIDUAL else br.probs[s]) * math.sqrt(r * (1 - r)))
        extra = allocate(b.continuations * len(slots) if totals is None else totals[bi], weights, have)
        for s, n, e in zip(slots, have, extra):
            if not e:
                continue
            if s == RESIDUAL:
                want[(bi, s)] = [(br.residual_tokens[m], m) for m in range(n, n + e)]
            else:
                want[(bi, s)] = [(br.candidates[s].token_id, m) for m in range(n, n + e)]
    return want


def run_branches(res: Resources, branches: Sequence[Branch], totals: dict | None = None) -> BranchOutcomes:
    """Round 1: M continuations per candidate and the residual bucket's M; with pilot allocation, or
    with ``totals`` (``totals[bi]``: the node's budget instead of (K + 1) x M, as `rounds` holds part
    of it back), `allocation_floor` each first and then the rest by `split_within`; adaptive rounds
    after."""
    b = res.cfg.branching
    # equal without held-back budgets: M each at once; otherwise the floor first, then `split_within`
    split = b.allocation == "pilot" or totals is not None
    m1 = min(b.allocation_floor, b.continuations) if split else b.continuations
    want = {}
    for bi, br in enumerate(branches):
        for k, c in enumerate(br.candidates):
            want[(bi, k)] = [(c.token_id, m) for m in range(m1)]
        if br.residual_tokens:
            want[(bi, RESIDUAL)] = [(tok, m) for m, tok in enumerate(br.residual_tokens[:m1])]
    outcomes, total = draw(res, branches, want)
    if split:
        more, n = draw(res, branches, split_within(res, branches, outcomes, totals))
        for key, outs in more.items():
            outcomes[key] = outcomes[key] + outs
        total += n
    rounds = 0
    while b.adaptive_target_width > 0 and rounds < MAX_ADAPTIVE_ROUNDS:
        rounds += 1
        want = {}
        for (bi, k), outs in outcomes.items():
            if k == RESIDUAL:
                continue
            est = SuccessEstimate.from_outcomes([o[0] for o in outs], [o[1] for o in outs])
            extra = adaptive_needed(est, b.adaptive_target_width, b.adaptive_max)
            if extra:
                tokid = branches[bi].candidates[k].token_id
                want[(bi, k)] = [(tokid, m) for m in range(len(outs), len(outs) + extra)]
        if not want:
            break
        more, n = draw(res, branches, want)
        for key, outs in more.items():
            outcomes[key] = outcomes[key] + outs
        total += n
    return BranchOutcomes(outcomes, total)
