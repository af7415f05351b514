"""Rollout sampling: who draws the student's continuations.

Owns: `make_sampler`, the one choice of backend (`hf` | `vllm`) behind the `Sampler` Protocol.
Modules: `protocol` (the contract, `Completion`, `SamplingParams`, `stable_seed`), `hf`
(transformers `generate` with counter-based Gumbel noise), `vllm` (vLLM's offline engine, its
platform checks and GGUF conversion). Does not own what to sample or how it is graded
(`gradalign.pipeline.rollouts`), nor teacher/student scoring (`gradalign.scoring`).
"""

from __future__ import annotations

from gradalign.config import BACKENDS
from gradalign.sampling.protocol import Completion, Sampler, SamplingParams, stable_seed

__all__ = ["BACKENDS", "Completion", "Sampler", "SamplingParams", "make_sampler", "stable_seed"]


def make_sampler(backend: str, *, student, params: SamplingParams, dtype: str = "float32", seed: int = 0,
                 memory_fraction: float = 0.0, eager: bool = False, tensor_parallel_size: int = 1,
                 max_model_len: int = 0, eos_ids: tuple[int, ...] = ()) -> Sampler:
    """The sampler for `backend`; `student` is the loaded `models.LoadedModel` (a GGUF student's
    conversion-cache folder, `student.folder`, is what vLLM loads). `tensor_parallel_size` and
    `max_model_len` (0 = the model's own) go to vLLM only. `eos_ids`: every id that ends a completion
    (`models.eos_token_ids`); () = the tokenizer's EOS only."""
    tok = student.tokenizer
    eos = tuple(eos_ids) or (tok.eos_token_id,)
    if backend == "hf":
        from gradalign.sampling.hf import HFSampler

        return HFSampler(student.model, params, eos, tok.pad_token_id, vocab_size=len(tok))
    if backend == "vllm":
        from gradalign.sampling.vllm import VLLMSampler, gguf_as_folder

        ref = student.ref
        source = ref.source
        if ref.gguf_file:
            source = student.folder if getattr(student, "folder", "") else gguf_as_folder(
                student.model, tok, content_hash=student.content_hash, gguf_file=ref.gguf_file, dtype=dtype)
        return VLLMSampler(source, params, eos_id=eos, dtype=dtype, revision=ref.revision, seed=seed,
                           memory_fraction=memory_fraction, eager=eager, tensor_parallel_size=tensor_parallel_size,
                           max_model_len=max_model_len or None)
    raise ValueError(f"sampling.backend: unknown backend {backend!r} ({' | '.join(BACKENDS)})")
