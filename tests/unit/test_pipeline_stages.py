"""Pipeline stages on fakes (no model): the one continuation rule, and the records each stage speaks.

A continuation cut by max_new_tokens is a failure for rollouts, refine's value queries and branches
alike (`rollouts.continue_and_grade`); before the pipeline split, value queries counted the grader's
verdict alone, so a truncated continuation the grader liked counted as a success."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from gradalign.config import apply_overrides, load_config
from gradalign.graders import Verdict
from gradalign.pipeline import Continuation, Resources, Rollout, continue_and_grade, select_nodes
from gradalign.pipeline.rollouts import Outcome
from gradalign.sampling import Completion, Sampler
from gradalign.tasks import data_dir

EOS = 2


class _Tok:
    eos_token_id = EOS
    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(map(str, ids))


@dataclass
class _Sampler:
    """Fills every allowance with token 7 (so every continuation is truncated), or ends at once."""

    truncate: bool = True
    calls: list = None

    def sample(self, prompts, seeds, max_new=None):
        self.calls = (self.calls or []) + [(list(prompts), list(seeds), list(max_new))]
        if self.truncate:
            return [Completion((7,) * a, truncated=True, ended_with_eos=False) for a in max_new]
        return [Completion((), truncated=False, ended_with_eos=True) for _ in prompts]

    def close(self):
        pass


class _AlwaysCorrect:
    def grade_many(self, items):
        return [Verdict(True, "42", "ok", "match") for _ in items]

    def close(self):
        pass


class _Task:
    rows = ({"id": "q0"},)

    @staticmethod
    def row_id(row):
        return row["id"]


def _resources(sampler, **overrides) -> Resources:
    cfg = load_config(data_dir() / "configs" / "demo.toml")
    cfg = apply_overrides(cfg, {"sampling.max_new_tokens": 6, **overrides})
    return Resources(cfg, _Task(), None, _Tok(), (), _AlwaysCorrect(), sampler, {})


def test_fake_sampler_speaks_the_protocol():
    assert isinstance(_Sampler(), Sampler)


def test_truncated_continuation_is_a_failure_even_when_the_grader_says_correct():
    res = _resources(_Sampler(truncate=True))
    out = continue_and_grade(res, [Continuation({"id": "q0"}, (1,), (5, 6), seed=3)])
    assert res.sampler.calls[0][2] == [6 - 2]  # allowance = max_new_tokens - len(head)
    assert out[0].truncated and not out[0].success
    assert out[0].reason == "truncated; match"


def test_head_ending_in_eos_is_graded_without_sampling():
    res = _resources(_Sampler(truncate=True))
    out = continue_and_grade(res, [Continuation({"id": "q0"}, (1,), (5, EOS), seed=3)])
    assert res.sampler.calls is None and not out[0].sampled  # nothing sampled
    assert out[0].success and not out[0].truncated and out[0].text == "5"


def _rollout(correct: bool, n_tokens: int = 5) -> Rollout:
    comp = Completion((5,) * n_tokens, truncated=False, ended_with_eos=True)
    return Rollout("q0", 0, {"id": "q0"}, "p", (1,), Outcome(correct, False, comp, True, "", None, "ok", ""))


def test_refine_value_queries_count_truncated_continuations_as_failures():
    # Every value continuation is truncated but graded correct: V must be 0 at every queried position
    # (the rollout's own end, t = T, is its graded outcome: here a failure too).
    res = _resources(_Sampler(truncate=True), **{"branching.selector": "refine", "branching.value_continuations": 2})
    plan = select_nodes(res, [_rollout(correct=False)])[0]
    assert plan.queries, "refine asked no value queries"
    assert all(q.successes == 0 for q in plan.queries), plan.queries
    sampled = [q for q in plan.queries if q.position < 5]
    assert sampled and all(q.n == 2 for q in sampled)


def test_refine_value_queries_count_finished_continuations_as_successes():
    res = _resources(_Sampler(truncate=False), **{"branching.selector": "refine", "branching.value_continuations": 2})
    plan = select_nodes(res, [_rollout(correct=True)])[0]
    assert all(q.successes == q.n for q in plan.queries)


@pytest.mark.parametrize("head,allow", [((), 6), ((5,), 5), ((5, 5, 5, 5, 5), 1)])
def test_allowance_is_the_rollout_limit_minus_the_head(head, allow):
    res = _resources(_Sampler(truncate=False))
    continue_and_grade(res, [Continuation({"id": "q0"}, (1,), head, seed=0)])
    assert res.sampler.calls[0][2] == [allow]


def test_allocate_splits_the_node_budget_by_weight():
    from gradalign.pipeline.branching import allocate

    extra = allocate(40, [0.3, 0.1, 0.0, 0.05, 0.2], [2, 2, 2, 2, 2])
    assert sum(extra) == 30 and extra[2] == 0 and extra[0] > extra[4] > extra[1] > extra[3]
    assert allocate(10, [0.0, 0.0], [2, 2]) == [3, 3]  # no weight: an equal split
    assert allocate(4, [1.0, 1.0], [2, 2]) == [0, 0]  # nothing left
    assert allocate(9, [1.0, 0.0], [6, 1]) == [2, 0]  # never takes away, gives the rest where short


# ----------------------------------------------------------------------------- the stop node (branching.eos_node)

OTHER_EOS = 9  # a second EOS id (e.g. <|im_end|> beside <|endoftext|>)


def _stop_rollout(eos_id, n_tokens: int = 3, truncated: bool = False) -> Rollout:
    comp = Completion((5,) * n_tokens, truncated=truncated, ended_with_eos=not truncated, eos_id=eos_id)
    return Rollout("q0", 0, {"id": "q0"}, "p", (1,), Outcome(True, truncated, comp, True, "", None, "ok", ""))


def _stop_resources(sampler, **overrides) -> Resources:
    base = {"branching.eos_node": True, "branching.selector": "every", "branching.top_k": 2, "branching.residual": False,
            "branching.allocation": "equal", "branching.continuations": 2}
    res = _resources(sampler, **{**base, **overrides})
    return dataclasses.replace(res, eos_ids=(EOS, OTHER_EOS))


def test_node_tokens_add_the_eos_the_rollout_sampled():
    from gradalign.pipeline.rollouts import node_tokens

    res = _stop_resources(_Sampler())
    assert node_tokens(res, _stop_rollout(OTHER_EOS)) == (5, 5, 5, OTHER_EOS)  # the one sampled, of several
    assert node_tokens(res, _stop_rollout(None)) == (5, 5, 5, EOS)  # a backend that does not say: the first EOS id
    assert node_tokens(res, _stop_rollout(None, truncated=True)) == (5, 5, 5)  # cut: no stop was decided
    off = _stop_resources(_Sampler(), **{"branching.eos_node": False})
    assert node_tokens(off, _stop_rollout(OTHER_EOS)) == (5, 5, 5)
    plans = select_nodes(res, [_stop_rollout(OTHER_EOS), _stop_rollout(None, truncated=True)])
    assert plans[0].positions == (0, 1, 2, 3) and plans[1].positions == (0, 1, 2)
    assert select_nodes(off, [_stop_rollout(OTHER_EOS)])[0].positions == (0, 1, 2)


def test_stop_node_candidates_and_continuations():
    """At the stop node the sampled candidate is the EOS the rollout ended with, then the top-k; every
    EOS candidate is the finished completion (graded, never sampled), any other token writes on from
    the whole completion with allowance max_new_tokens - T - 1."""
    import torch

    from gradalign.pipeline import NodeDists, plan_branches, run_branches

    sampler = _Sampler(truncate=True)
    res = _stop_resources(sampler)
    r = _stop_rollout(OTHER_EOS)
    plan = select_nodes(res, [r])[0]
    p = torch.full((10,), 0.02, dtype=torch.float64)
    p[5], p[EOS], p[OTHER_EOS] = 0.5, 0.25, 0.09  # the student's top-2 at the stop: 5 then the other EOS id
    lp = p.log().expand(len(plan.nodes), 10)
    br = plan_branches(res, [r], [plan], {("q0", 0): NodeDists(lp, {})})
    stop = br[-1]
    assert stop.position == 3
    assert [(c.token_id, c.source) for c in stop.candidates] == [(OTHER_EOS, "sampled"), (5, "student_topk"),
                                                                 (EOS, "student_topk")]
    out = run_branches(res, [stop])
    assert [c[0] for c in sampler.calls[0][0]] == [1, 1]  # two continuations sampled, both for token 5
    assert all(tuple(h[1:]) == (5, 5, 5, 5) for h in sampler.calls[0][0]) and sampler.calls[0][2] == [6 - 4] * 2
    assert out.continuations == 2
    assert out.successes(0, 0) == [True, True] and out.successes(0, 2) == [True, True]  # stopping: the verdict
    assert out.successes(0, 1) == [False, False]  # writing on past the cap: truncated


def test_pilot_allocation_gives_eos_candidates_only_the_floor():
    """An EOS candidate is exact after one grading (nothing is sampled), so pilot allocation spends
    the node's budget on the candidates that write on, whatever their p (here the EOS holds most)."""
    import torch

    from gradalign.pipeline import NodeDists, plan_branches, run_branches

    res = _stop_resources(_Sampler(truncate=False), **{"branching.allocation": "pilot", "branching.allocation_floor": 1,
                                                       "branching.top_k": 3})
    r = _stop_rollout(OTHER_EOS)
    plan = select_nodes(res, [r])[0]
    p = torch.full((10,), 0.001, dtype=torch.float64)
    p[OTHER_EOS], p[5], p[EOS] = 0.9, 0.05, 0.04
    br = plan_branches(res, [r], [plan], {("q0", 0): NodeDists(p.log().expand(len(plan.nodes), 10), {})})[-1:]
    assert [c.token_id for c in br[0].candidates] == [OTHER_EOS, 5, EOS]
    out = run_branches(res, br)
    assert [len(out.outcomes[(0, k)]) for k in range(3)] == [1, 4, 1]  # 3 slots x M = 6: the floor each, the rest to 5


def test_refine_with_the_stop_node_queries_the_whole_completion():
    """refine with the stop node: V(T) is estimated from continuations of the whole completion (the
    stop drawn afresh), and the free pseudo-node is T + 1, the rollout's own verdict."""
    sampler = _Sampler(truncate=False)
    res = _stop_resources(sampler, **{"branching.selector": "refine", "branching.value_continuations": 2})
    plan = select_nodes(res, [_stop_rollout(OTHER_EOS)])[0]
    q = {x.position: x for x in plan.queries}
    assert q[4].n == 1 and q[3].n == 2  # T + 1: the outcome; T: two continuations
    heads = [tuple(p) for call in sampler.calls for p in call[0]]
    assert heads.count((1, 5, 5, 5)) == 2 and max(len(h) for h in heads) == 4  # nothing queried past the stop
