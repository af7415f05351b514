"""The sampler contract: what every rollout backend speaks.

Owns: the `Sampler` Protocol (sample token-id prompts with per-sequence seeds and per-row
allowances; close), the records it speaks (`SamplingParams` in, `Completion` out), and
`stable_seed`, the one function that turns stable ids into a seed. Does not own any backend
(`sampling.hf`, `sampling.vllm`) nor what to sample (the pipeline's `rollouts` stage).

Shapes: B prompts per call; each prompt is a sequence of token ids; `seeds[b]` alone decides
sequence b's draw (never its batch), `max_new[b]` caps its new tokens (<= params.max_new_tokens).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable


def stable_seed(*parts) -> int:
    """A 63-bit seed from printable parts (blake2b; independent of PYTHONHASHSEED and batch order)."""
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class SamplingParams:
    """How continuations are drawn. Defaults give unbiased success estimates."""

    max_new_tokens: int = 128  # cap on new tokens per sequence; a sequence that hits it is `truncated`
    temperature: float = 1.0  # softmax temperature (1 = the student's own distribution)
    top_p: float = 1.0  # nucleus truncation (1 = none)
    top_k: int = 0  # top-k truncation (0 = none)
    batch_size: int = 64  # sequences per forward batch (hf backend); 0 = from `memory_bytes` (`hf.batch_sizes`)
    memory_bytes: int = 0  # hf backend, batch_size 0: bytes a batch may take (0 = auto: `hf.auto_memory_bytes`)


@dataclass(frozen=True)
class Completion:
    """A sampled continuation: new token ids (EOS excluded) and whether max_new_tokens cut it."""

    token_ids: tuple[int, ...]  # new tokens, EOS excluded
    truncated: bool  # hit its allowance without EOS
    ended_with_eos: bool  # ended by an EOS token (any of the student's EOS ids)
    eos_id: int | None = None  # which EOS id ended it (None: truncated, or a backend that does not say)


@runtime_checkable
class Sampler(Protocol):
    """A rollout backend: draws continuations of token-id prompts from the student."""

    def sample(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int],
               max_new: Sequence[int] | None = None) -> list[Completion]:
        """One `Completion` per prompt, in order. `seeds[b]` decides sequence b's draw; `max_new[b]`
        (default params.max_new_tokens) caps its length; an allowance <= 0 gives an empty,
        truncated completion."""
        ...

    def close(self) -> None:
        """Release the backend's resources (engine processes, device memory)."""
        ...
