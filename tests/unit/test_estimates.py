"""gradalign.estimates: Wilson intervals, success estimates, split halves, S vector, adaptive rule."""

from __future__ import annotations

import math

import pytest
import torch

from gradalign import estimates as E


def test_wilson_known_values():
    ci = E.wilson_interval(5, 10)
    assert ci.low == pytest.approx(0.2366, abs=1e-4)
    assert ci.high == pytest.approx(0.7634, abs=1e-4)
    ci = E.wilson_interval(0, 10)
    assert ci.low == 0.0
    assert ci.high == pytest.approx(3.841459 / 13.841459, abs=1e-5)  # z^2 / (n + z^2)
    ci = E.wilson_interval(10, 10)
    assert ci.high == 1.0 and ci.low == pytest.approx(10 / 13.841459, abs=1e-5)
    ci = E.wilson_interval(1, 4)  # hand-computed
    assert ci.low == pytest.approx(0.04559, abs=1e-4) and ci.high == pytest.approx(0.69936, abs=1e-4)
    assert E.wilson_interval(0, 0) == E.Interval(0.0, 1.0)
    with pytest.raises(ValueError):
        E.wilson_interval(3, 2)


def test_success_estimate_counts_truncation_as_failure():
    est = E.SuccessEstimate.from_outcomes(
        [True, True, False, True, False], truncated=[False, True, False, False, True]
    )
    assert (est.successes, est.n, est.truncated) == (2, 5, 2)
    assert est.rate == pytest.approx(0.4)
    assert est.ci == E.wilson_interval(2, 5)
    plain = E.SuccessEstimate.from_outcomes([True, False, True])
    assert (plain.successes, plain.n, plain.truncated) == (2, 3, 0)
    empty = E.SuccessEstimate.from_outcomes([])
    assert empty.n == 0 and math.isnan(empty.rate) and empty.ci == E.Interval(0.0, 1.0)
    with pytest.raises(ValueError):
        E.SuccessEstimate.from_outcomes([True], truncated=[False, True])


def test_split_halves_alternates():
    outcomes = [True, False, True, True, False, False, True]
    h = E.split_halves(outcomes)
    # even: T T F T -> 3/4 ; odd: F T F -> 1/3
    assert (h.a.successes, h.a.n) == (3, 4)
    assert (h.b.successes, h.b.n) == (1, 3)
    trunc = [False, False, True, False, False, False, False]
    h = E.split_halves(outcomes, truncated=trunc)
    assert (h.a.successes, h.a.truncated) == (2, 1)
    assert (h.b.successes, h.b.truncated) == (1, 0)


def test_full_vocab_success():
    S = E.full_vocab_success(6, torch.tensor([4, 1]), torch.tensor([0.9, 0.2], dtype=torch.float64), 0.3)
    assert S.dtype == torch.float64
    assert S.tolist() == pytest.approx([0.3, 0.2, 0.3, 0.3, 0.9, 0.3])
    S = E.full_vocab_success(4, torch.tensor([2]), torch.tensor([1.0]), None)
    assert S.tolist() == [0.0, 0.0, 1.0, 0.0]
    S = E.full_vocab_success(3, torch.tensor([0]), torch.tensor([1.0]), None, fill=0.5)
    assert S.tolist() == [1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="duplicate"):
        E.full_vocab_success(6, torch.tensor([1, 1]), torch.tensor([0.5, 0.5]), 0.0)
    with pytest.raises(ValueError):
        E.full_vocab_success(6, torch.tensor([6]), torch.tensor([0.5]), 0.0)
    with pytest.raises(ValueError):
        E.full_vocab_success(6, torch.tensor([1]), torch.tensor([math.nan]), 0.0)


