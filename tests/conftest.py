"""Test tiers: unit tests need no model; integration tests use the bundled tiny world or models
they build in tmp dirs; `slow`, `gpu` and `vllm` markers are opt-in (-m slow).

Integration tests that sample take the `backend` fixture, so the same test runs once per rollout
backend: `hf` in the default run, `vllm` under `-m vllm` (`bash .ci/vllm-cpu` builds the env)."""

import importlib.util
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BACKENDS = [
    "hf",
    pytest.param("vllm", marks=[
        pytest.mark.vllm,
        pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (bash .ci/vllm-cpu)"),
    ]),
]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    """The rollout backend under test ("hf" | "vllm"); module-scoped so module fixtures share it."""
    return request.param
