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
