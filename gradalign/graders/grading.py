"""Grading one completion against a task row's reference answer, once, in the calling process.

Owns:
  * ``Verdict``, the outcome record every grader returns;
  * the final-answer section of a completion (``final_section``: the text after the last
    ``task.answer_delimiter``, e.g. ``</think>``), final-answer extraction from it (the GSM8K
    ``####`` marker's line or the last ``\\boxed{...}``, whichever comes last) and exact number
    parsing;
  * the built-in ``exact`` and ``numeric`` comparisons (``IN_PROCESS_GRADERS``);
  * the callables that run ``math-verify`` and ``python:`` graders on one item
    (``load_worker_grader``); they have no timeout of their own and are meant to
    run inside a ``pool`` worker process, whose per-call timeout guards them.

The built-in graders (``exact``, ``numeric``, ``math-verify``) compare against the row's
``answer_field`` (the config's ``task.answer_field``, default "answer") and read only the final
section after ``delimiter`` (``task.answer_delimiter``; "" = the whole completion); a ``python:``
grader gets the whole row and the whole completion, and may return ``(correct, answer)`` to report
the answer it extracted.

Does NOT own: parsing or validating spec strings (``spec``), worker processes,
timeouts, verdict caching or statistics (``pool``), loading rows, or aggregating
verdicts into success rates.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

from gradalign.graders.spec import GraderSpec, import_math_verify, import_python_grader

NUMERIC_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Verdict:
    """Outcome of grading one completion.

    ``status`` is "ok", "timeout" or "error"; only "ok" verdicts can be correct.
    ``reason`` is a short machine-friendly explanation ("match", "mismatch",
    "no_answer", "not_a_number", "timeout after 5.0s", "error: ...").
    """

    correct: bool
    extracted: str | None
    status: str
    reason: str


# --------------------------------------------------------------------------
# Answer extraction

_BOXED = re.compile(r"\\boxed\s*\{")


def _last_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{...}`` with balanced braces."""
    found: str | None = None
    pos = 0
    while True:
        match = _BOXED.search(text, pos)
        if match is None:
            return found
        depth = 1
        i = match.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth:  # unbalanced (e.g. truncated generation): nothing further can close
            return found
        found = text[match.end() : i - 1].strip()
        pos = i


def _last_boxed_start(text: str) -> int:
    starts = [m.start() for m in _BOXED.finditer(text)]
    return starts[-1] if starts else -1


def extract_answer(text: str) -> str | None:
    """Final answer of a completion, or None: whichever comes LAST of

    * the text after the last ``####`` up to the end of that line, stripped (GSM8K convention),
    * the content of the last balanced ``\\boxed{...}``.

    So a ``#### Final Answer`` heading followed by ``\\boxed{5}`` gives "5", and a boxed
    expression followed by ``#### 5`` gives "5"; a marker with nothing after it on its line
    counts as absent.
    """
    marker = text.rfind("####")
    marked = text[marker + 4 :].split("\n", 1)[0].strip() if marker >= 0 else ""
    boxed = _last_boxed(text)
    if marked and boxed and _last_boxed_start(text) > marker:
        return boxed
    return marked or boxed or None


NO_FINAL_SECTION = "no_final_section"


def final_section(text: str, delimiter: str = "") -> str | None:
    """The part of a completion the built-in graders read: the text after the LAST ``delimiter``
    (e.g. ``</think>``: the answer after a reasoning model's thinking), the whole text when
    ``delimiter`` is "", and None when the delimiter never occurs (no final answer was written)."""
    if not delimiter:
        return text
    at = text.rfind(delimiter)
    return None if at < 0 else text[at + len(delimiter) :]


_NUMBER = re.compile(
    r"""
    (?P<sign>[+-]?)\s*
    (?:
        (?P<num>\d+)\s*/\s*(?P<den>\d+)                      # fraction 3/4
      | (?P<int>\d{1,3}(?:,\d{3})+|\d*)(?:\.(?P<frac>\d*))?  # 1,234.5 / 0.5 / .5 / 12
    )
    """,
    re.VERBOSE,
)
_MAX_NUMBER_CHARS = 200  # bounds the work on adversarial completions


def parse_number(text: str) -> Fraction | None:
    """Parse an int, decimal or ``a/b`` fraction (commas as thousands separators,
    optional leading sign) exactly; None if the text is not such a number."""
    text = text.strip()
    if not text or len(text) > _MAX_NUMBER_CHARS:
        return None
    match = _NUMBER.fullmatch(text)
    if match is None:
        return None
    sign = -1 if match["sign"] == "-" else 1
    if match["num"] is not None:
        den = int(match["den"])
        return None if den == 0 else sign * Fraction(int(match["num"]), den)
    int_part = (match["int"] or "").replace(",", "")
    frac_part = match["frac"] or ""
    if not int_part and not frac_part:
        return None
    value = Fraction(int(int_part or "0"))
    if frac_part:
        value += Fraction(int(frac_part), 10 ** len(frac_part))
    return sign * value


def numbers_close(a: Fraction, b: Fraction, tol: float = NUMERIC_TOLERANCE) -> bool:
    """Equal within relative OR absolute tolerance ``tol`` (exact arithmetic)."""
    tolerance = Fraction(tol)
    return abs(a - b) <= max(tolerance * max(abs(a), abs(b)), tolerance)


# --------------------------------------------------------------------------
# Built-in comparisons (run in the caller's process)


def _gold_answer(row: dict, answer_field: str = "answer") -> str:
    """The reference answer ``row[answer_field]``, as stripped text (a GSM8K solution: its final answer)."""
    if answer_field not in row:
        raise KeyError(f"row has no {answer_field!r} field (task.answer_field)")
    gold = str(row[answer_field])
    # A raw GSM8K solution as gold: compare against its final answer.
    if "####" in gold:
        gold = extract_answer(gold) or ""
    return gold.strip()


