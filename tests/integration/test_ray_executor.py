"""The Ray executor on a local Ray cluster (two 1-CPU workers) against the local executor, on a
small copy of the demo (4 questions, one per shard): equal tables, a worker SIGKILLed mid-shard,
and --resume across executors. Slow (Ray starts processes and each worker loads the models):
opt-in with -m slow, which CI runs after the main suite."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import gradalign
from gradalign.config import config_from_dict, load_config
from gradalign.engine import diagnose
from gradalign.tasks import data_dir

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

pytestmark = pytest.mark.slow

KEYS = ["question_id", "rollout_id", "position", "candidate_id", "config", "loss"]


def small_demo():
    """The demo with fewer questions, rollouts, candidates and teachers: seconds per shard."""
    d = load_config(data_dir() / "configs" / "demo.toml").to_dict()
    d["task"]["limit"] = 4
    d["sampling"]["rollouts_per_question"] = 1
    d["branching"].update(continuations=2, top_k=1)
    d["teachers"] = d["teachers"][2:]  # strong, flawed: two distinct teacher models
    d["distill"]["losses"] = ["reverse_kl", "sampled_token"]
    d["executor"] = {"kind": "ray", "workers": 2, "num_cpus": 1}
    return config_from_dict(d, source="small-demo")


def assert_same_tables(a: Path, b: Path) -> None:
    ta, tb = gradalign.load(a), gradalign.load(b)
    for name in ("rollouts", "tokens", "nodes", "alignment"):
        x, y = getattr(ta, name), getattr(tb, name)
        keys = [k for k in KEYS if k in x.columns]
        x = x.sort_values(keys).reset_index(drop=True)
        y = y.sort_values(keys).reset_index(drop=True)
        pd.testing.assert_frame_equal(x, y, check_exact=True)  # bit-identical floats: same machine, same backend


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """The local executor's run at the actors' thread count (num_cpus = 1): float32 reductions
    (the LM head's chunked matmul) depend on how many threads split them."""
    import torch

    out = tmp_path_factory.mktemp("local") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        diagnose(small_demo(), out, shard_size=1, executor="local")
    finally:
        torch.set_num_threads(threads)
    return out


def test_ray_tables_equal_local(cluster, local_run, tmp_path):
    run = diagnose(small_demo(), tmp_path / "ray", shard_size=1)  # executor.kind = "ray" from the config
    assert_same_tables(local_run, tmp_path / "ray")
    m = run.manifest
    assert m.shards["executor"] == "ray" and sum(w["shards"] for w in m.shards["workers"].values()) == 4
    assert len(m.shards["workers"]) == 2  # both workers took shards
    local = gradalign.load(local_run).manifest
    assert m.continuations == local.continuations and m.selection == local.selection
    assert m.shards["generated_tokens"] == local.shards["generated_tokens"]
    assert m.config_fingerprint == local.config_fingerprint  # the executor is not part of it


def _descendants_titled(prefix: str) -> list[int]:
    """Pids of this process's descendants whose title (cmdline) starts with `prefix`."""
    me, found = os.getpid(), []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            title = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not title.startswith(prefix):
                continue
            pid = int(p.name)
            while pid > 1:  # walk up the parents to this process
                pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if pid == me:
                    found.append(int(p.name))
                    break
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_worker_killed_mid_shard_is_retried(cluster, local_run, tmp_path):
    out = tmp_path / "ray-killed"
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("run", diagnose(small_demo(), out, shard_size=1)), daemon=True)
    t.start()
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and t.is_alive() and time.monotonic() < deadline:
        busy = _descendants_titled("ray::ShardWorker.run")  # an actor inside `run`: mid-shard
        if busy:
            killed = busy[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    t.join(900)
    assert killed is not None, "no worker was seen running a shard"
    assert "run" in box, "the run did not complete after a worker was killed"
    assert_same_tables(local_run, out)
    workers = box["run"].manifest.shards["workers"]
    assert sum(w["shards"] for w in workers.values()) == 4
    assert all(not w.endswith(f":{killed}") for w in workers)  # the killed process finished no shard


def test_resume_across_executors(cluster, local_run, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(local_run, out)
    (out / "manifest.json").unlink()  # as if the local run had died after writing shards 1 and 3
    shutil.rmtree(out / "shards" / "00001")
    (out / "shards" / "00003" / "shard.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / "shards" / "00000").iterdir()}
    run = diagnose(small_demo(), out, shard_size=1, resume=True)
    assert run.manifest.shards["resumed"] == 2 and run.manifest.shards["executor"] == "ray"
    assert {p: p.stat().st_mtime_ns for p in (out / "shards" / "00000").iterdir()} == kept  # not rewritten
    assert_same_tables(local_run, out)
