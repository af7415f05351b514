"""Stage 1: student rollouts, and the one way any continuation is sampled and graded.

Owns: `continue_and_grade` (sample the student's continuation of prompt + head under a stable seed,
decode head + continuation, grade it, and decide success: a continuation cut by max_new_tokens is a
failure whatever its text says; a head that already ends in EOS is a finished completion and is
graded without sampling), used by rollouts, refine's value queries and branches alike; and
`sample_rollouts` (N rollouts per question as `Rollout` records); and `node_tokens`, the tokens a
rollout's node positions index (y_0..y_{T-1}, plus, with `branching.eos_node`, the EOS it ended with
at position T: the stop decision), which selection, scoring, branching and alignment all go through.
Does not own which continuations to draw (selection, branching) nor the grader itself
(`gradalign.graders`).

Token budget: every continuation has allowance max_new_tokens - len(head), so a continuation at
completion position t faces the same length limit as the rollout it estimates.

Progress: `continue_and_grade` works in chunks of whole sampler batches (about 20 per call) and
reports each to `gradalign.progress.advance` (continuations and generated tokens), so a long stage
shows live counts, tokens/s and an ETA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from gradalign import progress
from gradalign.pipeline.resources import Resources
from gradalign.sampling import Completion, stable_seed
from gradalign.tables import RolloutRow


@dataclass(frozen=True)
class Continuation:
    """One continuation to draw: the student continues `prompt_ids + head` under `seed`."""

    row: dict  # the task row (the grader compares against it)
    prompt_ids: tuple[int, ...]  # the student's prompt
    head: tuple[int, ...]  # completion tokens fixed before sampling: y_<t (+ a candidate's first token)
    seed: int  # `stable_seed` of the continuation's stable ids


@dataclass(frozen=True)
class Outcome:
    """A graded continuation."""

    success: bool  # the grader's verdict, and not truncated
    truncated: bool  # cut by max_new_tokens without EOS
    completion: Completion  # the sampled tokens after the head (empty when the head ended in EOS)
    sampled: bool  # the sampler ran (False: the head already ended in EOS)
    text: str  # decoded head + completion: what the grader saw
    extracted: str | None  # answer the grader extracted
    status: str  # grader status: ok | timeout | error
    reason: str  # grader reason, prefixed "truncated" when cut


PROGRESS_CHUNKS = 20  # continue_and_grade reports about this many times per call


def continue_and_grade(res: Resources, items: Sequence[Continuation]) -> list[Outcome]:
    """Outcomes of every item, in order: `_sample_and_grade` over chunks of whole sampler batches (at
    least 4 batches, about PROGRESS_CHUNKS chunks), each reported to `progress.advance`."""
    bs = max(1, res.cfg.sampling.batch_size)
    chunk = bs * max(4, -(-len(items) // (PROGRESS_CHUNKS * bs)))
    out: list[Outcome] = []
    for i in range(0, len(items), chunk):
        part = _sample_and_grade(res, items[i : i + chunk])
        progress.advance(len(part), sum(len(o.completion.token_ids) for o in part))
        out += part
    return out


def _sample_and_grade(res: Resources, items: Sequence[Continuation]) -> list[Outcome]:
    """Sample every item in one batched sampler call, grade all in one pass; outcomes in order."""
    from gradalign.graders import GradeItem

    tok, L = res.tokenizer, res.cfg.sampling.max_new_tokens
    eos = set(res.end_ids)  # any of the student's EOS ids ends a completion
    finished = {i for i, c in enumerate(items) if c.head and c.head[-1] in eos}
    live = [i for i in range(len(items)) if i not in finished]
    comps: list[Completion] = [Completion((), truncated=False, ended_with_eos=True, eos_id=c.head[-1] if i in finished else None)
                               for i, c in enumerate(items)]
    if live:
        sampled = res.sampler.sample(
            [items[i].prompt_ids + items[i].head for i in live], [items[i].seed for i in live],
            [L - len(items[i].head) for i in live],
        )
        for i, c in zip(live, sampled):
            comps[i] = c
    texts = [tok.decode(c.head[:-1] if i in finished else c.head + comps[i].token_ids) for i, c in enumerate(items)]
    row_id = res.task.row_id
    verdicts = res.grader.grade_many([GradeItem(row_id(c.row), t, c.row) for c, t in zip(items, texts)])
    return [
        Outcome(bool(v.correct) and not comp.truncated, comp.truncated, comp, i not in finished, t, v.extracted, v.status,
                "; ".join(x for x in ("truncated" if comp.truncated else "", v.reason) if x))
        for i, (comp, t, v) in enumerate(zip(comps, texts, verdicts))
    ]


@dataclass(frozen=True)
class Rollout:
    """One student rollout of one question, graded."""

    question_id: str
    rollout_id: int  # index within the question (0..N-1)
    row: dict  # the task row
    prompt_text: str  # rendered task.prompt
    prompt_ids: tuple[int, ...]  # the student's prompt tokens
    outcome: Outcome  # the sampled completion and its verdict

    @property
    def token_ids(self) -> tuple[int, ...]:
        """Completion tokens y_0..y_{T-1} (EOS excluded)."""
        return self.outcome.completion.token_ids

    @property
    def correct(self) -> bool:
        return self.outcome.success

    def stop_token(self, eos_ids: Sequence[int]) -> int | None:
        """The EOS id the rollout ended with; None when it did not end with one (cut by
        max_new_tokens). A backend that does not say which (`Completion.eos_id` None) gives the first
        of `eos_ids`."""
        c = self.outcome.completion
        if not c.ended_with_eos or c.truncated:
            return None
        return c.eos_id if c.eos_id is not None else int(eos_ids[0])

    def to_row(self) -> RolloutRow:
        o = self.outcome
        return RolloutRow(
            question_id=self.question_id, rollout_id=self.rollout_id, prompt=self.prompt_text, completion=o.text,
            n_tokens=len(self.token_ids), correct=o.success, extracted_answer=o.extracted, truncated=o.truncated,
            status=o.status, reason=o.reason,
        )


def sample_rollouts(res: Resources, rows: Sequence[dict]) -> list[Rollout]:
    """`sampling.rollouts_per_question` graded rollouts per row, seeded by (run seed, question, index)."""
    from gradalign.tasks import encode_prefix, prefix_options, render

    cfg = res.cfg
    heads = []  # (row, question id, rollout index, prompt text, prompt ids)
    for row in rows:
        qid = res.task.row_id(row)
        text = render(cfg.task.prompt, row, what="task.prompt", row_id=qid)
        ids = encode_prefix(res.tokenizer, "", text, **prefix_options(cfg.task))
        for r in range(cfg.sampling.rollouts_per_question):
            heads.append((row, qid, r, text, ids))
    outs = continue_and_grade(res, [Continuation(row, ids, (), stable_seed(cfg.run.seed, "rollout", qid, r))
                                    for row, qid, r, _, ids in heads])
    return [Rollout(qid, r, row, text, ids, o) for (row, qid, r, text, ids), o in zip(heads, outs)]


def node_tokens(res: Resources, r: Rollout) -> tuple[int, ...]:
    """The token the student sampled at each of `r`'s node positions: y_0..y_{T-1}, and with
    `branching.eos_node`, for a rollout that ended with EOS, that EOS id at position T (node prompt
    + y_<T, where the student chose to stop). So position t < T replaces y_t and position T replaces
    the stop; a truncated rollout has no position T (nothing was decided there)."""
    if not res.cfg.branching.eos_node:
        return r.token_ids
    eos = r.stop_token(res.end_ids)
    return r.token_ids if eos is None else r.token_ids + (eos,)
