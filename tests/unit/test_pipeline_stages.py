"""Pipeline stages on fakes (no model): the one continuation rule, and the records each stage speaks.

A continuation cut by max_new_tokens is a failure for rollouts, refine's value queries and branches
alike (`rollouts.continue_and_grade`); before the pipeline split, value queries counted the grader's
verdict alone, so a truncated continuation the grader liked counted as a success."""

from __future__ import annotations

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
