"""The vLLM sampler receives the student's placement settings (`tensor_parallel_size`,
`max_model_len`) from the config; checked against a stand-in `vllm.LLM` (no vLLM needed)."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

from gradalign.config import config_from_dict, default_config_dict
from gradalign.pipeline.resources import sampling_params
from gradalign.sampling import make_sampler


def test_tensor_parallel_size_and_max_model_len_reach_the_engine(monkeypatch):
    seen = {}

    class FakeLLM:
        def __init__(self, **kw):
            seen.update(kw)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    d = default_config_dict()
    d["student"].update(tensor_parallel_size=2, max_model_len=16384)
    d["sampling"].update(backend="vllm", memory_gib=1.5)
    cfg = config_from_dict(d)
    assert sampling_params(cfg).memory_bytes == int(1.5 * (1 << 30))
    student = SimpleNamespace(tokenizer=SimpleNamespace(eos_token_id=2, pad_token_id=0),
                              ref=SimpleNamespace(source="/models/x", gguf_file="", revision=""), folder="")
    make_sampler("vllm", student=student, params=sampling_params(cfg), dtype="bfloat16",
                 tensor_parallel_size=cfg.student.tensor_parallel_size, max_model_len=cfg.student.max_model_len)
    assert seen["tensor_parallel_size"] == 2 and seen["max_model_len"] == 16384 and seen["dtype"] == "bfloat16"
    seen.clear()
    make_sampler("vllm", student=student, params=sampling_params(cfg), dtype="float32")
    assert "tensor_parallel_size" not in seen and seen["max_model_len"] is None  # defaults: one GPU, the model's length
