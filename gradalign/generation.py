"""Batched sampling from a causal LM with per-sequence seeds (the HF transformers backend).

Owns: turning token-id prompts into sampled completions with `model.generate` (left padding, KV
cache, large batches), exact sampling from softmax(z / temperature) (optionally truncated by
top-k/top-p when a config asks for it), and the per-sequence seeding that makes a sequence's sample
depend only on its own seed, never on which batch it landed in. Does not own what to sample (the
engine builds prompts), grading, or teacher scoring.

Sampling is Gumbel-max: `generate` runs greedy decoding over logits/temperature + Gumbel noise,
and the noise for sequence i comes from its own `torch.Generator` seeded with `seeds[i]`. argmax of
logits + Gumbel(0, 1) noise is an exact sample from the softmax, so this is unbiased sampling, and
reproducible per sequence (resume and re-batching give the same tokens up to float
non-associativity of batched matmuls).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch

log = logging.getLogger(__name__)


def stable_seed(*parts) -> int:
    """A 63-bit seed from printable parts (blake2b; independent of PYTHONHASHSEED and batch order)."""
    import hashlib

    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class SamplingParams:
    """How continuations are drawn. Defaults give unbiased success estimates."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 64


@dataclass(frozen=True)
class Completion:
    """A sampled continuation: new token ids (EOS excluded) and whether max_new_tokens cut it."""

    token_ids: tuple[int, ...]
    truncated: bool
    ended_with_eos: bool


def truncate_logits(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits [B, V] outside top-k / nucleus top-p with -inf (no-op for top_k=0, top_p=1)."""
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p < 1.0:
        sorted_scores, idx = torch.sort(scores, descending=True, dim=-1)
        cum = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
        remove = cum - torch.softmax(sorted_scores, dim=-1) >= top_p  # keep the token that crosses p
        remove = remove.scatter(-1, idx, remove)
        scores = scores.masked_fill(remove, -math.inf)
    return scores


class _GumbelPerRow:
    """LogitsProcessor: returns logits/temperature (+ truncation) + per-row Gumbel noise."""

    def __init__(self, seeds: Sequence[int], params: SamplingParams, device: torch.device):
        self.params = params
        self.gens = []
        for s in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(int(s) % (2**63))
            self.gens.append(g)
        self.device = device

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self.params.temperature
        scores = truncate_logits(scores, self.params.top_k, self.params.top_p)
        V = scores.shape[-1]
        u = torch.stack([torch.rand(V, generator=g, dtype=torch.float64) for g in self.gens])
        gumbel = -torch.log(-torch.log(u.clamp_(1e-300, 1.0 - 1e-16)))
        return scores + gumbel.to(device=scores.device, dtype=scores.dtype)


def sample(
    model,
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int],
    params: SamplingParams,
    *,
    eos_id: int,
    pad_id: int,
    max_new: Sequence[int] | None = None,
) -> list[Completion]:
    """Sample one continuation per prompt (N prompts of token ids, N seeds) -> N Completions.

    `max_new` optionally gives each prompt its own token allowance (<= params.max_new_tokens),
    e.g. a branch at completion position t of a rollout limited to L tokens gets L - t - 1, so a
    continuation faces the same length limit as the rollout it estimates. An allowance of 0 gives
    an empty, truncated completion without running the model.
    Prompts are sorted by length and grouped into batches of `params.batch_size` to limit padding;
    results come back in input order.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds")
    device = next(model.parameters()).device
    gen_cfg = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=params.max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    allow = [params.max_new_tokens] * len(prompts) if max_new is None else [min(int(a), params.max_new_tokens) for a in max_new]
    out: list[Completion | None] = [None] * len(prompts)
    for i, a in enumerate(allow):
        if a <= 0:
            out[i] = Completion((), truncated=True, ended_with_eos=False)
    order = sorted((i for i in range(len(prompts)) if allow[i] > 0), key=lambda i: (len(prompts[i]), -allow[i]))
    for start in range(0, len(order), params.batch_size):
        idx = order[start : start + params.batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            p = list(prompts[i])
            ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p) :] = 1
        proc = _GumbelPerRow([seeds[i] for i in idx], params, device)
        gen_cfg.max_new_tokens = max(allow[i] for i in idx)
        with torch.inference_mode():
            seqs = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=gen_cfg,
                logits_processor=LogitsProcessorList([proc]),
            )
        new = seqs[:, width:].tolist()
        for r, i in enumerate(idx):
            toks = new[r][: allow[i]]  # the allowance counts the EOS token, as max_new_tokens does
            if eos_id in toks:
                toks = toks[: toks.index(eos_id)]
                out[i] = Completion(tuple(toks), truncated=False, ended_with_eos=True)
            else:
                out[i] = Completion(tuple(toks), truncated=True, ended_with_eos=False)
    return out  # type: ignore[return-value]
