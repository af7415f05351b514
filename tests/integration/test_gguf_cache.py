"""Integration tier: a GGUF student becomes a safetensors folder vLLM reads, once and atomically."""

from __future__ import annotations

from pathlib import Path


def test_gguf_as_folder_writes_once_and_atomically(tmp_path, monkeypatch):
    from tiny_world import make_tiny_world
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gradalign.sampling.vllm import gguf_as_folder

    root = make_tiny_world(tmp_path / "w")
    model = AutoModelForCausalLM.from_pretrained(root / "student")
    tok = AutoTokenizer.from_pretrained(root / "student")
    monkeypatch.setenv("GRADALIGN_CACHE", str(tmp_path / "cache"))
    kw = dict(content_hash="abc", gguf_file="My Model.Q4_1.gguf", dtype="float32")
    a = gguf_as_folder(model, tok, **kw)
    assert "My_Model.Q4_1-" in a and (tmp_path / "cache" / "gguf") in Path(a).parents
    again = AutoModelForCausalLM.from_pretrained(a)
    assert all((p == q).all() for p, q in zip(model.state_dict().values(), again.state_dict().values()))
    mtime = (tmp_path / "cache" / "gguf").stat().st_mtime_ns
    assert gguf_as_folder(model, tok, **kw) == a  # reused, not rewritten
    assert (tmp_path / "cache" / "gguf").stat().st_mtime_ns == mtime
    assert gguf_as_folder(model, tok, **{**kw, "dtype": "bfloat16"}) != a  # a different key
    assert not [p for p in (tmp_path / "cache" / "gguf").iterdir() if p.name.startswith(".")]  # no temp left
