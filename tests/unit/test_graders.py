"""Tests for gradalign.graders: spec parsing, answer extraction, built-in graders,
and the worker pool (timeouts, errors, recovery, caching)."""

import os
import time
from fractions import Fraction

import pytest

from gradalign.graders import (
    GradeItem,
    GraderPool,
    GraderSpec,
    GraderSpecError,
    GraderStats,
    Verdict,
    check_grader,
    extract_answer,
    parse_grader_spec,
    parse_number,
)

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/, where grader_fixtures.py lives


@pytest.fixture
def fixtures_on_path(monkeypatch):
    """Make tests/grader_fixtures.py importable as ``grader_fixtures`` (workers get our sys.path)."""
    monkeypatch.syspath_prepend(TESTS_DIR)


# -- extraction ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So she earns 8418 dollars.\n#### 8418", "8418"),
        ("#### 42 dollars in total\nsome trailing line", "42 dollars in total"),
        ("first #### 1\nthen #### 2\nfinally #### 3  \n", "3"),
        ("####   7   ", "7"),
        ("The answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{ {a}_{b{c}} } end", "{a}_{b{c}}"),
        ("\\boxed{\\boxed{3}}", "\\boxed{3}"),
        ("\\boxed{5} then truncated \\boxed{6", "5"),
        ("#### 9 beats \\boxed{10}", "10"),  # the later of the two wins, on the marker's line too
        ("####\n\\boxed{11}", "11"),
        ("#### Final Answer\n\nThe answer is \\boxed{5}.", "5"),  # a heading does not hijack the box
        ("#### Final Answer: \\boxed{5}", "5"),
        ("\\boxed{x+1} so\n#### 4", "4"),  # a marker after the box wins
        ("#### \n\\boxed{6}", "6"),
        ("no answer at all", None),
        ("", None),
        ("\\boxed{}", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1234", Fraction(1234)),
        ("1,234", Fraction(1234)),
        ("+1,234,567.5", Fraction(2469135, 2)),
        ("-3/4", Fraction(-3, 4)),
        ("0.5", Fraction(1, 2)),
        (".25", Fraction(1, 4)),
        ("18.", Fraction(18)),
        ("12,34", None),
        ("1/0", None),
        ("1e999999999", None),
        ("abc", None),
        ("", None),
        (".", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


# -- specs --------------------------------------------------------------------


def test_parse_grader_spec_forms():
    assert parse_grader_spec("exact") == GraderSpec("exact", None, None, "exact")
    assert parse_grader_spec("math-verify").kind == "math-verify"
    spec = parse_grader_spec("python:pkg.mod:fn")
    assert (spec.kind, spec.module, spec.function, spec.raw) == ("python", "pkg.mod", "fn", "python:pkg.mod:fn")


@pytest.mark.parametrize("spec", ["pythn:x:y", "python:x", "python:a:b:c", "python:1bad:f", "", "EXACT"])
def test_bad_spec_syntax(spec):
    with pytest.raises(GraderSpecError) as info:
        parse_grader_spec(spec)
    message = str(info.value)
    assert repr(spec) in message and "python:module:function" in message and "\n" not in message


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("pythn:x:y", "unknown grader kind"),
        ("python:nomodule_xyz:f", "cannot import module 'nomodule_xyz'"),
        ("python:os:nonexistent_attr", "has no attribute 'nonexistent_attr'"),
        ("python:grader_fixtures:NOT_CALLABLE", "not callable"),
    ],
)
def test_check_grader_rejects(spec, fragment, fixtures_on_path):
    with pytest.raises(GraderSpecError, match=fragment) as info:
        check_grader(spec)
    assert "valid forms" in str(info.value)


def test_check_grader_accepts(fixtures_on_path):
    assert check_grader("numeric").kind == "numeric"
    assert check_grader("python:grader_fixtures:says_yes").function == "says_yes"


# -- in-process graders -------------------------------------------------------


