"""`task.answer_field` reaches the built-in graders: `exact`, `numeric` and `math-verify` compare a
completion with `row[answer_field]`, never with an unrelated `answer` key of the same row."""

from __future__ import annotations

import pytest

from gradalign.graders import GradeItem, GraderPool

# A row graded by its `target`, with an `answer` column that must not be read.
MISLEADING = {"id": "q1", "question": "2+2", "target": "4", "answer": "5"}
TARGET_ONLY = {"id": "q2", "question": "3+4", "target": "7"}


@pytest.mark.parametrize("grader", ["exact", "numeric"])
def test_in_process_graders_read_the_answer_field(grader):
    with GraderPool(grader, answer_field="target") as pool:
        right, wrong, only = pool.grade_many([
            GradeItem("q1", "so\n#### 4", MISLEADING),
            GradeItem("q1", "so\n#### 5", MISLEADING),  # the misleading `answer` is not the gold
            GradeItem("q2", "so\n#### 7", TARGET_ONLY),  # no `answer` key at all
        ])
    assert (right.correct, right.status, right.reason) == (True, "ok", "match")
    assert (wrong.correct, wrong.status, wrong.reason) == (False, "ok", "mismatch")
    assert (only.correct, only.status) == (True, "ok")


@pytest.mark.parametrize("grader", ["exact", "numeric"])
def test_a_row_without_the_answer_field_is_an_error_naming_it(grader):
    with GraderPool(grader, answer_field="target", breaker_min_calls=0) as pool:
        verdict = pool.grade("q3", "#### 4", {"id": "q3", "answer": "4"})
    assert (verdict.correct, verdict.status) == (False, "error")
    assert "'target'" in verdict.reason


def test_default_answer_field_is_answer():
    with GraderPool("exact") as pool:
        assert pool.grade("q1", "#### 5", MISLEADING).correct
        assert not pool.grade("q1x", "#### 4", MISLEADING).correct


def test_math_verify_worker_reads_the_answer_field():
    pytest.importorskip("math_verify")
    with GraderPool("math-verify", timeout_s=30, workers=1, answer_field="target") as pool:
        right, wrong, only = pool.grade_many([
            GradeItem("q1", "the answer is $\\boxed{4}$", MISLEADING),
            GradeItem("q1", "the answer is $\\boxed{5}$", MISLEADING),
            GradeItem("q2", "the answer is $\\boxed{7}$", TARGET_ONLY),
        ])
    assert (right.correct, right.status) == (True, "ok")
    assert (wrong.correct, wrong.status) == (False, "ok")
    assert (only.correct, only.status) == (True, "ok")
