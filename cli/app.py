"""The Typer application behind the `gradalign` command.

Owns: option parsing, progress display and rendering. Every command builds one config and calls the
library function a Python user would call; nothing here computes results. Imports of torch,
transformers and pandas happen inside commands so `gradalign --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

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
    model: str = typer.Option("student", help="bundled model name, local folder or HF id"),
    context: str = typer.Option("none", help="context the model sees before the question: none, solution, summary, answer, example"),
    n: int = typer.Option(200, help="questions from the test split (fixed order)"),
    seed: int = typer.Option(0, help="sampling seed"),
    all_: bool = typer.Option(False, "--all", help="every bundled model/context pair, as the Markdown table in data/README.md"),
) -> None:
    """Sampled accuracy (temperature 1) of a model on the bundled addition task under one context.

    Example: gradalign accuracy --model student --context solution --n 200
    """
    from gradalign.world import accuracy_on_test, accuracy_table

    if all_:
        typer.echo(accuracy_table(n=n, seed=seed))
        return
    acc = accuracy_on_test(model, context, n=n, seed=seed)
    typer.echo(f"{acc.model}\t{acc.context}\t{acc.correct}/{acc.n}\t{acc.rate:.3f}\ttruncated={acc.truncated}")


def _progress_runner():
    """A rich progress display and the (stage, done, total) callback the library calls."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False)
    tasks: dict[str, int] = {}

    def cb(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return bar, cb


def _render_summary(run) -> None:
    from rich.console import Console
    from rich.table import Table

    from gradalign.analysis import resolved_counts, summary_table

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


def _load_config(config_path: Path, overrides: list[str]):
    from gradalign.config import apply_overrides, load_config, parse_overrides

    cfg = load_config(config_path)
    return apply_overrides(cfg, parse_overrides(overrides)) if overrides else cfg


def _run_diagnose(cfg, out: Path, resume: bool, shard_size: int) -> None:
    import json
    import logging
    import shlex

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from gradalign.engine import diagnose

    bar, cb = _progress_runner()
    with bar:
        run = diagnose(cfg, out, resume=resume, shard_size=shard_size, progress=cb)
    _render_summary(run)
    f = run.manifest.faults
    if any(f.values()):
        typer.echo("recorded per row, not fatal: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in f.items() if v))
    t = run.manifest.timings_s
    typer.echo(f"wrote {out}/{{rollouts,tokens,nodes,alignment}}.parquet and manifest.json in {t['total']:.1f}s")
    code = f"import gradalign; t = gradalign.load({json.dumps(str(out))}); print(t.alignment.head())"
    typer.echo(f"next: gradalign report {shlex.quote(str(out))} --out reports/addition/  |  python -c {shlex.quote(code)}")


@app.command("diagnose")
def diagnose_cmd(
    config: Path = typer.Argument(..., help="TOML run config (see data/configs/)"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder for the tables and manifest"),
    set_: list[str] = typer.Option([], "--set", help="override a config field, e.g. --set sampling.rollouts_per_question=8"),
    resume: bool = typer.Option(False, help="keep finished shards in OUT and compute the rest"),
    shard_size: int = typer.Option(8, help="questions per shard (the unit written to disk and resumed)"),
) -> None:
    """Diagnose teacher/context configs: per-token alignment of distillation and ideal gradients.

    Example: gradalign diagnose data/configs/demo.toml --out runs/demo --set task.limit=20
    """
    _run_diagnose(_load_config(config, set_), out, resume, shard_size)


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
