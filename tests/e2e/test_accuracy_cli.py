"""`gradalign accuracy CONFIG`: per-question solve rates for any task and config, the screening step
before a long run (the embedded world here: the demo config, a few questions, few samples)."""

from __future__ import annotations

import json

import pandas as pd
from conftest import cli

from gradalign.tasks import data_dir


def test_accuracy_screens_a_config_and_keeps_the_informative_rows(tmp_path):
    demo = str(data_dir() / "configs" / "demo.toml")
    out, keep = tmp_path / "rates.csv", tmp_path / "kept.jsonl"
    r = cli("accuracy", demo, "--samples", "6", "--set", "task.limit=6", "--out", str(out), "--keep", str(keep))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mean solve rate" in r.stdout and "95% interval" in r.stdout
    rates = pd.read_csv(out)
    assert len(rates) == 6 and (rates.n == 6).all()
    assert ((rates.low <= rates.rate) & (rates.rate <= rates.high)).all()
    kept = [json.loads(line) for line in keep.read_text().splitlines()]
    assert [row["id"] for row in kept] == rates[rates.informative].question_id.tolist()
    assert all(0 < rates.set_index("question_id").rate[row["id"]] < 1 for row in kept)
    # a teacher config: the student shown the reference solution solves more than the student alone
    r2 = cli("accuracy", demo, "--config", "self-solution", "--samples", "6", "--set", "task.limit=6", "--out", str(out))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert pd.read_csv(out).rate.mean() > rates.rate.mean()


def test_accuracy_unknown_config_name_is_one_line(tmp_path):
    r = cli("accuracy", str(data_dir() / "configs" / "demo.toml"), "--config", "nobody", "--set", "task.limit=1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--config 'nobody'" in r.stderr
