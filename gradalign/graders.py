"""Grading of student completions against a task row's reference answer.

Owns:
  * grader spec strings (``exact``, ``numeric``, ``math-verify``,
    ``python:module:function``): parsing and up-front validation;
  * final-answer extraction from a completion (GSM8K ``####`` marker, else the
    last ``\\boxed{...}``);
  * the built-in ``exact`` and ``numeric`` comparisons;
  * ``GraderPool``: verdict caching keyed by (row_id, completion), and the
    worker processes that run untrusted graders (math-verify, user Python
    functions) under a per-call timeout, replacing any worker that hangs.

Does NOT own: loading task rows or datasets, sampling completions, deciding
which completions to grade, aggregating verdicts into success rates, or any
reporting. Callers hand in plain rows and get ``Verdict`` records back.

Rows sent to worker processes (``math-verify`` and ``python:`` graders) are
pickled, so they must be picklable: plain ``dict`` of str/int/float/list/dict
values. A row that fails to pickle yields an ``error`` verdict for that item.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Sequence

from gradalign.errors import GradalignError

logger = logging.getLogger(__name__)

VALID_FORMS = "exact | numeric | math-verify | python:module:function"
MATH_INSTALL_HINT = "pip install 'gradalign[math]'"
NUMERIC_TOLERANCE = 1e-6

_BUILTIN_KINDS = ("exact", "numeric", "math-verify")
_IN_PROCESS_KINDS = ("exact", "numeric")
_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class GraderSpecError(GradalignError, ValueError):
    """A grader spec string is malformed, or names a grader that cannot be loaded."""


class GraderPoolError(GradalignError, RuntimeError):
    """A grader worker process could not be started (not a per-item failure)."""


# --------------------------------------------------------------------------
# Records


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


@dataclass(frozen=True)
class GradeItem:
    """One completion to grade. ``row`` must be picklable for worker graders."""

    row_id: str
    completion: str
    row: dict


@dataclass(frozen=True)
class GraderStats:
    """Counters of a ``GraderPool`` since it was created.

    ``hits`` counts items answered from the cache (including duplicates within
    one batch); ``misses`` counts items that were actually graded.
    """

    hits: int
    misses: int
    timeouts: int
    errors: int
    worker_restarts: int


# --------------------------------------------------------------------------
# Spec parsing and validation


def _spec_error(spec: str, problem: str) -> GraderSpecError:
    return GraderSpecError(f"invalid grader spec {spec!r}: {problem}; valid forms: {VALID_FORMS}")


def parse_grader_spec(spec: str) -> GraderSpec:
    """Parse a grader spec string (syntax only; see ``check_grader`` to validate imports)."""
    if not isinstance(spec, str):
        raise _spec_error(str(spec), f"expected a string, got {type(spec).__name__}")
    text = spec.strip()
    if text in _BUILTIN_KINDS:
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


def _import_python_grader(spec: GraderSpec) -> Callable[[str, dict], Any]:
    """Import ``spec.module`` (from sys.path or the current directory) and return the callable."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(spec.module)
    except Exception as exc:  # a user module may raise anything at import time
        raise _spec_error(
            spec.raw, f"cannot import module {spec.module!r} ({type(exc).__name__}: {exc})"
        ) from exc
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


def _import_math_verify() -> tuple[Callable, Callable]:
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
        _import_python_grader(parsed)
    elif parsed.kind == "math-verify":
        _import_math_verify()
    return parsed


# --------------------------------------------------------------------------
# Answer extraction and built-in comparisons

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


def extract_answer(text: str) -> str | None:
    """Final answer of a completion, or None.

    The text after the LAST ``####`` up to the end of that line, stripped
    (GSM8K convention); if there is no marker (or nothing follows it), the
    content of the last ``\\boxed{...}``; else None.
    """
    marker = text.rfind("####")
    if marker >= 0:
        answer = text[marker + 4 :].split("\n", 1)[0].strip()
        if answer:
            return answer
    boxed = _last_boxed(text)
    return boxed if boxed else None


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


def _gold_answer(row: dict) -> str:
    if "answer" not in row:
        raise KeyError("row has no 'answer' field")
    gold = str(row["answer"])
    # A raw GSM8K solution as gold: compare against its final answer.
    if "####" in gold:
        gold = extract_answer(gold) or ""
    return gold.strip()