@pytest.mark.parametrize(
    "grader, completion, answer, correct, reason",
    [
        ("exact", "work...\n#### 8418", "8418", True, "match"),
        ("exact", "#### 8418 ", " 8418\n", True, "match"),
        ("exact", "#### 1,234", "1234", False, "mismatch"),
        ("exact", "no marker", "1", False, "no_answer"),
        ("exact", "#### 72", "Natalia sold 48/2 = 24 clips.\n#### 72", True, "match"),
        ("numeric", "#### 1,234", "1234", True, "match"),
        ("numeric", "#### 0.5", "1/2", True, "match"),
        ("numeric", "#### +3/4", "0.75", True, "match"),
        ("numeric", "#### 0.3333333", "1/3", True, "match"),
        ("numeric", "#### 0.34", "1/3", False, "mismatch"),
        ("numeric", "#### 1000001", "1000000", True, "match"),  # relative tolerance
        ("numeric", "#### 1001", "1000", False, "mismatch"),
        ("numeric", "#### eighteen", "18", False, "not_a_number"),
        ("numeric", "the answer is \\boxed{-7}", "-7", True, "match"),
        ("numeric", "nothing", "18", False, "no_answer"),
        # a "#### Final Answer" heading before the boxed answer no longer hijacks extraction (was not_a_number)
        ("numeric", "Working.\n\n#### Final Answer\n\nThe answer is \\boxed{5}.", "5", True, "match"),
        ("exact", "#### Final Answer\n\\boxed{5}", "5", True, "match"),
    ],
)
def test_in_process_graders(grader, completion, answer, correct, reason):
    with GraderPool(grader) as pool:
        verdict = pool.grade("r0", completion, {"answer": answer})
        assert verdict.correct is correct and verdict.status == "ok" and verdict.reason == reason
        assert all(worker is None for worker in pool._workers)  # never starts processes


def test_in_process_bad_rows_are_errors():
    with GraderPool("numeric") as pool:
        missing = pool.grade("a", "#### 1", {"question": "?"})
        not_number = pool.grade("b", "#### 1", {"answer": "one"})
    assert (missing.correct, missing.status) == (False, "error")
    assert "answer" in missing.reason
    assert (not_number.correct, not_number.status) == (False, "error")
    assert pool.stats.errors == 2


def test_cache_and_batch_dedup():
    rows = {"answer": "5"}
    with GraderPool("exact") as pool:
        items = [GradeItem("q1", "#### 5", rows), GradeItem("q1", "#### 5", rows), GradeItem("q1", "#### 6", rows)]
        verdicts = pool.grade_many(items)
        assert [v.correct for v in verdicts] == [True, True, False]
        assert pool.stats == GraderStats(hits=1, misses=2, timeouts=0, errors=0, worker_restarts=0)
        # same completion under another row id is a different key
        pool.grade("q2", "#### 5", {"answer": "6"})
        assert pool.grade("q1", "#### 5", rows).correct
        assert (pool.stats.hits, pool.stats.misses) == (2, 3)


# -- worker graders -----------------------------------------------------------


def test_python_grader_verdicts_and_cache(fixtures_on_path):
    row = {"answer": "unused"}
    items = [GradeItem(f"r{i}", text, row) for i, text in enumerate(["yes!", "no", "yes #### 3", "maybe"])]
    with GraderPool("python:grader_fixtures:says_yes", timeout_s=10, workers=2) as pool:
        verdicts = pool.grade_many(items + items[:2])
        assert [v.correct for v in verdicts] == [True, False, True, False, True, False]
        assert all(v.status == "ok" for v in verdicts)
        assert verdicts[2].extracted == "3"
        assert (pool.stats.hits, pool.stats.misses) == (2, 4)
        assert pool.grade("r1", "no", row) == Verdict(False, None, "ok", "mismatch")
        assert pool.stats.hits == 3
        processes = [w.process for w in pool._workers if w is not None]
        assert processes and all(p.is_alive() for p in processes)
    assert not any(p.is_alive() for p in processes)  # closed on __exit__


