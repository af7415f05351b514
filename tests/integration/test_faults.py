"""Runtime faults are recorded per row and counted, never a crash of the whole run: a grader that
raises, a teacher with non-finite logits, rollouts cut by the length limit."""

from __future__ import annotations

import pytest
from tiny_world import make_tiny_world

from gradalign.config import config_from_dict, default_config_dict
from gradalign.engine import diagnose


def _cfg(root, grader):
    d = default_config_dict()
    d["task"] = {"path": str(root / "task.jsonl"), "prompt": "{question}", "grader": grader}
    d["student"] = {"model": str(root / "student")}
    d["sampling"].update({"rollouts_per_question": 8, "max_new_tokens": 4})
    d["branching"].update({"selector": "every", "continuations": 2, "top_k": 2})
    d["teachers"] = [{"name": "nan-teacher", "model": str(root / "teacher"), "context": ""},
                     {"name": "self", "model": "student", "context": "{hint}"}]
    return config_from_dict(d)


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    root = make_tiny_world(tmp_path_factory.mktemp("faults"), nan_teacher=True)
    return diagnose(_cfg(root, "python:grader_fixtures:flaky"), root / "run")


def test_grader_errors_are_rows_not_crashes(faulty_run):
    t = faulty_run.tables()
    r = t.rollouts
    assert (r.status == "error").any() and (r.status == "ok").any()
    assert r[r.status == "error"].reason.str.contains("grader bug").all()
    assert not r[r.status == "error"].correct.any()


def test_grader_faults_agree_with_the_grader_stats(faulty_run):
    # Counted over every graded call (rollouts and branches; selector "every" asks no value
    # queries), as the pool counts them; the tables hold the same calls per row.
    t, m = faulty_run.tables(), faulty_run.manifest
    per_row = int((t.rollouts.status == "error").sum() + t.nodes.grader_errors.sum())
    assert m["faults"]["grader_errors"] == m["grader"]["errors"] == per_row > 0
    assert m["faults"]["grader_timeouts"] == m["grader"]["timeouts"] == int(t.nodes.grader_timeouts.sum()) == 0


def test_grader_errors_at_a_node_are_named_in_its_alignment_rows(faulty_run):
    t = faulty_run.tables()
    keys = ["question_id", "rollout_id", "position"]
    errs = t.nodes.groupby(keys, as_index=False).agg(err=("grader_errors", "sum"), n=("n", "sum"))
    a = t.alignment.merge(errs, on=keys, how="left", validate="many_to_one")
    assert (a.err > 0).any()
    for row in a.itertuples():
        tag = f"grader_errors:{row.err}/{row.n}"
        assert (tag in row.reason.split(";")) == (row.err > 0), (tag, row.reason)


def test_nonfinite_teacher_logits_give_nan_with_reason(faulty_run):
    a = faulty_run.tables().alignment
    bad = a[a.config == "nan-teacher"]
    assert len(bad) > 0 and bad.cos.isna().all()
    assert bad.reason.str.contains("nonfinite_teacher_logits").all()
    good = a[(a.config == "self") & ~a.reason.str.contains("zero_ideal")]
    assert good.cos.notna().any()
    assert faulty_run.manifest["faults"]["nonfinite_logit_rows"] == len(bad)


def test_length_limit_is_recorded(faulty_run):
    r = faulty_run.tables().rollouts
    assert r.truncated.any()
    assert faulty_run.manifest["faults"]["truncated_rollouts"] == int(r.truncated.sum())


def test_truncated_rollouts_are_failures(faulty_run):
    r = faulty_run.tables().rollouts
    assert not r[r.truncated].correct.any()
    assert r[r.truncated].reason.str.startswith("truncated").all()
