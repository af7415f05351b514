"""Grading of student completions against a task row's reference answer.

Modules:
  * ``spec``: grader spec strings (``exact``, ``numeric``, ``math-verify``,
    ``python:module:function``), ``parse_grader_spec``, ``check_grader``,
    ``GraderSpecError``. The built-in kind names are ``gradalign.config.BUILTIN_GRADERS``.
  * ``grading``: what grading one completion means: ``Verdict``, final-answer
    extraction (``extract_answer``), ``parse_number`` / ``numbers_close``, the built-in
    ``exact`` and ``numeric`` comparisons, and the math-verify / ``python:`` grader callables.
  * ``pool``: where and when graders run: ``GraderPool`` (verdict cache, worker processes
    for untrusted graders, per-call timeouts, worker replacement), ``GradeItem``,
    ``GraderStats``, ``GraderPoolError``, and the circuit breaker's ``GraderBroken``.

Does NOT own: loading task rows or datasets, sampling completions, deciding which
completions to grade, aggregating verdicts into success rates, or any reporting.
Callers hand in plain rows and get ``Verdict`` records back. This package re-exports
the public names of its modules, so ``from gradalign.graders import GraderPool`` works.
"""

from gradalign.graders.grading import NUMERIC_TOLERANCE, Verdict, extract_answer, numbers_close, parse_number
from gradalign.graders.pool import (
    BREAKER_MAX_FAILURE_RATE,
    BREAKER_MIN_CALLS,
    GradeItem,
    GraderBroken,
    GraderPool,
    GraderPoolError,
    GraderStats,
)
from gradalign.graders.spec import (
    MATH_INSTALL_HINT,
    VALID_FORMS,
    GraderSpec,
    GraderSpecError,
    check_grader,
    parse_grader_spec,
)

__all__ = [
    "BREAKER_MAX_FAILURE_RATE",
    "BREAKER_MIN_CALLS",
    "MATH_INSTALL_HINT",
    "NUMERIC_TOLERANCE",
    "VALID_FORMS",
    "GradeItem",
    "GraderBroken",
    "GraderPool",
    "GraderPoolError",
    "GraderSpec",
    "GraderSpecError",
    "GraderStats",
    "Verdict",
    "check_grader",
    "extract_answer",
    "numbers_close",
    "parse_grader_spec",
    "parse_number",
]