def test_python_grader_exception_is_error_verdict(fixtures_on_path):
    with GraderPool("python:grader_fixtures:always_raises", timeout_s=10, workers=1) as pool:
        verdict = pool.grade("r", "anything", {"answer": "1"})
        assert verdict.correct is False and verdict.status == "error"
        assert verdict.reason.startswith("error: ZeroDivisionError")
        assert pool.stats.errors == 1


def test_sleeper_times_out(fixtures_on_path):
    with GraderPool("python:grader_fixtures:sleeps_forever", timeout_s=1, workers=1) as pool:
        start = time.monotonic()
        verdict = pool.grade("r", "zzz", {"answer": "1"})
        assert time.monotonic() - start < 8
    assert verdict == Verdict(False, None, "timeout", "timeout after 1.0s")


def test_hung_items_do_not_stall_the_rest(fixtures_on_path):
    row = {"answer": "x"}
    texts = ["hang 1", "yes a", "no b", "hang 2", "yes c", "yes d", "no e"]
    with GraderPool("python:grader_fixtures:hangs_on_hang", timeout_s=1, workers=2) as pool:
        start = time.monotonic()
        verdicts = pool.grade_many([GradeItem(str(i), t, row) for i, t in enumerate(texts)])
        elapsed = time.monotonic() - start
        assert [v.status for v in verdicts] == ["timeout", "ok", "ok", "timeout", "ok", "ok", "ok"]
        assert [v.correct for v in verdicts] == [False, True, False, False, True, True, False]
        assert elapsed < 10  # the two hangs overlap on two workers; nothing waits 30 s
        assert pool.stats.timeouts == 2 and pool.stats.worker_restarts == 2
        # the pool recovered: later calls grade normally
        assert pool.grade("later", "yes again", row).correct
        assert pool.grade("0", "hang 1", row).status == "timeout"  # cached, no new wait
        assert pool.stats.timeouts == 3 and pool.stats.worker_restarts == 2  # counted per call, cached too


def test_unpicklable_row_is_error_verdict(fixtures_on_path):
    with GraderPool("python:grader_fixtures:says_yes", timeout_s=10, workers=1) as pool:
        bad, good = pool.grade_many(
            [GradeItem("a", "yes", {"answer": lambda: 1}), GradeItem("b", "yes", {"answer": "1"})]
        )
    assert (bad.status, bad.correct) == ("error", False)
    assert (good.status, good.correct) == ("ok", True)


def test_unloadable_grader_raises_from_pool(monkeypatch):
    with GraderPool("python:nomodule_xyz:f", timeout_s=5, workers=1) as pool:
        with pytest.raises(GraderSpecError, match="nomodule_xyz"):
            pool.grade("r", "x", {"answer": "1"})


def test_pool_argument_validation():
    with pytest.raises(GraderSpecError):
        GraderPool("pythn:x:y")
    with pytest.raises(ValueError):
        GraderPool("exact", timeout_s=0)
    with pytest.raises(ValueError):
        GraderPool("exact", workers=0)


def test_math_verify():
    try:
        import math_verify  # noqa: F401
    except ImportError:
        pytest.skip("math-verify not installed (pip install 'gradalign[math]')")
    row = {"answer": "\\frac{1}{2}"}
    with GraderPool("math-verify", timeout_s=30, workers=2) as pool:
        right, wrong, none, gsm, poly = pool.grade_many(
            [
                GradeItem("q", "the answer is $\\boxed{0.5}$", row),
                GradeItem("q", "the answer is $\\boxed{0.7}$", row),
                GradeItem("q", "I do not know", row),
                GradeItem("g", "3 + 4 = 7 so\n#### 8418", {"answer": "8418"}),
                GradeItem("x", "so $\\boxed{x^2+1}$", {"answer": "1+x^2"}),  # bare LaTeX gold
            ]
        )
    assert right.correct and right.status == "ok"
    assert not wrong.correct and wrong.status == "ok"
    assert (none.correct, none.reason) == (False, "no_answer")
    assert gsm.correct
    assert poly.correct and poly.status == "ok"


