"""CLI: instant help, validation exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from gradalign.tasks import data_dir


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "gradalign", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands_and_is_fast():
    t0 = time.perf_counter()
    r = _cli("--help")
    assert r.returncode == 0
    for cmd in ("diagnose", "demo", "validate", "build-world", "accuracy"):
        assert cmd in r.stdout
    assert time.perf_counter() - t0 < 10  # generous: the import itself must not pull in torch


def test_help_does_not_import_torch():
    code = "import sys; from gradalign.cli.app import app; print('torch' in sys.modules, 'pandas' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False False", r.stdout + r.stderr


@pytest.mark.parametrize("cmd", ["diagnose", "demo", "validate", "build-world", "accuracy"])
def test_every_command_help_ends_with_an_example(cmd):
    r = _cli(cmd, "--help")
    assert r.returncode == 0
    assert "Example: gradalign " + cmd in " ".join(r.stdout.split())


def test_validate_ok():
    r = _cli("validate", str(data_dir() / "configs" / "demo.toml"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok:")


def test_validate_bad_config_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text((data_dir() / "configs" / "demo.toml").read_text().replace("continuations = 8", "continuations = 0"))
    r = _cli("validate", str(bad))
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "branching.continuations" in lines[0], r.stderr


def test_diagnose_missing_context_field_exits_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text((data_dir() / "configs" / "demo.toml").read_text().replace("{summary}", "{sumary}"))
    out = tmp_path / "out"
    r = _cli("diagnose", str(bad), "--out", str(out))
    assert r.returncode == 2
    assert "sumary" in r.stderr and len([l for l in r.stderr.splitlines() if l.strip()]) == 1, r.stderr
    assert not out.exists()
