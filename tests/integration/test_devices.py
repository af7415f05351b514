"""Integration tier: placement settings on real (bundled, tiny) models on CPU: a bfloat16 run end to
end, the hf sampler's batch sizes from a memory budget, and a teacher placed by its own settings."""

from __future__ import annotations

import tomllib

import torch

from gradalign import diagnose
from gradalign.config import config_from_dict
from gradalign.tasks import data_dir


def _cfg(**student):
    d = tomllib.loads((data_dir() / "configs" / "demo.toml").read_text())
    d["task"].update(limit=1)
    d["student"].update(student)
    d["sampling"].update(rollouts_per_question=2, batch_size=0, memory_gib=0.001)
    d["branching"].update(continuations=2, top_k=1, residual=False)
    d["teachers"] = [d["teachers"][0], {"name": "strong", "model": "teacher-strong", "context": "", "device": "cpu"}]
    d["distill"]["losses"] = ["reverse_kl"]
    return config_from_dict(d)


def test_bfloat16_on_cpu_end_to_end(tmp_path):
    run = diagnose(_cfg(dtype="bfloat16"), tmp_path / "bf16")
    t = run.tables()
    assert len(t.rollouts) == 2 and len(t.alignment) > 0
    assert set(t.tokens.config) == {"self-solution", "strong"}
    tok = t.tokens
    assert (tok.student_logprob <= 1e-6).all() and (tok.kl_pq >= -1e-4).all() and tok.dist_cos.between(0, 1 + 1e-5).all()
    assert tok[["student_logprob", "teacher_logprob", "kl_pq", "jsd", "dist_cos"]].notna().all().all()


def test_auto_batches_follow_the_memory_budget():
    from gradalign.memory import ModelShape, sampling_batch_size
    from gradalign.models import load, resolve
    from gradalign.sampling import SamplingParams
    from gradalign.sampling.hf import batch_sizes, sample

    lm = load(resolve("student"))
    shape = ModelShape.from_config(lm.model.config)
    prompts = [[1, 5, 6][: 1 + i % 3] for i in range(40)]
    allow = [8] * 40
    order = sorted(range(40), key=lambda i: len(prompts[i]))
    per = sampling_batch_size(shape, 3 + 8, 1 << 40, 4, cap=10**9)  # unbounded: huge
    assert per > 64
    budget = 7 * (shape.kv_bytes_per_token(4) * 11 + 48 * shape.vocab)  # room for 7 sequences of 11 tokens
    params = SamplingParams(max_new_tokens=8, batch_size=0, memory_bytes=budget)
    got = list(batch_sizes(lm.model, order, [len(p) for p in prompts], allow, params))
    assert [len(b) for b in got][:5] == [7, 7, 7, 7, 7] and sorted(sum(got, [])) == list(range(40))
    assert [len(b) for b in batch_sizes(lm.model, order, [3] * 40, allow, SamplingParams(batch_size=16))] == [16, 16, 8]
    # samples do not depend on the batching
    a = sample(lm.model, prompts, list(range(40)), params, eos_id=2, pad_id=0, max_new=allow)
    b = sample(lm.model, prompts, list(range(40)), SamplingParams(max_new_tokens=8, batch_size=64), eos_id=2, pad_id=0,
               max_new=allow)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]


def test_auto_dtype_is_float32_on_cpu():
    from gradalign.models import load, resolve

    lm = load(resolve("student"), dtype="auto", device="auto")
    assert lm.dtype == "float32" and next(lm.model.parameters()).dtype == torch.float32
