"""A six-token world for integration tests: random tiny Llama models over {<pad>, <s>, </s>, <unk>,
a, b}, saved as Hugging Face folders, plus a one-row task file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gradalign.world import ModelSize, build_tokenizer, new_model


def make_tiny_world(root: Path, *, nan_teacher: bool = False, hidden: int = 16, heads: int = 2) -> Path:
    """`hidden`/`heads` set the head size (vLLM's CPU kernels need a supported one, e.g. 64)."""
    tok = build_tokenizer(chars=("a", "b"), max_length=16)
    for name, seed in (("student", 1), ("teacher", 2)):
        m = new_model(tok, ModelSize(hidden=hidden, layers=1, heads=heads, ffn=2 * hidden, max_positions=16), seed)
        with torch.no_grad():  # sharpen the random logits so probabilities differ across tokens
            m.lm_head.weight.mul_(4.0 * (16 / hidden) ** 0.5)  # same logit scale for any width
            if nan_teacher and name == "teacher":
                m.lm_head.weight[5].fill_(float("nan"))
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    rows = [{"id": "q0", "question": "ab", "answer": "-", "hint": "b"}]
    (root / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
