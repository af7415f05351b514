"""The cost plan of a run, before any GPU-hour is spent: `plan_run` -> `Plan`.

Owns: turning a config into planned rollouts, branched nodes, continuations and generated tokens
per stage, per question and in total (`plan_run`), the optional probe (`plan_run(probe=K)`: load
the models, diagnose the first K questions without writing anything, and extrapolate their
measured counts and per-stage times to the run and to N workers), and the `--max-tokens` refusal
(`check_max_tokens`, `PlanTooCostly`). Does NOT own the cost model itself: node positions and
their prices come from `gradalign.selectors` (`make_selector`, `branch_cost`) and the slots a node
is priced at from `candidates.slots_per_node`, exactly as `pipeline.selection` calls them, so the
plan and the budget never disagree. Rendering is the CLI's (`gradalign plan`, `diagnose`'s
opening lines).

Without a probe every rollout is assumed to have the same length T (`mean_tokens`, else the cap
`sampling.max_new_tokens`, a worst case for the length) and each continuation from node t to
generate T - t tokens (the selectors' cost model); a node is priced at its usual slot count, so
candidate sets that overlap (student and teachers proposing the same token), skipped residual
buckets and EOS candidates make the run cheaper than planned, coverage candidates and adaptive M
dearer. With a probe the first K questions are computed exactly as `diagnose` computes them (the
same per-question seeds), so their counts are exact (`exact=True` on a stage when K covers every
question) and the rest is extrapolated from their mean per question.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from gradalign.config import RunConfig
from gradalign.errors import GradalignError

log = logging.getLogger(__name__)

STAGES = ("rollouts", "value queries", "branches", "scoring")


class PlanTooCostly(GradalignError, ValueError):
    """The plan generates more tokens than the user allowed (`--max-tokens`)."""


@dataclass(frozen=True)
class StagePlan:
    """One stage's planned work for the whole run (per question: divide by `Plan.questions`)."""

    stage: str  # one of STAGES
    sequences: float  # sequences generated (rollouts, value-query or branch continuations); scoring: rollouts scored
    tokens: float  # tokens generated (EOS counted); scoring generates none
    exact: bool  # True: counted, not estimated (a probe that covered every question)
    seconds: float | None = None  # probe only: estimated wall seconds on one worker like this machine


@dataclass(frozen=True)
class Plan:
    """The planned cost of a run (`plan_run`)."""

    questions: int  # questions the run diagnoses
    rollouts: int  # questions x sampling.rollouts_per_question
    mean_rollout_tokens: float  # T assumed or measured
    length_source: str  # where T comes from: "the cap sampling.max_new_tokens", "given", "probe of K questions"
    nodes: float  # branched nodes over the run
    priced_continuations: float  # value-query + branch continuations as the selectors' cost model prices them
    priced_tokens: float  # their tokens under the same model (what `branching.budget_tokens` counts)
    stages: tuple[StagePlan, ...]  # in STAGES order
    probe_questions: int = 0  # questions the probe computed (0: no probe)
    load_seconds: float | None = None  # probe only: seconds to load the models once (each worker pays it)
    probe_continuations: int | None = None  # probe only: branch continuations of the probed questions, counted

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.stage == name)

    @property
    def tokens(self) -> float:
        """Generated tokens of every stage: what `--max-tokens` is compared with."""
        return sum(s.tokens for s in self.stages)

    @property
    def continuations(self) -> float:
        """Value-query and branch continuations (the manifest's `continuations` counts branches only)."""
        return self.stage("value queries").sequences + self.stage("branches").sequences

    @property
    def seconds(self) -> float | None:
        """Probe only: estimated wall seconds of the stages on one worker (loading excluded)."""
        if any(s.seconds is None for s in self.stages):
            return None
        return sum(s.seconds for s in self.stages)

    def wall_seconds(self, workers: int) -> float | None:
        """Probe only: estimated wall time with `workers` like this machine: each loads the models
        once, then the questions split evenly (whole shards make the split coarser for few questions)."""
        if self.seconds is None or workers < 1:
            return None
        return (self.load_seconds or 0.0) + self.seconds / min(workers, max(1, self.questions))


def _rollout_price(cfg: RunConfig, n_tokens: int, stop_node: bool = False) -> tuple[int, int, int, int, int]:
    """(nodes, branch continuations, branch tokens, value continuations, value tokens) of one
    rollout of `n_tokens` tokens under the selectors' cost model and the config's budget (`stop_node`:
    it ended with EOS and `branching.eos_node` makes position T a node option). refine's
    bisection depends on the values it observes: the plan answers every query with 0 successes,
    so it prices the anchors and the final nodes only (a lower bound on its value queries)."""
    from gradalign.candidates import slots_per_node
    from gradalign.selectors import Budget, ValueObs, branch_cost, make_selector

    b = cfg.branching
    per_node = slots_per_node(b, len(cfg.teachers)) * b.continuations
    sel = make_selector(b.selector.kind, b.selector.stride, n_tokens=n_tokens,
                        budget=Budget(b.budget_tokens, b.budget_continuations), branch_continuations=per_node,
                        nodes_per_window=b.nodes_per_window, value_continuations=b.value_continuations,
                        refine_nodes=b.refine_nodes, stop_node=stop_node)
    while (qs := sel.pending()):
        sel.observe({t: ValueObs(0, 1) for t in qs})
    p = sel.plan()
    costs = [branch_cost(n_tokens, t, per_node) for t in p.positions]
    bc, bt = sum(c.continuations for c in costs), sum(c.tokens for c in costs)
    return len(p.nodes), bc, bt, p.spent_continuations - bc, p.spent_tokens - bt


