"""The numbers a report shows, gathered once from `gradalign.analysis`.

Owns: `ReportData` (every analysis table one report shows), `report_data` (calls the analysis
functions with the report's options), `TOKEN_COLUMNS` (the tokens-table columns a report reads, so
`write.write_reports` loads only those), `task_name` (a run's task from its manifest) and
`ReportContext` (what the page and summary.md renderers read: tables, data, options, title,
configs, headlines and the written figures).

Does not own: any statistic (each comes from `gradalign.analysis`), formatting, drawing or files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradalign import analysis as A
from gradalign.report.options import ReportOptions

TOKEN_COLUMNS = (*A.TOKEN_KEY, "token_id", "token_text", "student_logprob", "student_entropy", "teacher_logprob",
                 *A.DIVERGENCES, "branched")
"""The tokens-table columns a report reads (every one but teacher_entropy): `write_reports` loads
runs with `tables.load(columns={"tokens": TOKEN_COLUMNS})`, and every report module works from a
tokens frame holding only these (tests/e2e/test_report.py builds its report that way)."""


@dataclass(frozen=True)
class ReportData:
    """Every table a report shows (DataFrames from `gradalign.analysis`)."""

    loss: str
    ranking: Any
    winners: Any
    shares: Any
    position: Any
    decisive: Any
    correlations: Any
    thresholds: Any
    quadrants: Any
    rocks: Any
    rock_summary: Any
    norm_check: Any
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ReportContext:
    """Everything the page and summary.md render from (figures already written)."""

    tables: Any
    data: ReportData
    options: ReportOptions
    title: str
    configs: list[str]            # configs of the tokens and alignment tables, sorted
    headlines: tuple[str, ...]
    figures: dict[str, Path]      # figure name -> PNG written beside the page
    caveats: tuple = ()           # `analysis.Caveat` records shown at the top (analysis.run_caveats)


def task_name(tables) -> str:
    """Task name of a run from its manifest (`config.task.name`, else the task file's stem, else 'task')."""
    man = tables.manifest or {}
    if man.get("runs"):
        man = man["runs"][0]  # combined runs (`analysis.combine_runs`) share a task
    cfg = man.get("config", {}) or {}
    return task_label(cfg.get("task", {}) or {})


def task_label(task: dict) -> str:
    """A task's name for folders and titles, from its config section as a dict: `task.name`, else
    the task file's stem, else 'task' (a report goes to ``reports/<task_label>/``)."""
    name = task.get("name") or (Path(task["path"]).stem if task.get("path") else None)
    return str(name or "task")


def report_configs(tables) -> list[str]:
    """Every config named in the tokens or alignment table, sorted (the order of colours and columns)."""
    return sorted(A._distinct(tables.tokens["config"]) | A._distinct(tables.alignment["config"]))


def report_data(tables, options: ReportOptions = ReportOptions()) -> ReportData:
    """Compute every table of the report from one run's (or combined runs') Tables."""
    o = options
    a, t = tables.alignment, tables.tokens
    if a.empty:
        raise A.AnalysisError("the alignment table is empty: the run branched no node")
    A._check_metric(a, o.metric)
    loss = A._check_loss(a, o.loss)
    ranking = A.rank_configs(a, metric=o.metric, n_boot=o.n_boot, ci=o.ci, seed=o.seed)
    winners = A.question_winners(a, metric=o.metric)
    shares = A.winner_shares(winners)
    nb = max(200, o.n_boot // 2)
    position = A.alignment_by_position(a, tables.rollouts, metric=o.metric, bins=o.position_bins, n_boot=nb, ci=o.ci, seed=o.seed)
    decisive = A.alignment_at_decisive(a, tables.nodes, metric=o.metric, top=o.decisive_top, n_boot=nb, ci=o.ci, seed=o.seed)
    correlations = A.divergence_correlations(a, t, metric=o.metric)
    thresholds = A.tip_thresholds(t, divergence=o.divergence, h_quantile=o.h_quantile, d_quantile=o.d_quantile)
    qt = A.tip_quadrants(t, divergence=o.divergence, h_quantile=o.h_quantile, d_quantile=o.d_quantile)
    quadrants = A.quadrant_summary(qt, a, metric=o.metric, n_boot=nb, ci=o.ci, seed=o.seed)
    rocks = A.rock_tokens(t, min_freq=o.rock_min_freq, drop_top=o.rock_drop_top, top_n=o.rock_top_n)
    rsum = A.rock_summary(t, a, rocks, metric=o.metric, loss=o.rock_loss, n_boot=nb, ci=o.ci, seed=o.seed)
    norm_check = A.opd_norm_check(t, a)
    extras = {"quadrant_tokens": qt}
    if A.has_param_space(a):  # logit vs parameter space (alignment.space has "params")
        extras["spaces"] = A.space_comparison(a, n_boot=o.n_boot, ci=o.ci, seed=o.seed)
    return ReportData(loss, ranking, winners, shares, position, decisive, correlations, thresholds, quadrants, rocks, rsum,
                      norm_check, {**extras, **separation_data(tables, ranking, loss, o)})


def separation_data(tables, ranking, loss: str, o: ReportOptions) -> dict:
    """The report's separation numbers: "separation", the paired difference of the top two ranking rows
    (None with one row); "tie", the best config of `loss` against the config it is not separated
    from (`analysis.tie_partner`, None when none ties); "disagreements", the nodes where that pair
    differs most (`analysis.disagreement_nodes`, empty without a tie); "teacher_disagreements", the
    tokens (branched or not) where the pair's teachers disagree most (`analysis.teacher_disagreements`)."""
    a = tables.alignment
    kw = dict(metric=o.metric, n_boot=o.n_boot, ci=o.ci, seed=o.seed)
    top = ranking.head(2)
    sep = (A.paired_difference(a, (top.iloc[0].config, top.iloc[0].loss), (top.iloc[1].config, top.iloc[1].loss), **kw)
           if len(top) == 2 else None)
    tie = A.tie_partner(a, ranking, loss, **kw)
    dis = (A.disagreement_nodes(a, tables.tokens, tie.a[0], tie.b[0], loss, metric=o.metric) if tie is not None
           else A.disagreement_nodes(a, tables.tokens, "", "", loss, metric=o.metric))
    tdis = A.teacher_disagreements(tables.tokens, tie.a[0], tie.b[0]) if tie is not None else None
    return {"separation": sep, "tie": tie, "disagreements": dis, "teacher_disagreements": tdis}