def test_worker_gets_parent_sys_path_and_dotted_module(tmp_path, monkeypatch):
    package = tmp_path / "late_pkg_graders"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sub.py").write_text("def is_four(text, row):\n    return text.strip().endswith('4')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # added after any forkserver started
    with GraderPool("python:late_pkg_graders.sub:is_four", timeout_s=10, workers=1) as pool:
        assert [v.correct for v in pool.grade_many([GradeItem("a", "2+2=4", {}), GradeItem("b", "5", {})])] == [True, False]


def test_module_in_current_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd_only_grader.py").write_text("def always(text, row):\n    return True\n")
    monkeypatch.chdir(tmp_path)
    assert check_grader("python:cwd_only_grader:always").module == "cwd_only_grader"
    with GraderPool("python:cwd_only_grader:always", timeout_s=10, workers=1) as pool:
        assert pool.grade("a", "whatever", {}).correct


# -- final-answer section (task.answer_delimiter) ------------------------------


@pytest.mark.parametrize(
    "grader, completion, correct, extracted, reason",
    [
        # the thinking names a wrong answer; only the text after the last </think> is graded
        ("numeric", "<think>maybe \\boxed{4}? no</think>The answer is \\boxed{5}.", True, "5", "match"),
        ("numeric", "<think>it is \\boxed{5}</think>so \\boxed{4}", False, "4", "mismatch"),
        ("exact", "<think>#### 5</think>\n#### 5", True, "5", "match"),
        ("exact", "<think>a</think>b</think>\n#### 5", True, "5", "match"),  # after the LAST delimiter
        # no delimiter at all: the model never finished thinking, so there is no final answer
        ("numeric", "<think>the answer is \\boxed{5}", False, None, "no_final_section"),
        ("exact", "<think>#### 5", False, None, "no_final_section"),
        ("numeric", "<think>x</think>no number here", False, None, "no_answer"),
    ],
)
def test_delimiter_grades_the_final_section_only(grader, completion, correct, extracted, reason):
    with GraderPool(grader, answer_delimiter="</think>") as pool:
        v = pool.grade("r0", completion, {"answer": "5"})
    assert (v.correct, v.extracted, v.status, v.reason) == (correct, extracted, "ok", reason)


def test_without_delimiter_the_whole_completion_is_read():
    with GraderPool("numeric") as pool:
        v = pool.grade("r0", "<think>the answer is \\boxed{5}", {"answer": "5"})
    assert (v.correct, v.extracted) == (True, "5")


def test_math_verify_reads_the_final_section_only():
    try:
        import math_verify  # noqa: F401
    except ImportError:
        pytest.skip("math-verify not installed (pip install 'gradalign[math]')")
    row = {"answer": "\\frac{1}{2}"}
    with GraderPool("math-verify", timeout_s=30, workers=1, answer_delimiter="</think>") as pool:
        after, thinking_only, none = pool.grade_many([
            GradeItem("q", "<think>$\\boxed{0.5}$ or not</think> so $\\boxed{0.7}$", row),
            GradeItem("q", "<think>surely $\\boxed{0.5}$", row),
            GradeItem("q", "<think>0.7</think> the answer is $\\boxed{0.5}$", row),
        ])
    assert (after.correct, after.reason) == (False, "mismatch")  # 0.5 inside the thinking is not read
    assert (thinking_only.correct, thinking_only.reason) == (False, "no_final_section")
    assert none.correct and none.status == "ok"


def test_python_grader_may_return_its_extracted_answer(fixtures_on_path):
    with GraderPool("python:grader_fixtures:last_number_with_answer", timeout_s=10, workers=1) as pool:
        right, wrong, nothing = pool.grade_many([
            GradeItem("q", "3 + 4 = 7", {"answer": "7"}),
            GradeItem("q", "3 + 4 = 8", {"answer": "7"}),
            GradeItem("q", "no idea", {"answer": "7"}),
        ])
    assert (right.correct, right.extracted, right.reason) == (True, "7", "match")
    assert (wrong.correct, wrong.extracted, wrong.reason) == (False, "8", "mismatch")
    assert (nothing.correct, nothing.extracted, nothing.status) == (False, None, "ok")
