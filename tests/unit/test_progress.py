"""gradalign.progress (cumulative events, rate, ETA, extrapolated totals) and the CLI's plain renderer."""

from __future__ import annotations

import io
import math

from gradalign.cli.progress import PlainProgress, describe

from gradalign import progress as P


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_events_are_cumulative_over_shards_with_rate_and_eta():
    clock, seen = Clock(), []
    tr = P.ProgressTracker(seen.append, clock=clock)
    tr.expect("rollouts", 8)
    for _shard in range(2):  # two shards of 4 rollouts, 2 s each, 100 tokens per rollout
        with tr.stage("rollouts"):
            P.advance(2, 200)
            clock.t += 2.0
            P.advance(2, 200)
        clock.t += 5.0  # time outside the stage does not count towards its rate
    done = [(e.done, e.total) for e in seen]
    assert done == [(2, 8), (4, 8), (6, 8), (8, 8)]  # never restarts per shard
    last = seen[-1]
    assert last.elapsed_s == 4.0 and last.tokens == 800 and last.tokens_per_s == 200.0 and last.finished
    mid = seen[1]  # 4 of 8 after 2 s: 2 s left at that pace
    assert mid.eta_s == 2.0 and mid.units_per_s == 2.0


def test_branch_total_extrapolated_from_planned_questions():
    tr = P.ProgressTracker(clock=Clock())
    tr.planned(2, 8)  # a quarter of the questions planned
    with tr.stage("branch"):
        P.expect(100)
        ev = tr.advance(50)
    assert ev.total == 400 and ev.estimated and not ev.finished
    tr.planned(8, 8)
    assert tr.event("branch").total == 100 and not tr.event("branch").estimated


def test_advance_outside_a_run_is_a_no_op():
    P.advance(3, 10)  # no tracker active: nothing raised, nothing recorded
    assert P.active() is None


def test_describe_and_unknown_total():
    ev = P.ProgressEvent("branch", 120, 480, "continuations", 2400, 12.0, estimated=True)
    assert describe(ev) == "branch 120/~480 continuations (25%) · 200 tok/s · 0:12 elapsed · ETA 0:36"
    ev = P.ProgressEvent("select", 5, 0, "continuations", 0, 1.0)
    assert describe(ev) == "select 5 continuations · 0:01 elapsed" and math.isnan(ev.eta_s)


def test_plain_lines_throttled_by_time_and_ten_percent_steps():
    clock, out = Clock(), io.StringIO()
    plain = PlainProgress(out, every_s=10.0, clock=clock)
    for done in range(1, 101):  # 100 events within a second: first line, one per 10% step, last
        clock.t = done / 100
        plain(P.ProgressEvent("score", done, 100, "rollouts", done, clock.t))
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[0].startswith("progress: score 1/100") and "(100%)" in lines[-1]
    out.truncate(0), out.seek(0)
    for done in range(1, 4):  # no total: a line every 10 s
        clock.t = 100 + 6 * done
        plain(P.ProgressEvent("select", done, 0, "continuations", 0, clock.t))
    assert len(out.getvalue().splitlines()) == 2  # first (t=106), then t=118 (12 s later); t=112 skipped
