"""The vLLM sampler: the `Sampler` Protocol on vLLM.

Owns: `VLLMSampler`, the implementation on vLLM's offline `LLM` API (token-id prompts, one request per continuation with its
own seed, prefix caching on so branches that share long prefixes reuse their KV cache; vLLM fans
`n > 1` out into child requests the same way, so per-continuation seeds cost nothing extra), the
checks that tell a user before start-up that vLLM cannot run their model here, and the one-time
conversion of GGUF students into a folder vLLM reads (vLLM 0.32 dropped GGUF loading). Teacher and
student scoring stay on transformers in every case (`scoring`): vLLM's prompt logprobs are top-k
only, and gradalign needs full-vocabulary distributions.
Does not own what to sample (the pipeline stages) or how continuations are graded.

Padded LM heads (more rows than tokenizer ids, e.g. Qwen2.5): vLLM samples over the model's full
head; nothing here masks the padded ids (unlike `hf.MaskPadded`). Trained models give those rows ~0
mass, so they are practically never drawn; scoring renormalises over the tokenizer's ids and records
any non-negligible padded mass as a fault (`scoring.PADDED_MASS_TOLERANCE`), which flags a head where
a padded draw would be possible.

Seeds derive from the same stable ids under both backends; the samples differ between backends
(different kernels and RNGs), so compare runs within one backend.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gradalign.models import cache_dir, write_folder_atomically
from gradalign.sampling.protocol import Completion, SamplingParams

log = logging.getLogger(__name__)

VLLM_INSTALL_HINT = (
    "sampling.backend = \"vllm\" needs vLLM: pip install 'gradalign[vllm]' on a GPU machine, or "
    "`bash .ci/vllm-cpu` to build the CPU vLLM virtualenv and run its tests"
)


def vllm_memory_fraction(requested: float, free_bytes: int, total_bytes: int) -> float:
    """The `gpu_memory_utilization` handed to vLLM on an accelerator.

    vLLM reserves that share of the device's *total* memory and refuses to start if it is not free.
    gradalign keeps its transformers student and teachers on the same device for full-vocabulary
    scoring, so `requested = 0` (auto) gives vLLM half of what is free when the engine starts
    (after those models are loaded) and leaves the other half for scoring activations.
    """
    if requested > 0:
        return requested
    if total_bytes <= 0:
        raise ValueError("total_bytes must be positive")
    return max(0.01, round(0.5 * free_bytes / total_bytes, 4))


@dataclass(frozen=True)
class VLLMPlatform:
    """Where the installed vLLM runs: `on_cpu`, and its CPU attention head sizes (None = unknown)."""

    on_cpu: bool
    cpu_head_sizes: tuple[int, ...] | None = None


def vllm_unsupported_reason(model_config: dict, platform: VLLMPlatform) -> str | None:
    """Why vLLM cannot run a model with this `config.json` here, or None.

    vLLM's CPU attention kernels take a fixed list of head sizes (`platform.cpu_head_sizes`, read
    from the installed vLLM); a model outside it fails deep inside the engine after minutes of
    start-up, so preflight asks first. On a GPU vLLM picks among several attention backends with
    different limits, so nothing is refused here: only what the installed vLLM itself lists.
    """
    heads = model_config.get("num_attention_heads")
    hidden = model_config.get("hidden_size")
    head = model_config.get("head_dim") or (hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None)
    if not isinstance(head, int):
        return None
    sizes = platform.cpu_head_sizes
    if platform.on_cpu and sizes is not None and head not in sizes:
        return (f"vLLM's CPU attention does not support head size {head} "
                f"(supported: {', '.join(map(str, sizes))}); use sampling.backend = \"hf\" or run on a GPU")
    return None


def vllm_platform() -> VLLMPlatform:
    """Inspect the installed vLLM (imports it: seconds)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return VLLMPlatform(on_cpu=False)
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        return VLLMPlatform(True, tuple(CPUAttentionBackend.get_supported_head_sizes()))
    except (ImportError, AttributeError):  # another vLLM layout: let the engine decide
        return VLLMPlatform(True, None)


