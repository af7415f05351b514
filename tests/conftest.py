"""Test tiers: unit tests need no model; integration tests use the bundled tiny world or models
they build in tmp dirs; `slow`, `gpu` and `vllm` markers are opt-in (-m slow)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
