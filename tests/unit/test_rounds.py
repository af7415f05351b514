"""Allocation across nodes (`branching.node_rounds`, `pipeline.rounds`) without models: the held-back
share, the pool's split by priority, the priority rules, and `run_rounds` on fakes (budget
conserved, the pool goes where the priorities say, deterministic, residual buckets extended)."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from test_pipeline_stages import _resources

from gradalign.config import ConfigError, apply_overrides, load_config
from gradalign.gradients import Cosine
from gradalign.pipeline import NodeDists, Rollout, Teacher, plan_branches, select_nodes
from gradalign.pipeline import rounds as R
from gradalign.pipeline.alignment import RowEstimate
from gradalign.pipeline.branching import RESIDUAL, slot_list
from gradalign.pipeline.rollouts import Outcome
from gradalign.precision import CosinePrecision, NodeNoise
from gradalign.sampling import Completion
from gradalign.tasks import data_dir


def test_held_back_is_the_share_and_keeps_the_floor():
    assert R.held_back(3, 8, 2, 0.25) == 6  # floor(0.25 x 24)
    assert R.held_back(3, 8, 2, 0.9) == 24 - 6  # every slot keeps its floor of 2
    assert R.held_back(3, 2, 2, 0.5) == 0  # M at the floor: nothing to hold back
    assert R.held_back(1, 8, 20, 0.5) == 0  # a floor above M is capped by M, which the slot keeps


def test_split_pool_conserves_and_follows_priority():
    pri = [0.5, 0.0, 2.0, 1.0, 0.25]
    out = R.split_pool(101, pri)
    assert sum(out) == 101 and out[1] == 0
    assert out[2] > out[3] > out[0] > out[4]
    assert all(abs(o - 101 * p / sum(pri)) < 1 for o, p in zip(out, pri))  # largest remainders
    assert R.split_pool(101, pri) == out  # deterministic
    assert R.split_pool(9, [0.0, 0.0, 0.0]) == [3, 3, 3]  # nothing to prefer: an equal split
    assert R.split_pool(0, pri) == [0] * 5


def _row(se: float, resolved: bool, reason: str = "") -> RowEstimate:
    return RowEstimate(None, Cosine(0.1 if not reason else math.nan, reason), None, CosinePrecision(se, -1.0, 1.0, resolved))


def test_node_priority_rules():
    est = SimpleNamespace(noise=NodeNoise(3.0, 0.1, 0.0, 0.0))  # snr 3: 3/4 of ||g||^2 is signal
    rows = [_row(0.4, False), _row(0.2, False), _row(0.9, True), _row(math.nan, False)]
    assert R.node_priority(est, rows, 10, "spread") == pytest.approx(0.6 / 4)  # resolved / undefined rows: 0
    assert R.node_priority(est, rows, 10, "shrink") == pytest.approx(0.6 / 4 / 10)
    assert R.node_priority(est, rows, 10, "signal") == pytest.approx(0.6 / 4 * 0.75)
    assert R.node_priority(est, rows, 10, "shrink_signal") == pytest.approx(0.6 / 4 * 0.75 / 10)
    noise = SimpleNamespace(noise=NodeNoise(-0.5, 0.1, 0.0, 0.0))  # g* below its noise
    assert R.node_priority(noise, rows, 10, "signal") == 0.0 and R.node_priority(noise, rows, 10, "spread") > 0
    assert R.node_priority(est, [_row(0.3, True)], 10, "spread") == 0.0  # resolved: no claim
    # g* estimated as exactly 0 (all slots alike): unresolved, the spread of an unknown cosine; d = 0: no claim
    assert R.node_priority(est, [_row(math.nan, False, "zero_ideal")], 4, "shrink") == pytest.approx(R.ZERO_IDEAL_SE / 4)
    assert R.node_priority(est, [_row(math.nan, False, "zero_distill")], 4, "shrink") == 0.0
    with pytest.raises(ValueError):
        R.node_priority(est, rows, 10, "largest")


def test_node_rounds_config_is_checked():
    cfg = load_config(data_dir() / "configs" / "demo.toml")
    with pytest.raises(ConfigError, match="node_share"):
        apply_overrides(cfg, {"branching.node_rounds": 2, "branching.node_share": 1.0})
    # the pooled budget is counted in continuations: adaptive M would add to it, a token budget would not hold
    with pytest.raises(ConfigError, match="node_rounds.*adaptive_target_width"):
        apply_overrides(cfg, {"branching.node_rounds": 2, "branching.adaptive_target_width": 0.3,
                              "branching.adaptive_max": 16})
    with pytest.raises(ConfigError, match="node_rounds.*budget_tokens"):
        apply_overrides(cfg, {"branching.node_rounds": 2, "branching.budget_tokens": 10_000})
    for allocation in ("equal", "pilot"):
        over = {"branching.node_rounds": 2, "branching.allocation": allocation}
        assert apply_overrides(cfg, over).branching.node_rounds == 2


class _SeedSampler:
    """A continuation ends at once (a success) or runs to the cap (a failure), by its seed."""

    def sample(self, prompts, seeds, max_new=None):
        return [Completion((), truncated=False, ended_with_eos=True) if s % 3 else
                Completion((7,) * a, truncated=True, ended_with_eos=False) for s, a in zip(seeds, max_new)]

    def close(self):
        pass


def _setup(**over):
    res = _resources(_SeedSampler(), **{"branching.selector": "every", "branching.top_k": 1, "branching.continuations": 4,
                                        "branching.allocation": "pilot", "branching.allocation_floor": 1,
                                        "branching.residual": True, "branching.residual_min_mass": 0.0,
                                        "branching.eos_node": False, "branching.node_rounds": 2,
                                        "branching.node_share": 0.5, **over})
    comp = Completion((5, 6, 4), truncated=False, ended_with_eos=True)
    r = Rollout("q0", 0, {"id": "q0"}, "p", (1,), Outcome(True, False, comp, True, "", None, "ok", ""))
    plan = select_nodes(res, [r])[0]
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(len(plan.nodes), 12, generator=g, dtype=torch.float64), -1)
    lp[:, 2] = -30.0  # no EOS candidate: every continuation is sampled
    lq = torch.log_softmax(lp + torch.randn(lp.shape, generator=g, dtype=torch.float64), -1)
    res = dataclasses.replace(res, teachers=(Teacher("t", None, "", "student"),))
    dists = {("q0", 0): NodeDists(lp, {"t": lq})}
    return res, plan_branches(res, [r], [plan], dists), dists


@pytest.mark.parametrize("allocation", ["pilot", "equal"])
def test_run_rounds_conserves_the_budget_and_follows_the_priorities(monkeypatch, allocation):
    res, branches, dists = _setup(**{"branching.allocation": allocation})
    budget = sum(len(slot_list(br)) * 4 for br in branches)
    calls = []

    def favour_first(res_, brs, outcomes, dists_):  # the pool goes where the priorities say
        calls.append([sum(len(outcomes.outcomes[(bi, s)]) for s in slot_list(br)) for bi, br in enumerate(brs)])
        return [1.0] + [0.0] * (len(brs) - 1)

    monkeypatch.setattr(R, "_priorities", favour_first)
    out_br, out = R.run_rounds(res, branches, dists)
    n = [sum(len(out.outcomes[(bi, s)]) for s in slot_list(br)) for bi, br in enumerate(out_br)]
    held = [R.held_back(len(slot_list(br)), 4, 1, 0.5) for br in branches]
    assert sum(n) == budget == out.continuations  # equal planned continuations (none is an EOS head here)
    assert calls[0] == [len(slot_list(br)) * 4 - h for br, h in zip(branches, held)]  # round 1: the budget less the share
    assert len(calls) == 2 and n[0] == calls[0][0] + sum(held) and n[1:] == calls[0][1:]
    first = out_br[0]
    assert len(first.residual_tokens) >= len(out.outcomes[(0, RESIDUAL)])  # the bucket drew more first tokens
    assert first.residual_tokens[: len(branches[0].residual_tokens)] == branches[0].residual_tokens
    for bi, br in enumerate(out_br):  # continuation m of a slot: indices 0..n-1 (one noise stream each)
        counts = [len(out.outcomes[(bi, s)]) for s in slot_list(br)]
        assert min(counts) >= 1
        if allocation == "equal":  # every slot of a node keeps the same indices, give or take one
            assert max(counts) - min(counts) <= 1, counts


def test_run_rounds_is_deterministic_and_moves_continuations():
    """With real priorities (`alignment.node_estimate` / `row_estimate` on one teacher), the pool
    moves continuations between nodes, the same way every time."""
    res, branches, dists = _setup()
    a_br, a = R.run_rounds(res, branches, dists)
    b_br, b = R.run_rounds(res, branches, dists)
    assert a.outcomes == b.outcomes and a_br == b_br
    budgets = [len(slot_list(br)) * 4 for br in branches]
    n = [sum(len(a.outcomes[(bi, s)]) for s in slot_list(br)) for bi, br in enumerate(a_br)]
    assert sum(n) == sum(budgets)
    assert any(x > B for x, B in zip(n, budgets)) and any(x < B for x, B in zip(n, budgets)), (n, budgets)
