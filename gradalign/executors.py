"""How shards are run: one after another in this process (`local`), or on Ray actors (`ray`).

Owns: the executor choice (`open_executor`, the one place that reads `cfg.executor.kind`), the
`Executor` contract (`open` -> the task; `run(todo)` -> each shard's `ShardDone`
as it finishes, in completion order; `grader_stats`; `close`), per-worker timings, and everything
Ray: joining or starting a cluster, the actors (each loads `Resources` once and processes whole
shards with `engine.process_shard`), the resources each actor reserves, and fault handling
(Ray restarts a dead actor and retries its shard `executor.max_retries` times; a shard whose actor
is gone for good goes to another actor). Does not own what a shard computes
(`engine.process_shard`), writing shards or the manifest (`engine.diagnose`, `runfolder`), nor
the order of questions in shards (the engine plans shards; results are keyed by shard index).

Results do not depend on the executor: seeds derive from stable ids, a shard is the same list of
questions wherever it runs, and the driver writes it under its own index.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from gradalign.config import RunConfig
from gradalign.errors import GradalignError
from gradalign.pipeline import load_resources

if TYPE_CHECKING:  # engine imports this module; the records are only annotations here
    from gradalign.engine import ShardResult
    from gradalign.progress import ProgressTracker

log = logging.getLogger(__name__)


class ExecutorError(GradalignError, RuntimeError):
    """The executor cannot run: Ray missing, a cluster address that does not answer, no worker left."""


@dataclass(frozen=True)
class ShardDone:
    """One finished shard: its index in the run's shard plan, its result, and who computed it."""

    index: int
    result: "ShardResult"
    worker: str  # "local", or "HOST:PID" of the Ray actor process
    seconds: float  # wall time of the shard on that worker


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_executor(cfg: RunConfig, kind: str | None = None, address: str | None = None) -> "Executor":
    """The executor for `cfg` (`cfg.executor.kind`, or `kind` when given: the CLI's --executor)."""
    kind = kind or cfg.executor.kind
    if kind == "local":
        return LocalExecutor(cfg)
    if kind == "ray":
        return RayExecutor(cfg, cfg.executor.address if address is None else address)
    raise ExecutorError(f"executor: unknown kind {kind!r}; choose local or ray")


