"""Choosing the student among training checkpoints (pure functions over measured accuracies).

Owns: `choose_base` (the teacher-run checkpoint the student starts from) and `choose_student` (the
context fine-tune checkpoint kept as the student). Each checkpoint is a dict with "step", "plain",
"solution" and, for the student, "summary" and "answer" accuracies. Does NOT own measuring those
accuracies (`world.accuracy`), training (`world.training`) or saving (`world.model`).
"""

from __future__ import annotations

import logging

from gradalign.world.config import BuildConfig

log = logging.getLogger(__name__)


def choose_base(checkpoints: list[dict], cfg: BuildConfig) -> dict:
    """The teacher-run checkpoint whose plain accuracy is closest to `student_base_target`."""
    return min(checkpoints, key=lambda c: abs(c["plain"] - cfg.student_base_target))


def _partial_contexts_between(c: dict) -> int:
    """How many partial contexts (summary, answer hint) land between plain and solution accuracy."""
    return sum(c["plain"] < c[k] < c["solution"] for k in ("summary", "answer"))


def choose_student(checkpoints: list[dict], cfg: BuildConfig) -> dict:
    """Among checkpoints in the plain-accuracy band that already use the solution context well, the
    first with the most partial contexts (summary, answer hint) landing in between plain and
    solution accuracy (what makes self-distillation configs differ); otherwise the one closest to
    the band's middle among those that use the solution; otherwise the closest."""
    lo, hi = cfg.student_band
    mid = (lo + hi) / 2
    ok = [c for c in checkpoints if lo <= c["plain"] <= hi and c["solution"] >= cfg.student_solution_min]
    if ok:
        best = max(_partial_contexts_between(c) for c in ok)
        return next(c for c in ok if _partial_contexts_between(c) == best)
    uses_ctx = [c for c in checkpoints if c["solution"] >= cfg.student_solution_min] or checkpoints
    best = min(uses_ctx, key=lambda c: abs(c["plain"] - mid))
    log.warning("no checkpoint in the student band %s; using step %d (plain %.2f)", cfg.student_band, best["step"], best["plain"])
    return best
