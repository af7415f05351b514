"""The embedded offline world: builds the bundled task files, tokenizer and tiny models from a seed.

Owns: the character-level tokenizer (saved in Hugging Face format), the tiny Llama configs, the
training loop and mixes, checkpoint selection for the student, and the accuracy measurement that
data/README.md reports. Does not own the task's text format (`arithmetic`), sampling
(`sampling`) or answer extraction (`graders`).

What gets built under `data/` (everything loadable with the public transformers API):

- `tasks/addition/{train,test}.jsonl`: rows with id, question, answer, solution, summary, example.
- `models/tokenizer`: shared char-level tokenizer; each model folder carries a copy of it.
- `models/teacher-strong`: trained to convergence on the mix of plain and context prompts.
- `models/student`: an early checkpoint of that same run, chosen by measured accuracy (about half
  right when sampled at temperature 1, but already able to use privileged context).
- `models/teacher-flawed`: teacher-strong fine-tuned on solutions that drop the carry out of any
  column summing to exactly 10.

Run `python -m gradalign.world --out data` (about 15 minutes on 2 CPU cores) or `--smoke` for a
seconds-long build with tiny sizes used by the tests.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import random
import shutil
import string
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHARS = tuple(string.digits + string.ascii_letters + string.punctuation + " \n")


@dataclass(frozen=True)
class ModelSize:
    hidden: int = 96
    layers: int = 3
    heads: int = 4
    ffn: int = 256
    max_positions: int = 320


TEACHER_RUN_FIELDS = ("seed", "digit_range", "size", "batch_size", "lr", "teacher_steps", "eval_every", "eval_n", "mix", "copy_force")


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines the embedded world; `smoke()` gives a seconds-long variant."""

    seed: int = 0
    n_train_rows: int = 2000  # rows written to train.jsonl (training streams fresh problems)
    n_test_rows: int = 500
    digit_range: tuple[int, int] = (3, 5)
    size: ModelSize = field(default_factory=ModelSize)
    batch_size: int = 64
    lr: float = 3e-3
    teacher_steps: int = 1500
    flawed_steps: int = 300
    eval_every: int = 50
    eval_n: int = 96
    student_band: tuple[float, float] = (0.40, 0.60)
    student_solution_min: float = 0.92
    copy_force: float = 0.3  # share of solution-context examples whose reference is another problem's
    student_base_target: float = 0.45  # plain val accuracy of the checkpoint the student starts from
    student_context_steps: int = 900
    self_pool_size: int = 4096
    # Saved models get attention heads zero-padded to this size (`widen_heads`: the same function):
    # vLLM's CPU attention kernels take head sizes 32, 64, ... but not the trained 96 / 4 = 24.
    export_head_dim: int = 32
    # The student's context fine-tune: copy-forced contexts teach it to use them; "self" targets
    # (its base checkpoint's own samples on plain prompts) keep its unaided skill where it was.
    student_context_mix: tuple[tuple[str, float], ...] = (
        ("solution!", 0.45), ("summary!", 0.10), ("answer!", 0.10), ("answer", 0.05), ("self", 0.30),
    )
    # training mix over contexts (see arithmetic.CONTEXTS)
    mix: tuple[tuple[str, float], ...] = (
        ("none", 0.45),
        ("solution", 0.25),
        ("summary", 0.12),
        ("answer", 0.10),
        ("example", 0.08),
    )

    @staticmethod
    def smoke() -> "BuildConfig":
        return BuildConfig(
            n_train_rows=20,
            n_test_rows=10,
            size=ModelSize(hidden=32, layers=1, heads=2, ffn=64),
            batch_size=8,
            teacher_steps=6,
            flawed_steps=2,
            student_context_steps=3,
            self_pool_size=8,
            eval_every=3,
            eval_n=4,
        )


# ----------------------------------------------------------------------------- tokenizer


