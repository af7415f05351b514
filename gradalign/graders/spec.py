"""Grader spec strings: what a grader is called and whether it can be loaded.

Owns:
  * the spec forms (``exact``, ``numeric``, ``math-verify``, ``python:module:function``);
    the built-in kind names come from ``gradalign.config.BUILTIN_GRADERS``, the one list
    config validation also checks against;
  * ``GraderSpec`` / ``parse_grader_spec`` (syntax) and ``check_grader`` (imports);
  * ``GraderSpecError`` and the one-line messages it carries;
  * importing a ``python:`` grader function or the math-verify package.

Does NOT own: what a grader does with a completion (``grading``: answer extraction, the
built-in comparisons, ``Verdict``), or where and when it runs (``pool``: worker processes,
timeouts, caching).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

from gradalign.config import BUILTIN_GRADERS
from gradalign.errors import GradalignError

VALID_FORMS = " | ".join((*BUILTIN_GRADERS, "python:module:function"))
MATH_INSTALL_HINT = "pip install 'gradalign[math]'"

_IN_PROCESS_KINDS = ("exact", "numeric")  # the built-ins cheap and safe enough to run in the caller
_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class GraderSpecError(GradalignError, ValueError):
    """A grader spec string is malformed, or names a grader that cannot be loaded."""


@dataclass(frozen=True)
class GraderSpec:
    """A parsed grader spec. ``module``/``function`` are set only for kind ``python``."""

    kind: str  # "exact" | "numeric" | "math-verify" | "python"
    module: str | None
    function: str | None
    raw: str

    @property
    def runs_in_process(self) -> bool:
        return self.kind in _IN_PROCESS_KINDS


def _spec_error(spec: str, problem: str) -> GraderSpecError:
    return GraderSpecError(f"invalid grader spec {spec!r}: {problem}; valid forms: {VALID_FORMS}")


def parse_grader_spec(spec: str) -> GraderSpec:
    """Parse a grader spec string (syntax only; see ``check_grader`` to validate imports)."""
    if not isinstance(spec, str):
        raise _spec_error(str(spec), f"expected a string, got {type(spec).__name__}")
    text = spec.strip()
    if text in BUILTIN_GRADERS:
        return GraderSpec(kind=text, module=None, function=None, raw=spec)
    if text.startswith("python:"):
        parts = text.split(":")
        if len(parts) != 3:
            raise _spec_error(spec, "a python grader needs exactly 'python:module:function'")
        _, module, function = parts
        if not _DOTTED_NAME.fullmatch(module):
            raise _spec_error(spec, f"{module!r} is not a (dotted) module name")
        if not _IDENTIFIER.fullmatch(function):
            raise _spec_error(spec, f"{function!r} is not a function name")
        return GraderSpec(kind="python", module=module, function=function, raw=spec)
    raise _spec_error(spec, "unknown grader kind")


def import_python_grader(spec: GraderSpec) -> Callable[[str, dict], Any]:
    """Import ``spec.module`` (from sys.path or the current directory) and return the callable."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(spec.module)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a user module may raise anything at import time, sys.exit included
        why = (f"it called sys.exit({exc.code!r}) at import" if isinstance(exc, SystemExit)
               else f"{type(exc).__name__}: {exc}")
        raise _spec_error(spec.raw, f"cannot import module {spec.module!r} ({why})") from exc
    finally:
        if added:
            sys.path.remove(cwd)
    try:
        fn = getattr(module, spec.function)
    except AttributeError as exc:
        raise _spec_error(
            spec.raw, f"module {spec.module!r} has no attribute {spec.function!r}"
        ) from exc
    if not callable(fn):
        raise _spec_error(
            spec.raw, f"{spec.module}.{spec.function} is a {type(fn).__name__}, not callable"
        )
    return fn


def import_math_verify() -> tuple[Callable, Callable]:
    """math-verify's ``parse`` and ``verify``, or ``GraderSpecError`` naming the install command."""
    try:
        from math_verify import parse, verify
    except ImportError as exc:
        raise GraderSpecError(
            f"grader spec 'math-verify' needs the math-verify package "
            f"({type(exc).__name__}: {exc}); install it with: {MATH_INSTALL_HINT}"
        ) from exc
    return parse, verify


def check_grader(spec: str | GraderSpec) -> GraderSpec:
    """Validate a grader without grading anything; returns the parsed spec.

    For ``python:`` specs this imports the module in the calling process and
    checks the attribute is callable; for ``math-verify`` it checks the package
    imports. Raises ``GraderSpecError`` with a one-line message otherwise.
    """
    parsed = spec if isinstance(spec, GraderSpec) else parse_grader_spec(spec)
    if parsed.kind == "python":
        import_python_grader(parsed)
    elif parsed.kind == "math-verify":
        import_math_verify()
    return parsed