def gguf_as_folder(model, tokenizer, *, content_hash: str, gguf_file: str, dtype: str) -> str:
    """A safetensors folder holding `model` (already dequantised from `gguf_file` by transformers)
    and its tokenizer, for vLLM, when the model did not come from the conversion cache
    (`models.gguf_cache_folder`; e.g. a hub GGUF not in the local hub cache). Written once per
    (content hash, file, dtype) under `cache_dir()`, atomically (`models.write_folder_atomically`);
    later runs reuse it."""
    key = hashlib.blake2b(f"{content_hash}|{gguf_file}|{dtype}".encode(), digest_size=8).hexdigest()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(gguf_file).stem)[:60]
    root = cache_dir() / "gguf" / f"{name}-{key}"
    if (root / "config.json").exists():
        return str(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    log.info("writing %s as a safetensors folder for vLLM: %s", gguf_file, root)
    return write_folder_atomically(root, model, tokenizer)


def request_params(p: SamplingParams, allow: int, seed: int, eos_ids: Sequence[int]) -> dict:
    """Keyword arguments of vLLM's `SamplingParams` for one continuation: `allow` new tokens at most,
    its own seed, stopping at any of `eos_ids` (`stop_token_ids`; the model's own EOS stays on too)."""
    return dict(n=1, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k if p.top_k > 0 else -1, max_tokens=allow,
                seed=int(seed) % (2**31), ignore_eos=False, detokenize=False, stop_token_ids=[int(e) for e in eos_ids])


def completion_of(token_ids: Sequence[int], finish_reason: str | None, eos_ids: Sequence[int],
                  stop_reason: object = None) -> Completion:
    """vLLM's output as a `Completion`: a final EOS id (any of `eos_ids`) is dropped, and a sequence ended
    by one (or finish_reason "stop") is not truncated; one that ran out of tokens ("length") is. Its
    `eos_id` is that final id, else vLLM's `stop_reason` when it is one of `eos_ids`, else None."""
    toks = list(token_ids)
    ended = bool(toks) and toks[-1] in eos_ids or finish_reason == "stop"
    eos = None
    if toks and toks[-1] in eos_ids:
        eos = int(toks[-1])
        toks = toks[:-1]
    elif ended and isinstance(stop_reason, int) and stop_reason in eos_ids:
        eos = int(stop_reason)
    return Completion(tuple(toks), truncated=not ended, ended_with_eos=ended, eos_id=eos)


class VLLMSampler:
    """Samples with vLLM's offline engine, loaded from the student's model folder or hub id
    (`source`; a GGUF student arrives here as `gguf_as_folder`'s output)."""

    def __init__(self, source: str, params: SamplingParams, *, eos_id: int | Sequence[int], dtype: str = "float32",
                 revision: str = "", max_model_len: int | None = None, seed: int = 0, memory_fraction: float = 0.0,
                 eager: bool = False, tensor_parallel_size: int = 1):
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError(VLLM_INSTALL_HINT) from None
        import torch

        kw: dict = {"revision": revision} if revision else {}
        if tensor_parallel_size > 1:
            kw["tensor_parallel_size"] = int(tensor_parallel_size)
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            kw["gpu_memory_utilization"] = vllm_memory_fraction(memory_fraction, free, total)
            log.info("vLLM engine gets %.0f%% of GPU memory", 100 * kw["gpu_memory_utilization"])
        else:
            # On the CPU build this fraction reserves host memory for the KV cache; the default
            # (0.92 of a NUMA node) fails beside other processes and the tiny models need little.
            kw["gpu_memory_utilization"] = 0.25
            # vLLM (0.32, CPU) rewinds a seeded request's generator when a chunked prefill step
            # discards its sample, and CPU generators cannot rewind ("CPU Generator does not use
            # offset"): whole prefills avoid that path.
            kw["enable_chunked_prefill"] = False
        self.llm = LLM(model=source, dtype=dtype, seed=seed, enable_prefix_caching=True,
                       max_model_len=max_model_len, enforce_eager=eager, **kw)
        self.params = params
        self.eos_ids = (int(eos_id),) if isinstance(eos_id, int) else tuple(int(e) for e in eos_id)

    def sample(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], max_new: Sequence[int] | None = None) -> list[Completion]:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        p = self.params
        allow = [p.max_new_tokens] * len(prompts) if max_new is None else [min(int(a), p.max_new_tokens) for a in max_new]
        out: list[Completion | None] = [None] * len(prompts)
        reqs, sps, idx = [], [], []
        for i, (pr, s, a) in enumerate(zip(prompts, seeds, allow)):
            if a <= 0:
                out[i] = Completion((), truncated=True, ended_with_eos=False)
                continue
            reqs.append(TokensPrompt(prompt_token_ids=list(pr)))
            sps.append(VSamplingParams(**request_params(p, a, s, self.eos_ids)))
            idx.append(i)
        if reqs:
            results = self.llm.generate(reqs, sps, use_tqdm=False)
            for i, res in zip(idx, results):
                o = res.outputs[0]
                out[i] = completion_of(o.token_ids, o.finish_reason, self.eos_ids, getattr(o, "stop_reason", None))
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.llm = None
