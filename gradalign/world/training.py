"""Training the embedded world's models: example streams, batching and the optimisation loop.

Owns: the endless (prefix, target) example stream for a context mix (`stream_examples`, including the
copy-forcing and "self" kinds), the student's self-sample pool (`sample_self_pool`), batching with
loss on target tokens only, and `train` (AdamW, warmup + cosine decay, periodic evaluation hook).
Does NOT own the task text (`world.arithmetic`), model construction (`world.model`), what the
evaluation hook measures (`world.accuracy`, `world.builder`) or which checkpoint is kept
(`world.checkpoints`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict

from gradalign.world import arithmetic as ar
from gradalign.world.config import BuildConfig

log = logging.getLogger(__name__)


def stream_examples(cfg: BuildConfig, rng: random.Random, exclude: set[str], *, flawed: bool, mix, self_pool=None):
    """Endless (prefix, target) training pairs. Mix kinds: a context name from world.arithmetic.CONTEXTS
    (consistent target), "solution!" / "summary!" (copy-forcing: the context comes from elsewhere
    and the target follows it, so only using the context lowers the loss), and "self" (a plain
    prompt whose target is a sample of the student's base checkpoint, from `self_pool`)."""
    names = [m[0] for m in mix]
    weights = [m[1] for m in mix]
    i = 0
    while True:
        row = ar.make_row(rng, i, "train", rng.randint(*cfg.digit_range))
        i += 1
        if row.question in exclude:
            continue
        kind = rng.choices(names, weights)[0]
        if kind == "self":
            yield self_pool[rng.randrange(len(self_pool))]
            continue
        ctx_name = kind.rstrip("!")
        fields = asdict(row)
        solution = row.flawed_solution if flawed else row.solution
        if flawed:
            fields["solution"], fields["answer"] = row.flawed_solution, row.flawed_answer
        elif kind == "solution!" or (kind == "solution" and rng.random() < cfg.copy_force):
            # The reference is another problem's solution and the target follows it: the model
            # learns to trust a given reference, which computing alone never teaches it.
            other = ar.make_row(rng, i, "train", rng.randint(*cfg.digit_range))
            fields["solution"] = solution = other.solution
        elif kind == "answer!":
            # A wrong hint, followed half the time: the student learns a hint is worth something
            # but not everything, so an answer-only hint lands between plain and full solution.
            other = ar.make_row(rng, i, "train", rng.randint(*cfg.digit_range))
            fields["answer"] = other.answer
            if rng.random() < 0.5:
                solution = solution.rsplit("#### ", 1)[0] + f"#### {other.answer}"
        elif kind == "summary!":
            a, b = map(int, row.question.split("+"))
            pattern = "".join(rng.choice("01") for _ in range(len(str(max(a, b)))))
            solution, _, fields["summary"] = ar.solve(a, b, carries_given=pattern)
        context = ar.CONTEXTS[ctx_name].format(**fields)
        yield context + ar.PROMPT_TEMPLATE.format(question=row.question), solution


def sample_self_pool(model, tokenizer, cfg: BuildConfig, exclude: set[str], n: int) -> list[tuple[str, str]]:
    """Plain prompts with the model's own sampled completions (temperature 1) as targets."""
    from gradalign.sampling import SamplingParams, stable_seed
    from gradalign.sampling.hf import sample

    rng = random.Random(f"{cfg.seed}:self")
    rows = []
    while len(rows) < n:
        r = ar.make_row(rng, len(rows), "train", rng.randint(*cfg.digit_range))
        if r.question not in exclude:
            rows.append(r)
    prompts = [ar.PROMPT_TEMPLATE.format(question=r.question) for r in rows]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    comps = sample(model, ids, [stable_seed(cfg.seed, "self", i) for i in range(n)], SamplingParams(max_new_tokens=96, batch_size=256),
                   eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    return [(p, tokenizer.decode(c.token_ids)) for p, c in zip(prompts, comps) if not c.truncated]


def _batch(tokenizer, pairs, device):
    import torch

    eos = tokenizer.eos_token_id
    seqs, labels = [], []
    for prefix, target in pairs:
        p = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"] + [eos]
        seqs.append(p + t)
        labels.append([-100] * len(p) + t)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    lab = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, (s, l) in enumerate(zip(seqs, labels)):
        ids[r, : len(s)] = torch.tensor(s)
        lab[r, : len(l)] = torch.tensor(l)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device), lab.to(device)


def train(model, tokenizer, examples, steps: int, cfg: BuildConfig, *, lr: float, on_eval=None, tag: str = ""):
    """AdamW with warmup + cosine decay; loss on target tokens only. Calls on_eval(step, model)."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    model.train()
    t0 = time.time()
    for step in range(1, steps + 1):
        ids, mask, lab = _batch(tokenizer, [next(examples) for _ in range(cfg.batch_size)], "cpu")
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps:
            log.info("%s step %d/%d loss %.4f (%.1fs)", tag, step, steps, loss.item(), time.time() - t0)
        if on_eval is not None and (step % cfg.eval_every == 0 or step == steps):
            model.eval()
            on_eval(step, model)
            model.train()
    model.eval()
    return model