def plan_run(cfg: RunConfig, *, mean_tokens: float | None = None, probe: int = 0) -> Plan:
    """The cost plan of diagnosing `cfg`. No weights are read unless `probe` > 0.

    `mean_tokens`: the assumed mean rollout length T (default: `sampling.max_new_tokens`).
    `probe`: diagnose the first `probe` questions (nothing written) and extrapolate.
    """
    from gradalign.preflight import preflight

    task = preflight(cfg, check_tokenizers=False).task
    questions = len(task.rows)
    n_roll = cfg.sampling.rollouts_per_question
    cap = cfg.sampling.max_new_tokens
    if probe > 0 and questions > 0:
        return _probe(cfg, task, probe)
    if mean_tokens is not None and not (mean_tokens > 0 and math.isfinite(mean_tokens)):
        raise PlanTooCostly(f"mean rollout tokens must be a number > 0, got {mean_tokens!r} (--mean-tokens)")
    T = min(cap, int(round(mean_tokens))) if mean_tokens else cap
    source = "given" if mean_tokens else "the cap sampling.max_new_tokens"
    # a rollout shorter than the cap ended with EOS: with eos_node, its stop decision is a node option
    nodes, bc, bt, vc, vt = _rollout_price(cfg, T, cfg.branching.eos_node and T < cap)
    R = questions * n_roll
    stages = (
        StagePlan("rollouts", R, R * min(T + 1, cap), False),
        StagePlan("value queries", R * vc, R * vt, False),
        StagePlan("branches", R * bc, R * bt, False),
        StagePlan("scoring", R, 0, True),
    )
    return Plan(questions, R, float(T), source, float(R * nodes), float(R * (bc + vc)), float(R * (bt + vt)), stages)


def _probe(cfg: RunConfig, task, k: int) -> Plan:
    """Diagnose the first `k` questions as `diagnose` would (nothing written), then extrapolate."""
    from gradalign.engine import process_shard
    from gradalign.pipeline import load_resources

    t0 = time.perf_counter()
    res = load_resources(cfg)
    load_s = time.perf_counter() - t0
    try:
        rows = list(res.task.rows)
        probed = rows[: min(k, len(rows))]
        r = process_shard(res, probed)
    finally:
        res.grader.close()
        res.sampler.close()
    questions, kq = len(rows), len(probed)
    scale = questions / kq
    exact = kq == questions
    from gradalign.candidates import slots_per_node

    lengths = [row.n_tokens for row in r.tables["rollouts"]]
    n_roll = len(lengths)
    per_node = slots_per_node(cfg.branching, len(cfg.teachers)) * cfg.branching.continuations
    nodes = sum(s["nodes"] for s in r.selection)
    priced_c = sum(s["spent_continuations"] for s in r.selection)  # the selectors' own accounting of these rollouts
    priced_t = sum(s["spent_tokens"] for s in r.selection)
    value_c = priced_c - nodes * per_node  # a branched node is priced at per_node continuations wherever it is
    gen = r.generated_tokens
    tm = r.timings
    stages = (
        StagePlan("rollouts", n_roll * scale, gen.get("rollouts", 0) * scale, exact, tm.get("rollouts", 0.0) * scale),
        StagePlan("value queries", value_c * scale, gen.get("select", 0) * scale, exact, tm.get("select", 0.0) * scale),
        StagePlan("branches", r.continuations * scale, gen.get("branch", 0) * scale, exact,
                  (tm.get("branch", 0.0) + tm.get("align", 0.0)) * scale),
        StagePlan("scoring", n_roll * scale, 0, exact, tm.get("score", 0.0) * scale),
    )
    mean_t = sum(lengths) / max(1, len(lengths))
    return Plan(questions, questions * cfg.sampling.rollouts_per_question, mean_t, f"probe of {kq} questions",
                nodes * scale, priced_c * scale, priced_t * scale, stages, kq, load_s,
                r.continuations)


def check_max_tokens(plan: Plan, max_tokens: int) -> None:
    """Refuse (one line, `PlanTooCostly`) a plan generating more than `max_tokens` tokens."""
    if plan.tokens > max_tokens:
        raise PlanTooCostly(f"the plan generates {plan.tokens:,.0f} tokens (T = {plan.mean_rollout_tokens:.0f}, "
                            f"{plan.length_source}), over --max-tokens {max_tokens:,}; lower task.limit, "
                            "sampling.rollouts_per_question, branching.continuations or budget_tokens, or raise the limit")
