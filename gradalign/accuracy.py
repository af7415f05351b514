"""Solve rates per question, for any task, student and teacher/context config: the screening step.

Owns: `solve_rates` (sample K completions per question from the student, or from one teacher config's
model under its context, with the run config's prompt format, EOS ids and grader, and count how
many are correct), the records it returns (`QuestionRate`, `SolveRates`: per-question rates with
Wilson 95% intervals, the mean over questions with its interval) and `informative_ids`, the
questions worth diagnosing. A question every sample solves (rate 1) or none does (rate 0) gives an
ideal gradient of zero at every token, so it adds cost and no signal; screen them out before a long
run (`gradalign accuracy CONFIG`, then `task.path` on the kept rows).

Does NOT own: sampling or grading one continuation (`pipeline.rollouts.continue_and_grade`, the one
way every continuation is drawn and judged, truncation counting as failure), loading models
(`models`) or the embedded world's accuracy table (`world.accuracy`).

Shapes: Q questions, K samples each.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from gradalign.config import STUDENT_MODEL, RunConfig
from gradalign.errors import GradalignError
from gradalign.estimates import Z_95, Interval, wilson_interval

STUDENT = "student"  # `who` meaning the student itself with no context


class AccuracyError(GradalignError, ValueError):
    """A one-line problem with an accuracy request (unknown config name, bad sample count)."""


@dataclass(frozen=True)
class QuestionRate:
    """K graded samples of one question."""

    question_id: str
    n: int  # samples drawn (K)
    correct: int  # graded correct and not truncated
    truncated: int  # cut by max_new_tokens (counted as failures)
    interval: Interval  # Wilson 95% interval of the solve rate
    answers: tuple[str | None, ...]  # the answer the grader extracted from each sample (None: none)

    @property
    def rate(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def informative(self) -> bool:
        """0 < rate < 1: some samples succeed and some fail, so success depends on the tokens chosen."""
        return 0 < self.correct < self.n


@dataclass(frozen=True)
class SolveRates:
    """Per-question solve rates of one sampler (the student, or a teacher config's model + context)."""

    who: str  # "student" or the teacher config's name
    model: str  # the model reference sampled
    context: str  # the context template before the prompt ("" for the student)
    samples: int  # K per question
    questions: tuple[QuestionRate, ...]  # in task order
    seconds: float  # wall time of sampling and grading (models loaded before)

    @property
    def mean_rate(self) -> float:
        """Mean over questions of the per-question solve rate (each question weighs the same)."""
        return sum(q.rate for q in self.questions) / len(self.questions)

    @property
    def mean_interval(self) -> Interval:
        """95% interval of `mean_rate` over questions: mean +- z * sd / sqrt(Q) of the per-question
        rates (questions as the sampling unit; their rates' spread includes the K-sample noise), clipped
        to [0, 1]; with one question, that question's Wilson interval."""
        rates = [q.rate for q in self.questions]
        if len(rates) < 2:
            return self.questions[0].interval
        m = sum(rates) / len(rates)
        sd = math.sqrt(sum((r - m) ** 2 for r in rates) / (len(rates) - 1))
        half = Z_95 * sd / math.sqrt(len(rates))
        return Interval(max(0.0, m - half), min(1.0, m + half))

    @property
    def n_informative(self) -> int:
        return sum(q.informative for q in self.questions)

    def to_frame(self):
        """One row per question: question_id, n, correct, truncated, rate, low, high, informative."""
        import pandas as pd

        return pd.DataFrame([
            {"question_id": q.question_id, "n": q.n, "correct": q.correct, "truncated": q.truncated, "rate": q.rate,
             "low": q.interval.low, "high": q.interval.high, "informative": q.informative}
            for q in self.questions
        ])


def informative_ids(rates: SolveRates, low: float = 0.0, high: float = 1.0) -> tuple[str, ...]:
    """Ids of the questions whose observed rate lies strictly between `low` and `high` (default: 0 < rate < 1)."""
    return tuple(q.question_id for q in rates.questions if low < q.rate < high)


def solve_rates(cfg: RunConfig, *, who: str = STUDENT, samples: int = 8,
                progress: Callable[[int, int], None] | None = None) -> SolveRates:
    """Sample `samples` completions per question of `cfg`'s task and grade them.

    `who` is "student" (the student, prompt only: what diagnose's rollouts see) or the name of one
    of `cfg.teachers` (that config's model, "student" meaning the student's weights, with its context
    before the prompt: e.g. how often the self-distillation teacher solves the question). Prompt
    format (chat template, system prompt, template kwargs), temperature, top-p/top-k,
    max_new_tokens, EOS ids, backend and grader all come from `cfg`, so the rates are those a
    diagnose run's rollouts would have. Seeds derive from (run seed, "accuracy", who, question id,
    sample index), so a rerun reproduces the rates. `progress(done, total)` is called per batch of
    questions.
    """
    from gradalign import models
    from gradalign.graders import GraderPool
    from gradalign.pipeline.resources import Resources, sampling_params
    from gradalign.pipeline.rollouts import Continuation, continue_and_grade
    from gradalign.preflight import preflight
    from gradalign.sampling import make_sampler, stable_seed
    from gradalign.tasks import encode_prefix, prefix_options, render

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise AccuracyError(f"--samples {samples!r}: expected an integer >= 1")
    names = [t.name for t in cfg.teachers]
    if who != STUDENT and who not in names:
        raise AccuracyError(f"--config {who!r}: expected 'student' or a teacher config name ({', '.join(names)})")
    teacher = next((t for t in cfg.teachers if t.name == who), None)
    task = preflight(cfg).task
    sref = models.resolve(cfg.student.model, gguf_file=cfg.student.gguf_file, revision=cfg.student.revision)
    student = models.load(sref, dtype=cfg.student.dtype, device=cfg.student.device)
    lm, context, model_name = student, "", cfg.student.model
    if teacher is not None:
        context, model_name = teacher.context, teacher.model
        if teacher.model != STUDENT_MODEL:
            tref = models.resolve(teacher.model, gguf_file=teacher.gguf_file)
            ttok = models.load_tokenizer(tref)
            models.check_same_tokenizer(student.tokenizer, ttok, student_name=cfg.student.model, teacher_name=teacher.name)
            lm = models.load(tref, dtype=teacher.dtype or cfg.student.dtype, device=cfg.student.device, tokenizer=student.tokenizer)
    tok = student.tokenizer
    eos_ids = models.eos_token_ids(tok, lm.model, cfg.sampling.eos_token_ids)
    sampler = make_sampler(cfg.sampling.backend, student=lm, params=sampling_params(cfg), dtype=cfg.student.dtype,
                           seed=cfg.run.seed, memory_fraction=cfg.sampling.vllm_memory_fraction,
                           eager=cfg.sampling.vllm_eager, eos_ids=eos_ids)
    grader = GraderPool(cfg.task.grader, timeout_s=cfg.task.grader_timeout_s, answer_field=cfg.task.answer_field,
                        answer_delimiter=cfg.task.answer_delimiter)
    res = Resources(cfg, task, lm.model, tok, (), grader, sampler, {}, eos_ids)
    opts = prefix_options(cfg.task)
    rows = list(task.rows)
    out: list[QuestionRate] = []
    per_call = max(1, 256 // samples)  # questions per sampler call: batches stay full, progress stays live
    t0 = time.perf_counter()
    try:
        for start in range(0, len(rows), per_call):
            chunk = rows[start : start + per_call]
            items = []
            for row in chunk:
                qid = task.row_id(row)
                prompt = render(cfg.task.prompt, row, what="task.prompt", row_id=qid)
                ctx = render(context, row, what=f"context of teacher {who!r}", row_id=qid) if context else ""
                ids = encode_prefix(tok, ctx, prompt, **opts)
                items += [Continuation(row, ids, (), stable_seed(cfg.run.seed, "accuracy", who, qid, k)) for k in range(samples)]
            outcomes = continue_and_grade(res, items)
            for j, row in enumerate(chunk):
                got = outcomes[j * samples : (j + 1) * samples]
                correct = sum(o.success for o in got)
                out.append(QuestionRate(task.row_id(row), samples, correct, sum(o.truncated for o in got),
                                        wilson_interval(correct, samples), tuple(o.extracted for o in got)))
            if progress is not None:
                progress(len(out), len(rows))
    finally:
        sampler.close()
        grader.close()
    return SolveRates(who, model_name, context, samples, tuple(out), time.perf_counter() - t0)
