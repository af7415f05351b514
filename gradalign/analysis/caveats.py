"""Caveats: the few facts about a run that should stop a reader trusting a number too early.

Owns: `run_caveats`, the one place that decides which warnings a run deserves (the CLI's diagnose
summary and the top of the report both render its records), and the `Caveat` record. Checks: a
question whose rollouts are all right or all wrong (solve rate 1 or 0: V is flat, little signal);
most alignment rows undefined; fewer than `min_questions` questions behind the intervals; truncated
rollouts (counted as failures); a node budget that kept fewer nodes than the selector asked for
(from the manifest's `selection`).

Does not own: rendering (the CLI and `gradalign.report` word the layout, not the content) or the
numbers the warnings are about (`ranking`, `tables`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gradalign.analysis.schema import _require

CAVEAT_KINDS = ("few_questions", "solve_rate_extreme", "undefined_rows", "truncated_rollouts", "budget_short")


@dataclass(frozen=True)
class Caveat:
    """One warning about a run: `count` of `total` things are affected (see CAVEAT_KINDS)."""

    kind: str  # one of CAVEAT_KINDS
    message: str  # one self-contained sentence
    count: int
    total: int


def run_caveats(tables, *, metric: str = "cos", min_questions: int = 20, undefined_share: float = 0.5) -> tuple[Caveat, ...]:
    """Every caveat that applies to a run's (or combined runs') tables, in CAVEAT_KINDS order.

    `tables` is what `gradalign.load` returns (rollouts, alignment and the manifest are read).
    `undefined_share`: warn when more than this share of alignment rows have an undefined `metric`."""
    r, a = tables.rollouts, tables.alignment
    _require(r, ["question_id", "correct", "truncated"], "rollouts")
    out: list[Caveat] = []
    nq = int(r["question_id"].nunique())
    if nq < min_questions:
        out.append(Caveat("few_questions", f"Only {nq} questions behind every interval (fewer than {min_questions}): intervals "
                                           "are wide and unstable; treat rankings as provisional and run more questions.",
                          nq, min_questions))
    rate = r.assign(correct=r["correct"].astype(bool)).groupby("question_id")["correct"].mean()
    ext = rate[(rate == 0) | (rate == 1)]
    if len(ext):
        n0, n1 = int((ext == 0).sum()), int((ext == 1).sum())
        out.append(Caveat("solve_rate_extreme", f"{len(ext)} of {nq} questions have solve rate 0 or 1 ({n0} all wrong, "
                                                f"{n1} all right): their success is nearly flat, so they carry little signal; "
                                                "screen questions with `gradalign accuracy` before a long run.", len(ext), nq))
    if metric in a.columns and len(a):
        und = int(a[metric].isna().sum())
        if und > undefined_share * len(a):
            why = ""
            if "reason" in a.columns:
                top = a.loc[a[metric].isna(), "reason"].value_counts().head(2)
                why = " (mostly: " + ", ".join(f"{k or '?'} {v}" for k, v in top.items()) + ")"
            out.append(Caveat("undefined_rows", f"{und} of {len(a)} alignment rows have an undefined {metric}{why}: the means "
                                                "rest on the few defined ones.", und, len(a)))
    tr = int(r["truncated"].astype(bool).sum())
    if tr:
        out.append(Caveat("truncated_rollouts", f"{tr} of {len(r)} rollouts hit sampling.max_new_tokens and count as wrong "
                                                "whatever their text says; raise max_new_tokens if they were still working.",
                          tr, len(r)))
    sel = [s for m in _manifests(tables.manifest) for s in (m.get("selection") or [])]
    short = [s for s in sel if s.get("asked", 0) > s.get("nodes", 0)]
    if short:
        kept, asked = sum(s.get("nodes", 0) for s in sel), sum(s.get("asked", 0) for s in sel)
        out.append(Caveat("budget_short", f"The node budget kept fewer nodes than the selector asked for in {len(short)} of "
                                          f"{len(sel)} rollouts ({kept} of {asked} nodes); raise branching.budget_tokens / "
                                          "budget_continuations to probe them all.", len(short), len(sel)))
    return tuple(out)


def _manifests(manifest) -> list:
    """The manifest mapping of each run behind the tables (combined runs hold several under "runs")."""
    if not manifest:
        return []
    runs = manifest.get("runs") if hasattr(manifest, "get") else None
    return list(runs) if runs else [manifest]
