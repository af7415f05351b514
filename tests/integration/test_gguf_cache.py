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


def test_gguf_models_load_from_the_conversion_cache_keyed_by_the_files_identity(tmp_path, monkeypatch):
    """A GGUF reference whose cache folder exists loads from it without reading the GGUF (here a
    placeholder file transformers could not read); a changed file (new mtime) misses the cache."""
    import os

    import pytest
    from tiny_world import make_tiny_world
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gradalign import models

    root = make_tiny_world(tmp_path / "w")
    model = AutoModelForCausalLM.from_pretrained(root / "student")
    tok = AutoTokenizer.from_pretrained(root / "student")
    monkeypatch.setenv("GRADALIGN_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "tiny.gguf").write_bytes(b"not really a gguf")
    ref = models.resolve(str(src), gguf_file="tiny.gguf")
    folder = models.gguf_cache_folder(ref, "float32")
    assert folder is not None and folder.name.startswith("tiny-") and models.gguf_cache_folder(ref, "bfloat16") != folder
    folder.parent.mkdir(parents=True)
    models.write_folder_atomically(folder, model, tok)  # what the first load writes after dequantising

    lm = models.load(ref, dtype="auto")
    assert lm.folder == str(folder) and lm.dtype == "float32"
    assert all(torch_equal(p, q) for p, q in zip(model.state_dict().values(), lm.model.state_dict().values()))
    assert models.load_tokenizer(ref).get_vocab() == tok.get_vocab()

    st = (src / "tiny.gguf").stat()
    os.utime(src / "tiny.gguf", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed: a new key
    assert models.gguf_cache_folder(ref, "float32") != folder
    with pytest.raises(models.ModelError, match="tiny.gguf|cannot load"):
        models.load(ref, dtype="float32", tokenizer=tok)  # nothing cached under the new key: dequantise, which fails


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
