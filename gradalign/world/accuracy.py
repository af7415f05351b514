"""Sampled accuracy of a model on the addition task: what data/README.md reports and the build uses.

Owns: `Accuracy`, `measure_accuracy` (temperature 1, one context, seeded per row), `accuracy_on_test`
(a bundled/local/HF model on the first n test rows), `MEASURED` and `accuracy_table` (the Markdown
table in data/README.md). Does NOT own sampling (`gradalign.sampling`), answer extraction
(`gradalign.graders`), loading models or tasks (`gradalign.models`, `gradalign.tasks`) or the
prompt text (`world.arithmetic`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gradalign.errors import GradalignError
from gradalign.world import arithmetic as ar


@dataclass(frozen=True)
class Accuracy:
    model: str
    context: str
    n: int
    correct: int
    truncated: int

    @property
    def rate(self) -> float:
        return self.correct / self.n if self.n else float("nan")


def measure_accuracy(model, tokenizer, rows: list[dict], context: str, *, seed: int = 0, max_new_tokens: int = 96, name: str = "") -> Accuracy:
    """Sampled accuracy (temperature 1, no truncation) of `model` on `rows` under one context."""
    from gradalign.graders import extract_answer
    from gradalign.sampling import SamplingParams, stable_seed
    from gradalign.sampling.hf import sample

    tmpl = ar.CONTEXTS[context]
    prompts = [
        tokenizer(tmpl.format(**r) + ar.PROMPT_TEMPLATE.format(**r), add_special_tokens=False)["input_ids"]
        for r in rows
    ]
    seeds = [stable_seed(seed, r["id"], context) for r in rows]
    comps = sample(
        model, prompts, seeds, SamplingParams(max_new_tokens=max_new_tokens, batch_size=128),
        eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
    )
    correct = sum(  # a completion cut by max_new_tokens is a failure, as everywhere in gradalign
        not c.truncated and (extract_answer(tokenizer.decode(c.token_ids)) or "").strip() == r["answer"]
        for c, r in zip(comps, rows)
    )
    return Accuracy(name, context, len(rows), correct, sum(c.truncated for c in comps))


def accuracy_on_test(model_ref: str, context: str, *, n: int = 200, seed: int = 0) -> Accuracy:
    """Load a model (bundled name, folder or HF id) and measure it on the first `n` test rows."""
    from gradalign import models
    from gradalign.tasks import load_task

    if n < 1:
        raise GradalignError(f"--n {n}: expected at least 1 test question")
    if context not in ar.CONTEXTS:
        raise GradalignError(f"--context {context!r}: expected one of {', '.join(ar.CONTEXTS)}")
    task = load_task(name=ar.TASK_NAME, split="test", limit=n)
    lm = models.load(models.resolve(model_ref))
    return measure_accuracy(lm.model, lm.tokenizer, list(task.rows), context, seed=seed, name=model_ref)


MEASURED = (
    ("student", "none"), ("student", "solution"), ("student", "summary"), ("student", "answer"), ("student", "example"),
    ("teacher-strong", "none"), ("teacher-flawed", "none"),
)


def accuracy_table(n: int = 200, seed: int = 0) -> str:
    """Markdown table of sampled accuracies for every bundled model/context pair in MEASURED."""
    lines = ["| model | context | correct / n | accuracy | truncated |", "|---|---|---|---|---|"]
    for model, context in MEASURED:
        a = accuracy_on_test(model, context, n=n, seed=seed)
        lines.append(f"| {model} | {context} | {a.correct} / {a.n} | {a.rate:.3f} | {a.truncated} |")
    return "\n".join(lines)
