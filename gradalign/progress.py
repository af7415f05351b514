"""Live progress of a run: cumulative per-stage counts, tokens/s and ETA, as events for a renderer.

Owns: `ProgressEvent` (what a renderer gets: one stage's cumulative units done and expected over the
whole run, tokens, seconds spent, rate and ETA), `Progress` (the callback type `engine.diagnose`
takes), `ProgressTracker` (accumulates counts across shards, times each stage, emits events) and the
module-level hooks the stages call without knowing who listens: `stage(name)` (a context in which
time counts towards `name`) and `advance(units, tokens)` (a no-op when no tracker is active). Every
event is also logged at DEBUG on this module's logger.

Does not own: rendering (the CLI draws a rich display on a terminal and plain lines otherwise), what
a unit is in each stage (the caller of `advance` decides: rollouts for `rollouts` and `score`,
continuations for `select` and `branch`, questions for `questions`), or any stage's work.

Totals: `expect(stage, units)` adds to a stage's known total. A stage whose total is only known shard
by shard (`select`, `branch`) is extrapolated from the questions planned so far
(`planned(questions_started, questions_total)`), and flagged `estimated`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

log = logging.getLogger(__name__)

STAGES = ("rollouts", "select", "score", "branch", "questions")
UNITS = {"rollouts": "rollouts", "select": "continuations", "score": "rollouts", "branch": "continuations",
         "questions": "questions"}


@dataclass(frozen=True)
class ProgressEvent:
    """One stage's cumulative progress over the whole run (not per shard).

    `total` is 0 when unknown; `estimated` marks a total extrapolated from the shards planned so far.
    `tokens` are tokens generated (sampling stages) or scored (score: rollout tokens x models) so far.
    `elapsed_s` is the time spent inside the stage (for `questions`: since the run's first shard)."""

    stage: str
    done: int
    total: int
    unit: str
    tokens: int
    elapsed_s: float
    estimated: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else math.nan

    @property
    def units_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else math.nan

    @property
    def eta_s(self) -> float:
        """Seconds left at the stage's mean pace so far (NaN when the total or the pace is unknown)."""
        if not self.total or self.done <= 0 or self.elapsed_s <= 0:
            return math.nan
        return max(0.0, (self.total - self.done) * self.elapsed_s / self.done)

    @property
    def finished(self) -> bool:
        return bool(self.total) and self.done >= self.total and not self.estimated


Progress = Callable[[ProgressEvent], None]


class ProgressTracker:
    """Cumulative counters per stage for one run; calls `callback` with a `ProgressEvent` on each change."""

    def __init__(self, callback: Progress | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.callback = callback
        self.clock = clock
        self.done: dict[str, int] = {}
        self.tokens: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.spent: dict[str, float] = {}
        self.current: str | None = None
        self._since = 0.0
        self._start = clock()  # the `questions` stage counts wall time from here
        self._fraction = 1.0  # questions planned so far / questions to compute

    def expect(self, stage: str, units: int) -> None:
        """Add `units` to the stage's known total."""
        self.total[stage] = self.total.get(stage, 0) + int(units)

    def planned(self, started: int, total: int) -> None:
        """`started` of `total` questions have been planned so far (scales the per-shard totals)."""
        self._fraction = started / total if total else 1.0

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        outer, outer_since = self.current, self._since
        if outer is not None:
            self.spent[outer] = self.spent.get(outer, 0.0) + self.clock() - outer_since
        self.current, self._since = name, self.clock()
        token = _ACTIVE.set(self)
        try:
            yield
        finally:
            _ACTIVE.reset(token)
            self.spent[name] = self.spent.get(name, 0.0) + self.clock() - self._since
            self.current, self._since = outer, self.clock()

    def advance(self, units: int, tokens: int = 0, stage: str | None = None) -> ProgressEvent:
        """Count `units` (and `tokens`) done in `stage` (default: the current one) and emit its event."""
        name = stage or self.current or "run"
        self.done[name] = self.done.get(name, 0) + int(units)
        self.tokens[name] = self.tokens.get(name, 0) + int(tokens)
        ev = self.event(name)
        log.debug("progress %s", ev)
        if self.callback is not None:
            self.callback(ev)
        return ev

    def event(self, name: str) -> ProgressEvent:
        if name == "questions":
            elapsed = self.clock() - self._start
        else:
            elapsed = self.spent.get(name, 0.0) + (self.clock() - self._since if self.current == name else 0.0)
        known = self.total.get(name, 0)
        estimated = name in ("select", "branch") and self._fraction < 1.0
        total = round(known / self._fraction) if estimated and self._fraction > 0 else known
        done = self.done.get(name, 0)
        return ProgressEvent(name, done, max(total, done) if total else 0, UNITS.get(name, "units"),
                             self.tokens.get(name, 0), elapsed, estimated)


_ACTIVE: contextvars.ContextVar[ProgressTracker | None] = contextvars.ContextVar("gradalign_progress", default=None)


def active() -> ProgressTracker | None:
    """The tracker of the stage running now, if any."""
    return _ACTIVE.get()


def advance(units: int, tokens: int = 0) -> None:
    """Count work done in the current stage; nothing happens outside a tracked run."""
    tr = _ACTIVE.get()
    if tr is not None:
        tr.advance(units, tokens)


def expect(units: int) -> None:
    """Add to the current stage's expected total; nothing happens outside a tracked run."""
    tr = _ACTIVE.get()
    if tr is not None and tr.current is not None:
        tr.expect(tr.current, units)