class Executor:
    """The contract `engine.diagnose` drives: open, run the shards left, read grader stats, close."""

    name = "base"

    def open(self):
        """Check the inputs and get ready; returns the task (`tasks.Task`). Nothing is written."""
        raise NotImplementedError

    def run(self, todo: Sequence[tuple[int, Sequence[dict]]], tracker: "ProgressTracker | None" = None) -> Iterator[ShardDone]:
        """Compute each (index, questions) shard; yield each as it finishes (any order). `tracker`
        (the run's `progress.ProgressTracker`) gets the stages' counts where the executor sees
        them: every stage locally; on Ray the driver counts finished questions only."""
        raise NotImplementedError

    def grader_stats(self) -> dict:
        """Grader counters (hits, misses, timeouts, errors) summed over the workers."""
        raise NotImplementedError

    def model_hashes(self) -> dict:
        """Model ref -> content hash (manifest); {} if no model was loaded (nothing left to compute)."""
        raise NotImplementedError

    def param_scope(self) -> dict:
        """The manifest's record of the `cos_params` parameter scope (`Resources.param_scope`; {}
        for logit-only runs or when no model was loaded)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class LocalExecutor(Executor):
    """Every shard in this process, in order, with one `Resources` loaded at `open`."""

    name = "local"

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.res = cfg, None

    def open(self):
        self.res = load_resources(self.cfg)  # every input check happens here, before anything is written
        return self.res.task

    def model_hashes(self) -> dict:
        return self.res.model_hashes

    def param_scope(self) -> dict:
        return self.res.param_scope

    def run(self, todo, tracker=None):
        from gradalign.engine import process_shard

        total, started = sum(len(rows) for _, rows in todo), 0
        for k, rows in todo:
            t0 = time.perf_counter()
            started += len(rows)
            if tracker is not None:
                tracker.planned(started, total)  # per-shard totals (branch, select) extrapolated from here
            r = process_shard(self.res, rows, tracker)
            yield ShardDone(k, r, "local", time.perf_counter() - t0)

    def grader_stats(self) -> dict:
        return dataclasses.asdict(self.res.grader.stats) if self.res else {}

    def close(self) -> None:
        if self.res is not None:
            self.res.grader.close()
            self.res.sampler.close()


# ----------------------------------------------------------------------------- Ray


def import_ray():
    """Ray, or a one-line `ExecutorError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorError("executor ray: Ray is not installed; pip install 'gradalign[ray]' (or choose --executor local)") \
            from None
    return ray


def gpus_per_worker(cfg: RunConfig) -> float:
    """GPUs one actor reserves: `executor.num_gpus` if set; else none for a CPU student, else one,
    or the model config's vLLM `tensor_parallel_size` when present and larger (the engine then
    spreads over that many GPUs inside the actor)."""
    if cfg.executor.num_gpus > 0:
        return cfg.executor.num_gpus
    if cfg.student.device == "cpu":
        return 0.0
    tp = getattr(cfg.student, "tensor_parallel_size", 0) or 0  # a field of the model config where it exists
    return float(max(1, tp))


def _last_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


class ShardWorker:
    """A Ray actor's body: loads `Resources` once, then processes whole shards."""

    def __init__(self, cfg: RunConfig) -> None:
        logging.basicConfig(level=logging.WARNING)
        self.res = load_resources(cfg)
        self.id = worker_id()

    def hashes(self) -> dict:
        return self.res.model_hashes

    def param_scope(self) -> dict:
        return self.res.param_scope

    def run(self, k: int, rows: list) -> ShardDone:
        from gradalign.engine import process_shard

        t0 = time.perf_counter()
        r = process_shard(self.res, rows)
        return ShardDone(k, r, self.id, time.perf_counter() - t0)

    def grader_stats(self) -> dict:
        return dataclasses.asdict(self.res.grader.stats)

    def close(self) -> None:
        self.res.grader.close()
        self.res.sampler.close()


class RayExecutor(Executor):
    """Whole shards on Ray actors, one shard per actor at a time, handed out as actors free up.

    `open` joins the cluster at `address` ("" = the Ray instance this process already initialised,
    else a private one started for the run), runs preflight on the driver (no weights) and starts
    no actor yet; `run` starts min(workers, shards left) actors, each loading the models once.
    Ray restarts an actor that dies and retries the method it was running (`max_restarts` /
    `max_task_retries` = `executor.max_retries`); if an actor is gone for good its shard is queued
    for another one.
    """

    name = "ray"

    def __init__(self, cfg: RunConfig, address: str) -> None:
        self.cfg, self.address = cfg, address
        self.ray = import_ray()
        self.started_ray = False
        self.actors: list = []

    def open(self):
        from gradalign.preflight import preflight

        task = preflight(self.cfg).task  # every check that needs no weights, on the driver, before any actor
        ray = self.ray
        if not ray.is_initialized():
            try:
                ray.init(address=self.address or None, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ExecutorError(f"executor ray: cannot join the cluster at {self.address or 'a new local instance'!r} "
                                    f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); start one with "
                                    "`ray start --head` or check --address") from None
            self.started_ray = True
        return task

    def _n_workers(self, shards: int) -> int:
        e = self.cfg.executor
        if e.workers:
            return max(1, min(e.workers, shards))
        total = self.ray.cluster_resources()
        fit = int(total.get("CPU", 1) // e.num_cpus)
        gpus = gpus_per_worker(self.cfg)
        if gpus:
            fit = min(fit, int(total.get("GPU", 0) // gpus))
        if fit < 1:
            raise ExecutorError(f"executor ray: the cluster ({total.get('CPU', 0)} CPUs, {total.get('GPU', 0)} GPUs) "
                                f"fits no worker of {e.num_cpus} CPUs and {gpus} GPUs; lower executor.num_cpus/num_gpus")
        return max(1, min(fit, shards))

    def _start(self, n: int) -> None:
        e = self.cfg.executor
        cls = self.ray.remote(ShardWorker).options(
            num_cpus=e.num_cpus, num_gpus=gpus_per_worker(self.cfg), max_restarts=e.max_retries,
            max_task_retries=e.max_retries)
        self.actors = [cls.remote(self.cfg) for _ in range(n)]

    def _ask_any(self, method: str) -> dict:
        """`method`'s answer from the first live actor (every actor loads the same models; one actor
        is started for it when every shard was already finished); {} when none answers."""
        if not self.actors:
            self._start(1)
        for a in self.actors:
            try:
                return self._get(getattr(a, method).remote())
            except self.ray.exceptions.RayActorError:
                continue
        return {}

    def model_hashes(self) -> dict:
        return self._ask_any("hashes")

    def param_scope(self) -> dict:
        return self._ask_any("param_scope") if "params" in self.cfg.alignment.space else {}

    def _get(self, ref):
        """`ray.get`, with an error raised inside an actor re-raised as itself (e.g. a one-line
        `GradalignError` from preflight or a broken grader)."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    def run(self, todo, tracker=None):
        from collections import deque

        ray = self.ray
        queue = deque(todo)
        if not queue:
            return
        self._start(self._n_workers(len(queue)))
        idle = list(self.actors)
        pending: dict = {}  # ref -> (shard index, rows, actor)
        while queue or pending:
            while queue and idle:
                a = idle.pop(0)
                k, rows = queue.popleft()
                pending[a.run.remote(k, list(rows))] = (k, rows, a)
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                k, rows, a = pending.pop(ref)
                try:
                    done = self._get(ref)
                except ray.exceptions.RayActorError as e:  # restarts used up: the actor is gone for good
                    self.actors.remove(a)
                    why = _last_line(e)  # e.g. the error its __init__ raised while loading the models
                    log.warning("shard %d: worker died for good (%s); giving the shard to another worker", k + 1, why)
                    if not self.actors:
                        raise ExecutorError(f"executor ray: every worker died (last during shard {k + 1}: {why}); "
                                            "finished shards are kept: rerun with --resume") from None
                    queue.appendleft((k, rows))
                    continue
                idle.append(a)
                yield done

    def grader_stats(self) -> dict:
        out: dict = {}
        for a in self.actors:
            try:
                for key, v in self._get(a.grader_stats.remote()).items():
                    out[key] = out.get(key, 0) + v
            except self.ray.exceptions.RayActorError:
                continue
        return out

    def close(self) -> None:
        ray = self.ray
        for a in self.actors:
            try:
                ray.get(a.close.remote(), timeout=60)
            except Exception:  # a dead or stuck actor: killing it below releases its resources anyway
                pass
            ray.kill(a, no_restart=True)
        self.actors = []
        if self.started_ray:
            ray.shutdown()
