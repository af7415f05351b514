"""Tests for gradalign.config: defaults, round trip, validation messages, overrides."""

from __future__ import annotations

import copy
import logging
import pickle
import tomllib

import pytest

from gradalign.config import (
    LOSSES,
    BranchingConfig,
    ConfigError,
    RunConfig,
    SelectorSpec,
    TeacherConfig,
    apply_overrides,
    config_from_dict,
    config_warnings,
    default_config_dict,
    load_config,
    parse_overrides,
    parse_selector,
    template_fields,
)

MINIMAL_TOML = """
[task]
name = "addition"

[student]

[[teachers]]
name = "self-solution"
"""

FULL_TOML = """
[run]
name = "demo"
seed = 7

[task]
path = "data/q.jsonl"
limit = 10
offset = 2
prompt = "Question: {question}\\nAnswer:"
grader = "python:my.graders:check"
grader_timeout_s = 2

[student]
model = "Qwen/Qwen3-0.6B"
dtype = "bfloat16"
device = "cuda:1"

[sampling]
backend = "vllm"
rollouts_per_question = 8
temperature = 0.7

[branching]
selector = "stride:4"
continuations = 16
coverage = 0.9
residual = false
adaptive_target_width = 0.2
adaptive_max = 64

[distill]
losses = ["jsd", "reverse_kl"]
jsd_beta = 0.1

[[teachers]]
name = "self-solution"
context = "Reference solution: {solution}\\n"

[[teachers]]
name = "big.teacher-1"
model = "Qwen/Qwen3-8B"
context = ""
dtype = "float16"
"""


def _base() -> dict:
    return default_config_dict()


def _with(path: tuple, value) -> dict:
    """Defaults with one nested entry set (path of keys / list indices)."""
    d = _base()
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


def _without(section: str) -> dict:
    d = _base()
    del d[section]
    return d


# ---------------------------------------------------------------------------- defaults / round trip


def test_defaults_match_schema():
    cfg = config_from_dict(_base())
    assert cfg.run.name == "run" and cfg.run.seed == 0
    assert cfg.task.name == "addition" and cfg.task.path == "" and cfg.task.split == "test"
    assert cfg.task.prompt == "Q {question}\n" and cfg.task.grader == "exact"
    assert cfg.task.grader_timeout_s == 5.0
    assert (cfg.student.model, cfg.student.dtype, cfg.student.device) == ("student", "auto", "cpu")
    assert cfg.sampling.backend == "hf" and cfg.sampling.rollouts_per_question == 4
    assert cfg.sampling.max_new_tokens == 128 and cfg.sampling.batch_size == 0 and cfg.sampling.memory_gib == 0.0
    b = cfg.branching
    assert b.selector == SelectorSpec("logspace", None)
    assert (b.continuations, b.top_k, b.max_candidates, b.adaptive_max) == (8, 3, 16, 32)
    assert b.residual is True and b.residual_min_mass == 1e-3
    assert cfg.distill.losses == LOSSES and cfg.distill.jsd_beta == 0.5
    assert cfg.teachers == (TeacherConfig("self-solution", "student", "Reference solution: {solution}\n", "", ""),)
    assert cfg.teachers[0].is_student
    assert config_warnings(cfg) == ()


def test_minimal_file_gets_defaults(tmp_path):
    p = tmp_path / "min.toml"
    p.write_text(MINIMAL_TOML)
    cfg = load_config(p)
    assert cfg == config_from_dict(_base())
    assert cfg.source == str(p)


