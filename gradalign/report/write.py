"""Writing reports: one folder per task with index.html, summary.md and the PNG figures.

Owns: `build_report` (one report for one run's or combined runs' tables: gather the data, draw the
figures, render and write the page and the summary), `load_run` (`gradalign.load` with only the
tokens columns a report reads) and `write_reports` (load run folders, group them by task, combine
runs of the same task, one report per task).

Does not own: what any file contains (`data`, `figures`, `headlines`, `page`, `markdown`) or
reading runs (`gradalign.tables`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from gradalign import analysis as A
from gradalign.report.data import (
    TOKEN_COLUMNS,
    ReportContext,
    report_configs,
    report_data,
    task_name,
)
from gradalign.report.figures import write_figures
from gradalign.report.headlines import headlines
from gradalign.report.markdown import render_summary
from gradalign.report.options import ReportFiles, ReportOptions
from gradalign.report.page import render_page

log = logging.getLogger(__name__)


def build_report(tables, out_dir: str | Path, *, options: ReportOptions = ReportOptions(), title: str | None = None) -> ReportFiles:
    """Write index.html (self-contained), summary.md and the PNG figures for one task into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = task_name(tables)
    data = report_data(tables, options)
    configs = report_configs(tables)
    figures = write_figures(tables, data, options, configs, out)
    ctx = ReportContext(tables, data, options, title or f"gradalign report: {task}", configs,
                        tuple(headlines(data, tables, options)), figures, A.run_caveats(tables, metric=options.metric))
    html_path = out / "index.html"
    html_path.write_text(render_page(ctx), encoding="utf-8")
    md_path = out / "summary.md"
    md_path.write_text(render_summary(ctx), encoding="utf-8")
    log.info("report for %s written to %s", task, out)
    return ReportFiles(task, out, html_path, md_path, tuple(figures.values()), ctx.headlines, ctx.caveats)


def load_run(run_dir: str | Path):
    """A run's Tables as a report needs them: the tokens table with `data.TOKEN_COLUMNS` only."""
    from gradalign.tables import load

    return load(run_dir, columns={"tokens": TOKEN_COLUMNS})


def write_reports(run_dirs: Sequence[str | Path], out: str | Path, *, options: ReportOptions = ReportOptions()) -> list[ReportFiles]:
    """Load runs (`load_run`: the tokens columns a report reads), group them by task, and write one
    report per task.

    With one task the report goes to `out` itself; with several, to `out/<task>/`.
    """
    if not run_dirs:
        raise A.AnalysisError("give at least one run folder")
    by_task: dict[str, list] = {}
    names: dict[str, list] = {}
    for d in run_dirs:
        t = load_run(d)
        by_task.setdefault(task_name(t), []).append(t)
        names.setdefault(task_name(t), []).append(Path(d).name)
    results = []
    for task, runs in by_task.items():
        tables = A.combine_runs(runs, names[task]) if len(runs) > 1 else runs[0]
        target = Path(out) if len(by_task) == 1 else Path(out) / task
        results.append(build_report(tables, target, options=options))
    return results
