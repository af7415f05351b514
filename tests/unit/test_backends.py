"""Unit tier: the backend decisions that need no vLLM install — the memory share handed to a vLLM
engine on an accelerator, and which model shapes vLLM's kernels refuse (asked before start-up)."""

from __future__ import annotations

import pytest

from gradalign.sampling.vllm import VLLMPlatform, vllm_memory_fraction, vllm_unsupported_reason

GiB = 1 << 30
CPU = VLLMPlatform(on_cpu=True, cpu_head_sizes=(32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512))


def test_memory_fraction_explicit_wins():
    assert vllm_memory_fraction(0.3, 10 * GiB, 80 * GiB) == 0.3


def test_memory_fraction_auto_is_half_of_free_memory():
    # 80 GiB device, 16 GiB taken by the transformers student and teachers: vLLM gets 32 GiB
    assert vllm_memory_fraction(0.0, 64 * GiB, 80 * GiB) == pytest.approx(0.4)
    assert vllm_memory_fraction(0.0, 0, 80 * GiB) == 0.01  # never zero: vLLM then explains itself
    with pytest.raises(ValueError):
        vllm_memory_fraction(0.0, 1, 0)


@pytest.mark.parametrize("cfg, on_cpu, bad", [
    ({"hidden_size": 96, "num_attention_heads": 4}, True, "head size 24"),  # 24 is not a CPU kernel size
    ({"hidden_size": 96, "num_attention_heads": 3}, True, None),
    ({"hidden_size": 576, "num_attention_heads": 9}, True, None),  # SmolLM2-135M: 64
    ({"hidden_size": 96, "num_attention_heads": 4, "head_dim": 32}, True, None),  # explicit head_dim wins
    ({"hidden_size": 96, "num_attention_heads": 4}, False, None),  # GPU flash attention takes 24
    ({"hidden_size": 60, "num_attention_heads": 3}, False, None),  # GPU: vLLM chooses its backend; not guessed
    ({}, True, None),  # unknown shape: let the engine decide
])
def test_unsupported_head_sizes(cfg, on_cpu, bad):
    why = vllm_unsupported_reason(cfg, CPU if on_cpu else VLLMPlatform(on_cpu=False))
    if bad is None:
        assert why is None
    else:
        assert bad in why and 'sampling.backend = "hf"' in why


def test_unknown_cpu_kernel_list_does_not_refuse():
    assert vllm_unsupported_reason({"hidden_size": 96, "num_attention_heads": 4}, VLLMPlatform(True, None)) is None