def test_full_file_and_round_trip(tmp_path):
    p = tmp_path / "full.toml"
    p.write_text(FULL_TOML)
    cfg = load_config(p)
    assert cfg.task.name == "" and cfg.task.path == "data/q.jsonl"
    assert cfg.task.grader_timeout_s == 2.0 and isinstance(cfg.task.grader_timeout_s, float)
    assert cfg.branching.selector == SelectorSpec("stride", 4)
    assert cfg.distill.losses == ("jsd", "reverse_kl")
    assert [t.name for t in cfg.teachers] == ["self-solution", "big.teacher-1"]
    assert not cfg.teachers[1].is_student
    # dict round trip (source is not part of equality)
    assert config_from_dict(cfg.to_dict()) == cfg
    # TOML round trip
    text = cfg.to_toml()
    assert tomllib.loads(text) == cfg.to_dict()
    p2 = tmp_path / "again.toml"
    p2.write_text(text)
    assert load_config(p2) == cfg
    # frozen + hashable
    assert hash(cfg) == hash(config_from_dict(cfg.to_dict()))
    with pytest.raises(AttributeError):
        cfg.run = None  # type: ignore[misc]
    assert isinstance(cfg.teachers, tuple) and isinstance(cfg.distill.losses, tuple)


def test_to_toml_escapes_awkward_strings():
    d = _with(("teachers", 0, "context"), 'Say "hi"\\ {solution}\t\x01\n')
    cfg = config_from_dict(d)
    assert tomllib.loads(cfg.to_toml())["teachers"][0]["context"] == 'Say "hi"\\ {solution}\t\x01\n'


def test_default_config_dict_is_fresh():
    d = default_config_dict()
    d["run"]["seed"] = 99
    assert default_config_dict()["run"]["seed"] == 0


def test_config_from_dict_does_not_mutate_input():
    d = _base()
    before = copy.deepcopy(d)
    config_from_dict(d)
    assert d == before


# ---------------------------------------------------------------------------- bad inputs

