"""The embedded world's models: tiny Llama configs, head widening for export, and saving.

Owns: `ModelSize`, `new_model` (a seeded, freshly initialised `LlamaForCausalLM` sized to the
tokenizer), `widen_heads` (the same function with zero-padded attention heads, so vLLM's CPU kernels
accept the head size) and `save_model`. Does NOT own training (`world.training`), which checkpoint
becomes which model (`world.checkpoints`, `world.builder`) or the tokenizer (`world.tokenizer`).
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSize:
    hidden: int = 96
    layers: int = 3
    heads: int = 4
    ffn: int = 256
    max_positions: int = 320


def new_model(tokenizer, size: ModelSize, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.ffn,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=size.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
    )
    return LlamaForCausalLM(cfg)


def widen_heads(model, head_dim: int):
    """The same Llama function with attention heads zero-padded from d to `head_dim` = D dims.

    Exact up to float rounding: per head, q/k/v rows (and o_proj columns) move to the new layout
    with zeros in the added dims, which contribute nothing to q.k or to o_proj's input. Two
    things keep the rest unchanged: q is scaled by sqrt(D/d), so q.k / sqrt(D) stays q.k / sqrt(d);
    and RoPE's base becomes base^(D/d), so the new frequencies base'^(-2i/D) equal the old
    base^(-2i/d) for the first d/2 pairs; HF rotates dim j with j + D/2, so old dims j < d/2 stay
    at j and old dims d/2 + j move to D/2 + j. Returns `model` itself when d >= D.
    """
    import torch
    from transformers import LlamaForCausalLM

    cfg = model.config
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    if d >= head_dim:
        return model
    if d % 2 or head_dim % 2:
        raise ValueError(f"head sizes must be even (got {d} -> {head_dim})")
    D, half, nhalf = head_dim, d // 2, head_dim // 2
    to = torch.tensor([j if j < half else nhalf + j - half for j in range(d)])
    new_cfg = copy.deepcopy(cfg)
    new_cfg.head_dim = D
    rope = dict(getattr(cfg, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"widen_heads handles default RoPE only (got {rope.get('rope_type')})")
    rope["rope_theta"] = float(rope["rope_theta"]) ** (D / d)
    new_cfg.rope_parameters = rope

    def rows(w, heads, scale=1.0):  # [heads * d, in] -> [heads * D, in]
        out = torch.zeros(heads, D, *w.shape[1:], dtype=w.dtype)
        out[:, to] = w.reshape(heads, d, *w.shape[1:]) * scale
        return out.reshape(heads * D, *w.shape[1:])

    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if k.endswith("self_attn.q_proj.weight") or k.endswith("self_attn.q_proj.bias"):
            v = rows(v, H, (D / d) ** 0.5)
        elif k.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias")):
            v = rows(v, Hkv)
        elif k.endswith("self_attn.o_proj.weight"):
            v = rows(v.T, H).T.contiguous()
        state[k] = v
    wide = LlamaForCausalLM(new_cfg)
    wide.load_state_dict(state)
    return wide.eval()


def save_model(model, tokenizer, path: Path, head_dim: int = 0) -> None:
    """Write `model` (heads widened to `head_dim` when set) and `tokenizer` to a fresh folder `path`."""
    if path.exists():
        shutil.rmtree(path)
    if head_dim:
        model = widen_heads(model, head_dim)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
