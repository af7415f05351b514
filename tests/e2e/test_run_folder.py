"""The run folder at the CLI: nothing is silently lost on resume, nothing the tool did not write is
deleted, and every failure is one line. Resume re-plans with the shard size the run started with,
refuses shards that hold other questions and recomputes shards whose files do not read; a bad
--shard-size or an --out that cannot be written is refused before anything is written or loaded;
`demo` replaces only a previous demo run; a full disk mid-run and Ctrl-C keep finished shards and
say how to resume; corrupt files end `report`, `compare` and `weights` in one line. (One writer per
folder, and a SIGKILLed writer not blocking --resume: tests/e2e/test_reliability.py.)

Most cases run in-process (`CliRunner`); Ctrl-C needs a subprocess. Runs are small: 3 questions."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import message_lines
from gradalign.cli.app import app
from typer.testing import CliRunner

from gradalign.errors import GradalignError
from gradalign.tables import TABLES, load
from gradalign.tasks import data_dir

DEMO = str(data_dir() / "configs" / "demo.toml")
SMALL = ["--set", "sampling.rollouts_per_question=2", "--set", "branching.continuations=2"]


def _diagnose(out, *extra, limit=3):
    return CliRunner().invoke(app, ["diagnose", DEMO, "--out", str(out), "--set", f"task.limit={limit}", *SMALL, *extra])


def _one_line_error(r, *needles) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = message_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("question_id", "rollout_id", "config", "position", "candidate_id", "loss") if c in df.columns]
    return df.sort_values(keys).reset_index(drop=True)


def _same_tables(a: Path, b: Path) -> None:
    ta, tb = load(a), load(b)
    for name in TABLES:
        pd.testing.assert_frame_equal(_sorted(getattr(ta, name)), _sorted(getattr(tb, name)), check_exact=True)


def _read_only_dir(tmp_path: Path) -> Path:
    """A folder nobody may create files in: a chmod 555 folder, or /sys when running as root."""
    if os.geteuid() == 0:
        return Path("/sys")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    """(run folder, stdout) of a finished 3-question run in shards of 1, at a path with a space."""
    out = tmp_path_factory.mktemp("finished") / "a run"
    r = _diagnose(out, "--shard-size", "1")
    assert r.exit_code == 0, (r.output, r.exception)
    return out, r.stdout


def _copy(finished, dst: Path) -> Path:
    shutil.copytree(finished[0], dst)
    return dst


def test_next_hint_quotes_paths(finished):
    out, stdout = finished
    hint = next(line for line in stdout.splitlines() if line.startswith("next: "))
    words = shlex.split(hint[len("next: "):])
    assert words[:5] == ["gradalign", "report", str(out), "--out", "reports/addition/"], hint
    code = words[words.index("-c") + 1]
    assert f"gradalign.load({json.dumps(str(out))})" in code, hint


def test_not_empty_folder_names_the_cli_flag(finished):
    _one_line_error(_diagnose(finished[0]), "not empty", "with --resume")


@pytest.mark.parametrize("size", ["0", "-1"])
def test_shard_size_below_one_is_refused_before_anything_is_written(tmp_path, size):
    _one_line_error(_diagnose(tmp_path / "run", "--shard-size", size), "shard size must be at least 1", size)
    assert not (tmp_path / "run").exists()


def _file(t: Path) -> Path:
    (t / "f").write_text("x")
    return t / "f"


UNWRITABLE = [
    ("out is a file", _file, "exists and is not a folder"),
    ("out under a file", lambda t: _file(t) / "run", "is a file, not a folder"),
    ("read-only location", lambda t: _read_only_dir(t) / "gradalign-run", "cannot write in"),
]


@pytest.mark.parametrize("make,needle", [c[1:] for c in UNWRITABLE], ids=[c[0] for c in UNWRITABLE])
def test_unwritable_out_is_refused_before_models_load(tmp_path, monkeypatch, make, needle):
    import gradalign.executors

    def no_load(cfg):
        raise AssertionError("models loaded before the output folder was checked")

    monkeypatch.setattr(gradalign.executors, "load_resources", no_load)  # the local executor loads them
    out = make(tmp_path)
    before = _files(tmp_path)
    _one_line_error(_diagnose(out), str(out), needle)
    assert _files(tmp_path) == before


def _killed_after_first_shard(finished, dst: Path) -> Path:
    """A copy of the finished run as a run killed after its first shard leaves it."""
    out = _copy(finished, dst)
    for p in [out / "manifest.json", *(out / f"{name}.parquet" for name in TABLES)]:
        p.unlink()
    for k in (1, 2):
        shutil.rmtree(out / "shards" / f"{k:05d}")
    return out


def test_resume_with_another_shard_size_keeps_every_question(finished, tmp_path, caplog):
    out = _killed_after_first_shard(finished, tmp_path / "killed")
    r = _diagnose(out, "--resume")  # default --shard-size 8; the run was started with 1
    assert r.exit_code == 0, (r.output, r.exception)
    assert "shard size" in caplog.text and "(1)" in caplog.text, caplog.text
    _same_tables(out, finished[0])
    shards = load(out).manifest.shards
    assert {k: shards[k] for k in ("total", "resumed", "size")} == {"total": 3, "resumed": 1, "size": 1}


def test_resume_refuses_a_shard_holding_other_questions(finished, tmp_path):
    out = _killed_after_first_shard(finished, tmp_path / "killed")
    p = out / "shards" / "00000" / "shard.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "questions": ["test-99999"]}))
    _one_line_error(_diagnose(out, "--resume"), str(p), "test-99999", "choose a new")


def test_resume_recomputes_corrupt_shards(finished, tmp_path, caplog):
    out = _copy(finished, tmp_path / "corrupt")
    nodes = out / "shards" / "00001" / "nodes.parquet"
    nodes.write_bytes(nodes.read_bytes()[: nodes.stat().st_size // 2])
    (out / "shards" / "00002" / "shard.json").write_text("{not json")
    (out / "shards" / "run.json").write_text("")
    (out / "manifest.json").write_text("not json")
    (out / "alignment.parquet").write_bytes(b"")
    r = _diagnose(out, "--resume", "--shard-size", "1")
    assert r.exit_code == 0, (r.output, r.exception)
    for needle in ("run.json", "00001", "nodes.parquet", "00002", "shard.json"):
        assert needle in caplog.text, caplog.text
    assert load(out).manifest.shards["resumed"] == 1
    _same_tables(out, finished[0])


def test_resume_recomputes_a_shard_of_another_schema_version(finished, tmp_path, caplog):
    import pyarrow.parquet as pq

    out = _copy(finished, tmp_path / "older")
    nodes = out / "shards" / "00001" / "nodes.parquet"
    t = pq.read_table(nodes)
    old = t.drop(["grader_errors", "grader_timeouts"])  # what schema 1 wrote
    pq.write_table(old.replace_schema_metadata({**t.schema.metadata, b"gradalign.schema_version": b"1"}), nodes)
    r = _diagnose(out, "--resume", "--shard-size", "1")
    assert r.exit_code == 0, (r.output, r.exception)
    assert "schema version 1" in caplog.text, caplog.text
    _same_tables(out, finished[0])


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


CORRUPT = [
    ("truncated parquet", "alignment.parquet", _truncate),
    ("empty parquet", "tokens.parquet", lambda p: p.write_bytes(b"")),
    ("manifest not json", "manifest.json", lambda p: p.write_text("{oops")),
]
COMMANDS = {
    "report": lambda run, tmp: ["report", str(run), "--out", str(tmp / "rep"), "--n-boot", "10"],
    "compare": lambda run, tmp: ["compare", str(run)],
    "weights": lambda run, tmp: ["weights", str(run), "--config", "strong", "--rule", "zero-negative"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("name,corrupt", [(c[1], c[2]) for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_corrupt_run_files_end_in_one_line(finished, tmp_path, command, name, corrupt):
    run = _copy(finished, tmp_path / "run")
    corrupt(run / name)
    before = _files(run)
    _one_line_error(CliRunner().invoke(app, COMMANDS[command](run, tmp_path)), str(run / name), "--resume")
    assert _files(run) == before and not (tmp_path / "rep").exists()


WEIGHTS_OUT = [
    ("existing folder", lambda t: (t / "w").mkdir() or t / "w", "is a folder"),
    ("read-only location", lambda t: _read_only_dir(t) / "w.parquet", "cannot write in"),
    ("under a file", lambda t: _file(t) / "w.parquet", "is a file, not a folder"),
]


@pytest.mark.parametrize("make,needle", [c[1:] for c in WEIGHTS_OUT], ids=[c[0] for c in WEIGHTS_OUT])
def test_weights_out_that_cannot_be_written(finished, tmp_path, make, needle):
    run = _copy(finished, tmp_path / "run")
    target = make(tmp_path)
    before = _files(tmp_path)
    r = CliRunner().invoke(app, ["weights", str(run), "--config", "strong", "--rule", "zero-negative", "--out", str(target)])
    _one_line_error(r, str(target), needle)
    assert _files(tmp_path) == before  # no weights file and no <name>.<pid>.tmp left behind
    if tmp_path not in target.parents:
        assert not list(target.parent.glob(target.name + "*"))


def _previous_demo(finished, tmp):
    return _copy(finished, tmp / "demo")


def _demo_plus_user_file(finished, tmp):
    out = _copy(finished, tmp / "demo")
    (out / "notes.txt").write_text("mine")
    return out


def _another_configs_run(finished, tmp):
    out = _copy(finished, tmp / "demo")
    for p in (out / "shards" / "run.json", out / "manifest.json"):
        d = json.loads(p.read_text())
        d["config_source"] = "/home/me/mine.toml"
        d["config"]["run"]["name"] = "mine"
        p.write_text(json.dumps(d))
    return out


def _user_folder(finished, tmp):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("mine")
    return tmp / "mine"


DEMO_FOLDERS = [
    ("previous demo", _previous_demo, None),
    ("previous demo plus a user file", _demo_plus_user_file, "notes.txt"),
    ("another config's run", _another_configs_run, "not a previous demo run"),
    ("user folder", _user_folder, "not a previous demo run"),
]


@pytest.mark.parametrize("make,refusal", [c[1:] for c in DEMO_FOLDERS], ids=[c[0] for c in DEMO_FOLDERS])
def test_demo_replaces_only_a_previous_demo(finished, tmp_path, monkeypatch, make, refusal):
    import gradalign.engine

    calls = []

    def stub(cfg, out, **kw):  # the demo's own run is covered by test_demo.py
        calls.append(Path(out))
        raise GradalignError("stub diagnose")

    monkeypatch.setattr(gradalign.engine, "diagnose", stub)
    out = make(finished, tmp_path)
    before = _files(out)
    r = CliRunner().invoke(app, ["demo", "--out", str(out)])
    if refusal is None:
        _one_line_error(r, "stub diagnose")
        assert calls == [out] and _files(out) == []
    else:
        _one_line_error(r, str(out), refusal)
        assert calls == [] and _files(out) == before


def test_full_disk_mid_run_keeps_finished_shards(tmp_path, monkeypatch):
    import gradalign.engine

    real, calls = getattr(gradalign.engine, "write_shard", None), []

    def full_on_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kw)

    monkeypatch.setattr(gradalign.engine, "write_shard", full_on_second, raising=False)
    out = tmp_path / "run"
    _one_line_error(_diagnose(out, "--shard-size", "1", limit=2), str(out), "No space left on device",
                    "1 of 2 shards kept", "rerun with --resume")
    assert not (out / "manifest.json").exists()
    json.loads((out / "shards" / "00000" / "shard.json").read_text())
    monkeypatch.undo()
    r = _diagnose(out, "--shard-size", "1", "--resume", limit=2)
    assert r.exit_code == 0, (r.output, r.exception)
    assert load(out).manifest.shards["resumed"] == 1


def test_ctrl_c_keeps_finished_shards_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gradalign", "diagnose", DEMO, "--out", str(out), "--shard-size", "1",
           "--set", "task.limit=3", *SMALL]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (out / "shards" / "00000" / "shard.json").exists():
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground process group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = message_lines(stderr)
    kept = len(list(out.glob("shards/*/shard.json")))
    assert lines == [f"interrupted; {kept} of 3 shards kept; rerun with --resume"], stderr
    assert kept >= 1 and not (out / "manifest.json").exists()