def build_tokenizer(chars: tuple[str, ...] = CHARS, max_length: int = 320):
    """A character-level `PreTrainedTokenizerFast`: one token per character, exact round trip.
    Ids: <pad>=0, <s>=1, </s>=2, <unk>=3, then `chars` in order."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + tuple(chars))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
    )
    return fast


# ----------------------------------------------------------------------------- data


def _stream_examples(cfg: BuildConfig, rng: random.Random, exclude: set[str], *, flawed: bool, mix, self_pool=None):
    """Endless (prefix, target) training pairs. Mix kinds: a context name from arithmetic.CONTEXTS
    (consistent target), "solution!" / "summary!" (copy-forcing: the context comes from elsewhere
    and the target follows it, so only using the context lowers the loss), and "self" (a plain
    prompt whose target is a sample of the student's base checkpoint, from `self_pool`)."""
    from gradalign import arithmetic as ar

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


def _self_pool(model, tokenizer, cfg: BuildConfig, exclude: set[str], n: int) -> list[tuple[str, str]]:
    """Plain prompts with the model's own sampled completions (temperature 1) as targets."""
    from gradalign import arithmetic as ar
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


# ----------------------------------------------------------------------------- models


def new_model(tokenizer, size: ModelSize, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.ffn,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=size.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
    )
    return LlamaForCausalLM(cfg)


def widen_heads(model, head_dim: int):
    """The same Llama function with attention heads zero-padded from d to `head_dim` = D dims.

    Exact up to float rounding: per head, q/k/v rows (and o_proj columns) move to the new layout
    with zeros in the added dims, which contribute nothing to q.k or to o_proj's input. Two
    things keep the rest unchanged: q is scaled by sqrt(D/d), so q.k / sqrt(D) stays q.k / sqrt(d);
    and RoPE's base becomes base^(D/d), so the new frequencies base'^(-2i/D) equal the old
    base^(-2i/d) for the first d/2 pairs; HF rotates dim j with j + D/2, so old dims j < d/2 stay
    at j and old dims d/2 + j move to D/2 + j. Returns `model` itself when d >= D.
    """
    import torch
    from transformers import LlamaForCausalLM

    cfg = model.config
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    if d >= head_dim:
        return model
    if d % 2 or head_dim % 2:
        raise ValueError(f"head sizes must be even (got {d} -> {head_dim})")
    D, half, nhalf = head_dim, d // 2, head_dim // 2
    to = torch.tensor([j if j < half else nhalf + j - half for j in range(d)])
    new_cfg = copy.deepcopy(cfg)
    new_cfg.head_dim = D
    rope = dict(getattr(cfg, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"widen_heads handles default RoPE only (got {rope.get('rope_type')})")
    rope["rope_theta"] = float(rope["rope_theta"]) ** (D / d)
    new_cfg.rope_parameters = rope

    def rows(w, heads, scale=1.0):  # [heads * d, in] -> [heads * D, in]
        out = torch.zeros(heads, D, *w.shape[1:], dtype=w.dtype)
        out[:, to] = w.reshape(heads, d, *w.shape[1:]) * scale
        return out.reshape(heads * D, *w.shape[1:])

    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if k.endswith("self_attn.q_proj.weight") or k.endswith("self_attn.q_proj.bias"):
            v = rows(v, H, (D / d) ** 0.5)
        elif k.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias")):
            v = rows(v, Hkv)
        elif k.endswith("self_attn.o_proj.weight"):
            v = rows(v.T, H).T.contiguous()
        state[k] = v
    wide = LlamaForCausalLM(new_cfg)
    wide.load_state_dict(state)
    return wide.eval()


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


# ----------------------------------------------------------------------------- accuracy


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
    from gradalign import arithmetic as ar
    from gradalign.sampling import SamplingParams, stable_seed
    from gradalign.sampling.hf import sample
    from gradalign.graders import extract_answer

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
    correct = sum(
        (extract_answer(tokenizer.decode(c.token_ids)) or "").strip() == r["answer"] for c, r in zip(comps, rows)
    )
    return Accuracy(name, context, len(rows), correct, sum(c.truncated for c in comps))


# ----------------------------------------------------------------------------- build


def build(out: Path, cfg: BuildConfig, *, reuse_cache: bool = False) -> dict:
    """Regenerate task files and retrain all models into `out` (the `data/` folder). Returns a report."""
    import torch

    from gradalign import arithmetic as ar

    torch.manual_seed(cfg.seed)
    t_start = time.time()
    out = Path(out)
    task_dir = out / "tasks" / ar.TASK_NAME
    test_rows = ar.generate_split(cfg.seed, "test", cfg.n_test_rows, cfg.digit_range)
    exclude = {r.question for r in test_rows}
    train_rows = [r for r in ar.generate_split(cfg.seed, "train", cfg.n_train_rows + 50, cfg.digit_range) if r.question not in exclude][: cfg.n_train_rows]
    ar.write_jsonl(train_rows, task_dir / "train.jsonl")
    ar.write_jsonl(test_rows, task_dir / "test.jsonl")

    tokenizer = build_tokenizer()
    models_dir = out / "models"
    tokenizer.save_pretrained(models_dir / "tokenizer")

    # validation problems for checkpoint selection: same distribution, never the test split
    val_rows = [asdict(r) for r in ar.generate_split(cfg.seed, "val", cfg.eval_n, cfg.digit_range)]
    rng = random.Random(f"{cfg.seed}:stream")
    examples = _stream_examples(cfg, rng, exclude, flawed=False, mix=cfg.mix)
    model = new_model(tokenizer, cfg.size, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model parameters: %d", n_params)

    checkpoints = []

    def on_eval(step, m):
        plain = measure_accuracy(m, tokenizer, val_rows, "none", seed=step)
        sol = measure_accuracy(m, tokenizer, val_rows, "solution", seed=step)
        log.info("eval step %d: plain %.2f solution %.2f", step, plain.rate, sol.rate)
        checkpoints.append({"step": step, "plain": plain.rate, "solution": sol.rate, "state": copy.deepcopy(m.state_dict())})

    # The teacher run's checkpoints are cached (git-ignored) so later stages can be rebuilt alone.
    cache = models_dir / ".build_cache" / "teacher_run.pt"
    key = json.dumps(_jsonable({k: v for k, v in asdict(cfg).items() if k in TEACHER_RUN_FIELDS}), sort_keys=True)
    cached = torch.load(cache, weights_only=False) if reuse_cache and cache.exists() else None
    if cached is not None and cached["key"] == key:
        # training never samples, so the cached states are what a fresh run trains; their
        # evaluations sample, so they are re-measured with this code's sampler
        log.info("reusing the cached teacher run (%s); re-measuring its checkpoints", cache)
        for c in cached["checkpoints"]:
            model.load_state_dict(c["state"])
            model.eval()
            on_eval(c["step"], model)
    else:
        train(model, tokenizer, examples, cfg.teacher_steps, cfg, lr=cfg.lr, on_eval=on_eval, tag="teacher-strong")
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "checkpoints": checkpoints}, cache)
    _save(model, tokenizer, models_dir / "teacher-strong", cfg.export_head_dim)

    # The student: an early checkpoint (about half right alone) taught to use privileged context
    # by a short fine-tune on context prompts only, so its own skill barely moves meanwhile.
    base = choose_base(checkpoints, cfg)
    student = new_model(tokenizer, cfg.size, cfg.seed)
    student.load_state_dict(base["state"])
    student.eval()
    pool = _self_pool(student, tokenizer, cfg, exclude, cfg.self_pool_size)
    ctx_examples = _stream_examples(cfg, random.Random(f"{cfg.seed}:context"), exclude, flawed=False,
                                    mix=cfg.student_context_mix, self_pool=pool)
    stages = []

    def on_ctx_eval(step, m):
        rates = {c: measure_accuracy(m, tokenizer, val_rows, c, seed=10_000 + step).rate for c in ("none", "solution", "summary", "answer")}
        log.info("student context fine-tune step %d: plain %.2f solution %.2f summary %.2f answer %.2f", step, *rates.values())
        stages.append({"step": step, "plain": rates["none"], "solution": rates["solution"], "summary": rates["summary"],
                       "answer": rates["answer"], "state": copy.deepcopy(m.state_dict())})

    train(student, tokenizer, ctx_examples, cfg.student_context_steps, cfg, lr=cfg.lr / 2, on_eval=on_ctx_eval, tag="student-context")
    chosen = choose_student(stages, cfg)
    student.load_state_dict(chosen["state"])
    student.eval()
    _save(student, tokenizer, models_dir / "student", cfg.export_head_dim)

    flawed = new_model(tokenizer, cfg.size, cfg.seed)
    flawed.load_state_dict(model.state_dict())
    fl_examples = _stream_examples(cfg, random.Random(f"{cfg.seed}:flawed"), exclude, flawed=True, mix=(("none", 1.0),))
    train(flawed, tokenizer, fl_examples, cfg.flawed_steps, cfg, lr=cfg.lr / 3, tag="teacher-flawed")
    _save(flawed, tokenizer, models_dir / "teacher-flawed", cfg.export_head_dim)

    report = {
        "seed": cfg.seed,
        "build_config": _jsonable(asdict(cfg)),
        "parameters": n_params,
        "student_base_step": base["step"],
        "student_context_step": chosen["step"],
        "checkpoints": [{k: v for k, v in c.items() if k != "state"} for c in checkpoints],
        "student_context_evals": [{k: v for k, v in c.items() if k != "state"} for c in stages],
        "build_seconds": round(time.time() - t_start, 1),
    }
    (models_dir / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


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


def _save(model, tokenizer, path: Path, head_dim: int = 0) -> None:
    if path.exists():
        shutil.rmtree(path)
    if head_dim:
        model = widen_heads(model, head_dim)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m gradalign.world", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data", help="data folder to (re)write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (for tests)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--reuse-cache", action="store_true", help="reuse the cached teacher run if its settings match")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = BuildConfig.smoke() if args.smoke else BuildConfig()
    cfg = dataclasses.replace(cfg, seed=args.seed)
    report = build(Path(args.out), cfg, reuse_cache=args.reuse_cache)
    print(json.dumps({k: v for k, v in report.items() if k != "build_config"}, indent=2))


if __name__ == "__main__":
    main()


def accuracy_on_test(model_ref: str, context: str, *, n: int = 200, seed: int = 0) -> Accuracy:
    """Load a model (bundled name, folder or HF id) and measure it on the first `n` test rows."""
    from gradalign import arithmetic as ar
    from gradalign import models
    from gradalign.tasks import load_task

    from gradalign.errors import GradalignError

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
