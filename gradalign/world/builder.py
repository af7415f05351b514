"""The world build pipeline: task files, tokenizer, teacher run, student and flawed teacher, report.

Owns: `build(out, cfg)`, the order of the stages and their seeds, the teacher-run cache
(`models/.build_cache/teacher_run.pt`, keyed by `TEACHER_RUN_FIELDS`) and `models/build_report.json`.
Does NOT own the settings (`world.config.BuildConfig`), the pieces it composes (`world.arithmetic`,
`world.tokenizer`, `world.model`, `world.training`, `world.checkpoints`, `world.accuracy`), logging
setup or printing (the `gradalign build-world` command).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import asdict
from pathlib import Path

from gradalign.errors import GradalignError
from gradalign.world import arithmetic as ar
from gradalign.world.accuracy import measure_accuracy
from gradalign.world.checkpoints import choose_base, choose_student
from gradalign.world.config import BuildConfig
from gradalign.world.model import new_model, save_model
from gradalign.world.tokenizer import build_tokenizer
from gradalign.world.training import sample_self_pool, stream_examples, train

log = logging.getLogger(__name__)

TEACHER_RUN_FIELDS = ("seed", "digit_range", "size", "batch_size", "lr", "teacher_steps", "eval_every", "eval_n", "mix", "copy_force")


def build(out: Path, cfg: BuildConfig, *, reuse_cache: bool = False, threads: int = 0) -> dict:
    """Regenerate task files and retrain all models into `out` (the `data/` folder). Returns a report.

    `reuse_cache` reuses the cached teacher run (`models/.build_cache`) when its settings match;
    `threads` > 0 sets torch's CPU thread count first (0 keeps torch's default).
    """
    out = Path(out)
    if threads < 0:
        raise GradalignError(f"--threads {threads}: expected 0 (torch default) or a positive count")
    if out.exists() and not out.is_dir():
        raise GradalignError(f"--out {out}: exists and is not a folder")
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    t_start = time.time()
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
    examples = stream_examples(cfg, rng, exclude, flawed=False, mix=cfg.mix)
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
    save_model(model, tokenizer, models_dir / "teacher-strong", cfg.export_head_dim)

    # The student: an early checkpoint (about half right alone) taught to use privileged context
    # by a short fine-tune on context prompts only, so its own skill barely moves meanwhile.
    base = choose_base(checkpoints, cfg)
    student = new_model(tokenizer, cfg.size, cfg.seed)
    student.load_state_dict(base["state"])
    student.eval()
    pool = sample_self_pool(student, tokenizer, cfg, exclude, cfg.self_pool_size)
    ctx_examples = stream_examples(cfg, random.Random(f"{cfg.seed}:context"), exclude, flawed=False,
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
    save_model(student, tokenizer, models_dir / "student", cfg.export_head_dim)

    flawed = new_model(tokenizer, cfg.size, cfg.seed)
    flawed.load_state_dict(model.state_dict())
    fl_examples = stream_examples(cfg, random.Random(f"{cfg.seed}:flawed"), exclude, flawed=True, mix=(("none", 1.0),))
    train(flawed, tokenizer, fl_examples, cfg.flawed_steps, cfg, lr=cfg.lr / 3, tag="teacher-flawed")
    save_model(flawed, tokenizer, models_dir / "teacher-flawed", cfg.export_head_dim)

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


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
