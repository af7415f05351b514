"""Inputs that used to slip past `validate` (or end it silently), each now one line and exit 2 in
`validate` and `diagnose` alike, on the tiny world (16 positions): a prompt longer than the
student's context, a device this machine lacks, a grader module that calls sys.exit at import."""

from __future__ import annotations

import json
import logging
import re

import pytest
from gradalign.cli.app import app
from tiny_world import make_tiny_world
from typer.testing import CliRunner

from gradalign.config import config_from_dict, default_config_dict


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_world(tmp_path_factory.mktemp("inputs"))


def _config(world, tmp_path, *, question="ab", max_new_tokens=4, device="cpu", grader="exact"):
    rows = [{"id": "q0", "question": "ab", "answer": "-"}, {"id": "q17", "question": question, "answer": "-"}]
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = default_config_dict()
    d["task"] = {"path": str(tmp_path / "task.jsonl"), "prompt": "{question}", "grader": grader}
    d["student"] = {"model": str(world / "student"), "device": device}
    d["sampling"].update({"rollouts_per_question": 2, "max_new_tokens": max_new_tokens})
    d["teachers"] = [{"name": "teacher", "model": str(world / "teacher"), "context": ""}]
    path = tmp_path / "run.toml"
    path.write_text(config_from_dict(d).to_toml())
    return path


def _one_line(r) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("command", ["validate", "diagnose"])
def test_a_prompt_longer_than_the_context_names_the_row(world, tmp_path, command):
    cfg = _config(world, tmp_path, question="ab" * 30)
    args = [command, str(cfg)] + (["--out", str(tmp_path / "out")] if command == "diagnose" else [])
    records = _Records()  # transformers logs to its own stderr handler: listen on its logger
    logging.getLogger("transformers").addHandler(records)
    try:
        line = _one_line(CliRunner().invoke(app, args))
    finally:
        logging.getLogger("transformers").removeHandler(records)
    assert re.fullmatch(r"error: task row 'q17': prompt is \d+ tokens, which leaves no room in the student's 16 "
                        r"positions; shorten it or drop the row", line), line
    assert not [m for m in records.messages if "sequence length is longer" in m], records.messages  # silenced
    assert not (tmp_path / "out").exists()


def test_max_new_tokens_beyond_the_context_names_a_positive_limit(world, tmp_path):
    line = _one_line(CliRunner().invoke(app, ["validate", str(_config(world, tmp_path, max_new_tokens=15))]))
    m = re.fullmatch(r"error: sampling\.max_new_tokens: 15 new tokens after prompts of up to (\d+) tokens \(task row "
                     r"'q\d+'\) exceed the student's 16 positions; lower it to at most (\d+)", line)
    assert m and int(m.group(2)) == 16 - int(m.group(1)) >= 1, line


@pytest.mark.parametrize("command", ["validate", "diagnose"])
def test_cuda_device_without_cuda_fails_before_loading(world, tmp_path, monkeypatch, command):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _config(world, tmp_path, device="cuda")
    args = [command, str(cfg)] + (["--out", str(tmp_path / "out")] if command == "diagnose" else [])
    line = _one_line(CliRunner().invoke(app, args))
    assert line == "error: student.device: 'cuda', but CUDA is not available on this machine; use device = \"cpu\" (or \"auto\")"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["validate", "diagnose"])
def test_grader_calling_sys_exit_at_import_is_one_line(world, tmp_path, monkeypatch, command):
    (tmp_path / "exiting_grader_mod.py").write_text("import sys\nsys.exit(0)\n\ndef grade(text, row):\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _config(world, tmp_path, grader="python:exiting_grader_mod:grade")
    args = [command, str(cfg)] + (["--out", str(tmp_path / "out")] if command == "diagnose" else [])
    line = _one_line(CliRunner().invoke(app, args))
    assert line.startswith("error: invalid grader spec 'python:exiting_grader_mod:grade': cannot import module "
                           "'exiting_grader_mod' (it called sys.exit(0) at import)"), line
    assert not (tmp_path / "out").exists()