BAD_INPUTS = [
    # (id, dict, expected substring)
    ("unknown-key-did-you-mean", _with(("sampling", "temprature"), 0.5),
     "sampling.temprature: unknown key; did you mean 'temperature'?"),
    ("unknown-key-other-section", _with(("sampling", "seed"), 3), "did you mean 'run.seed'?"),
    ("unknown-key-no-match", _with(("run", "zzzzzz"), 1), "run.zzzzzz: unknown key; valid keys in [run]"),
    ("unknown-section", {**_base(), "samplng": {}}, "samplng: unknown section; did you mean 'sampling'?"),
    ("unknown-teacher-key", _with(("teachers", 0, "contex"), ""), "teachers[0].contex: unknown key; did you mean 'context'?"),
    ("bool-for-int", _with(("branching", "continuations"), True), "branching.continuations: must be an integer >= 1"),
    ("bool-for-float", _with(("sampling", "temperature"), True), "sampling.temperature: must be a number"),
    ("float-for-int", _with(("sampling", "max_new_tokens"), 3.0), "sampling.max_new_tokens: must be an integer"),
    ("str-for-int", _with(("task", "limit"), "3"), "task.limit: must be an integer >= 0, got string '3'"),
    ("str-for-float", _with(("sampling", "temperature"), "0.7"), "sampling.temperature: must be a number"),
    ("zero-continuations", _with(("branching", "continuations"), 0),
     "branching.continuations: must be an integer >= 1, got 0"),
    ("negative-seed", _with(("run", "seed"), -1), "run.seed: must be an integer >= 0, got -1"),
    ("negative-offset", _with(("task", "offset"), -2), "task.offset: must be an integer >= 0"),
    ("zero-temperature", _with(("sampling", "temperature"), 0), "sampling.temperature: must be a number > 0"),
    ("nan-temperature", _with(("sampling", "temperature"), float("nan")), "sampling.temperature"),
    ("top-p-above-1", _with(("sampling", "top_p"), 1.5), "sampling.top_p: must be a number > 0 and <= 1"),
    ("coverage-1", _with(("branching", "coverage"), 1.0), "branching.coverage: must be a number >= 0 and < 1"),
    ("jsd-beta-range", _with(("distill", "jsd_beta"), 1.01), "distill.jsd_beta"),
    ("timeout-zero", _with(("task", "grader_timeout_s"), 0), "task.grader_timeout_s"),
    ("residual-not-bool", _with(("branching", "residual"), 1), "branching.residual: must be true or false"),
    ("adaptive-max-small", {**_base(), "branching": {"continuations": 16, "adaptive_target_width": 0.1,
                                                      "adaptive_max": 8}}, "branching.adaptive_max"),
    ("bad-selector", _with(("branching", "selector"), "stride"), "branching.selector: invalid selector 'stride'; valid forms"),
    ("bad-selector-stride-0", _with(("branching", "selector"), "stride:0"), "'stride:S'"),
    ("bad-selector-word", _with(("branching", "selector"), "random"), "'every', 'stride:S', 'logspace', 'refine'"),
    ("selector-not-str", _with(("branching", "selector"), 4), "branching.selector: must be a string"),
    ("dup-teacher-names", {**_base(), "teachers": [{"name": "a"}, {"name": "a", "context": ""}]},
     "teachers[1].name: duplicate teacher name 'a'"),
    ("bad-teacher-name-chars", _with(("teachers", 0, "name"), "my teacher"), "teachers[0].name: must match [A-Za-z0-9_.-]+"),
    ("empty-teacher-name", _with(("teachers", 0, "name"), ""), "teachers[0].name: must be a non-empty string"),
    ("teacher-bad-dtype", _with(("teachers", 0, "dtype"), "fp8"), "teachers[0].dtype: must be one of"),
    ("bad-prompt-braces", _with(("task", "prompt"), "Q {question\n"), "task.prompt: invalid template"),
    ("bad-context-braces", _with(("teachers", 0, "context"), "Sol: solution}"), "teachers[0].context: invalid template"),
    ("positional-template", _with(("task", "prompt"), "Q {}\n"), "task.prompt: invalid template"),
    ("bad-conversion", _with(("task", "prompt"), "Q {question!x}"), "task.prompt: invalid template"),
    ("empty-prompt", _with(("task", "prompt"), ""), "task.prompt: must be a non-empty string"),
    ("task-both", _with(("task", "path"), "q.jsonl"), "task.name: exactly one of task.name / task.path must be set, both"),
    ("task-neither", _with(("task", "name"), ""), "task.name: exactly one of task.name / task.path must be set, neither"),
    ("task-path-ext", {**_base(), "task": {"path": "q.csv"}}, "task.path: must be a .jsonl or .parquet file"),
    ("bad-grader", _with(("task", "grader"), "exactt"), "task.grader: must be one of 'exact'"),
    ("bad-python-grader", _with(("task", "grader"), "python:mod"), "task.grader"),
    ("empty-teachers", _with(("teachers",), []), "teachers: needs at least one teacher"),
    ("teachers-single-table", _with(("teachers",), {"name": "a"}), "teachers: must be an array of tables"),
    ("missing-teachers", _without("teachers"), "teachers: missing required section"),
    ("missing-task", _without("task"), "task: missing required section"),
    ("missing-student", _without("student"), "student: missing required section"),
    ("section-not-table", _with(("run",), 3), "run: must be a table"),
    ("unknown-loss", _with(("distill", "losses"), ["reverse_kl", "kl"]),
     "distill.losses[1]: unknown loss string 'kl'; valid losses: 'reverse_kl', 'forward_kl', 'jsd', 'sampled_token'"),
    ("dup-loss", _with(("distill", "losses"), ["jsd", "jsd"]), "distill.losses[1]: duplicate loss 'jsd'"),
    ("empty-losses", _with(("distill", "losses"), []), "distill.losses: must be a non-empty array"),
    ("bad-dtype", _with(("student", "dtype"), "fp32"), "student.dtype: must be one of 'float32', 'bfloat16', 'float16'"),
    ("bad-device", _with(("student", "device"), "gpu"), "student.device: must be 'cpu', 'cuda', 'cuda:N' or 'auto'"),
    ("bad-backend", _with(("sampling", "backend"), "sglang"), "sampling.backend: must be one of 'hf', 'vllm'"),
    ("vllm-memory-one", _with(("sampling", "vllm_memory_fraction"), 1.0), "sampling.vllm_memory_fraction: must be"),
    ("empty-model", _with(("student", "model"), ""), "student.model: must be a non-empty string"),
    ("run-name-newline", _with(("run", "name"), "a\nb"), "run.name: must not contain control characters"),
]


