"""Run configuration: one TOML file validated into frozen dataclasses.

Owns: the run-config schema and its defaults (`default_config_dict`), reading TOML
(`load_config`), validating plain dicts (`config_from_dict`), dotted-key overrides
(`apply_overrides`, `parse_overrides`), writing a resolved config back out (`RunConfig.to_dict`,
`RunConfig.to_toml`), the branching-selector syntax (`SelectorSpec`, `parse_selector`) and the
template syntax check (`template_fields`).

Does NOT own anything that needs files or models: whether a task file or bundled task exists,
whether a model path / HF id / GGUF file resolves, whether a `python:module:function` grader
imports, or whether a task's rows carry the fields a template needs (the engine checks rows with
`template_fields`). Validation here is shape, type and range only.

Every validation failure is a `ConfigError` whose message is one line,
``"{source}: {field}: {problem}; {fix}"``, e.g.
``demo.toml: sampling.temprature: unknown key; did you mean 'temperature'?``.
Settings that are legal but bias the diagnosis (top_p < 1, top_k > 0, one continuation per
candidate) are logged as warnings and listed by `config_warnings`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import string
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gradalign.errors import GradalignError

logger = logging.getLogger(__name__)

LOSSES: tuple[str, ...] = ("reverse_kl", "forward_kl", "jsd", "sampled_token")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
BACKENDS: tuple[str, ...] = ("hf", "vllm")
BUILTIN_GRADERS: tuple[str, ...] = ("exact", "numeric", "math-verify")
SELECTOR_FORMS: tuple[str, ...] = ("every", "stride:S", "logspace", "refine")
SECTIONS: tuple[str, ...] = ("run", "task", "student", "sampling", "branching", "distill", "teachers")
REQUIRED_SECTIONS: tuple[str, ...] = ("task", "student", "teachers")
STUDENT_MODEL = "student"  # teacher model name meaning "the student itself"

_TEACHER_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_DEVICE_RE = re.compile(r"cpu|auto|cuda(:\d+)?")
_PY_GRADER_RE = re.compile(
    r"python:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
)
_TOML_POS_RE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


class ConfigError(GradalignError, ValueError):
    """A run-config problem, as one line: ``"{source}: {field}: {problem}; {fix}"``."""

    def __init__(self, source: str, field: str, problem: str, fix: str = "") -> None:
        self.source = source
        self.field = field
        self.problem = problem
        self.fix = fix
        msg = f"{source}: {field}: {problem}"
        if fix:
            msg += f"; {fix}"
        # One line, always: a newline inside a value or a path is shown escaped.
        super().__init__(msg.replace("\r", "\\r").replace("\n", "\\n"))

    def __reduce__(self):  # keep picklable (multiprocessing) despite the 4-argument __init__
        return (type(self), (self.source, self.field, self.problem, self.fix))


# --------------------------------------------------------------------------------------------
# Dataclasses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectorSpec:
    """Which nodes of a rollout get branched: every | stride:S | logspace | refine."""

    kind: str
    stride: int | None = None

    def __post_init__(self) -> None:
        kinds = ("every", "stride", "logspace", "refine")
        if self.kind not in kinds:
            raise ValueError(f"selector kind must be one of {kinds}, got {self.kind!r}")
        if self.kind == "stride":
            if type(self.stride) is not int or self.stride < 1:
                raise ValueError(f"stride selector needs an integer stride >= 1, got {self.stride!r}")
        elif self.stride is not None:
            raise ValueError(f"selector {self.kind!r} takes no stride, got {self.stride!r}")

    def __str__(self) -> str:
        return f"stride:{self.stride}" if self.kind == "stride" else self.kind


@dataclass(frozen=True)
class RunSection:
    name: str = "run"
    seed: int = 0


@dataclass(frozen=True)
class TaskConfig:
    name: str = "addition"
    path: str = ""
    split: str = "test"
    limit: int = 0
    offset: int = 0
    prompt: str = "Q {question}\n"
    grader: str = "exact"
    grader_timeout_s: float = 5.0
    chat: bool = False  # render context + prompt as one user message with the tokenizer's chat template
    id_field: str = "id"
    answer_field: str = "answer"


@dataclass(frozen=True)
class ModelConfig:
    model: str = "student"
    dtype: str = "float32"
    device: str = "cpu"
    gguf_file: str = ""
    revision: str = ""


@dataclass(frozen=True)
class SamplingConfig:
    backend: str = "hf"
    rollouts_per_question: int = 4
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 64
    # vLLM only: share of the accelerator's memory its engine may take (weights + KV cache).
    # 0 = auto: half of what is free once the transformers student and teachers are loaded, so
    # teacher scoring keeps room beside the engine. Ignored by the hf backend and on CPU.
    vllm_memory_fraction: float = 0.0
    # vLLM only: skip torch.compile / CUDA graphs. Halves engine start-up on CPU (25 s vs 50 s for
    # a one-layer test model, measured once on 2 shared cores) at some decode speed; worth it for
    # small runs and tests, not for long GPU runs.
    vllm_eager: bool = False


@dataclass(frozen=True)
class BranchingConfig:
    selector: SelectorSpec = SelectorSpec("logspace")
    continuations: int = 8
    top_k: int = 3
    coverage: float = 0.0
    max_candidates: int = 16
    residual: bool = True
    residual_min_mass: float = 1e-3
    budget_tokens: int = 0
    budget_continuations: int = 0
    nodes_per_window: int = 2
    value_continuations: int = 4
    refine_nodes: int = 4
    adaptive_target_width: float = 0.0
    adaptive_max: int = 32


@dataclass(frozen=True)
class DistillConfig:
    losses: tuple[str, ...] = LOSSES
    jsd_beta: float = 0.5


@dataclass(frozen=True)
class TeacherConfig:
    name: str = "self-solution"
    model: str = STUDENT_MODEL
    context: str = "Reference solution: {solution}\n"
    dtype: str = ""
    gguf_file: str = ""

    @property
    def is_student(self) -> bool:
        """True when the teacher is the student model itself (self-distillation with a context)."""
        return self.model == STUDENT_MODEL


@dataclass(frozen=True)
class RunConfig:
    run: RunSection
    task: TaskConfig
    student: ModelConfig
    sampling: SamplingConfig
    branching: BranchingConfig
    distill: DistillConfig
    teachers: tuple[TeacherConfig, ...]
    # Where the config came from (file path or "<dict>"); not part of equality or hashing.
    source: str = field(default="<dict>", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict in the TOML schema; `config_from_dict(c.to_dict()) == c`."""
        out: dict[str, Any] = {}
        for name in SECTIONS[:-1]:
            section = dataclasses.asdict(getattr(self, name))
            for key, value in section.items():
                if isinstance(value, tuple):
                    section[key] = list(value)
            out[name] = section
        out["branching"]["selector"] = str(self.branching.selector)
        out["teachers"] = [dataclasses.asdict(t) for t in self.teachers]
        return out

    def to_toml(self) -> str:
        """The resolved config as TOML text (`tomllib.loads` of it gives back `to_dict()`)."""
        d = self.to_dict()
        lines: list[str] = []
        for name in SECTIONS[:-1]:
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in d[name].items()]
            lines.append("")
        for teacher in d["teachers"]:
            lines.append("[[teachers]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in teacher.items()]
            lines.append("")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def default_config_dict() -> dict[str, Any]:
    """The defaults as a nested dict (a complete, valid config: one self-solution teacher)."""
    return RunConfig(
        run=RunSection(),
        task=TaskConfig(),
        student=ModelConfig(),
        sampling=SamplingConfig(),
        branching=BranchingConfig(),
        distill=DistillConfig(),
        teachers=(TeacherConfig(),),
    ).to_dict()


def parse_selector(text: str) -> SelectorSpec:
    """Parse a selector string ("every", "stride:S", "logspace", "refine"); ValueError if bad."""
    forms = ", ".join(repr(f) for f in SELECTOR_FORMS)
    if not isinstance(text, str):
        raise ValueError(f"must be a string, one of {forms}, got {_show(text)}")
    if text in ("every", "logspace", "refine"):
        return SelectorSpec(text)
    m = re.fullmatch(r"stride:(\d+)", text)
    if m and int(m.group(1)) >= 1:
        return SelectorSpec("stride", int(m.group(1)))
    raise ValueError(f"invalid selector {text!r}; valid forms: {forms} (S an integer >= 1)")


def template_fields(template: str) -> tuple[str, ...]:
    """Row field names a str.format template needs, in first-use order, without duplicates.

    ``"Q {question} {meta[src]:>{width}}"`` -> ``("question", "meta", "width")``.
    Raises ValueError for bad braces, positional fields (``{}``, ``{0}``) or a bad conversion.
    """
    names: list[str] = []
    _collect_fields(template, names, depth=0)
    return tuple(dict.fromkeys(names))


def parse_overrides(items: Iterable[str]) -> dict[str, object]:
    """Turn CLI ``key=value`` strings into an overrides dict for `apply_overrides`.

    The value is read as a TOML value when it parses (``3``, ``0.5``, ``true``, ``["jsd"]``,
    ``"quoted"``) and taken as a bare string otherwise (``task.name=addition``).
    """
    out: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("overrides", item, "expected KEY=VALUE", "e.g. sampling.temperature=0.7")
        text = text.strip()
        try:
            value: object = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out[key] = value
    return out


def config_warnings(cfg: RunConfig) -> tuple[str, ...]:
    """Legal settings that bias or weaken the diagnosis, one line each (also logged on load)."""
    out: list[str] = []
    if cfg.sampling.top_p < 1.0:
        out.append(
            f"sampling.top_p = {cfg.sampling.top_p} < 1 truncates the student's distribution: "
            "success estimates are for the truncated policy, not the student's own"
        )
    if cfg.sampling.top_k > 0:
        out.append(
            f"sampling.top_k = {cfg.sampling.top_k} > 0 truncates the student's distribution: "
            "success estimates are for the truncated policy, not the student's own"
        )
    if cfg.branching.continuations == 1:
        out.append(
            "branching.continuations = 1: the debiased cosine needs >= 2 continuations per "
            "candidate and will be unavailable"
        )
    return tuple(out)


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a TOML run config; any problem is a one-line ConfigError."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError(source, "<file>", "config file not found", "check the path") from None
    except IsADirectoryError:
        raise ConfigError(source, "<file>", "is a directory, not a TOML file", "pass the .toml file") from None
    except OSError as exc:
        raise ConfigError(source, "<file>", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "<file>", f"not valid UTF-8 ({exc.reason} at byte {exc.start})",
                          "save the file as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _TOML_POS_RE.search(msg)
        if m and m.group(1):
            line, where = m.group(1), f" (column {m.group(2)})"
        else:
            line, where = str(max(1, len(text.splitlines()))), " (at end of file)" if m else ""
        problem = (msg[: m.start()] if m else msg) + where
        raise ConfigError(f"{source}:{line}", "<toml>", f"invalid TOML: {problem}",
                          "fix the TOML syntax on that line") from None
    return config_from_dict(data, source=source)


def config_from_dict(d: Mapping[str, Any], source: str = "<dict>") -> RunConfig:
    """Validate a nested dict (the TOML schema) into a RunConfig; warnings are logged."""
    if not isinstance(d, Mapping):
        raise ConfigError(source, "<root>", f"must be a table of sections, got {_show(d)}")
    for key in d:
        if key not in SECTIONS:
            raise ConfigError(source, str(key), "unknown section", _suggest(str(key), SECTIONS))
    for name in REQUIRED_SECTIONS:
        if name not in d:
            example = "[[teachers]]" if name == "teachers" else f"[{name}]"
            raise ConfigError(source, name, "missing required section", f"add a {example} table")
    cfg = RunConfig(
        run=_parse_run(_Section(source, "run", d.get("run", {}), RunSection)),
        task=_parse_task(_Section(source, "task", d["task"], TaskConfig)),
        student=_parse_student(_Section(source, "student", d["student"], ModelConfig)),
        sampling=_parse_sampling(_Section(source, "sampling", d.get("sampling", {}), SamplingConfig)),
        branching=_parse_branching(_Section(source, "branching", d.get("branching", {}), BranchingConfig)),
        distill=_parse_distill(_Section(source, "distill", d.get("distill", {}), DistillConfig)),
        teachers=_parse_teachers(source, d["teachers"]),
        source=source,
    )
    for warning in config_warnings(cfg):
        logger.warning("%s: %s", source, warning)
    return cfg


def apply_overrides(cfg: RunConfig, overrides: Mapping[str, object]) -> RunConfig:
    """Return `cfg` with dotted-key overrides applied and the result re-validated.

    Keys are ``section.key`` (``"task.limit"``) or ``teachers[i].key`` / ``teachers.i.key``.
    Setting ``task.path`` without ``task.name`` clears ``task.name`` (and vice versa), so a
    path override replaces a bundled task instead of tripping the exactly-one-of check.
    Errors name the source ``overrides``.
    """
    src = "overrides"
    d = cfg.to_dict()
    for dotted, value in overrides.items():
        section, index, key = _split_override_key(src, dotted)
        if section == "teachers":
            teachers = d["teachers"]
            if index is None:
                raise ConfigError(src, dotted, "teacher overrides need an index",
                                  "use teachers[0].KEY (or teachers.0.KEY)")
            if index >= len(teachers):
                raise ConfigError(src, dotted, f"no teacher at index {index} ({len(teachers)} defined)",
                                  f"use an index in 0..{len(teachers) - 1}")
            table, valid = teachers[index], _field_names(TeacherConfig)
        else:
            if index is not None:
                raise ConfigError(src, dotted, f"section {section!r} is not an array",
                                  f"use {section}.KEY")
            table, valid = d[section], _field_names(_SECTION_CLASSES[section])
        if key not in valid:
            raise ConfigError(src, dotted, "unknown key", _suggest_key(key, section, valid))
        table[key] = list(value) if isinstance(value, tuple) else value
    for mine, other in (("path", "name"), ("name", "path")):
        if f"task.{mine}" in overrides and f"task.{other}" not in overrides and overrides[f"task.{mine}"]:
            d["task"][other] = ""
    new = config_from_dict(d, source=src)
    return dataclasses.replace(new, source=cfg.source)


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------

_SECTION_CLASSES: dict[str, type] = {
    "run": RunSection,
    "task": TaskConfig,
    "student": ModelConfig,
    "sampling": SamplingConfig,
    "branching": BranchingConfig,
    "distill": DistillConfig,
    "teachers": TeacherConfig,
}


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _show(value: object) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return repr(value)
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    kind = {str: "string", list: "array", tuple: "array", dict: "table"}.get(type(value), type(value).__name__)
    return f"{kind} {text}"


def _suggest(key: str, valid: Iterable[str]) -> str:
    valid = tuple(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "valid: " + ", ".join(valid)


def _suggest_key(key: str, section: str, valid: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    elsewhere = [s for s, cls in _SECTION_CLASSES.items() if s != section and key in _field_names(cls)]
    if elsewhere:
        where = f"teachers[i].{key}" if elsewhere[0] == "teachers" else f"{elsewhere[0]}.{key}"
        return f"did you mean {where!r}? ({key} is not in [{section}])"
    return f"valid keys in [{section}]: " + ", ".join(valid)


def _split_override_key(src: str, dotted: str) -> tuple[str, int | None, str]:
    if not isinstance(dotted, str):
        raise ConfigError(src, repr(dotted), "override keys must be strings", "e.g. 'task.limit'")
    m = re.fullmatch(r"([A-Za-z_]+)(?:\[(\d+)\]|\.(\d+))?\.([A-Za-z0-9_]+)", dotted)
    if not m:
        raise ConfigError(src, dotted, "not a dotted key",
                          "use SECTION.KEY (e.g. task.limit) or teachers[i].KEY")
    section, index = m.group(1), m.group(2) or m.group(3)
    if section not in SECTIONS:
        raise ConfigError(src, dotted, "unknown section", _suggest(section, SECTIONS))
    return section, (int(index) if index is not None else None), m.group(4)


def _collect_fields(template: str, names: list[str], depth: int) -> None:
    if depth > 2:
        raise ValueError("format spec nested too deeply")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad braces: {exc} (write literal braces as '{{{{' and '}}}}')") from None
    for _literal, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        base = re.match(r"[^.\[]*", field_name).group()
        if base == "" or base.isdigit():
            raise ValueError(
                f"positional field '{{{field_name}}}' cannot be filled from a row; name a row field "
                "like {question}"
            )
        if conversion not in (None, "r", "s", "a"):
            raise ValueError(f"bad conversion '!{conversion}' in '{{{field_name}}}'; use !r, !s or !a")
        names.append(base)
        if spec and "{" in spec:
            _collect_fields(spec, names, depth + 1)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            esc = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}
            if ch in esc:
                out.append(esc[ch])
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04X}")
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


class _Section:
    """Typed, range-checked reads from one table; unknown keys are rejected up front."""

    def __init__(self, source: str, prefix: str, table: object, cls: type) -> None:
        self.source, self.prefix = source, prefix
        self.defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        section = prefix.split("[")[0]
        if not isinstance(table, Mapping):
            hint = f"write [{section}] with KEY = VALUE lines" if section != "teachers" else "write [[teachers]] entries"
            raise ConfigError(source, prefix, f"must be a table, got {_show(table)}", hint)
        for key in table:
            if key not in self.defaults:
                raise ConfigError(source, f"{prefix}.{key}", "unknown key",
                                  _suggest_key(str(key), section, tuple(self.defaults)))
        self.table = table

    def error(self, key: str, problem: str, fix: str = "") -> ConfigError:
        return ConfigError(self.source, f"{self.prefix}.{key}", problem, fix)

    def has(self, key: str) -> bool:
        return key in self.table

    def get(self, key: str, default: object = dataclasses.MISSING) -> object:
        if key in self.table:
            return self.table[key]
        return self.defaults[key] if default is dataclasses.MISSING else default

    def int(self, key: str, lo: int | None = None, lo_name: str | None = None) -> int:
        v = self.get(key)
        bound = f" >= {lo_name or lo}" if lo is not None else ""
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(key, f"must be an integer{bound}, got {_show(v)}")
        if lo is not None and v < lo:
            raise self.error(key, f"must be an integer{bound}, got {v}")
        return v

    def float(self, key: str, *, gt: float | None = None, ge: float | None = None,
              le: float | None = None, lt: float | None = None) -> float:
        v = self.get(key)
        parts = [f"> {gt}" if gt is not None else "", f">= {ge}" if ge is not None else "",
                 f"<= {le}" if le is not None else "", f"< {lt}" if lt is not None else ""]
        rng = " and ".join(p for p in parts if p)
        want = f"must be a number {rng}".rstrip()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(key, f"{want}, got {_show(v)}")
        x = float(v)
        bad = (not math.isfinite(x) or (gt is not None and not x > gt) or (ge is not None and not x >= ge)
               or (le is not None and not x <= le) or (lt is not None and not x < lt))
        if bad:
            raise self.error(key, f"{want}, got {v!r}")
        return x

    def str(self, key: str, *, nonempty: bool = False, default: object = dataclasses.MISSING) -> str:
        v = self.get(key, default)
        if not isinstance(v, str):
            raise self.error(key, f"must be a string, got {_show(v)}")
        if nonempty and not v.strip():
            raise self.error(key, "must be a non-empty string")
        return v

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        v = self.get(key)
        if not isinstance(v, str) or v not in choices:
            fix = _suggest(v, choices) if isinstance(v, str) else ""
            valid = ", ".join(repr(c) for c in choices)
            raise self.error(key, f"must be one of {valid}, got {_show(v)}", fix if "did you" in fix else "")
        return v

    def bool(self, key: str) -> bool:
        v = self.get(key)
        if not isinstance(v, bool):
            raise self.error(key, f"must be true or false, got {_show(v)}")
        return v

    def template(self, key: str, *, nonempty: bool) -> str:
        v = self.str(key, nonempty=nonempty)
        try:
            template_fields(v)
        except ValueError as exc:
            raise self.error(key, f"invalid template {v!r}: {exc}") from None
        return v


def _parse_run(s: _Section) -> RunSection:
    name = s.str("name", nonempty=True)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise s.error("name", f"must not contain control characters, got {name!r}")
    return RunSection(name=name, seed=s.int("seed", lo=0))


def _parse_task(s: _Section) -> TaskConfig:
    # `name` defaults to the bundled task only when no `path` is given.
    name = s.str("name", default="" if s.has("path") else dataclasses.MISSING)
    path = s.str("path")
    if bool(name) == bool(path):
        what = "both are set" if name else "neither is set"
        raise s.error("name", f"exactly one of task.name / task.path must be set, {what}",
                      "set one and leave the other \"\" (name: a bundled task; path: a .jsonl or .parquet file)")
    if path and not path.lower().endswith((".jsonl", ".parquet")):
        raise s.error("path", f"must be a .jsonl or .parquet file, got {path!r}")
    grader = s.str("grader", nonempty=True)
    if grader not in BUILTIN_GRADERS and not _PY_GRADER_RE.fullmatch(grader):
        valid = ", ".join(repr(g) for g in BUILTIN_GRADERS)
        raise s.error("grader", f"must be one of {valid} or 'python:module:function', got {grader!r}",
                      _suggest(grader, BUILTIN_GRADERS) if not grader.startswith("python") else
                      "module is a dotted import path, function an identifier")
    return TaskConfig(
        name=name,
        path=path,
        split=s.str("split", nonempty=True),
        limit=s.int("limit", lo=0),
        offset=s.int("offset", lo=0),
        prompt=s.template("prompt", nonempty=True),
        grader=grader,
        grader_timeout_s=s.float("grader_timeout_s", gt=0),
        chat=s.bool("chat"),
        id_field=s.str("id_field", nonempty=True),
        answer_field=s.str("answer_field", nonempty=True),
    )


def _parse_student(s: _Section) -> ModelConfig:
    device = s.str("device", nonempty=True)
    if not _DEVICE_RE.fullmatch(device):
        raise s.error("device", f"must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    return ModelConfig(
        model=s.str("model", nonempty=True),
        dtype=s.choice("dtype", DTYPES),
        device=device,
        gguf_file=s.str("gguf_file"),
        revision=s.str("revision"),
    )


def _parse_sampling(s: _Section) -> SamplingConfig:
    return SamplingConfig(
        backend=s.choice("backend", BACKENDS),
        rollouts_per_question=s.int("rollouts_per_question", lo=1),
        max_new_tokens=s.int("max_new_tokens", lo=1),
        temperature=s.float("temperature", gt=0),
        top_p=s.float("top_p", gt=0, le=1),
        top_k=s.int("top_k", lo=0),
        batch_size=s.int("batch_size", lo=1),
        vllm_memory_fraction=s.float("vllm_memory_fraction", ge=0, lt=1),
        vllm_eager=s.bool("vllm_eager"),
    )


def _parse_branching(s: _Section) -> BranchingConfig:
    raw = s.get("selector")
    if isinstance(raw, SelectorSpec):  # already parsed (programmatic use)
        selector = raw
    else:
        try:
            selector = parse_selector(raw)
        except ValueError as exc:
            raise s.error("selector", str(exc)) from None
    continuations = s.int("continuations", lo=1)
    adaptive_target_width = s.float("adaptive_target_width", ge=0)
    adaptive_max = s.int("adaptive_max", lo=1)
    if adaptive_target_width > 0 and adaptive_max < continuations:
        raise s.error("adaptive_max", f"must be an integer >= branching.continuations ({continuations}) "
                      f"when adaptive_target_width > 0, got {adaptive_max}")
    return BranchingConfig(
        selector=selector,
        continuations=continuations,
        top_k=s.int("top_k", lo=0),
        coverage=s.float("coverage", ge=0, lt=1),
        max_candidates=s.int("max_candidates", lo=1),
        residual=s.bool("residual"),
        residual_min_mass=s.float("residual_min_mass", ge=0, le=1),
        budget_tokens=s.int("budget_tokens", lo=0),
        budget_continuations=s.int("budget_continuations", lo=0),
        nodes_per_window=s.int("nodes_per_window", lo=1),
        value_continuations=s.int("value_continuations", lo=1),
        refine_nodes=s.int("refine_nodes", lo=1),
        adaptive_target_width=adaptive_target_width,
        adaptive_max=adaptive_max,
    )


def _parse_distill(s: _Section) -> DistillConfig:
    raw = s.get("losses")
    valid = ", ".join(repr(x) for x in LOSSES)
    if not isinstance(raw, (list, tuple)) or not raw:
        raise s.error("losses", f"must be a non-empty array of loss names, got {_show(raw)}",
                      f"valid losses: {valid}")
    seen: set[str] = set()
    for i, loss in enumerate(raw):
        if not isinstance(loss, str) or loss not in LOSSES:
            fix = _suggest(loss, LOSSES) if isinstance(loss, str) else ""
            raise s.error(f"losses[{i}]", f"unknown loss {_show(loss)}; valid losses: {valid}",
                          fix if "did you" in fix else "")
        if loss in seen:
            raise s.error(f"losses[{i}]", f"duplicate loss {loss!r}", "list each loss once")
        seen.add(loss)
    return DistillConfig(losses=tuple(raw), jsd_beta=s.float("jsd_beta", ge=0, le=1))


def _parse_teachers(source: str, raw: object) -> tuple[TeacherConfig, ...]:
    if isinstance(raw, Mapping):
        raise ConfigError(source, "teachers", "must be an array of tables, got a single table",
                          "write [[teachers]] (double brackets), once per teacher")
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(source, "teachers", f"must be an array of tables, got {_show(raw)}",
                          "write one [[teachers]] table per teacher")
    if not raw:
        raise ConfigError(source, "teachers", "needs at least one teacher", "add a [[teachers]] table")
    out: list[TeacherConfig] = []
    first_index: dict[str, int] = {}
    for i, table in enumerate(raw):
        s = _Section(source, f"teachers[{i}]", table, TeacherConfig)
        name = s.str("name", nonempty=True)
        if not _TEACHER_NAME_RE.fullmatch(name) or name in (".", ".."):
            raise s.error("name", f"must match [A-Za-z0-9_.-]+, got {name!r}",
                          "use letters, digits, '_', '.', '-' only")
        if name in first_index:
            raise s.error("name", f"duplicate teacher name {name!r} (also teachers[{first_index[name]}])",
                          "give each teacher a unique name")
        first_index[name] = i
        dtype = s.str("dtype")
        if dtype and dtype not in DTYPES:
            valid = ", ".join(repr(c) for c in ("",) + DTYPES)
            raise s.error("dtype", f"must be one of {valid}, got {dtype!r}", "\"\" means same as the student")
        out.append(TeacherConfig(
            name=name,
            model=s.str("model", nonempty=True),
            context=s.template("context", nonempty=False),
            dtype=dtype,
            gguf_file=s.str("gguf_file"),
        ))
    return tuple(out)
