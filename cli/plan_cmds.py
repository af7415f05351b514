"""CLI command `plan` (the cost of a run before running it) and the plan's rendering, which
`diagnose` prints in its opening lines too.

Owns: the `plan` command's options and `plan_lines` (a `gradalign.plan.Plan` as text); `register(app)`
adds the command to the Typer app. Does not own the plan or the cost model (`gradalign.plan`,
`gradalign.selectors`). Imports nothing heavy at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def _n(x: float) -> str:
    return f"{x:,.0f}" if abs(x - round(x)) < 1e-9 or abs(x) >= 100 else f"{x:,.1f}"


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}s" if x < 120 else f"{x / 60:.1f}min" if x < 7200 else f"{x / 3600:.1f}h"


def plan_lines(plan, workers: tuple[int, ...] = ()) -> list[str]:
    """The plan as lines: a header, one row per stage (total and per question), totals, wall time."""
    q = max(1, plan.questions)
    head = (f"plan: {plan.questions} questions, {plan.rollouts} rollouts, T = {plan.mean_rollout_tokens:.1f} tokens "
            f"({plan.length_source}), {_n(plan.nodes)} nodes ({_n(plan.nodes / max(1, plan.rollouts))} per rollout)")
    lines = [head, f"  {'stage':<14}{'sequences':>12}{'tokens':>14}{'per question (seq/tok)':>24}{'time, 1 worker':>16}"]
    for s in plan.stages:
        per_q = f"{_n(s.sequences / q)} / {_n(s.tokens / q)}"
        lines.append(f"  {s.stage:<14}{_n(s.sequences):>12}{_n(s.tokens):>14}{per_q:>24}{_s(s.seconds):>16}  "
                     + ("exact" if s.exact else "estimate"))
    lines.append(f"  {'total':<14}{_n(plan.rollouts + plan.continuations):>12}{_n(plan.tokens):>14}"
                 f"{_n(plan.tokens / q):>24}{_s(plan.seconds):>16}")
    lines.append(f"  cost model (budget accounting): {_n(plan.priced_continuations)} continuations, "
                 f"{_n(plan.priced_tokens)} tokens")
    if plan.probe_questions:
        lines.append(f"  probe: {plan.probe_questions} questions diagnosed here ({plan.probe_continuations} branch "
                     f"continuations counted), load {_s(plan.load_seconds)} per worker")
        for n in workers:
            lines.append(f"  wall time with {n} worker{'s' if n > 1 else ''} like this one: {_s(plan.wall_seconds(n))}")
    return lines


def plan_cmd(
    config: Path = typer.Argument(..., help="TOML run config"),
    set_: List[str] = typer.Option([], "--set", help="override a config field, e.g. --set task.limit=500"),
    mean_tokens: Optional[float] = typer.Option(None, "--mean-tokens", help="assumed mean rollout length T (default: sampling.max_new_tokens)"),
    probe: bool = typer.Option(False, "--probe", help="load the models and diagnose a few questions here (nothing written) to measure"),
    probe_questions: int = typer.Option(2, "--probe-questions", help="with --probe: questions to diagnose"),
    workers: List[int] = typer.Option([1, 2, 8], "--workers", help="with --probe: estimate the wall time for N workers (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan record as JSON (totals and wall times included)"),
) -> None:
    """Planned rollouts, nodes, continuations and generated tokens per stage, per question and in total.

    Without --probe no weights are read: the selectors' cost model at an assumed rollout length.
    With --probe the first questions are diagnosed on this machine and extrapolated, with times.

    Example: gradalign plan data/configs/demo.toml --probe --probe-questions 2 --workers 4
    """
    import logging

    from gradalign.cli.app import _load_config

    from gradalign.errors import GradalignError
    from gradalign.plan import plan_run

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if probe and probe_questions < 1:
        raise GradalignError(f"--probe-questions must be at least 1, got {probe_questions}")
    plan = plan_run(_load_config(config, set_), mean_tokens=mean_tokens, probe=probe_questions if probe else 0)
    if as_json:
        import dataclasses
        import json

        typer.echo(json.dumps({**dataclasses.asdict(plan), "tokens": plan.tokens, "continuations": plan.continuations,
                               "seconds": plan.seconds, "wall_seconds": {n: plan.wall_seconds(n) for n in workers}}, indent=1))
        return
    for line in plan_lines(plan, tuple(workers)):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
