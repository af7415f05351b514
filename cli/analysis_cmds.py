"""CLI commands over finished runs: `report`, `compare` and `weights`.

Owns: their option parsing, terminal rendering (rich) and exit codes; `register(app)` adds them to
the Typer app. Does not own any statistic (`gradalign.analysis`) or the report files
(`gradalign.report`). Imports nothing heavy at import time (no pandas, matplotlib or torch) so
`gradalign --help` stays instant: every import of those happens inside a command.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from gradalign.errors import GradalignError


def _check_dirs(run_dirs: List[Path]) -> None:
    if not run_dirs:
        raise GradalignError("give at least one RUN_DIR")
    for d in run_dirs:
        if not d.is_dir():
            raise GradalignError(f"{d}: not a folder (expected a run folder written by `gradalign diagnose`)")


def _load_combined(run_dirs: List[Path], columns=None):
    from gradalign.analysis import combine_runs
    from gradalign.tables import load

    runs = [load(d, columns=columns) for d in run_dirs]
    return combine_runs(runs, [d.name for d in run_dirs]) if len(runs) > 1 else runs[0]


def report(
    run_dirs: List[Path] = typer.Argument(..., help="run folders (written by `gradalign diagnose`); runs of the same task share a page"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder, e.g. reports/<task>/ (one task: the page goes here; several: OUT/<task>/)"),
    metric: str = typer.Option("cos", help="alignment column: cos | cos_candidates"),
    loss: Optional[str] = typer.Option(None, help="loss of the one-loss views (winners, position, heatmaps, scatter, quadrants); default reverse_kl"),
    n_boot: int = typer.Option(2000, help="bootstrap replicates (questions are resampled, not tokens)"),
    seed: int = typer.Option(0, help="bootstrap seed"),
    bins: int = typer.Option(5, help="relative-position bins along the rollout"),
    decisive_top: int = typer.Option(1, help="decisive nodes per rollout (largest |delta V|)"),
    heatmap_rollouts: int = typer.Option(4, help="rollouts rendered as coloured text"),
    divergence: str = typer.Option("kl_pq", help="TIP divergence axis: kl_pq | kl_qp | jsd | dist_cos (used as 1 - cos)"),
    h_quantile: float = typer.Option(0.5, help="TIP entropy threshold quantile (high H = strictly above)"),
    d_quantile: float = typer.Option(0.5, help="TIP divergence threshold quantile"),
    rock_top: int = typer.Option(20, help="rock-token types kept per config"),
    rock_min_freq: int = typer.Option(2, help="rock tokens: minimum frequency of a type"),
    rock_drop_top: int = typer.Option(5, help="rock tokens: drop this many most frequent types first"),
) -> None:
    """Write one self-contained HTML page per task (PNG figures and summary.md beside it).

    The page ranks configs x losses by mean alignment (bootstrap intervals over questions, split by
    verdict), shows which config wins on each question, alignment along the rollout and at decisive
    nodes, coloured token views, divergence-vs-alignment correlations, TIP quadrants and rock tokens.

    Example: gradalign report runs/demo --out reports/addition/
    """
    _check_dirs(run_dirs)
    from gradalign.report import ReportOptions, write_reports
    from gradalign.runfolder import check_writable

    check_writable(out)  # before any statistic is computed

    opts = ReportOptions(metric=metric, loss=loss, n_boot=n_boot, seed=seed, position_bins=bins, decisive_top=decisive_top,
                         heatmap_rollouts=heatmap_rollouts, divergence=divergence, h_quantile=h_quantile, d_quantile=d_quantile,
                         rock_top_n=rock_top, rock_min_freq=rock_min_freq, rock_drop_top=rock_drop_top)
    results = write_reports(run_dirs, out, options=opts)
    for r in results:
        typer.echo(f"{r.task}: wrote {r.html} ({len(r.figures)} figures and {r.markdown.name} beside it)")
        for c in r.caveats:
            typer.echo(f"  warning: {c.message}")
        for h in r.headlines:
            typer.echo(f"  - {h}")


def compare(
    run_dirs: List[Path] = typer.Argument(..., help="run folders (written by `gradalign diagnose`)"),
    metric: str = typer.Option("cos", help="alignment column: cos | cos_candidates"),
    fmt: str = typer.Option("table", "--format", help="table (rich) | csv | json"),
    n_boot: int = typer.Option(2000, help="bootstrap replicates (questions are resampled, not tokens)"),
    seed: int = typer.Option(0, help="bootstrap seed"),
) -> None:
    """Rank configs x losses by mean alignment with 95% bootstrap intervals, split by verdict.

    Same ranking as the report, plus how many rows have a resolved cosine sign (`resolved` of
    `resolved_of`); --format csv or json prints machine-readable rows to stdout.

    Example: gradalign compare runs/demo --format csv
    """
    if fmt not in ("table", "csv", "json"):
        raise GradalignError(f"unknown --format {fmt!r}; choose table, csv or json")
    _check_dirs(run_dirs)
    from gradalign.analysis import rank_configs, resolved_counts

    t = _load_combined(run_dirs, columns={"tokens": []})  # the ranking reads alignment and rollouts only
    r = rank_configs(t.alignment, metric=metric, n_boot=n_boot, seed=seed)
    rc = resolved_counts(t.alignment)[["config", "loss", "rows", "resolved"]].rename(columns={"rows": "resolved_of"})
    r = r.merge(rc, on=["config", "loss"], how="left")
    if fmt == "csv":
        typer.echo(r.to_csv(index=False, float_format="%.6g"), nl=False)
        return
    if fmt == "json":
        typer.echo(r.to_json(orient="records", indent=2, double_precision=6))
        return
    from rich.console import Console
    from rich.table import Table

    def ci(m, lo, hi):
        return "-" if m != m else f"{m:+.3f} [{lo:+.2f},{hi:+.2f}]"

    rr = t.rollouts
    table = Table(title=f"mean {metric}(ideal, distill), 95% CI over questions  ({int(rr.correct.sum())}/{len(rr)} rollouts correct, "
                        f"{rr.question_id.nunique()} questions)")
    for col in ("#", "config", "loss", "all rollouts", "correct", "incorrect", "nodes c/i", "q", "resolved"):
        table.add_column(col, justify="left" if col in ("config", "loss") else "right", no_wrap=col != "config")
    for x in r.itertuples():
        table.add_row(str(x.rank), x.config, x.loss, ci(x.mean, x.ci_low, x.ci_high), ci(x.mean_correct, x.ci_low_correct, x.ci_high_correct),
                      ci(x.mean_incorrect, x.ci_low_incorrect, x.ci_high_incorrect), f"{x.n_correct}/{x.n_incorrect}", str(x.n_questions),
                      "-" if x.resolved != x.resolved else f"{int(x.resolved)}/{int(x.resolved_of)}")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped: do not squeeze the intervals into 80 columns
    console.print(table)


def weights(
    run_dir: Path = typer.Argument(..., help="run folder (written by `gradalign diagnose`)"),
    config: str = typer.Option(..., help="teacher/context config whose loss the weights apply to"),
    rule: List[str] = typer.Option(..., "--rule", help="zero-negative | keep-tip:Q3 (or keep-tip:Q1,Q3) | freeze-rocks; repeat to multiply"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Parquet file to write (default RUN_DIR/weights-<config>.parquet)"),
    loss: Optional[str] = typer.Option(None, help="loss whose alignment zero-negative reads (default reverse_kl)"),
    metric: str = typer.Option("cos", help="alignment column for zero-negative"),
    divergence: str = typer.Option("kl_pq", help="TIP divergence axis for keep-tip"),
    h_quantile: float = typer.Option(0.5, help="TIP entropy threshold quantile"),
    d_quantile: float = typer.Option(0.5, help="TIP divergence threshold quantile"),
    rock_top: int = typer.Option(20, help="rock-token types frozen"),
    rock_min_freq: int = typer.Option(2, help="rock tokens: minimum frequency"),
    rock_drop_top: int = typer.Option(5, help="rock tokens: drop this many most frequent types first"),
) -> None:
    """Export per-token loss weights (question_id, rollout_id, position, weight) for an OPD trainer.

    One row per completion token of the run's rollouts; position indexes the completion's token ids
    (0 = first generated token). Multiply the trainer's per-token loss by `weight` after joining on
    (question_id, rollout_id, position); see README "Reports" for a snippet.

    Example: gradalign weights runs/demo --config self-summary --rule zero-negative --rule freeze-rocks
    """
    if not run_dir.is_dir():
        raise GradalignError(f"{run_dir}: not a folder (expected a run folder written by `gradalign diagnose`)")
    import json

    from gradalign.analysis import DIVERGENCES, parse_rule, token_weights
    from gradalign.runfolder import check_writable
    from gradalign.tables import COLUMNS, load, write_table

    rules = [parse_rule(r) for r in rule]
    path = out or run_dir / f"weights-{config}.parquet"
    check_writable(path, kind="file")  # before reading the run
    # one config's rows and the columns the rules read (a 10M-row table is never held whole)
    cols = {"tokens": ["question_id", "rollout_id", "position", "config", "token_id", "token_text", "student_logprob",
                       "teacher_logprob", "student_entropy", *([divergence] if divergence in DIVERGENCES else [])]}
    t = load(run_dir, columns=cols, filters={"tokens": [("config", "==", config)]})
    if t.tokens.empty:  # unknown config (or a config without tokens): let token_weights name the run's configs
        t = load(run_dir, columns={"tokens": ["config"]})
    w = token_weights(t.tokens, t.alignment, config=config, rules=rules, loss=loss, metric=metric, divergence=divergence,
                      h_quantile=h_quantile, d_quantile=d_quantile, min_freq=rock_min_freq, drop_top=rock_drop_top, top_n=rock_top)
    params = w.attrs.get("gradalign_weights", {})
    try:
        write_table("weights", {c: w[c].tolist() for c, _, _ in COLUMNS["weights"]}, path, {"weights": json.dumps(params)})
    except OSError as e:  # the writer removes its temp file; a full disk or a folder made read-only since the check
        raise GradalignError(f"{path}: cannot write ({e.strerror or e}); free space or choose another --out") from None
    kept = float(w["weight"].mean()) if len(w) else 0.0
    typer.echo(f"wrote {path}: {len(w)} tokens of config {config!r}, rules {', '.join(map(str, rules))}; "
               f"{100 * kept:.1f}% keep weight 1, {100 * (1 - kept):.1f}% get 0")
    if "rock_token_ids" in params or "tip" in params:
        typer.echo(f"rule parameters (also in the file's metadata key gradalign.weights): "
                   f"{json.dumps({k: v for k, v in params.items() if k in ('rock_token_ids', 'tip')})}")


def register(app: typer.Typer) -> None:
    """Add the `report`, `compare` and `weights` commands to `app`."""
    app.command("report")(report)
    app.command("compare")(compare)
    app.command("weights")(weights)