def test_adaptive_needed():
    est = E.SuccessEstimate.from_outcomes([True, False] * 4)  # 4/8, width ~0.57
    assert E.adaptive_needed(est, target_width=0.9, cap=100) == 0
    assert E.adaptive_needed(est, target_width=0.1, cap=8) == 0
    more = E.adaptive_needed(est, target_width=0.3, cap=1000)
    # smallest n' with Wilson width at rate 0.5 <= 0.3
    assert E.wilson_interval((8 + more) // 2, 8 + more).width <= 0.3
    assert E.wilson_interval((8 + more - 2) // 2, 8 + more - 2).width > 0.3
    assert E.adaptive_needed(est, target_width=0.01, cap=50) == 42
    zero = E.SuccessEstimate.from_outcomes([False] * 8)  # width z^2/(n+z^2): <= 0.1 needs n >= 34.6
    assert E.adaptive_needed(zero, target_width=0.1, cap=1000) == 35 - 8
    assert E.adaptive_needed(E.SuccessEstimate.from_outcomes([]), target_width=0.5, cap=100) > 0


def test_success_replicates_shape_centre_spread_and_seed():
    outs = [[1, 0, 1, 1, 0, 1, 0, 1], [1, 1, 0, 0, 0, 0, 1, 0], [0] * 8]
    r = E.success_replicates(outs, B=4000, seed=3)
    assert r.shape == (4000, 3) and r.dtype == torch.float64
    assert torch.equal(r, E.success_replicates(outs, B=4000, seed=3))  # seeded
    assert not torch.equal(r, E.success_replicates(outs, B=4000, seed=4))
    assert bool(((r >= 0) & (r <= 1)).all())
    smoothed = torch.tensor([5.5 / 9, 3.5 / 9, 0.5 / 9], dtype=torch.float64)
    assert torch.allclose(r.mean(0), smoothed, atol=0.01)  # centred on (successes + 0.5) / (n + 1)
    for k in range(3):  # Bayesian bootstrap: Var = population variance of the n + 1 values / (n + 2)
        x = torch.tensor(outs[k] + [0.5], dtype=torch.float64)
        assert r[:, k].std().item() == pytest.approx(math.sqrt(float(x.var(unbiased=False)) / 10), rel=0.08)
    assert r[:, 2].std().item() > 0.03  # an all-failure slot is not noise-free
    assert torch.isnan(E.success_replicates([[1, 0], []], B=5, seed=0)[:, 1]).all()
    with pytest.raises(ValueError):
        E.success_replicates(outs, B=0, seed=0)


def test_success_replicates_paired_keeps_the_correlation():
    """Under common random numbers slot k's continuation m shares its noise with slot j's m; the
    paired bootstrap gives continuation m the same weight in both, so tied outcomes stay nearly
    tied (only the per-slot pseudo-outcome differs: an unseen difference is not ruled out)."""
    a = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0]
    paired = E.success_replicates([a, a], B=500, seed=1, paired=True)
    assert torch.corrcoef(paired.T)[0, 1].item() > 0.9
    assert 0 < (paired[:, 0] - paired[:, 1]).abs().max().item() < 0.15
    zeros = E.success_replicates([[0] * 8, [0] * 8], B=500, seed=1, paired=True)
    assert (zeros[:, 0] - zeros[:, 1]).std().item() > 0.02
    indep = E.success_replicates([a, a], B=500, seed=1, paired=False)
    assert abs(torch.corrcoef(indep.T)[0, 1].item()) < 0.2


def test_hierarchical_replicates_shrink_thin_slots_and_keep_thick_ones():
    outs = [[1] * 30 + [0] * 30, [0, 1] * 20, [1], [0]]  # two well-measured slots near 0.5, two single draws
    r = E.success_replicates(outs, B=4000, seed=5, rule="hierarchical")
    assert r.shape == (4000, 4) and r.dtype == torch.float64 and bool(((r >= 0) & (r <= 1)).all())
    assert torch.equal(r, E.hierarchical_replicates(outs, B=4000, seed=5))  # seeded, one rule
    assert r[:, 0].mean().item() == pytest.approx(0.5, abs=0.03)  # many draws: its own rate
    # one success / one failure: pulled most of the way to the population (~0.5), not read as 1 / 0
    assert 0.5 < r[:, 2].mean().item() < 0.75 and 0.25 < r[:, 3].mean().item() < 0.5
    assert r[:, 2].mean().item() > r[:, 3].mean().item()
    # tokens that clearly differ keep their difference: the model learns the population is spread out
    far = E.hierarchical_replicates([[1] * 40, [0] * 40, [1, 1, 1]], B=4000, seed=5)
    assert far[:, 0].mean().item() > 0.95 and far[:, 1].mean().item() < 0.05 and far[:, 2].mean().item() > 0.6


def test_hierarchical_replicates_pooled_last_is_a_token_never_drawn():
    """Under residual_per_token the bucket's draws already sit in their tokens' slots: its column must
    not count them again (the other columns do not move) and is a fresh population draw."""
    base = [[1] * 10 + [0] * 10, [1] * 12 + [0] * 8, [1]]
    a = E.hierarchical_replicates(base + [[1, 1, 1, 1]], B=3000, seed=2, pooled_last=True)
    b = E.hierarchical_replicates(base + [[0, 0, 0, 0]], B=3000, seed=2, pooled_last=True)
    assert torch.equal(a, b)
    assert a[:, 3].mean().item() == pytest.approx(a[:, :3].mean().item(), abs=0.05)
    assert a[:, 3].std().item() > a[:, 0].std().item()  # an unseen token is less certain than a measured one
    with pytest.raises(ValueError):
        E.success_replicates(base, B=10, seed=0, rule="nope")


def test_hierarchical_posterior_intervals_are_calibrated_when_the_model_holds():
    """Simulate nodes from the model's own prior (mu uniform, kappa from its grid prior, S_s ~ Beta, k_s ~
    Binomial with 1-8 draws per slot); the replicates' central 90% interval of each slot's rate must
    hold the true rate in about 90% of cases (posterior calibration: checks the grid posterior and
    the conditional draws, not only their shape)."""
    import numpy as np

    rng = np.random.default_rng(0)
    hits, total = 0, 0
    for sim in range(250):
        w = np.exp(np.array(E._KAPPA_LOG_PRIOR))
        mu, kappa = rng.uniform(0.005, 0.995), rng.choice(np.array(E._KAPPA_GRID), p=w / w.sum())
        S = rng.beta(mu * kappa, (1 - mu) * kappa, size=5)  # shape [5] slots
        n = rng.integers(1, 9, size=5)
        outs = [list(rng.random(int(m)) < s) for s, m in zip(S, n)]
        r = E.hierarchical_replicates(outs, B=400, seed=sim).numpy()
        lo, hi = np.quantile(r, 0.05, axis=0), np.quantile(r, 0.95, axis=0)
        hits += int(((lo <= S) & (S <= hi)).sum())
        total += S.size
    assert 0.86 <= hits / total <= 0.94, hits / total


def test_a_clear_split_is_resolved_with_few_continuations():
    """4/4 vs 0/4 (and 3/4 vs 0/4) are clear evidence that two tokens differ: the posterior must put
    their order beyond 97.5% (a prior leaning to identical tokens gave 96% / 83%)."""
    for node in ([[1, 1, 1, 1], [0, 0, 0, 0]], [[1, 1, 1, 1], [0, 0, 0, 0], [1, 0]], [[1, 1, 1, 0], [0, 0, 0, 0]]):
        r = E.hierarchical_replicates(node, B=4000, seed=1)
        assert ((r[:, 0] - r[:, 1]) > 0).double().mean().item() > 0.975, node


@pytest.mark.parametrize("rule", ["hierarchical", "bootstrap"])
def test_exact_slots_are_constant_and_leave_the_population_alone(rule):
    """An EOS candidate's continuations are the finished completion graded again: its rate is exact,
    so every replicate holds it, and under the hierarchical rule it does not move the others."""
    outs = [[1, 1], [1, 0, 1, 0, 0, 1], [0, 0, 1, 1]]
    r = E.success_replicates(outs, B=500, seed=4, rule=rule, exact=[0])
    assert (r[:, 0] == 1.0).all() and r[:, 1].std().item() > 0.01
    if rule == "hierarchical":
        alone = E.hierarchical_replicates(outs[1:], B=500, seed=4)
        assert E.population_loglik(outs, skip=[0]) == pytest.approx(E.population_loglik(outs[1:]))
        assert r[:, 1:].mean(0).tolist() == pytest.approx(alone.mean(0).tolist(), abs=0.03)
