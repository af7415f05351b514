"""Rollout backends: who samples student continuations (`hf` or `vllm`).

Owns: the one interface the engine samples through (`Sampler.sample(prompts, seeds, max_new)`),
the transformers implementation (a thin wrapper over `generation.sample`), and the vLLM
implementation on the offline `LLM` API (token-id prompts, one request per continuation with its
own seed, prefix caching on so branches that share long prefixes reuse their KV cache). Teacher and
student scoring stay on transformers in every case (`scoring`): vLLM's prompt logprobs are top-k
only, and gradalign needs full-vocabulary distributions.
Does not own what to sample (the engine) or how continuations are graded.

Seeds derive from the same stable ids under both backends; the samples differ between backends
(different kernels and RNGs), so compare runs within one backend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from gradalign.generation import Completion, SamplingParams, sample

log = logging.getLogger(__name__)

VLLM_INSTALL_HINT = (
    "sampling.backend = \"vllm\" needs vLLM: pip install 'gradalign[vllm]' on a GPU machine, or "
    "`bash .ci/vllm-cpu` to build the CPU vLLM virtualenv and run its tests"
)


@dataclass
class HFSampler:
    """Samples with `model.generate` (see `generation.sample`)."""

    model: object
    params: SamplingParams
    eos_id: int
    pad_id: int

    def sample(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], max_new: Sequence[int] | None = None) -> list[Completion]:
        return sample(self.model, prompts, seeds, self.params, eos_id=self.eos_id, pad_id=self.pad_id, max_new=max_new)

    def close(self) -> None:
        pass


class VLLMSampler:
    """Samples with vLLM's offline engine, loaded from the same model folder as the student."""

    def __init__(self, source: str, params: SamplingParams, *, eos_id: int, dtype: str = "float32",
                 gguf_file: str = "", max_model_len: int | None = None, seed: int = 0):
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError(VLLM_INSTALL_HINT) from None
        import os

        import torch

        model = os.path.join(source, gguf_file) if gguf_file else source
        kw = {"tokenizer": source} if gguf_file else {}
        if not torch.cuda.is_available():
            # On the CPU build this fraction reserves host memory for the KV cache; the default
            # (0.92 of a NUMA node) fails beside other processes and the tiny models need little.
            kw["gpu_memory_utilization"] = 0.25
        self.llm = LLM(model=model, dtype=dtype, seed=seed, enable_prefix_caching=True,
                       max_model_len=max_model_len, **kw)
        self.params = params
        self.eos_id = eos_id

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
            sps.append(VSamplingParams(n=1, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k if p.top_k > 0 else -1,
                                       max_tokens=a, seed=int(s) % (2**31), ignore_eos=False, detokenize=False))
            idx.append(i)
        if reqs:
            results = self.llm.generate(reqs, sps, use_tqdm=False)
            for i, res in zip(idx, results):
                o = res.outputs[0]
                toks = list(o.token_ids)
                ended = bool(toks) and toks[-1] == self.eos_id or o.finish_reason == "stop"
                if toks and toks[-1] == self.eos_id:
                    toks = toks[:-1]
                out[i] = Completion(tuple(toks), truncated=not ended, ended_with_eos=ended)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.llm = None


def make_sampler(backend: str, *, model, source: str, params: SamplingParams, eos_id: int, pad_id: int,
                 dtype: str = "float32", gguf_file: str = "", seed: int = 0):
    if backend == "hf":
        return HFSampler(model, params, eos_id, pad_id)
    if backend == "vllm":
        return VLLMSampler(source, params, eos_id=eos_id, dtype=dtype, gguf_file=gguf_file, seed=seed)
    raise ValueError(f"sampling.backend: unknown backend {backend!r} (hf | vllm)")