@pytest.mark.parametrize("d, expected", [(d, e) for _, d, e in BAD_INPUTS], ids=[i for i, _, _ in BAD_INPUTS])
def test_bad_inputs(d, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict(d, source="demo.toml")
    msg = str(info.value)
    assert msg.startswith("demo.toml: ")
    assert expected in msg
    assert "\n" not in msg and "\r" not in msg


def test_bad_inputs_are_distinct():
    assert len(BAD_INPUTS) >= 20
    assert len({i for i, _, _ in BAD_INPUTS}) == len(BAD_INPUTS)


def test_error_fields_and_format():
    with pytest.raises(ConfigError) as info:
        config_from_dict(_with(("branching", "continuations"), 0), source="demo.toml")
    err = info.value
    assert str(err) == "demo.toml: branching.continuations: must be an integer >= 1, got 0"
    assert (err.source, err.field) == ("demo.toml", "branching.continuations")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.field == err.field


def test_message_single_line_even_with_newlines_in_source():
    with pytest.raises(ConfigError) as info:
        config_from_dict(_with(("run", "seed"), -1), source="odd\nname.toml")
    assert "\n" not in str(info.value) and "odd\\nname.toml" in str(info.value)
    err = ConfigError("s", "f", "line one\nline two", "fix\r\nit")
    assert "\n" not in str(err) and "\r" not in str(err)


def test_valid_edge_values_accepted():
    d = _base()
    d["branching"].update(selector="stride:1", continuations=1, top_k=0, coverage=0.5, budget_tokens=0)
    d["sampling"].update(top_p=1, temperature=2)  # ints where floats are expected
    d["task"].update(prompt="{{literal}} {question!r}")
    d["teachers"][0].update(context="")
    cfg = config_from_dict(d)
    assert cfg.sampling.top_p == 1.0 and isinstance(cfg.sampling.top_p, float)
    assert cfg.branching.selector == SelectorSpec("stride", 1)
    # adaptive_max below continuations is fine while adaptive sampling is off
    d["branching"].update(continuations=64, adaptive_target_width=0.0, adaptive_max=32)
    assert config_from_dict(d).branching.adaptive_max == 32


def test_warnings_logged(caplog):
    d = _base()
    d["sampling"].update(top_p=0.9, top_k=50)
    d["branching"].update(continuations=1)
    with caplog.at_level(logging.WARNING, logger="gradalign.config"):
        cfg = config_from_dict(d, source="w.toml")
    text = caplog.text
    assert "sampling.top_p" in text and "sampling.top_k" in text and "branching.continuations" in text
    assert len(config_warnings(cfg)) == 3


# ---------------------------------------------------------------------------- files


def test_missing_file(tmp_path):
    p = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(p) in str(info.value) and "not found" in str(info.value)


def test_toml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[task]\nname = "addition"\nlimit = \n')
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}:3: ")
    assert "invalid TOML" in msg and "\n" not in msg


def test_toml_duplicate_key_error(tmp_path):
    p = tmp_path / "dup.toml"
    p.write_text("[run]\nseed = 1\nseed = 2\n")
    with pytest.raises(ConfigError, match=r"dup\.toml:3: "):
        load_config(p)


