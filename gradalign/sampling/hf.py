"""The transformers sampler: batched sampling from a causal LM with per-sequence seeds.

Owns: `HFSampler` (the `Sampler` Protocol) and `sample`: token-id prompts to sampled completions
with `model.generate` (left padding, KV cache, large batches), exact sampling from
softmax(z / temperature) (optionally truncated by top-k/top-p when a config asks for it), and the
per-sequence seeding that makes a sequence's sample depend only on its own seed, never on which
batch it landed in. Does not own what to sample (the pipeline stages build prompts: `pipeline.
rollouts.continue_and_grade`), grading, or teacher scoring.

Sampling is Gumbel-max: `generate` runs greedy decoding over logits/temperature + Gumbel noise.
argmax of logits + Gumbel(0, 1) noise is an exact sample from the softmax, so this is unbiased
sampling. The noise (`GumbelCounter`; `sample(noise_processor=...)` swaps it for experiments) is
counter-based: the uniform for (sequence seed s, decode step t, vocab id v) is a SplitMix64 hash of
(s, t, v), computed for the whole [B, V] batch in a few integer ops on the model's device. A
sequence's sample therefore depends only on its own seed, never on its batch (resume and
re-batching give the same tokens up to float non-associativity of batched matmuls), and no per-row
generator, host-side random draw or host-to-device copy sits in the decode loop. Rows stop at
their own allowance (a stopping criterion), so a batch ends when its last live row does.

Batch size: a fixed `params.batch_size`, or with 0 one chosen per batch from a memory budget
(`batch_sizes`): the KV cache of the longest sequence of the batch (prompt + allowance) and the decode
step's [B, V] temporaries, priced by `gradalign.memory` from the model's config, must fit
`params.memory_bytes` (auto: half of the free CUDA memory, or 4 GiB on CPU).

Padded LM heads: a model's head may have more rows (V_head) than its tokenizer has ids (V_tok =
len(tokenizer)); with `vocab_size` = V_tok the padded ids get -inf before the noise (`MaskPadded`), so
a padded id is never drawn and the draw is from softmax over the tokenizer's ids, renormalised, the
distribution scoring uses. The noise of id v does not depend on the width, so ids < V_tok draw the same
noise as under an unpadded head. With V_head == V_tok nothing is added (the default path is unchanged).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from gradalign.sampling.protocol import Completion, SamplingParams

log = logging.getLogger(__name__)


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


def _i64(x: int) -> int:
    """An unsigned 64-bit constant as the signed int64 torch stores."""
    return x - (1 << 64) if x >= (1 << 63) else x


_GOLDEN = _i64(0x9E3779B97F4A7C15)
_MIX1 = _i64(0xBF58476D1CE4E5B9)
_MIX2 = _i64(0x94D049BB133111EB)


def _srl(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function on int64 tensors (arithmetic mod 2^64, two's complement)."""
    z = z + _GOLDEN
    z = (z ^ _srl(z, 30)) * _MIX1
    z = (z ^ _srl(z, 27)) * _MIX2
    return z ^ _srl(z, 31)


