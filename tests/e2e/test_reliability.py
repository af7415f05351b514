"""Crash safety and determinism: a run killed with SIGKILL resumes to the same tables as a clean run
(its lock on the folder dies with it), a second writer into a folder in use is refused, and the same
config and seed give bit-identical tables. Runs once per rollout backend."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
from gradalign.cli.app import app
from typer.testing import CliRunner

from gradalign.tables import TABLES, RunIncomplete, load
from gradalign.tasks import data_dir

SMALL = ["--set", "task.limit=3", "--set", "sampling.rollouts_per_question=2", "--set", "branching.continuations=4"]


def _args(out, backend, *extra):
    return ["diagnose", str(data_dir() / "configs" / "demo.toml"), "--out", str(out), "--shard-size", "1", *SMALL,
            "--set", f"sampling.backend={backend}", "--set", f"sampling.vllm_eager={str(backend == 'vllm').lower()}", *extra]


def _diagnose(out, backend, *extra, wait=True):
    cmd = [sys.executable, "-m", "gradalign", *_args(out, backend, *extra)]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("question_id", "rollout_id", "config", "position", "candidate_id", "loss") if c in df.columns]
    return df.sort_values(keys).reset_index(drop=True)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, backend):
    out = tmp_path_factory.mktemp("clean") / "run"
    r = _diagnose(out, backend)
    assert r.returncode == 0, r.stderr
    return out


def test_same_seed_gives_bit_identical_tables(clean_run, tmp_path, backend):
    r = _diagnose(tmp_path / "again", backend)
    assert r.returncode == 0, r.stderr
    a, b = load(clean_run), load(tmp_path / "again")
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)


def test_killed_run_resumes_to_the_same_tables(clean_run, tmp_path, backend):
    out = tmp_path / "killed"
    proc = _diagnose(out, backend, wait=False)
    deadline = time.time() + 600
    while time.time() < deadline and not (out / "shards" / "00000" / "shard.json").exists():
        time.sleep(0.2)
    assert (out / "shards" / "00000" / "shard.json").exists(), "first shard never finished"
    second = CliRunner().invoke(app, _args(out, backend, "--resume"))  # one writer per folder
    assert second.exit_code == 2, (second.output, second.exception)
    assert f"pid {proc.pid} on {socket.gethostname()}" in second.stderr and len(second.stderr.splitlines()) == 1
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    with pytest.raises(RunIncomplete, match="no manifest.json"):
        load(out)  # an incomplete run is refused, not half-read
    r = _diagnose(out, backend, "--resume")
    assert r.returncode == 0, r.stderr
    resumed, clean = load(out), load(clean_run)
    assert resumed.manifest["shards"]["resumed"] >= 1
    for name in TABLES:
        pd.testing.assert_frame_equal(_sorted(getattr(resumed, name)), _sorted(getattr(clean, name)), check_exact=True)


def test_refuses_to_resume_with_a_different_config(clean_run, tmp_path, backend):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(clean_run, out)
    r = _diagnose(out, backend, "--resume", "--set", "run.seed=7")
    assert r.returncode == 2 and "different config" in r.stderr
