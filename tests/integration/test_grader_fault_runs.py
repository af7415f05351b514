"""Grader faults through a whole run on the tiny world: continuations whose grader erred are
counted per node (nodes.grader_errors / grader_timeouts) and named in the alignment rows' reason; a
node where no continuation could be graded says so instead of `zero_ideal`; a grader that fails on
most calls stops the run early with one line (the circuit breaker)."""

from __future__ import annotations

import json
import time

import pytest
from conftest import message_lines
from gradalign.cli.app import app
from tiny_world import make_tiny_world
from typer.testing import CliRunner

from gradalign.config import config_from_dict, default_config_dict
from gradalign.engine import diagnose
from gradalign.graders import GraderBroken


def _world(tmp_path_factory, name, rows):
    root = make_tiny_world(tmp_path_factory.mktemp(name))
    (root / "task.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "question": "ab", "answer": "-"}) + "\n"
                                             for i in range(rows)))
    return root


def _cfg(root, grader, timeout_s=5.0):
    d = default_config_dict()
    d["task"] = {"path": str(root / "task.jsonl"), "prompt": "{question}", "grader": grader, "grader_timeout_s": timeout_s}
    d["student"] = {"model": str(root / "student")}
    d["sampling"].update({"rollouts_per_question": 8, "max_new_tokens": 4})
    d["branching"].update({"selector": "every", "continuations": 2, "top_k": 2})
    d["teachers"] = [{"name": "teacher", "model": str(root / "teacher"), "context": ""}]
    return config_from_dict(d)


@pytest.fixture(scope="module")
def q2_fails_run(tmp_path_factory):
    """Three questions; the grader raises on every completion of q2 (a third of the calls: under
    the breaker's threshold), so every node of q2 has no graded continuation."""
    root = _world(tmp_path_factory, "q2fails", 3)
    return diagnose(_cfg(root, "python:grader_fixtures:raises_on_q2"), root / "run")


def test_nodes_count_grader_errors_per_slot(q2_fails_run):
    n = q2_fails_run.tables().nodes
    assert n.grader_errors.dtype == "int32" and n.grader_timeouts.dtype == "int32"
    bad, good = n[n.question_id == "q2"], n[n.question_id != "q2"]
    assert len(bad) and len(good)
    assert (bad.grader_errors == bad.n).all() and (bad.success == 0).all()
    assert (good.grader_errors == 0).all() and (n.grader_timeouts == 0).all()


def test_alignment_reason_names_grader_failures(q2_fails_run):
    t = q2_fails_run.tables()
    a, n = t.alignment, t.nodes
    bad, good = a[a.question_id == "q2"], a[a.question_id != "q2"]
    per_node = n[n.question_id == "q2"].groupby(["rollout_id", "position"]).n.sum()
    for row in bad.itertuples():
        total = per_node[(row.rollout_id, row.position)]
        assert row.reason == f"all_continuations_failed_grading;grader_errors:{total}/{total}", row.reason
    assert bad.cos.isna().all() and not bad.reason.str.contains("zero_ideal").any()
    assert not good.reason.str.contains("grader_|failed_grading").any()


def test_faults_count_every_graded_call_and_agree_with_the_grader_stats(q2_fails_run):
    t, m = q2_fails_run.tables(), q2_fails_run.manifest
    in_tables = int((t.rollouts.status == "error").sum() + t.nodes.grader_errors.sum())  # selector "every": no value queries
    assert m["faults"]["grader_errors"] == m["grader"]["errors"] == in_tables > int((t.rollouts.status == "error").sum())
    assert m["faults"]["grader_timeouts"] == m["grader"]["timeouts"] == 0


def test_a_grader_that_always_hangs_stops_early(tmp_path_factory):
    # 8 questions x 8 rollouts, each a 0.2 s timeout: the breaker stops after 32 calls (seconds),
    # where grading every continuation would take minutes.
    root = _world(tmp_path_factory, "hangs", 8)
    start = time.monotonic()
    with pytest.raises(GraderBroken) as info:
        diagnose(_cfg(root, "python:grader_fixtures:sleeps_forever", timeout_s=0.2), root / "run")
    assert time.monotonic() - start < 40
    assert str(info.value) == ("grader python:grader_fixtures:sleeps_forever failed on 32 of 32 calls (timeouts 32): "
                               "fix the grader or raise task.grader_timeout_s; finished shards are kept (0 of 1)")
    assert not (root / "run" / "manifest.json").exists()


def test_diagnose_cli_stops_a_broken_grader_in_one_line(tmp_path_factory):
    root = _world(tmp_path_factory, "raises", 8)
    (root / "run.toml").write_text(_cfg(root, "python:grader_fixtures:always_raises").to_toml())
    r = CliRunner().invoke(app, ["diagnose", str(root / "run.toml"), "--out", str(root / "run"), "--shard-size", "4"])
    assert r.exit_code == 2, r.output
    lines = message_lines(r.stderr)
    assert lines == ["error: grader python:grader_fixtures:always_raises failed on 32 of 32 calls (errors 32; last error: "
                     "ZeroDivisionError: division by zero): fix the grader; finished shards are kept (0 of 2)"], r.stderr
