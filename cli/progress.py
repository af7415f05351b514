"""Rendering a run's live progress: a rich display on a terminal, plain lines otherwise.

Owns: `progress_display` (picks the renderer from whether stderr is a terminal), `describe` (one
event as text: cumulative count, share, tokens/s, elapsed and ETA), the rich display (one bar per
stage, cumulative over shards) and `PlainProgress` (a line per stage when it starts and finishes,
every `every_s` seconds and at every 10% step in between, so a log of a non-interactive run shows
where it is).

Does not own: the counts (`gradalign.progress` emits `ProgressEvent`s from the library).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Callable, Iterator, TextIO

from gradalign.progress import ProgressEvent

DEFAULT_EVERY_S = 10.0
PREFIX = "progress: "  # every plain progress line starts with it, so logs (and tests) can tell them from messages


def _clock(s: float) -> str:
    if s != s or math.isinf(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def describe(ev: ProgressEvent) -> str:
    """"branch 120/~480 continuations (25%) · 1,234 tok/s · 0:12 elapsed · ETA 0:36"."""
    total = f"/{'~' if ev.estimated else ''}{ev.total:,}" if ev.total else ""
    pct = f" ({100 * ev.done / ev.total:.0f}%)" if ev.total else ""
    bits = [f"{ev.stage} {ev.done:,}{total} {ev.unit}{pct}"]
    if ev.tokens and ev.elapsed_s > 0:
        bits.append(f"{ev.tokens_per_s:,.0f} tok/s")
    bits.append(f"{_clock(ev.elapsed_s)} elapsed")
    if ev.total:
        bits.append("done" if ev.done >= ev.total and not ev.estimated else f"ETA {_clock(ev.eta_s)}")
    return " · ".join(bits)


class PlainProgress:
    """Plain progress lines for logs: per stage, the first event, the last, one every `every_s`
    seconds and one per 10% step."""

    def __init__(self, stream: TextIO, every_s: float = DEFAULT_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.stream, self.every_s, self.clock = stream, every_s, clock
        self._last: dict[str, tuple[float, int]] = {}  # stage -> (time of its last line, its 10% step)

    def __call__(self, ev: ProgressEvent) -> None:
        now = self.clock()
        step = int(10 * ev.done / ev.total) if ev.total else -1
        last = self._last.get(ev.stage)
        due = (last is None or now - last[0] >= self.every_s or step > last[1]
               or (ev.total and ev.done >= ev.total))
        if due:
            self._last[ev.stage] = (now, step)
            print(f"{PREFIX}{describe(ev)}", file=self.stream, flush=True)


@contextlib.contextmanager
def progress_display(every_s: float = DEFAULT_EVERY_S) -> Iterator[Callable[[ProgressEvent], None]]:
    """The callback `diagnose` gets: a rich display when stderr is a terminal, `PlainProgress` lines otherwise."""
    if not sys.stderr.isatty():
        yield PlainProgress(sys.stderr, every_s)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    bar = Progress(TextColumn("{task.description:<9}"), BarColumn(), TextColumn("{task.fields[info]}"),
                   console=Console(stderr=True), transient=False)
    tasks: dict[str, int] = {}

    def cb(ev: ProgressEvent) -> None:
        info = describe(ev).split(" ", 1)[1]
        if ev.stage not in tasks:
            tasks[ev.stage] = bar.add_task(ev.stage, total=ev.total or None, info=info)
        bar.update(tasks[ev.stage], completed=ev.done, total=ev.total or None, info=info)

    with bar:
        yield cb
