"""Where and when graders run: the ``GraderPool``.

Owns:
  * ``GraderPool``: verdict caching keyed by (row_id, completion), in-process
    grading for ``exact``/``numeric``, and the worker processes (forkserver or
    spawn, never fork) that run untrusted graders (math-verify, user Python
    functions) under a per-call timeout, replacing any worker that hangs or dies;
  * ``GradeItem`` (one completion to grade) and ``GraderStats`` (the pool's counters);
  * the circuit breaker (``BREAKER_MIN_CALLS``, ``BREAKER_MAX_FAILURE_RATE``): a grader that fails
    on most of its calls stops the caller with ``GraderBroken``, one line, instead of turning every
    verdict into a failure (a grader that always hangs would cost calls x timeout / workers);
  * ``GraderPoolError``: a worker process could not be started.

Does NOT own: spec strings (``spec``), what a grader computes (``grading``:
answer extraction, comparisons, ``Verdict``), loading task rows, sampling
completions, deciding which completions to grade, or aggregating verdicts.

The pool's ``answer_field`` (``task.answer_field``) names the row field the built-in graders
compare against, and ``answer_delimiter`` (``task.answer_delimiter``) the marker after whose last
occurrence they read the completion, in process and in ``math-verify`` workers (both handed to each
worker with the spec when it starts); ``python:`` graders get the whole row and completion.

Rows sent to worker processes (``math-verify`` and ``python:`` graders) are
pickled, so they must be picklable: plain ``dict`` of str/int/float/list/dict
values. A row that fails to pickle yields an ``error`` verdict for that item.
Workers receive the parent's ``sys.path`` and working directory, so a
``python:`` grader importable in the parent is importable in the worker.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

from gradalign.errors import GradalignError
from gradalign.graders.grading import IN_PROCESS_GRADERS, Verdict, error_reason, load_worker_grader
from gradalign.graders.spec import GraderSpecError, parse_grader_spec

logger = logging.getLogger(__name__)


# Circuit breaker. A "call" is an item actually graded (a cache miss); it fails with an error or
# timeout verdict. The breaker judges two windows, each once it holds at least BREAKER_MIN_CALLS
# calls: the pool's life (a run) and the current `grade_many` pass (one stage's batch), so a grader
# that breaks mid-run trips too. It trips when more than BREAKER_MAX_FAILURE_RATE of a window's
# calls failed. 32 calls keep a few unlucky rows from tripping it; at timeout_s 5 and 2 workers a
# grader that always hangs is stopped after about 80 s.
BREAKER_MIN_CALLS = 32
BREAKER_MAX_FAILURE_RATE = 0.5


class GraderPoolError(GradalignError, RuntimeError):
    """A grader worker process could not be started (not a per-item failure)."""


class GraderBroken(GradalignError, RuntimeError):
    """The grader failed (error or timeout verdicts) on most of its calls: the circuit breaker."""


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
    one batch); ``misses`` counts items that were actually graded. ``timeouts`` and
    ``errors`` count items answered with such a verdict, graded or from the cache, so
    they are out of every call (hits + misses), as the rows of the run tables count them.
    """

    hits: int
    misses: int
    timeouts: int
    errors: int
    worker_restarts: int


# --------------------------------------------------------------------------
# Worker process side (runs in a fresh interpreter; main thread only)


class _DropTimeoutDisabledWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