def test_file_errors_name_source(tmp_path):
    p = tmp_path / "demo.toml"
    p.write_text(MINIMAL_TOML + "\n[sampling]\ntemprature = 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(info.value) == f"{p}: sampling.temprature: unknown key; did you mean 'temperature'?"


# ---------------------------------------------------------------------------- selector / templates


def test_parse_selector():
    assert parse_selector("every") == SelectorSpec("every")
    assert parse_selector("refine") == SelectorSpec("refine")
    assert parse_selector("stride:12") == SelectorSpec("stride", 12)
    assert str(SelectorSpec("stride", 12)) == "stride:12"
    for bad in ("", "stride:", "stride:-1", "stride:0", "stride:x", "Every", "logspace:2"):
        with pytest.raises(ValueError):
            parse_selector(bad)
    with pytest.raises(ValueError):
        SelectorSpec("every", 3)
    with pytest.raises(ValueError):
        SelectorSpec("stride", None)


def test_template_fields():
    assert template_fields("Q {question}\n") == ("question",)
    assert template_fields("") == ()
    assert template_fields("{{not a field}} {a} {b!r} {a} {c!s}") == ("a", "b", "c")
    for bad in ("{", "}", "{a", "{}", "{0}", "{a!z}", "{b.x}", "{c[0]}", "{d:>{w}}"):  # specs/access: tests/unit/test_templates.py
        with pytest.raises(ValueError):
            template_fields(bad)


def test_selector_spec_accepted_programmatically():
    d = _base()
    d["branching"]["selector"] = SelectorSpec("every")
    assert config_from_dict(d).branching == BranchingConfig(selector=SelectorSpec("every"))


# ---------------------------------------------------------------------------- overrides


def test_overrides_valid():
    cfg = config_from_dict(_base(), source="demo.toml")
    new = apply_overrides(cfg, {"run.seed": 3, "task.limit": 2, "sampling.temperature": 1,
                                "branching.selector": "every", "teachers[0].context": "",
                                "distill.losses": ("jsd",)})
    assert new.run.seed == 3 and new.task.limit == 2 and new.sampling.temperature == 1.0
    assert new.branching.selector == SelectorSpec("every")
    assert new.teachers[0].context == "" and new.distill.losses == ("jsd",)
    assert new.source == "demo.toml"
    assert cfg.run.seed == 0  # original untouched
    assert apply_overrides(cfg, {}) == cfg
    assert apply_overrides(cfg, {"teachers.0.name": "t0"}).teachers[0].name == "t0"


def test_override_task_path_replaces_name():
    cfg = config_from_dict(_base())
    new = apply_overrides(cfg, {"task.path": "q.parquet"})
    assert (new.task.name, new.task.path) == ("", "q.parquet")
    back = apply_overrides(new, {"task.name": "addition"})
    assert (back.task.name, back.task.path) == ("addition", "")
    with pytest.raises(ConfigError, match="both are set"):
        apply_overrides(cfg, {"task.path": "q.jsonl", "task.name": "addition"})


@pytest.mark.parametrize("overrides, expected", [
    ({"sampling.temprature": 0.5}, "overrides: sampling.temprature: unknown key; did you mean 'temperature'?"),
    ({"sampling.seed": 3}, "did you mean 'run.seed'?"),
    ({"samplng.temperature": 0.5}, "overrides: samplng.temperature: unknown section; did you mean 'sampling'?"),
    ({"limit": 2}, "overrides: limit: not a dotted key"),
    ({"task.limit": -1}, "overrides: task.limit: must be an integer >= 0, got -1"),
    ({"task.limit": "2"}, "task.limit: must be an integer >= 0, got string '2'"),
    ({"branching.continuations": False}, "branching.continuations: must be an integer >= 1"),
    ({"teachers[3].name": "x"}, "teachers[3].name: no teacher at index 3"),
    ({"teachers.name": "x"}, "teachers.name: teacher overrides need an index"),
    ({"teachers[0].nme": "x"}, "did you mean 'name'?"),
    ({"run[0].seed": 1}, "section 'run' is not an array"),
    ({"distill.losses": ["kl"]}, "distill.losses[0]: unknown loss"),
])
def test_overrides_invalid(overrides, expected):
    cfg = config_from_dict(_base(), source="demo.toml")
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, overrides)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_overrides():
    got = parse_overrides(["task.limit=2", "sampling.temperature = 0.7", "task.name=addition",
                           "branching.residual=false", 'distill.losses=["jsd"]', 'run.name="a b"'])
    assert got == {"task.limit": 2, "sampling.temperature": 0.7, "task.name": "addition",
                   "branching.residual": False, "distill.losses": ["jsd"], "run.name": "a b"}
    cfg = apply_overrides(config_from_dict(_base()), got)
    assert isinstance(cfg, RunConfig) and cfg.task.limit == 2 and cfg.distill.losses == ("jsd",)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["task.limit"])
