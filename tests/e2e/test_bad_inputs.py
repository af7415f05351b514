"""Bad input, table-driven: each case gives exit code 2, one line on stderr naming the field or
file, and nothing written. Cases run through `gradalign validate` (all checks, no weights loaded);
a few also through `diagnose` to prove nothing is written."""

from __future__ import annotations

import json

import pytest
from gradalign.cli.app import app
from typer.testing import CliRunner

from gradalign.tasks import data_dir

DEMO = (data_dir() / "configs" / "demo.toml").read_text()
ROW = {"id": "r1", "question": "12+34", "answer": "46", "solution": "2+4=6,1+3=4\n#### 46", "summary": "carries 00"}


def _sub(old, new):
    def f(text, tmp):
        assert old in text, old
        return text.replace(old, new, 1)
    return f


def _task_file(content: bytes, name="task.jsonl"):
    def f(text, tmp):
        p = tmp / name
        p.write_bytes(content)
        text = text.replace('name = "addition"\nsplit = "test"', f'path = "{p}"')
        return text.replace('context = "Summary: {summary}\\n"', 'context = "Summary: {summary}\\n"')
    return f


def _rows(*rows):
    return _task_file("".join(json.dumps(r) + "\n" for r in rows).encode())


def _teacher_model_without_config(text, tmp):
    (tmp / "empty-model").mkdir()
    return text.replace('model = "teacher-strong"', f'model = "{tmp / "empty-model"}"')


def _teacher_with_other_tokenizer(text, tmp):
    from gradalign.world import ModelSize, build_tokenizer, new_model

    tok = build_tokenizer(chars=("a", "b"), max_length=16)
    m = new_model(tok, ModelSize(hidden=8, layers=1, heads=2, ffn=16, max_positions=16), 0)
    m.save_pretrained(tmp / "other")
    tok.save_pretrained(tmp / "other")
    return text.replace('model = "teacher-strong"', f'model = "{tmp / "other"}"')


CASES = [
    ("unknown key", _sub("temperature = 1.0", "temprature = 1.0"), "sampling.temprature"),
    ("zero continuations", _sub("continuations = 8", "continuations = 0"), "branching.continuations"),
    ("bool for int", _sub("rollouts_per_question = 4", "rollouts_per_question = true"), "sampling.rollouts_per_question"),
    ("bad selector", _sub('selector = "logspace"', 'selector = "logspac"'), "branching.selector"),
    ("jsd beta out of range", _sub("jsd_beta = 0.5", "jsd_beta = 2.0"), "distill.jsd_beta"),
    ("unknown loss", _sub('losses = ["reverse_kl",', 'losses = ["kl",'), "distill.losses"),
    ("duplicate teacher", _sub('name = "strong"', 'name = "flawed"'), "name"),
    ("missing context field", _sub("{summary}", "{sumary}"), "sumary"),
    ("bad template braces", _sub('prompt = "Q {question}\\n"', 'prompt = "Q {question\\n"'), "task.prompt"),
    ("no such bundled task", _sub('name = "addition"', 'name = "additio"'), "task.name"),
    ("task file missing", _sub('name = "addition"\nsplit = "test"', 'path = "/nonexistent/task.jsonl"'), "task.jsonl"),
    ("task file empty", _task_file(b""), "no rows"),
    ("duplicate ids", _rows(ROW, ROW), "duplicate id"),
    ("not UTF-8", _task_file(b'{"id": "r1", "question": "\xff\xfe"}\n'), "UTF-8"),
    ("invalid JSON line", _task_file(b'{"id": "r1",\n'), "invalid JSON"),
    ("row without answer", _rows({k: v for k, v in ROW.items() if k != "answer"}), "answer"),
    ("row without template field", _rows({k: v for k, v in ROW.items() if k != "summary"}), "summary"),
    ("grader spec typo", _sub('grader = "exact"', 'grader = "pythn:x:y"'), "pythn:x:y"),
    ("grader module missing", _sub('grader = "exact"', 'grader = "python:no_such_module_xyz:f"'), "no_such_module_xyz"),
    ("student path missing", _sub('model = "student"\n\n[sampling]', 'model = "./no/such/model"\n\n[sampling]'), "student.model"),
    ("teacher folder without config", _teacher_model_without_config, "config.json"),
    ("tokenizer mismatch", _teacher_with_other_tokenizer, "does not share the student's tokenizer"),
    ("budget cannot fit one node", _sub("top_k = 2", "top_k = 2\nbudget_continuations = 3"), "branching.budget_continuations"),
    ("beyond the context length", _sub("max_new_tokens = 64", "max_new_tokens = 400"), "sampling.max_new_tokens"),
    ("TOML syntax error", _sub("[sampling]", "[sampling"), "invalid TOML"),
    ("negative limit", _sub("limit = 6", "limit = -1"), "task.limit"),
    ("offset past the end", _sub("limit = 6", "limit = 6\noffset = 100000"), "no rows left"),
]


@pytest.mark.parametrize("name,mutate,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_validate(tmp_path, name, mutate, needle):
    cfg = tmp_path / "run.toml"
    cfg.write_text(mutate(DEMO, tmp_path))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = CliRunner().invoke(app, ["validate", str(cfg)])
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_missing_config_file(tmp_path):
    r = CliRunner().invoke(app, ["validate", str(tmp_path / "nope.toml")])
    assert r.exit_code == 2 and "nope.toml" in r.stderr


@pytest.mark.parametrize("name,mutate,needle", [CASES[7], CASES[12], CASES[21]], ids=["context", "dup-ids", "tokenizer"])
def test_bad_input_diagnose_writes_nothing(tmp_path, name, mutate, needle):
    cfg = tmp_path / "run.toml"
    cfg.write_text(mutate(DEMO, tmp_path))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["diagnose", str(cfg), "--out", str(out)])
    assert r.exit_code == 2 and needle in r.stderr, r.output
    assert not out.exists()


def test_case_table_is_large_and_distinct():
    assert len(CASES) >= 20 and len({c[2] for c in CASES}) >= 20


def test_vllm_backend_without_vllm_gives_install_hint(tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    cfg = tmp_path / "run.toml"
    cfg.write_text(DEMO.replace("[sampling]\n", '[sampling]\nbackend = "vllm"\n'))
    r = CliRunner().invoke(app, ["validate", str(cfg)])
    assert r.exit_code == 2 and "pip install 'gradalign[vllm]'" in r.stderr
    assert len([l for l in r.stderr.splitlines() if l.strip()]) == 1


def test_demo_with_an_unknown_backend_fails_in_one_line(tmp_path):
    r = CliRunner().invoke(app, ["demo", "--backend", "sglang", "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "sampling.backend: must be one of 'hf', 'vllm'" in r.stderr
    assert len([l for l in r.stderr.splitlines() if l.strip()]) == 1 and not (tmp_path / "d").exists()
