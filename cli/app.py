"""The Typer application behind the `gradalign` command.

Owns: option parsing and rendering (live progress: `cli.progress`). Every command builds one config and calls the
library function a Python user would call; nothing here computes results. Imports of torch,
transformers and pandas happen inside commands so `gradalign --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from gradalign.cli.errors import GuardedGroup

app = typer.Typer(
    name="gradalign",
    cls=GuardedGroup,
    help="Per-token diagnosis of on-policy distillation: does each teacher's gradient point toward student success?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("build-world")
def build_world(
    out: Path = typer.Option(Path("data"), help="data folder to (re)write"),
    seed: int = typer.Option(0, help="seed for task generation and training"),
    smoke: bool = typer.Option(False, help="tiny sizes and a few steps (seconds; for tests)"),
    threads: int = typer.Option(0, help="torch CPU threads (0 = torch default)"),
    reuse_cache: bool = typer.Option(False, "--reuse-cache", help="reuse the cached teacher run (models/.build_cache) if its settings match"),
) -> None:
    """Regenerate the embedded world (task files, tokenizer, student and teachers) from a seed.

    Prints the build report (checkpoint evaluations, chosen student steps) as JSON.

    Example: gradalign build-world --out data --seed 0 --reuse-cache
    """
    import dataclasses
    import json
    import logging

    from gradalign.world import BuildConfig, build

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = dataclasses.replace(BuildConfig.smoke() if smoke else BuildConfig(), seed=seed)
    report = build(out, cfg, reuse_cache=reuse_cache, threads=threads)
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "build_config"}, indent=2))


@app.command("accuracy")
def accuracy(
    config: Optional[Path] = typer.Argument(None, metavar="[CONFIG]", help="TOML run config: screen its task (without it: the embedded world)"),
    who: str = typer.Option("student", "--config", help="with CONFIG: 'student' (prompt only) or a teacher config's name (its model and context)"),
    samples: int = typer.Option(8, "--samples", help="with CONFIG: completions sampled and graded per question"),
    set_: list[str] = typer.Option([], "--set", help="with CONFIG: override a config field, e.g. --set task.limit=32"),
    out: Optional[Path] = typer.Option(None, "--out", help="with CONFIG: write the per-question rates as CSV here"),
    keep: Optional[Path] = typer.Option(None, "--keep", help="with CONFIG: write the task rows with 0 < rate < 1 as JSONL here (use as task.path)"),
    model: str = typer.Option("student", help="embedded world: bundled model name, local folder or HF id"),
    context: str = typer.Option("none", help="embedded world: context before the question: none, solution, summary, answer, example"),
    n: int = typer.Option(200, help="embedded world: questions from the test split (fixed order)"),
    seed: int = typer.Option(0, help="embedded world: sampling seed"),
    all_: bool = typer.Option(False, "--all", help="embedded world: every bundled model/context pair, as the Markdown table in data/README.md"),
) -> None:
    """Solve rate per question, to screen out questions with rate 0 or 1 (no signal) before a long run.

    With CONFIG: samples --samples completions per question of its task from the student (or from
    the teacher config named by --config, under its context), with the config's prompt format,
    sampling settings, EOS ids and grader (a truncated completion is a failure), and prints each
    question's rate with its Wilson 95% interval and the mean over questions with its interval.
    Without CONFIG: the embedded addition world's accuracy (--model, --context, --n, --all).

    Example: gradalign accuracy data/configs/demo.toml --samples 16 --set task.limit=20 --keep screened.jsonl
    """
    if config is None:
        from gradalign.world import accuracy_on_test, accuracy_table

        if all_:
            typer.echo(accuracy_table(n=n, seed=seed))
            return
        acc = accuracy_on_test(model, context, n=n, seed=seed)
        typer.echo(f"{acc.model}\t{acc.context}\t{acc.correct}/{acc.n}\t{acc.rate:.3f}\ttruncated={acc.truncated}")
        return
    _screen(_load_config(config, set_), who, samples, out, keep)


def _screen(cfg, who: str, samples: int, out: Optional[Path], keep: Optional[Path]) -> None:
    import json
    import logging

    from rich.console import Console
    from rich.table import Table

    from gradalign.accuracy import solve_rates
    from gradalign.errors import GradalignError

    for p, flag in ((out, "--out"), (keep, "--keep")):
        if p is not None and (p.is_dir() or not p.parent.is_dir()):
            raise GradalignError(f"{flag} {p}: expected a file path in an existing folder")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import time

    from gradalign.cli.progress import progress_display

    from gradalign.progress import ProgressEvent

    t0 = time.perf_counter()
    with progress_display() as cb:
        rates = solve_rates(cfg, who=who, samples=samples, progress=lambda done, total: cb(
            ProgressEvent("questions", done, total, "questions", 0, time.perf_counter() - t0)))
    table = Table(title=f"solve rate of {rates.who} ({rates.model}), {samples} samples per question")
    for col in ("question", "correct / n", "rate", "95% interval", "truncated", "answers (first 4)"):
        table.add_column(col, justify="left" if col in ("question", "answers (first 4)") else "right")
    for q in rates.questions:
        mark = "" if q.informative else "  (no signal)"
        shown = ", ".join("-" if a is None else str(a)[:12] for a in q.answers[:4])
        table.add_row(q.question_id + mark, f"{q.correct}/{q.n}", f"{q.rate:.2f}",
                      f"[{q.interval.low:.2f}, {q.interval.high:.2f}]", str(q.truncated), shown)
    Console().print(table)
    m = rates.mean_interval
    typer.echo(f"mean solve rate {rates.mean_rate:.3f} [{m.low:.3f}, {m.high:.3f}] over {len(rates.questions)} questions; "
               f"{rates.n_informative} with 0 < rate < 1; {sum(q.correct == 0 for q in rates.questions)} at 0, "
               f"{sum(q.correct == q.n for q in rates.questions)} at 1; {rates.seconds:.1f}s")
    if out is not None:
        rates.to_frame().to_csv(out, index=False)
        typer.echo(f"wrote {out}")
    if keep is not None:
        from gradalign.preflight import preflight

        task = preflight(cfg, check_tokenizers=False).task
        kept = {q.question_id for q in rates.questions if q.informative}
        rows = [r for r in task.rows if task.row_id(r) in kept]
        keep.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows), encoding="utf-8")
        typer.echo(f"wrote {len(rows)} rows with 0 < rate < 1 to {keep} (set task.path to it)")


def _render_summary(run) -> None:
    from rich.console import Console
    from rich.table import Table

    from gradalign.analysis import resolved_counts, run_caveats, summary_table

    tables = run.tables()
    s = summary_table(tables.alignment)
    rc = {(x.config, x.loss): f"{x.resolved}/{x.rows}" for x in resolved_counts(tables.alignment).itertuples()}
    r = tables.rollouts
    console = Console()
    table = Table(title=f"mean cos(ideal, distill) by config x loss  ({int(r.correct.sum())}/{len(r)} rollouts correct)")
    for col in ("config", "loss", "correct rollouts", "incorrect rollouts", "all", "nodes (c/i)", "resolved"):
        left = col in ("config", "loss")
        table.add_column(col, justify="left" if left else "right", no_wrap=left)
    fmt = lambda v: "-" if v != v else f"{v:+.3f}"  # noqa: E731
    for (config, loss), row in s.iterrows():
        table.add_row(config, loss, fmt(row.mean_correct), fmt(row.mean_incorrect), fmt(row.mean_all), f"{int(row.n_correct)}/{int(row.n_incorrect)}",
                      rc.get((config, loss), "-"))
    console.print(table)
    console.print("resolved: nodes whose cosine sign is determined at 95% (alignment column `resolved`); "
                  "the others are within their noise")
    for c in run_caveats(tables):  # the same records the report shows at its top
        typer.echo(f"warning: {c.message}")


def _load_config(config_path: Path, overrides: list[str]):
    from gradalign.config import apply_overrides, load_config, parse_overrides

    cfg = load_config(config_path)
    return apply_overrides(cfg, parse_overrides(overrides)) if overrides else cfg


def _run_diagnose(cfg, out: Path, resume: bool, shard_size: int, executor: str | None = None, address: str | None = None,
                  max_tokens: int | None = None, mean_tokens: float | None = None, progress_every: float = 10.0) -> None:
    import dataclasses
    import json
    import logging
    import shlex

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from gradalign.cli.plan_cmds import plan_lines
    from gradalign.cli.progress import progress_display

    from gradalign.engine import diagnose
    from gradalign.plan import check_max_tokens, plan_run

    plan = plan_run(cfg, mean_tokens=mean_tokens)  # no weights: the opening lines, and what --max-tokens checks
    for line in plan_lines(plan):
        typer.echo(line)
    if max_tokens is not None:
        check_max_tokens(plan, max_tokens)  # before anything is written
    with progress_display(progress_every) as cb:
        run = diagnose(cfg, out, resume=resume, shard_size=shard_size, progress=cb, executor=executor, address=address)
    _render_summary(run)
    f = run.manifest.faults
    if any(f.values()):
        typer.echo("recorded per row, not fatal: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in f.items() if v))
    t = run.manifest.timings_s
    typer.echo(f"wrote {out}/{{rollouts,tokens,nodes,alignment}}.parquet and manifest.json in {t['total']:.1f}s")
    code = f"import gradalign; t = gradalign.load({json.dumps(str(out))}); print(t.alignment.head())"
    from gradalign.report.data import task_label  # the folder `report` names a task by

    report_dir = shlex.quote(f"reports/{task_label(dataclasses.asdict(cfg.task))}/")
    typer.echo(f"next: gradalign report {shlex.quote(str(out))} --out {report_dir}  |  python -c {shlex.quote(code)}")


@app.command("diagnose")
def diagnose_cmd(
    config: Path = typer.Argument(..., help="TOML run config (see data/configs/)"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder for the tables and manifest"),
    set_: list[str] = typer.Option([], "--set", help="override a config field, e.g. --set sampling.rollouts_per_question=8"),
    resume: bool = typer.Option(False, help="keep finished shards in OUT and compute the rest"),
    shard_size: int = typer.Option(8, help="questions per shard (the unit written to disk and resumed)"),
    progress_every: float = typer.Option(10.0, help="without a terminal: seconds between progress lines per stage "
                                                    "(a line also at each 10% step and when a stage finishes)"),
    executor: Optional[str] = typer.Option(None, "--executor", help="local | ray: how shards are run (default: the config's executor.kind, local)"),
    address: Optional[str] = typer.Option(None, "--address", help="with --executor ray: the Ray cluster, e.g. auto (default: executor.address)"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="refuse to start if the plan generates more tokens than this"),
    mean_tokens: Optional[float] = typer.Option(None, "--mean-tokens", help="mean rollout length the plan assumes (default: sampling.max_new_tokens)"),
) -> None:
    """Diagnose teacher/context configs: per-token alignment of distillation and ideal gradients.

    Prints the cost plan first (`gradalign plan`). Progress goes to stderr: live bars on a terminal,
    plain `progress:` lines otherwise (counts over the whole run, tokens/s, ETA). With --executor
    ray, whole shards run on Ray actors (pip install 'gradalign[ray]'); the tables are the same as
    with local.

    Example: gradalign diagnose data/configs/demo.toml --out runs/demo --set task.limit=20 --executor ray --address auto
    """
    cfg = _load_config(config, set_)
    if executor is not None and executor not in ("local", "ray"):
        from gradalign.errors import GradalignError

        raise GradalignError(f"--executor: must be local or ray, got {executor!r}")
    _run_diagnose(cfg, out, resume, shard_size, executor, address, max_tokens, mean_tokens, progress_every)


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="output folder (replaced if it holds a previous demo run and nothing else)"),
    backend: str = typer.Option("hf", "--backend", help="rollout backend: hf | vllm (needs vLLM; runs eager: the models are tiny)"),
) -> None:
    """Run the bundled demo config on the embedded world (under a minute on 2 CPU cores).

    Example: gradalign demo --out runs/demo --backend hf
    """
    from gradalign.runfolder import clear_previous_demo
    from gradalign.tasks import data_dir

    sets = [f"sampling.backend={backend}"] + (["sampling.vllm_eager=true"] if backend == "vllm" else [])
    cfg = _load_config(data_dir() / "configs" / "demo.toml", sets)
    clear_previous_demo(out)  # only a previous demo run, holding nothing but the tool's files
    _run_diagnose(cfg, out, False, 8)


@app.command("validate")
def validate(config: Path = typer.Argument(..., help="TOML run config")) -> None:
    """Check a run config, its task file and templates without loading model weights.

    Example: gradalign validate data/configs/demo.toml
    """
    from gradalign.config import load_config
    from gradalign.preflight import preflight

    cfg = load_config(config)
    report = preflight(cfg)
    task = report.task
    typer.echo(f"ok: {config}: {len(task.rows)} questions, {len(cfg.teachers)} configs, losses {', '.join(cfg.distill.losses)}")


from gradalign.cli.analysis_cmds import register as _register_analysis  # noqa: E402  (report, compare, weights)

_register_analysis(app)
from gradalign.cli.config_cmds import register as _register_config  # noqa: E402  (config)

_register_config(app)
from gradalign.cli.plan_cmds import register as _register_plan  # noqa: E402  (plan)

_register_plan(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