def _grade_exact(completion: str, row: dict) -> Verdict:
    gold = _gold_answer(row)
    extracted = extract_answer(completion)
    if extracted is None:
        return Verdict(False, None, "ok", "no_answer")
    correct = extracted.strip() == gold
    return Verdict(correct, extracted, "ok", "match" if correct else "mismatch")


def _grade_numeric(completion: str, row: dict) -> Verdict:
    gold_text = _gold_answer(row)
    gold = parse_number(gold_text)
    if gold is None:
        return Verdict(False, None, "error", f"error: gold answer {gold_text!r} is not a number")
    extracted = extract_answer(completion)
    if extracted is None:
        return Verdict(False, None, "ok", "no_answer")
    value = parse_number(extracted)
    if value is None:
        return Verdict(False, extracted, "ok", "not_a_number")
    correct = numbers_close(value, gold)
    return Verdict(correct, extracted, "ok", "match" if correct else "mismatch")


_IN_PROCESS_GRADERS: dict[str, Callable[[str, dict], Verdict]] = {
    "exact": _grade_exact,
    "numeric": _grade_numeric,
}


def _error_reason(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return f"error: {type(exc).__name__}: {message}"[:500]


# --------------------------------------------------------------------------
# Worker process side (runs in a fresh interpreter; main thread only)


class _MathVerifyGrader:
    """math-verify with its signal.alarm timeouts disabled (the pool's process timeout guards)."""

    def __init__(self) -> None:
        self._parse, self._verify = _import_math_verify()
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
        gold_text = _gold_answer(row)
        gold = self._parse_gold(gold_text)
        if not gold:
            return Verdict(False, None, "error", f"error: cannot parse gold answer {gold_text!r}")
        prediction = self._parse(completion, parsing_timeout=None)
        if not prediction:
            return Verdict(False, None, "ok", "no_answer")
        extracted = str(prediction[-1])
        correct = bool(self._verify(gold, prediction, timeout_seconds=None))  # gold first
        return Verdict(correct, extracted, "ok", "match" if correct else "mismatch")


class _PythonGrader:
    def __init__(self, spec: GraderSpec) -> None:
        self._fn = _import_python_grader(spec)
        self._name = f"{spec.module}.{spec.function}"

    def __call__(self, completion: str, row: dict) -> Verdict:
        result = self._fn(completion, row)
        if not isinstance(result, (bool, int)) and type(result).__name__ != "bool_":
            return Verdict(
                False, None, "error",
                f"error: {self._name} returned {type(result).__name__}, expected bool",
            )
        correct = bool(result)
        return Verdict(correct, extract_answer(completion), "ok", "match" if correct else "mismatch")


class _DropTimeoutDisabledWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


def _worker_main(conn, spec_raw: str, sys_path: list[str], cwd: str) -> None:
    """Worker entry point: load the grader, report ready, then grade until told to stop.

    Messages in: ``(task_id, completion, row)`` or ``None`` (stop).
    Messages out: ``("ready", None)``, ``("init_error", message)``,
    ``(task_id, Verdict)``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    sys.path[:] = list(sys_path)
    try:
        os.chdir(cwd)
    except OSError:
        pass
    if cwd not in sys.path:
        sys.path.append(cwd)
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
    try:
        spec = parse_grader_spec(spec_raw)
        grader = _MathVerifyGrader() if spec.kind == "math-verify" else _PythonGrader(spec)
    except Exception as exc:
        conn.send(("init_error", str(exc)))
        conn.close()
        return
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, completion, row = message
        try:
            verdict = grader(completion, row)
        except (Exception, SystemExit) as exc:
            verdict = Verdict(False, None, "error", _error_reason(exc))
        conn.send((task_id, verdict))


# --------------------------------------------------------------------------
# Pool (parent side)


def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


@dataclass
class _Worker:
    process: Any
    conn: Any
    started_at: float
    ready: bool = False
    task: tuple[int, tuple] | None = None  # (task_id, cache key)
    deadline: float = math.inf


def _cache_key(row_id: str, completion: str) -> tuple[str, bytes]:
    # Hash the completion so the cache does not hold every completion's text.
    return (str(row_id), hashlib.blake2b(completion.encode("utf-8", "surrogatepass"), digest_size=16).digest())


class GraderPool:
    """Grades completions with one grader spec, caching verdicts by (row_id, completion).

    ``exact``/``numeric`` run in-process. ``math-verify`` and ``python:`` graders
    run in ``workers`` worker processes (forkserver/spawn, never fork) with a
    per-call ``timeout_s``; a worker that exceeds it is terminated and replaced,
    and its item gets a "timeout" verdict. Workers start lazily and stop on
    ``close()`` / ``__exit__``. A grader that cannot be loaded in a worker raises
    ``GraderSpecError`` from ``grade``/``grade_many``. Not thread-safe.
    """

    def __init__(
        self,
        spec: str,
        timeout_s: float = 5.0,
        workers: int = 2,
        startup_timeout_s: float = 120.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.spec = parse_grader_spec(spec)
        self.timeout_s = float(timeout_s)
        self.n_workers = int(workers)
        self.startup_timeout_s = float(startup_timeout_s)
        self._cache: dict[tuple[str, bytes], Verdict] = {}
        self._workers: list[_Worker | None] = [None] * self.n_workers
        self._next_task_id = 0
        self._hits = 0
        self._misses = 0
        self._timeouts = 0
        self._errors = 0
        self._restarts = 0
        self._closed = False

    # -- public API ---------------------------------------------------------

    @property
    def stats(self) -> GraderStats:
        return GraderStats(
            hits=self._hits,
            misses=self._misses,
            timeouts=self._timeouts,
            errors=self._errors,
            worker_restarts=self._restarts,
        )

    def grade(self, row_id: str, completion: str, row: dict) -> Verdict:
        return self.grade_many([GradeItem(row_id, completion, row)])[0]

    def grade_many(self, items: Sequence[GradeItem]) -> list[Verdict]:
        """Grade ``items``; verdicts come back in input order."""
        if self._closed:
            raise RuntimeError("GraderPool is closed")
        keys = [_cache_key(item.row_id, item.completion) for item in items]
        todo: dict[tuple[str, bytes], GradeItem] = {}
        for key, item in zip(keys, items):
            if key in self._cache or key in todo:
                self._hits += 1
            else:
                self._misses += 1
                todo[key] = item
        if todo:
            if self.spec.runs_in_process:
                for key, item in todo.items():
                    self._store(key, self._grade_in_process(item))
            else:
                self._dispatch(todo)
        return [self._cache[key] for key in keys]

    def close(self) -> None:
        for slot, worker in enumerate(self._workers):
            if worker is not None:
                self._stop_worker(worker, graceful=worker.task is None)
                self._workers[slot] = None
        self._closed = True

    def __enter__(self) -> GraderPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the contract
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    # -- internals ----------------------------------------------------------

    def _store(self, key: tuple[str, bytes], verdict: Verdict) -> None:
        if verdict.status == "timeout":
            self._timeouts += 1
        elif verdict.status == "error":
            self._errors += 1
        self._cache[key] = verdict

    def _grade_in_process(self, item: GradeItem) -> Verdict:
        try:
            return _IN_PROCESS_GRADERS[self.spec.kind](item.completion, item.row)
        except Exception as exc:
            return Verdict(False, None, "error", _error_reason(exc))

    def _start_worker(self) -> _Worker:
        ctx = _mp_context()
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        process = ctx.Process(
            target=_worker_main,
            args=(child_conn, self.spec.raw, list(sys.path), os.getcwd()),
            name=f"gradalign-grader-{self.spec.kind}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        logger.debug("started grader worker pid=%s for %s", process.pid, self.spec.raw)
        return _Worker(process=process, conn=parent_conn, started_at=time.monotonic())

    def _stop_worker(self, worker: _Worker, graceful: bool) -> None:
        if graceful and worker.process.is_alive():
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
            worker.process.join(timeout=1.0)
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(timeout=2.0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=2.0)
        worker.conn.close()

    def _kill_all(self) -> None:
        for slot, worker in enumerate(self._workers):
            if worker is not None:
                self._stop_worker(worker, graceful=False)
                self._workers[slot] = None

    def _replace(self, slot: int, worker: _Worker) -> None:
        self._stop_worker(worker, graceful=False)
        self._workers[slot] = None
        self._restarts += 1

    def _dispatch(self, todo: dict[tuple[str, bytes], GradeItem]) -> None:
        try:
            self._run_dispatch_loop(todo)
        except BaseException:
            # Workers may still hold in-flight tasks: drop them so no stale reply leaks
            # into a later batch. They restart lazily.
            self._kill_all()
            raise

    def _run_dispatch_loop(self, todo: dict[tuple[str, bytes], GradeItem]) -> None:
        pending = deque(todo.items())
        in_flight = 0
        while pending or in_flight:
            # Lazily (re)start workers, at most one per pending item.
            idle_or_starting = sum(1 for w in self._workers if w is not None and w.task is None)
            for slot in range(self.n_workers):
                if self._workers[slot] is None and idle_or_starting < len(pending):
                    self._workers[slot] = self._start_worker()
                    idle_or_starting += 1

            # Hand one item to each ready, idle worker.
            for slot, worker in enumerate(self._workers):
                if worker is None or not worker.ready or worker.task is not None or not pending:
                    continue
                key, item = pending.popleft()
                task_id = self._next_task_id
                self._next_task_id += 1
                try:
                    worker.conn.send((task_id, item.completion, item.row))
                except (OSError, BrokenPipeError) as exc:
                    self._store(key, Verdict(False, None, "error", f"error: worker unavailable: {exc}"))
                    self._replace(slot, worker)
                    continue
                except Exception as exc:  # unpicklable row or completion
                    self._store(key, Verdict(False, None, "error", f"error: cannot send item to worker ({_error_reason(exc)})"))
                    continue
                worker.task = (task_id, key)
                worker.deadline = time.monotonic() + self.timeout_s
                in_flight += 1

            # Wait for a reply, a worker becoming ready, or the nearest deadline.
            live = [w for w in self._workers if w is not None and (w.task is not None or not w.ready)]
            if not live:
                continue
            now = time.monotonic()
            nearest = min(
                w.deadline if w.ready else w.started_at + self.startup_timeout_s for w in live
            )
            ready_conns = multiprocessing.connection.wait(
                [w.conn for w in live], timeout=max(0.0, nearest - now)
            )
            for slot, worker in enumerate(self._workers):
                if worker is None or worker.conn not in ready_conns:
                    continue
                in_flight -= self._on_message(slot, worker)

            # Enforce deadlines.
            now = time.monotonic()
            for slot, worker in enumerate(self._workers):
                if worker is None:
                    continue
                if worker.task is not None and now >= worker.deadline:
                    _, key = worker.task
                    logger.warning(
                        "grader %s timed out after %.1fs (pid=%s); restarting worker",
                        self.spec.raw, self.timeout_s, worker.process.pid,
                    )
                    self._store(key, Verdict(False, None, "timeout", f"timeout after {self.timeout_s}s"))
                    self._replace(slot, worker)
                    in_flight -= 1
                elif not worker.ready and now >= worker.started_at + self.startup_timeout_s:
                    raise GraderPoolError(
                        f"grader worker for {self.spec.raw!r} did not start within "
                        f"{self.startup_timeout_s}s"
                    )

    def _on_message(self, slot: int, worker: _Worker) -> int:
        """Handle one readable worker connection; returns how many in-flight items finished."""
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(timeout=1.0)
            exitcode = worker.process.exitcode
            if worker.task is None:
                raise GraderPoolError(
                    f"grader worker for {self.spec.raw!r} exited during startup (exitcode {exitcode})"
                )
            _, key = worker.task
            logger.warning("grader worker pid=%s died (exitcode %s); restarting", worker.process.pid, exitcode)
            self._store(key, Verdict(False, None, "error", f"error: worker died (exitcode {exitcode})"))
            self._replace(slot, worker)
            return 1
        tag, payload = message
        if tag == "ready":
            worker.ready = True
            return 0
        if tag == "init_error":
            raise GraderSpecError(payload)
        if worker.task is None or tag != worker.task[0]:
            logger.debug("dropping stale reply %r from grader worker", tag)
            return 0
        _, key = worker.task
        self._store(key, payload)
        worker.task = None
        worker.deadline = math.inf
        return 1