def counter_uniform(seeds: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """Uniforms in (0, 1) of shape [B, V], float64: entry (i, v) is a hash of (seeds[i], step, v).

    seeds: [B] int64 on the target device. Row i's key is splitmix64(seeds[i] ^ splitmix64(step));
    entry v is the top 53 bits of splitmix64(key + (v + 1) * golden), i.e. the v-th draw of a
    SplitMix64 stream started at the key, shifted by half a unit so it is never 0 or 1.
    """
    dev = seeds.device
    key = splitmix64(seeds ^ splitmix64(torch.tensor(step, dtype=torch.int64, device=dev)))
    v = torch.arange(1, vocab + 1, dtype=torch.int64, device=dev) * _GOLDEN
    z = splitmix64(key[:, None] + v[None, :])
    return (_srl(z, 11).to(torch.float64) + 0.5) * (2.0**-53)


class GumbelCounter:
    """LogitsProcessor: logits/temperature (+ truncation) + Gumbel noise from `counter_uniform`,
    keyed by each row's seed and its decode step (tokens generated so far).

    The default noise processor of `sample`; its constructor
    `(seeds, params, prompt_width, device)` is the signature `sample(noise_processor=...)` expects.
    """

    def __init__(self, seeds: Sequence[int], params: SamplingParams, prompt_width: int, device: torch.device):
        self.params = params
        self.width = prompt_width
        self.seeds = torch.tensor([_i64(int(s) % (1 << 64)) for s in seeds], dtype=torch.int64, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self.params.temperature
        scores = truncate_logits(scores, self.params.top_k, self.params.top_p)
        u = counter_uniform(self.seeds.to(scores.device), input_ids.shape[1] - self.width, scores.shape[-1])
        return scores + (-torch.log(-torch.log(u))).to(scores.dtype)


class MaskPadded:
    """LogitsProcessor: logits of padded LM-head rows (ids >= vocab_size) set to -inf."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.index_fill(-1, torch.arange(self.vocab_size, scores.shape[-1], device=scores.device), -math.inf)


class _RowAllowance:
    """StoppingCriteria: row r is done once it has generated allow[r] tokens (EOS is handled by
    generate itself), so rows with short allowances stop holding their batch open."""

    def __init__(self, allow: Sequence[int], prompt_width: int, device: torch.device):
        self.allow = torch.tensor(list(allow), dtype=torch.long, device=device)
        self.width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.width) >= self.allow.to(input_ids.device)


def sample(
    model,
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int],
    params: SamplingParams,
    *,
    eos_id: int | Sequence[int],
    pad_id: int,
    max_new: Sequence[int] | None = None,
    noise_processor: Callable[[Sequence[int], SamplingParams, int, torch.device], object] | None = None,
    vocab_size: int | None = None,
) -> list[Completion]:
    """Sample one continuation per prompt (N prompts of token ids, N seeds) -> N Completions.

    `max_new` optionally gives each prompt its own token allowance (<= params.max_new_tokens),
    e.g. a branch at completion position t of a rollout limited to L tokens gets L - t - 1, so a
    continuation faces the same length limit as the rollout it estimates. An allowance of 0 gives
    an empty, truncated completion without running the model.
    Prompts are sorted by length and grouped into batches of `params.batch_size` to limit padding;
    results come back in input order.
    `noise_processor` builds each batch's logits processor from (the batch's seeds, params, padded
    prompt width, device); it must return logits/temperature (+ truncation) + Gumbel noise, since
    `generate` decodes greedily over them. None (the default) is `GumbelCounter`, the counter-based,
    per-row reproducible noise; another factory is for experiments only (e.g. the ablation in
    bench/bench_rollout.py that swaps in one batched draw).
    `vocab_size` is the tokenizer's length (V_tok); when the model's LM head has more rows, the padded
    ids are masked (`MaskPadded`) before the noise processor. None: the head's rows, nothing masked.
    `eos_id` is one id or several (`models.eos_token_ids`): a row stops at the first of any of them,
    which is left out of its completion.
    """
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds")
    device = next(model.parameters()).device
    make_noise = GumbelCounter if noise_processor is None else noise_processor
    head_rows = model.get_output_embeddings().weight.shape[0]
    if vocab_size is not None and vocab_size > head_rows:
        raise ValueError(f"the model's LM head has {head_rows} rows, fewer than the tokenizer's {vocab_size} ids")
    mask_padded = [MaskPadded(vocab_size)] if vocab_size is not None and vocab_size < head_rows else []
    eos_ids = [int(eos_id)] if isinstance(eos_id, int) else [int(e) for e in eos_id]
    gen_cfg = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=params.max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )
    allow = [params.max_new_tokens] * len(prompts) if max_new is None else [min(int(a), params.max_new_tokens) for a in max_new]
    out: list[Completion | None] = [None] * len(prompts)
    for i, a in enumerate(allow):
        if a <= 0:
            out[i] = Completion((), truncated=True, ended_with_eos=False)
    order = sorted((i for i in range(len(prompts)) if allow[i] > 0), key=lambda i: (len(prompts[i]), -allow[i]))
    for idx in batch_sizes(model, order, [len(p) for p in prompts], allow, params):
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            p = list(prompts[i])
            ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p) :] = 1
        proc = make_noise([seeds[i] for i in idx], params, width, device)
        stop = _RowAllowance([allow[i] for i in idx], width, device)
        gen_cfg.max_new_tokens = max(allow[i] for i in idx)
        with torch.inference_mode():
            seqs = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=gen_cfg,
                logits_processor=LogitsProcessorList([*mask_padded, proc]),
                stopping_criteria=StoppingCriteriaList([stop]),
            )
        new = seqs[:, width:].tolist()
        for r, i in enumerate(idx):
            out[i] = cut_at_eos(new[r][: allow[i]], eos_ids)  # the allowance counts the EOS token, as max_new_tokens does
    return out  # type: ignore[return-value]


AUTO_CPU_MEMORY_BYTES = 4 << 30
"""The auto sampling budget on CPU (`params.memory_bytes = 0`): 4 GiB of KV cache and temporaries."""


def auto_memory_bytes(device: torch.device) -> int:
    """The auto sampling budget: half of the free memory of a CUDA device (measured now, after the
    models are loaded), `AUTO_CPU_MEMORY_BYTES` elsewhere."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free // 2)
    return AUTO_CPU_MEMORY_BYTES


def batch_sizes(model, order: Sequence[int], prompt_lens: Sequence[int], allow: Sequence[int], params: SamplingParams):
    """`order` (indices sorted by prompt length) cut into generate batches: `params.batch_size` each,
    or, with batch_size 0, as many as `memory.sampling_batch_size` admits for the batch's longest
    sequence (its prompt + the largest allowance) under `params.memory_bytes` (0 = auto), capped by
    `memory.MAX_AUTO_BATCH` for the device type. Yields lists of indices."""
    if params.batch_size > 0:
        for start in range(0, len(order), params.batch_size):
            yield list(order[start : start + params.batch_size])
        return
    from gradalign.memory import MAX_AUTO_BATCH, ModelShape, sampling_batch_size

    p = next(model.parameters())
    cap = MAX_AUTO_BATCH.get(p.device.type, 64)
    try:
        shape = ModelShape.from_config(model.config)
    except (AttributeError, TypeError, ValueError):  # not a transformers config: the fixed default
        shape = None
    budget = params.memory_bytes or auto_memory_bytes(p.device)
    start = 0
    while start < len(order):
        if shape is None:
            b = cap
        else:
            cand = order[start : start + cap]  # its last member has the longest prompt of any batch from here
            seq = max(prompt_lens[i] for i in cand) + max(allow[i] for i in cand)
            b = sampling_batch_size(shape, seq, budget, p.element_size(), cap=cap)
        yield list(order[start : start + b])
        start += b


def cut_at_eos(tokens: Sequence[int], eos_ids: Sequence[int]) -> Completion:
    """A completion from sampled tokens: up to (without) the first of any EOS id, else all of them, truncated."""
    stops = set(eos_ids)
    for k, t in enumerate(tokens):
        if t in stops:
            return Completion(tuple(tokens[:k]), truncated=False, ended_with_eos=True, eos_id=int(t))
    return Completion(tuple(tokens), truncated=True, ended_with_eos=False)


@dataclass
class HFSampler:
    """The `Sampler` on transformers: `sample` below, with the student's EOS ids (one or several) and pad id and its
    tokenizer's length (`vocab_size`: padded LM-head rows beyond it are never drawn; None = no mask)."""

    model: object
    params: SamplingParams
    eos_id: int | tuple[int, ...]
    pad_id: int
    vocab_size: int | None = None

    def sample(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], max_new: Sequence[int] | None = None) -> list[Completion]:
        return sample(self.model, prompts, seeds, self.params, eos_id=self.eos_id, pad_id=self.pad_id, max_new=max_new,
                      vocab_size=self.vocab_size)

    def close(self) -> None:
        pass