def _worker_main(conn, spec_raw: str, sys_path: list[str], cwd: str, answer_field: str = "answer", delimiter: str = "") -> None:
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
        grader = load_worker_grader(parse_grader_spec(spec_raw), answer_field, delimiter)
    except BaseException as exc:  # sys.exit in a user module included; SIGINT is ignored here
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
        except BaseException as exc:  # user code: sys.exit or any BaseException is the item's error, not the worker's end
            verdict = Verdict(False, None, "error", error_reason(exc))
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

    The built-in graders compare a completion's final section (after ``answer_delimiter``) with
    ``row[answer_field]`` (default "answer"), both fixed for the pool's life, so the cache key need
    not hold them; a ``python:`` grader gets the whole row.
    ``exact``/``numeric`` run in-process. ``math-verify`` and ``python:`` graders
    run in ``workers`` worker processes (forkserver/spawn, never fork) with a
    per-call ``timeout_s``; a worker that exceeds it is terminated and replaced,
    and its item gets a "timeout" verdict. Workers start lazily and stop on
    ``close()`` / ``__exit__``. A grader that cannot be loaded in a worker raises
    ``GraderSpecError`` from ``grade``/``grade_many``; one that fails on most calls raises
    ``GraderBroken`` (see ``BREAKER_MIN_CALLS``; ``breaker_min_calls=0`` turns the breaker off).
    Not thread-safe.
    """

    def __init__(
        self,
        spec: str,
        timeout_s: float = 5.0,
        workers: int = 2,
        startup_timeout_s: float = 120.0,
        breaker_min_calls: int = BREAKER_MIN_CALLS,
        answer_field: str = "answer",
        answer_delimiter: str = "",
    ) -> None:
        if not isinstance(answer_field, str) or not answer_field:
            raise ValueError(f"answer_field must be a non-empty string, got {answer_field!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.spec = parse_grader_spec(spec)
        self.answer_field = answer_field
        self.answer_delimiter = str(answer_delimiter)
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
        self.breaker_min_calls = int(breaker_min_calls)
        self._life = [0, 0, 0]  # breaker windows: [graded calls, errors, timeouts] of the pool's life
        self._pass = [0, 0, 0]  # ... and of the current grade_many pass
        self._last_error = ""
        self._timeouts_logged = False

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
        self._pass = [0, 0, 0]
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
        verdicts = [self._cache[key] for key in keys]
        self._timeouts += sum(v.status == "timeout" for v in verdicts)
        self._errors += sum(v.status == "error" for v in verdicts)
        return verdicts

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
        """Cache a freshly graded verdict and feed the circuit breaker (may raise GraderBroken)."""
        self._cache[key] = verdict
        error, timeout = verdict.status == "error", verdict.status == "timeout"
        if error:
            self._last_error = verdict.reason
        for window in (self._life, self._pass):
            window[0] += 1
            window[1] += error
            window[2] += timeout
        if self.breaker_min_calls > 0:
            for calls, errors, timeouts in (self._life, self._pass):
                if calls >= self.breaker_min_calls and errors + timeouts > BREAKER_MAX_FAILURE_RATE * calls:
                    raise GraderBroken(self._broken_message(calls, errors, timeouts))

    def _broken_message(self, calls: int, errors: int, timeouts: int) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in (("errors", errors), ("timeouts", timeouts)) if n)
        if errors:
            last = " ".join(self._last_error.removeprefix("error: ").split())
            kinds += f"; last error: {last[:200]}"
        fix = "fix the grader or raise task.grader_timeout_s" if timeouts else "fix the grader"
        return f"grader {self.spec.raw} failed on {errors + timeouts} of {calls} calls ({kinds}): {fix}"

    def _grade_in_process(self, item: GradeItem) -> Verdict:
        try:
            return IN_PROCESS_GRADERS[self.spec.kind](item.completion, item.row, self.answer_field, self.answer_delimiter)
        except Exception as exc:
            return Verdict(False, None, "error", error_reason(exc))

    def _start_worker(self) -> _Worker:
        ctx = _mp_context()
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        process = ctx.Process(
            target=_worker_main,
            args=(child_conn, self.spec.raw, list(sys.path), os.getcwd(), self.answer_field, self.answer_delimiter),
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
                    self._store(key, Verdict(False, None, "error", f"error: cannot send item to worker ({error_reason(exc)})"))
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
                    # Warn once; later ones are counted (stats, the run's faults) and logged at debug.
                    logger.log(
                        logging.DEBUG if self._timeouts_logged else logging.WARNING,
                        "grader %s timed out after %.1fs (pid=%s); restarting worker%s",
                        self.spec.raw, self.timeout_s, worker.process.pid,
                        "" if self._timeouts_logged else " (further timeouts: counted, logged at debug level)",
                    )
                    self._timeouts_logged = True
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
