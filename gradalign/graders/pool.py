"""Where and when graders run: the ``GraderPool``.

Owns:
  * ``GraderPool``: verdict caching keyed by (row_id, completion), in-process
    grading for ``exact``/``numeric``, and the worker processes (forkserver or
    spawn, never fork) that run untrusted graders (math-verify, user Python
    functions) under a per-call timeout, replacing any worker that hangs or dies;
  * ``GradeItem`` (one completion to grade) and ``GraderStats`` (the pool's counters);
  * ``GraderPoolError``: a worker process could not be started.

Does NOT own: spec strings (``spec``), what a grader computes (``grading``:
answer extraction, comparisons, ``Verdict``), loading task rows, sampling
completions, deciding which completions to grade, or aggregating verdicts.

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


class GraderPoolError(GradalignError, RuntimeError):
    """A grader worker process could not be started (not a per-item failure)."""


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
# Worker process side (runs in a fresh interpreter; main thread only)


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
        grader = load_worker_grader(parse_grader_spec(spec_raw))
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
            return IN_PROCESS_GRADERS[self.spec.kind](item.completion, item.row)
        except Exception as exc:
            return Verdict(False, None, "error", error_reason(exc))

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
