"""Unit tier: the memory cost model (`gradalign.memory`) and where models go (device strings, dtype
`auto`), without loading a model."""

from __future__ import annotations

import pytest

from gradalign import memory as M
from gradalign.config import ConfigError, config_from_dict, default_config_dict
from gradalign.models import ModelError, pick_device, resolve_dtype

QWEN_17 = M.ModelShape.from_config(M.QWEN3["Qwen3-1.7B"], "Qwen3-1.7B")
QWEN_8 = M.ModelShape.from_config(M.QWEN3["Qwen3-8B"], "Qwen3-8B")


def test_kv_cache_arithmetic_matches_the_hand_count():
    # 2 (K, V) x 28 layers x 8 kv heads x 128 dims x 2 bytes (bf16)
    assert QWEN_17.kv_bytes_per_token(2) == 2 * 28 * 8 * 128 * 2 == 114_688
    assert QWEN_8.kv_bytes_per_token(2) == 2 * 36 * 8 * 128 * 2
    # the number: the old fixed batch of 64 at 16k context is ~120 GB of student KV cache in bf16
    assert 64 * 16384 * QWEN_17.kv_bytes_per_token(2) == pytest.approx(120e9, rel=0.01)
    # parameter counts of the published checkpoints (1.72B, 8.19B)
    assert QWEN_17.parameters == pytest.approx(1.72e9, rel=0.01)
    assert QWEN_8.parameters == pytest.approx(8.19e9, rel=0.01)


def test_sampling_batch_size_fits_the_budget_and_never_drops_below_one():
    seq = M.sampling_sequence_bytes(QWEN_17, 16384, 2)
    assert seq == 16384 * 114_688 + M.SAMPLER_LOGIT_BYTES_PER_ID * 151936
    for budget in (seq - 1, seq, 10 * seq + 5, 40 << 30):
        b = M.sampling_batch_size(QWEN_17, 16384, budget, 2)
        assert b >= 1
        assert b * seq <= budget or b == 1  # fits, or the one sequence that always runs
        assert (b + 1) * seq > budget or b == 256  # one more would not fit, or the cap
    assert M.sampling_batch_size(QWEN_17, 16384, 0, 2) == 1
    assert M.sampling_batch_size(QWEN_17, 16, 1 << 40, 2, cap=64) == 64


def test_the_plan_prints_and_adds_up():
    plan = M.memory_plan(QWEN_17, QWEN_8, T=16384, device_bytes=80 << 30)
    by = {ln.what: ln.bytes for ln in plan.lines}
    w = QWEN_17.weight_bytes(2) + QWEN_8.weight_bytes(2)
    assert by["peak while sampling"] == w + plan.batch_size * M.sampling_sequence_bytes(QWEN_17, 16384, 2)
    assert by["peak while sampling"] <= 80 << 30 and by["peak while scoring"] <= 80 << 30
    assert plan.fixed_batch_kv_bytes > 80 << 30  # a fixed batch of 64 could not run there
    text = M.format_plan(plan)
    assert "Qwen3-8B" in text and "GiB" in text


def test_scoring_cost_is_linear_in_T_only_through_kv_cache_and_rows():
    a, b = (M.scoring_bytes(QWEN_8, T, 2) for T in (20_000, 40_000))
    per_token = QWEN_8.kv_bytes_per_token(2) + QWEN_8.hidden * 2
    assert b - a == 20_000 * per_token  # no V term grows with T


def test_device_strings_and_auto_dtype():
    assert pick_device("cpu") == "cpu"
    assert resolve_dtype("auto", "cpu") == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"
    for bad in ("gpu", "cuda:x", "CPU"):
        with pytest.raises(ModelError, match="expected 'cpu', 'cuda', 'cuda:N' or 'auto'") as e:
            pick_device(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="dtype 'float8'"):
        resolve_dtype("float8", "cpu")


def test_cuda_device_on_a_machine_without_one_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelError, match="CUDA is not available") as e:
        pick_device("cuda:1")
    assert "\n" not in str(e.value)
    assert resolve_dtype("auto", "auto") == "float32"


@pytest.mark.parametrize("where, value, message", [
    (("student", "device"), "gpu", "student.device"),
    (("student", "device_map"), "everywhere", "student.device_map"),
    (("student", "tensor_parallel_size"), 0, "student.tensor_parallel_size"),
    (("student", "max_model_len"), -1, "student.max_model_len"),
    (("student", "dtype"), "fp8", "student.dtype"),
    (("teachers", "device"), "cuda:a", "teachers[0].device"),
    (("teachers", "device_map"), "any", "teachers[0].device_map"),
    (("sampling", "memory_gib"), -1.0, "sampling.memory_gib"),
])
def test_bad_placement_settings_are_one_line_config_errors(where, value, message):
    d = default_config_dict()
    section, key = where
    if section == "teachers":
        d["teachers"] = [{"name": "t", "model": "teacher-strong", "context": "", key: value}]
    else:
        d[section][key] = value
    with pytest.raises(ConfigError) as e:
        config_from_dict(d)
    assert message in str(e.value) and "\n" not in str(e.value).strip()


def test_a_student_teacher_takes_the_students_placement():
    d = default_config_dict()
    d["teachers"][0]["device"] = "cpu"
    with pytest.raises(ConfigError, match=r"teachers\[0\].device"):
        config_from_dict(d)
    d["teachers"] = [{"name": "t", "model": "teacher-strong", "context": "", "device": "cpu", "dtype": "bfloat16"}]
    cfg = config_from_dict(d)
    assert cfg.teachers[0].device == "cpu" and cfg.student.dtype == "auto" and cfg.sampling.batch_size == 0