def _grade_exact(completion: str, row: dict, answer_field: str = "answer", delimiter: str = "") -> Verdict:
    gold = _gold_answer(row, answer_field)
    section = final_section(completion, delimiter)
    if section is None:
        return Verdict(False, None, "ok", NO_FINAL_SECTION)
    extracted = extract_answer(section)
    if extracted is None:
        return Verdict(False, None, "ok", "no_answer")
    correct = extracted.strip() == gold
    return Verdict(correct, extracted, "ok", "match" if correct else "mismatch")


def _grade_numeric(completion: str, row: dict, answer_field: str = "answer", delimiter: str = "") -> Verdict:
    gold_text = _gold_answer(row, answer_field)
    gold = parse_number(gold_text)
    if gold is None:
        return Verdict(False, None, "error", f"error: gold answer {gold_text!r} is not a number")
    section = final_section(completion, delimiter)
    if section is None:
        return Verdict(False, None, "ok", NO_FINAL_SECTION)
    extracted = extract_answer(section)
    if extracted is None:
        return Verdict(False, None, "ok", "no_answer")
    value = parse_number(extracted)
    if value is None:
        return Verdict(False, extracted, "ok", "not_a_number")
    correct = numbers_close(value, gold)
    return Verdict(correct, extracted, "ok", "match" if correct else "mismatch")


# (completion, row, answer_field, delimiter) -> Verdict
IN_PROCESS_GRADERS: dict[str, Callable[[str, dict, str, str], Verdict]] = {
    "exact": _grade_exact,
    "numeric": _grade_numeric,
}


def error_reason(exc: BaseException) -> str:
    """A grader's exception as a one-line ``error: ...`` verdict reason (at most 500 chars)."""
    message = " ".join(str(exc).split())
    return f"error: {type(exc).__name__}: {message}"[:500]


# --------------------------------------------------------------------------
# Graders meant for worker processes (no timeout of their own)


class _MathVerifyGrader:
    """math-verify with its signal.alarm timeouts disabled (the pool's process timeout guards)."""

    def __init__(self, answer_field: str = "answer", delimiter: str = "") -> None:
        self._parse, self._verify = import_math_verify()
        self._answer_field = answer_field
        self._delimiter = delimiter
        self._gold_cache: dict[str, list] = {}

    def _parse_gold(self, gold: str) -> list:
        if gold not in self._gold_cache:
            parsed: list = []
            if "$" not in gold and "\\boxed" not in gold:
                # A bare gold answer is one LaTeX expression: unwrapped, "1+x^2" parses as 1.
                parsed = self._parse(f"${gold}$", parsing_timeout=None)
            if not parsed:
                parsed = self._parse(gold, parsing_timeout=None)
            if len(self._gold_cache) > 10_000:
                self._gold_cache.clear()
            self._gold_cache[gold] = parsed
        return self._gold_cache[gold]

    def __call__(self, completion: str, row: dict) -> Verdict:
        gold_text = _gold_answer(row, self._answer_field)
        gold = self._parse_gold(gold_text)
        if not gold:
            return Verdict(False, None, "error", f"error: cannot parse gold answer {gold_text!r}")
        section = final_section(completion, self._delimiter)
        if section is None:
            return Verdict(False, None, "ok", NO_FINAL_SECTION)
        prediction = self._parse(section, parsing_timeout=None)
        if not prediction:
            return Verdict(False, None, "ok", "no_answer")
        extracted = str(prediction[-1])
        correct = bool(self._verify(gold, prediction, timeout_seconds=None))  # gold first
        return Verdict(correct, extracted, "ok", "match" if correct else "mismatch")


def grader_result(result: Any) -> bool | None:
    """A ``python:`` grader's return value as a verdict: ``bool`` (numpy's included) as is, the
    integers 0 and 1 as false/true; None for anything else (7, "yes", None, 1.0), which the
    caller turns into an ``error`` verdict rather than reading it as true."""
    if isinstance(result, bool) or (type(result).__module__ == "numpy" and type(result).__name__ in ("bool", "bool_")):
        return bool(result)
    if isinstance(result, numbers.Integral) and result in (0, 1):
        return bool(result)
    return None


class _PythonGrader:
    def __init__(self, spec: GraderSpec) -> None:
        self._fn = import_python_grader(spec)
        self._name = f"{spec.module}.{spec.function}"

    def __call__(self, completion: str, row: dict) -> Verdict:
        result = self._fn(completion, row)
        extracted = extract_answer(completion)
        if isinstance(result, tuple) and len(result) == 2 and (result[1] is None or isinstance(result[1], str)):
            result, extracted = result  # (verdict, the answer the grader read)
        correct = grader_result(result)
        if correct is None:
            shown = repr(result) if isinstance(result, (int, float, str)) else ""
            shown = f" {shown[:40]}" if shown else ""
            return Verdict(
                False, None, "error",
                f"error: {self._name} returned {type(result).__name__}{shown}, expected bool (or 0/1)",
            )
        return Verdict(correct, extracted, "ok", "match" if correct else "mismatch")


def load_worker_grader(spec: GraderSpec, answer_field: str = "answer", delimiter: str = "") -> Callable[[str, dict], Verdict]:
    """The callable for a ``math-verify`` or ``python:`` spec; raises ``GraderSpecError`` if it cannot load.
    ``math-verify`` compares the final section (after ``delimiter``) against ``row[answer_field]``; a
    ``python:`` grader gets the whole row and completion."""
    return _MathVerifyGrader(answer_field, delimiter) if spec.kind == "math-verify" else _PythonGrader(spec)
