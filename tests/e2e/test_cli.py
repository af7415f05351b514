"""CLI: instant help that imports no torch, every registered command's help ends with an example,
`validate` on the bundled config. Bad inputs (one line, exit 2, nothing written): test_bad_inputs.py."""

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


def _registered_commands() -> list[str]:
    import typer
    from gradalign.cli.app import app

    return sorted(typer.main.get_command(app).commands)


def test_every_registered_command_is_listed_in_help():
    r = _cli("--help")
    assert r.returncode == 0 and all(cmd in r.stdout for cmd in _registered_commands())


@pytest.mark.parametrize("cmd", _registered_commands())
def test_every_command_help_ends_with_an_example(cmd):
    r = _cli(cmd, "--help")
    assert r.returncode == 0
    assert " ".join(r.stdout.split()).rstrip(" │╯─").split("Example: ")[-1].startswith("gradalign " + cmd), r.stdout


def test_validate_ok():
    r = _cli("validate", str(data_dir() / "configs" / "demo.toml"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok:")
