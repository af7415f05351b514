"""`gradalign plan` and what `diagnose` does with the plan: printed first, `--max-tokens` refused in
one line with nothing written; `plan --probe` checked against a real diagnose of the demo; and the
one-line refusal of `--executor ray` without Ray."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import cli

import gradalign
from gradalign.tasks import data_dir

DEMO = str(data_dir() / "configs" / "demo.toml")
TOKEN_FACTOR = 2.0  # the probe's token estimate is within this factor of the run's (2 of 4 questions extrapolated)


def test_plan_without_weights_prints_every_stage():
    r = cli("plan", DEMO, "--mean-tokens", "36")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("plan: 6 questions, 24 rollouts, T = 36.0 tokens (given), 168 nodes")
    for stage in ("rollouts", "value queries", "branches", "scoring", "total"):
        assert any(line.split()[0:2] == stage.split()[0:2] or line.strip().startswith(stage) for line in lines), stage
    j = json.loads(cli("plan", DEMO, "--mean-tokens", "36", "--json").stdout)
    assert j["tokens"] == sum(s["tokens"] for s in j["stages"]) and j["probe_questions"] == 0


def test_diagnose_prints_the_plan_first(demo_run):
    _, stdout = demo_run
    assert stdout.splitlines()[0].startswith("plan: 6 questions, 24 rollouts, T = 64.0 tokens")


def test_max_tokens_refuses_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    r = cli("diagnose", DEMO, "--out", str(out), "--max-tokens", "1000")
    assert r.returncode == 2
    assert r.stderr.startswith("error: the plan generates 222,720 tokens") and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_ray_executor_without_ray_is_one_line(tmp_path):
    out = tmp_path / "run"
    code = ("import sys; sys.modules['ray'] = None; from gradalign.cli.app import main; "
            f"sys.argv = ['gradalign', 'diagnose', {DEMO!r}, '--out', {str(out)!r}, '--executor', 'ray']; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: executor ray: Ray is not installed; pip install 'gradalign[ray]' (or choose --executor local)"
    assert not out.exists()


def test_probe_then_diagnose(tmp_path):
    """`plan --probe` of 2 of the demo's first 4 questions, then `diagnose` of those 4 in shards of 2."""
    four = ("--set", "task.limit=4")
    r = cli("plan", DEMO, *four, "--probe", "--probe-questions", "2", "--workers", "1", "--workers", "4", "--json",
            timeout=900)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["probe_questions"] == 2 and plan["length_source"] == "probe of 2 questions" and plan["questions"] == 4
    assert plan["seconds"] > 0 and plan["wall_seconds"]["4"] < plan["wall_seconds"]["1"]
    out = tmp_path / "run"
    d = cli("diagnose", DEMO, *four, "--out", str(out), "--shard-size", "2", timeout=900)
    assert d.returncode == 0, d.stderr
    run = gradalign.load(out)
    first = json.loads((out / "shards" / "00000" / "shard.json").read_text())  # the probed questions' shard
    # Exact: the probed questions are computed as diagnose computes them (same seeds).
    scale = 4 / 2
    stages = {s["stage"]: s for s in plan["stages"]}
    assert plan["probe_continuations"] == first["continuations"]
    assert round(stages["branches"]["sequences"] / scale) == first["continuations"]
    assert round(stages["rollouts"]["tokens"] / scale) == first["generated_tokens"]["rollouts"]
    assert round(stages["branches"]["tokens"] / scale) == first["generated_tokens"]["branch"]
    assert round(plan["priced_continuations"] / scale) == sum(s["spent_continuations"] for s in first["selection"])
    # Estimated: the 4 questions' generated tokens, extrapolated from the first two.
    measured = sum(run.manifest.shards["generated_tokens"].values())
    assert 1 / TOKEN_FACTOR <= plan["tokens"] / measured <= TOKEN_FACTOR, (plan["tokens"], measured)


@pytest.mark.slow
def test_cli_ray_executor_on_a_private_instance(tmp_path):
    """`--executor ray` without --address starts a Ray instance for the run and shuts it down."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    out = tmp_path / "run"
    r = cli("diagnose", DEMO, "--out", str(out), "--executor", "ray", "--shard-size", "1", "--set", "task.limit=2",
            "--set", "sampling.rollouts_per_question=1", "--set", "branching.continuations=2", "--set", "branching.top_k=1",
            "--set", "executor.workers=2", timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.startswith("plan: 2 questions, 2 rollouts")
    m = gradalign.load(out).manifest
    assert m.shards["executor"] == "ray" and m.shards["total"] == 2 and m.row_counts["alignment"] > 0
