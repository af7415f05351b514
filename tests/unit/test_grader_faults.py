"""Grader faults in the pool and the grader callables: the circuit breaker (a grader that fails on
most calls stops with one line), error/timeout counts per call, sys.exit and other BaseExceptions
from user code, and grader results that are not a bool."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from gradalign.graders import (
    BREAKER_MIN_CALLS,
    GradeItem,
    GraderBroken,
    GraderPool,
    GraderSpecError,
    check_grader,
    parse_grader_spec,
)
from gradalign.graders.grading import load_worker_grader


@pytest.fixture
def fixtures_on_path(monkeypatch):
    """Make tests/grader_fixtures.py importable as ``grader_fixtures`` (workers get our sys.path)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))


def _items(n, text="zzz", prefix="r"):
    return [GradeItem(f"{prefix}{i}", text, {"answer": "1"}) for i in range(n)]


# -- circuit breaker -------------------------------------------------------------------------------


def test_breaker_stops_a_grader_that_always_hangs(fixtures_on_path):
    # 200 hung items would cost 200 x 0.2 s / 2 workers plus restarts (~40 s); the breaker stops at 32.
    with GraderPool("python:grader_fixtures:sleeps_forever", timeout_s=0.2, workers=2) as pool:
        start = time.monotonic()
        with pytest.raises(GraderBroken) as info:
            pool.grade_many(_items(200))
        assert time.monotonic() - start < 20
        assert pool.stats.worker_restarts < 40
    msg = str(info.value)
    assert msg == ("grader python:grader_fixtures:sleeps_forever failed on 32 of 32 calls (timeouts 32): "
                   "fix the grader or raise task.grader_timeout_s")


def test_breaker_stops_a_grader_that_always_raises(fixtures_on_path):
    with GraderPool("python:grader_fixtures:always_raises", timeout_s=10, workers=2) as pool:
        with pytest.raises(GraderBroken) as info:
            pool.grade_many(_items(500))
        assert len(pool._cache) < 40  # stopped early: the rest was never graded
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("grader python:grader_fixtures:always_raises failed on 32 of 32 calls (errors 32; "
                                      "last error: ZeroDivisionError: division by zero): fix the grader")


def test_breaker_guards_in_process_graders_too():
    with GraderPool("numeric") as pool, pytest.raises(GraderBroken, match="gold answer 'abc' is not a number"):
        pool.grade_many([GradeItem(f"r{i}", "#### 1", {"answer": "abc"}) for i in range(100)])


def test_breaker_trips_on_a_pass_after_a_good_start(fixtures_on_path):
    with GraderPool("python:grader_fixtures:raises_on_boom", timeout_s=10, workers=2) as pool:
        assert all(v.status == "ok" for v in pool.grade_many(_items(64, "yes")))
        # 40 failures of 104 calls overall is under half; of this pass's first 32 calls, all failed
        with pytest.raises(GraderBroken, match="failed on 32 of 32 calls"):
            pool.grade_many(_items(40, "boom", prefix="b"))


def test_breaker_spares_occasional_failures(fixtures_on_path):
    # Under half failing (here 1 in 3), or fewer calls than the breaker's minimum: verdicts, no stop.
    with GraderPool("python:grader_fixtures:raises_on_boom", timeout_s=10, workers=2) as pool:
        items = [GradeItem(f"r{i}", "boom" if i % 3 == 0 else "yes", {}) for i in range(90)]
        verdicts = pool.grade_many(items)
        assert sum(v.status == "error" for v in verdicts) == 30
    with GraderPool("python:grader_fixtures:raises_on_boom", timeout_s=10, workers=2) as pool:
        few = pool.grade_many(_items(BREAKER_MIN_CALLS - 1, "boom"))
        assert all(v.status == "error" for v in few)
    with GraderPool("python:grader_fixtures:always_raises", timeout_s=10, workers=1, breaker_min_calls=0) as pool:
        assert all(v.status == "error" for v in pool.grade_many(_items(40)))  # breaker off


def test_errors_are_counted_per_call_cached_too(fixtures_on_path):
    with GraderPool("python:grader_fixtures:raises_on_boom", timeout_s=10, workers=1) as pool:
        pool.grade_many([GradeItem("a", "boom", {}), GradeItem("a", "boom", {}), GradeItem("b", "yes", {})])
        pool.grade("a", "boom", {})
        s = pool.stats
    assert (s.hits, s.misses, s.errors, s.timeouts) == (2, 2, 3, 0)


# -- user code that raises BaseException / calls sys.exit ------------------------------------------


def test_sys_exit_at_import_is_a_spec_error(tmp_path, monkeypatch):
    (tmp_path / "exits_at_import_mod.py").write_text("import sys\nsys.exit(0)\ndef g(t, r):\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(GraderSpecError) as info:
        check_grader("python:exits_at_import_mod:g")
    assert "it called sys.exit(0) at import" in str(info.value) and "\n" not in str(info.value)


def test_base_exception_at_import_is_a_spec_error(tmp_path, monkeypatch):
    (tmp_path / "raises_base_at_import_mod.py").write_text("raise GeneratorExit('odd')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(GraderSpecError, match="GeneratorExit: odd"):
        check_grader("python:raises_base_at_import_mod:g")


@pytest.mark.parametrize("fn, reason", [
    ("calls_sys_exit", "error: SystemExit: 3"),
    ("raises_base_exception", "error: _NotAnException: not an Exception"),
])
def test_base_exception_in_grader_is_error_verdict(fixtures_on_path, fn, reason):
    with GraderPool(f"python:grader_fixtures:{fn}", timeout_s=10, workers=1) as pool:
        first, second = pool.grade_many(_items(2))
        assert (first.status, first.correct, first.reason) == ("error", False, reason)
        assert second.reason == reason
        assert pool.stats.worker_restarts == 0  # the worker survives user code


# -- grader results --------------------------------------------------------------------------------


@pytest.mark.parametrize("value, correct", [
    (True, True), (False, False), (1, True), (0, False), (np.bool_(True), True), (np.int64(0), False),
])
def test_bool_and_zero_one_results_accepted(value, correct):
    grade = load_worker_grader(parse_grader_spec("python:grader_fixtures:returns_row_value"))
    v = grade("#### 5", {"value": value})
    assert (v.status, v.correct) == ("ok", correct)


@pytest.mark.parametrize("value, shown", [
    (7, "int 7"), (-1, "int -1"), ("yes", "str 'yes'"), (None, "NoneType"), (1.0, "float 1.0"), ([1], "list"),
])
def test_other_results_are_error_verdicts(value, shown):
    grade = load_worker_grader(parse_grader_spec("python:grader_fixtures:returns_row_value"))
    v = grade("#### 5", {"value": value})
    assert (v.status, v.correct) == ("error", False)
    assert v.reason == f"error: grader_fixtures.returns_row_value returned {shown}, expected bool (or 0/1)"
