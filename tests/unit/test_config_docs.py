"""Config field docs: every field documented once at its definition, rendered, and kept in README."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gradalign import config as C

CONFIG_CLASSES = (
    C.RunConfig, C.RunSection, C.TaskConfig, C.ModelConfig, C.SamplingConfig, C.BranchingConfig, C.DistillConfig,
    C.TeacherConfig, C.SelectorSpec, C.AlignmentConfig,
)
README = Path(__file__).resolve().parents[2] / "README.md"


def _dotted_names() -> list[str]:
    out = []
    for section in C.SECTIONS:
        for f in dataclasses.fields(C._SECTION_CLASSES[section]):
            out.append(f"teachers[i].{f.name}" if section == "teachers" else f"{section}.{f.name}")
    return out


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gradalign", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_field_has_a_doc(cls):
    for f in dataclasses.fields(cls):
        doc = f.metadata.get("doc", "")
        assert isinstance(doc, str) and len(doc.split()) >= 3, f"{cls.__name__}.{f.name} has no doc"
        assert doc == " ".join(doc.split()), f"{cls.__name__}.{f.name}: doc not normalised"


def test_every_section_is_a_documented_runconfig_field():
    fields = {f.name for f in dataclasses.fields(C.RunConfig)}
    assert set(C.SECTIONS) <= fields
    assert set(C._SECTION_CLASSES) == set(C.SECTIONS)


def test_docs_keep_the_defaults():
    # The documented fields still carry plain defaults (validation reads Field.default).
    d = C.default_config_dict()
    assert d["branching"]["residual_min_mass"] == 1e-3 and d["branching"]["adaptive_max"] == 32
    assert d["branching"]["selector"] == "logspace" and d["distill"]["losses"] == list(C.LOSSES)
    assert d["sampling"]["vllm_memory_fraction"] == 0.0 and d["task"]["prompt"] == "Q {question}\n"
    assert C.config_from_dict(d) == C.config_from_dict(C.default_config_dict())


@pytest.mark.parametrize("fmt", C.EXPLAIN_FORMATS)
def test_explain_names_every_dotted_field(fmt):
    text = C.explain_config(fmt)
    names = _dotted_names()
    for must in ("branching.coverage", "branching.refine_nodes", "branching.residual_min_mass",
                 "branching.adaptive_target_width", "branching.adaptive_max", "branching.budget_tokens",
                 "branching.budget_continuations", "teachers[i].context", "sampling.vllm_eager"):
        assert must in names
    for name in names:
        assert name in text, f"{name} missing from explain_config({fmt!r})"
    for f in dataclasses.fields(C.BranchingConfig):
        assert f.metadata["doc"] in " ".join(text.split())


def test_explain_markdown_lines_carry_type_and_default():
    md = C.explain_config("markdown")
    assert "- `branching.residual_min_mass` (float, default `0.001`): " in md
    assert "- `branching.selector` (string, default `\"logspace\"`): " in md
    assert "- `distill.losses` (array of strings, default " in md
    assert "### `[[teachers]]`" in md


def test_explain_text_fits_100_columns():
    assert max(len(line) for line in C.explain_config("text").splitlines()) <= 100


def test_explain_rejects_unknown_format():
    with pytest.raises(ValueError, match="bogus"):
        C.explain_config("bogus")


def test_readme_reference_is_the_generated_markdown():
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", text, re.S)
    assert m, "README.md has no config-reference markers"
    assert m.group(1) == C.explain_config("markdown"), (
        "README's Config reference is stale: replace the text between the markers with "
        "`gradalign config --explain --format markdown`")
    assert text.index("## Config reference") < text.index("<!-- config-reference:start -->")


def test_cli_explain_prints_every_field():
    r = _cli("config", "--explain")
    assert r.returncode == 0, r.stderr
    assert "branching.residual_min_mass" in r.stdout
    assert r.stdout == C.explain_config("text")
    r = _cli("config", "--explain", "--format", "markdown")
    assert r.returncode == 0 and r.stdout == C.explain_config("markdown")


def test_cli_bad_format_exits_2_with_one_line():
    r = _cli("config", "--explain", "--format", "bogus")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bogus" in lines[0], r.stderr
    assert r.stdout == ""


def test_cli_needs_config_or_explain():
    r = _cli("config")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_cli_prints_a_config_resolved(tmp_path):
    from gradalign.tasks import data_dir

    r = _cli("config", str(data_dir() / "configs" / "demo.toml"), "--set", "task.limit=3")
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "resolved.toml"
    cfg.write_text(r.stdout)
    got = C.load_config(cfg)
    assert got.task.limit == 3 and got.branching.residual_min_mass == 1e-3
    assert got == C.apply_overrides(C.load_config(data_dir() / "configs" / "demo.toml"), {"task.limit": 3})


def test_cli_bad_config_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[task]\nname = 'addition'\n[student]\n[[teachers]]\nname = 'x'\n[branching]\ncoverag = 0.5\n")
    r = _cli("config", str(bad))
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "branching.coverag" in lines[0] and "coverage" in lines[0], r.stderr


def test_cli_help_ends_with_an_example():
    r = _cli("config", "--help")
    assert r.returncode == 0
    assert "Example: gradalign config" in " ".join(r.stdout.split())
