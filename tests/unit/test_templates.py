"""Prompt/context templates: only plain {field} (with an optional !r/!s/!a conversion). Format
specs and attribute/index access depend on a row value's type and used to pass config checks, then
raise tracebacks in `validate` and `diagnose`; config validation rejects them in one line naming
the field."""

from __future__ import annotations

import pytest
from gradalign.cli.app import app
from typer.testing import CliRunner

from gradalign.config import ConfigError, config_from_dict, default_config_dict, template_fields
from gradalign.tasks import data_dir

UNSUPPORTED = "format specs and attribute/index access are not supported"

REJECTED = [
    ("{question:d}", "'{question:d}'", "{question}"),
    ("Q {question.nope}\n", "'{question.nope}'", "{question}"),
    ("{question[0]}", "'{question[0]}'", "{question}"),
    ("{question!r:>10}", "'{question!r:>10}'", "{question}"),
    ("{meta[src]:>{width}}", "'{meta[src]:>{width}}'", "{meta}"),
    ("ok {question} then {answer:.2f}", "'{answer:.2f}'", "{answer}"),
]


def _with_template(field: str, template: str) -> dict:
    d = default_config_dict()
    if field == "task.prompt":
        d["task"]["prompt"] = template
    else:
        d["teachers"][0]["context"] = template
    return d


@pytest.mark.parametrize("field", ["task.prompt", "teachers[0].context"])
@pytest.mark.parametrize("template, shown, plain", REJECTED, ids=[r[0] for r in REJECTED])
def test_specs_and_access_rejected_naming_the_field(field, template, shown, plain):
    with pytest.raises(ConfigError) as info:
        config_from_dict(_with_template(field, template), source="run.toml")
    msg = str(info.value)
    assert msg.startswith(f"run.toml: {field}: invalid template {template!r}: "), msg
    assert msg.endswith(f"{shown}: {UNSUPPORTED}; use plain {plain}"), msg
    assert "\n" not in msg


@pytest.mark.parametrize("template, fields", [
    ("Q {question}\n", ("question",)),
    ("{question!r} {{literal braces}} {hint!s}", ("question", "hint")),
    ("", ()),
])
def test_plain_fields_accepted(template, fields):
    assert template_fields(template) == fields
    assert config_from_dict(_with_template("task.prompt", template or "x")).task.prompt == (template or "x")


def test_validate_cli_rejects_a_format_spec_in_one_line(tmp_path):
    cfg = tmp_path / "run.toml"
    demo = (data_dir() / "configs" / "demo.toml").read_text()
    assert 'prompt = "Q {question}\\n"' in demo
    cfg.write_text(demo.replace('prompt = "Q {question}\\n"', 'prompt = "Q {question:d}\\n"'))
    r = CliRunner().invoke(app, ["validate", str(cfg)])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {cfg}: task.prompt: invalid template 'Q {{question:d}}\\n': '{{question:d}}': "
                     f"{UNSUPPORTED}; use plain {{question}}"], r.stderr
