"""Model references: resolving, loading, fingerprinting, and tokenizer compatibility.

Owns: turning a model reference from a config (a bundled name under `data/models/`, a local folder,
or a Hugging Face model id, optionally with a GGUF file) into a loaded `transformers` model and
tokenizer; content hashes for the manifest; the check that a teacher shares the student's
tokenizer (same vocabulary and ids: tokenizers are compared, never weight-matrix sizes); and the
check that a loaded model's LM head has a row for every tokenizer id (V_head >= V_tok =
len(tokenizer); extra rows are padding); where a model goes (`resolve_dtype`, `pick_device`, a
`device_map` passthrough); and the GGUF conversion cache (`gguf_cache_folder`: a GGUF checkpoint is
dequantised once into a safetensors folder under `cache_dir()`, keyed by the file's identity, and
later loads read that folder; the vLLM sampler reads the same folder). Does not own sampling
(`sampling`) or scoring (`scoring`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from gradalign.errors import GradalignError
from gradalign.tasks import data_dir

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


class ModelError(GradalignError, ValueError):
    """A one-line, user-facing problem with a model reference or tokenizer."""


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from. `source` is the resolved local path or the hub id."""

    ref: str
    source: str
    is_local: bool
    gguf_file: str = ""
    revision: str = ""


@dataclass(frozen=True)
class LoadedModel:
    ref: ModelRef
    model: object  # transformers PreTrainedModel
    tokenizer: object  # transformers PreTrainedTokenizerBase
    content_hash: str
    folder: str = ""  # a GGUF model's converted safetensors folder (the cache), "" otherwise
    dtype: str = ""  # the resolved dtype it was loaded in (never "auto")


def resolve(ref: str, *, gguf_file: str = "", revision: str = "") -> ModelRef:
    """Bundled name -> data/models/<name>; existing folder -> itself; else a hub id.

    A reference that looks like a path (starts with '.', '/', '~' or contains os separators and
    exists nowhere) is an error rather than a hub lookup.
    """
    bundled = data_dir() / "models" / ref
    if ref and "/" not in ref and bundled.is_dir():
        return ModelRef(ref, str(bundled), True, gguf_file, revision)
    p = Path(ref).expanduser()
    if p.is_dir():
        return ModelRef(ref, str(p.resolve()), True, gguf_file, revision)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ModelError(f"model {ref!r}: folder not found")
    if not ref:
        raise ModelError("model: empty reference")
    return ModelRef(ref, ref, False, gguf_file, revision)


def content_hash(ref: ModelRef) -> str:
    """blake2b over the weight/config/tokenizer files of a local model (files > 256 MiB are hashed
    by size plus their first and last 16 MiB, marked 'sampled'); for hub ids, the resolved revision."""
    if not ref.is_local:
        return f"hub:{ref.source}@{ref.revision or 'default'}"
    h = hashlib.blake2b(digest_size=16)
    sampled = False
    root = Path(ref.source)
    for f in sorted(root.iterdir()):
        if not f.is_file() or f.suffix not in (".json", ".safetensors", ".bin", ".gguf", ".model", ".txt"):
            continue
        size = f.stat().st_size
        h.update(f.name.encode() + size.to_bytes(8, "little"))
        with f.open("rb") as fh:
            if size <= 256 << 20:
                h.update(fh.read())
            else:
                sampled = True
                h.update(fh.read(16 << 20))
                fh.seek(size - (16 << 20))
                h.update(fh.read())
    return ("sampled:" if sampled else "") + h.hexdigest()


def _torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ModelError(f"dtype {name!r}: expected one of {', '.join(DTYPES)} (or auto)")
    return getattr(torch, name)


_DEVICE_RE = re.compile(r"cpu|auto|cuda(:\d+)?")


def pick_device(device: str) -> str:
    """A concrete torch device string for a config's `device` (`auto`: CUDA when available, else
    CPU); a device this machine lacks or a malformed string is a one-line `ModelError`."""
    import torch

    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        raise ModelError(f"device {device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r}: CUDA is not available on this machine (use device = \"cpu\")")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ModelError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """A concrete dtype name: `auto` is bfloat16 on a CUDA device, float32 on CPU."""
    if dtype == "auto":
        return "bfloat16" if pick_device(device).startswith("cuda") else "float32"
    _torch_dtype(dtype)
    return dtype


def cache_dir() -> Path:
    """Where gradalign keeps derived files between runs: $GRADALIGN_CACHE, else ~/.cache/gradalign."""
    return Path(os.environ.get("GRADALIGN_CACHE") or Path.home() / ".cache" / "gradalign")


def gguf_path(ref: ModelRef) -> Path | None:
    """The local GGUF file of `ref` (in its folder, or in the hub cache for a hub id), or None."""
    if not ref.gguf_file:
        return None
    if ref.is_local:
        p = Path(ref.source) / ref.gguf_file
        return p if p.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        got = try_to_load_from_cache(ref.source, ref.gguf_file, revision=ref.revision or None)
    except Exception:  # noqa: BLE001 - no hub client or no cache: no conversion cache either
        return None
    return Path(got) if isinstance(got, str) and Path(got).is_file() else None


def gguf_cache_folder(ref: ModelRef, dtype: str) -> Path | None:
    """The conversion-cache folder of a GGUF model in `dtype`, keyed by the file's identity (its
    resolved path, size and modification time, so an edited or replaced file gets a new folder);
    None when `ref` is not a GGUF model or its file is not on this machine."""
    p = gguf_path(ref)
    if p is None:
        return None
    st = p.resolve().stat()
    key = hashlib.blake2b(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}".encode(), digest_size=8).hexdigest()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(ref.gguf_file).stem)[:60]
    return cache_dir() / "gguf" / f"{name}-{key}"


def save_plain(model, folder: Path) -> None:
    """config.json + model.safetensors of a transformers model loaded from GGUF (whose
    `save_pretrained` refuses: the config still names the GGUF quantisation). Tied output weights
    are stored once, under the input embedding's name, as vLLM and transformers expect."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(model.config.to_json_string(use_diff=False))
    cfg.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        out = model.get_output_embeddings()
        state = {k: v for k, v in state.items() if not (out is not None and v.data_ptr() == out.weight.data_ptr() and k.startswith("lm_head"))}
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / "model.safetensors"))


def write_folder_atomically(root: Path, model, tokenizer) -> str:
    """`model` (plain safetensors) + `tokenizer` written to `root` through a temp folder renamed into
    place, so concurrent or killed runs never see half a model; an existing `root` is kept."""
    if (root / "config.json").exists():
        return str(root)
    tmp = root.parent / f".{root.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_plain(model, tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.rename(tmp, root)
    except OSError:  # another run finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(root)


def _cached_folder(ref: ModelRef, dtype: str | None = None) -> Path | None:
    """An existing conversion-cache folder of a GGUF `ref` (in `dtype`, or any dtype), or None."""
    for d in ([dtype] if dtype else list(DTYPES)):
        f = gguf_cache_folder(ref, d)
        if f is None:
            return None
        if (f / "config.json").exists():
            return f
    return None


def load_tokenizer(ref: ModelRef):
    from transformers import AutoTokenizer

    kw = {}
    source = ref.source
    cached = _cached_folder(ref)
    if cached is not None:  # the converted folder holds the same tokenizer, without re-reading the GGUF
        source = str(cached)
    elif ref.gguf_file:
        kw["gguf_file"] = ref.gguf_file
    if ref.revision and cached is None:
        kw["revision"] = ref.revision
    try:
        tok = AutoTokenizer.from_pretrained(source, **kw)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"model {ref.ref!r}: cannot load tokenizer from {ref.source}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load(ref: ModelRef, *, dtype: str = "float32", device: str = "cpu", tokenizer=None, device_map: str = "") -> LoadedModel:
    """Load a causal LM (eval mode) and its tokenizer (or reuse `tokenizer`).

    `dtype` may be `auto` (`resolve_dtype`); the model goes on `device`, or, with `device_map`
    (`auto`, `balanced`, ...), is spread by accelerate over the visible devices. A GGUF model is
    read from its conversion-cache folder when one exists (`gguf_cache_folder`), else dequantised
    by transformers and then written there for the next run."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress belongs to the CLI, not to library loads

    if device_map and device_map not in DEVICE_MAPS:
        raise ModelError(f"device_map {device_map!r}: expected one of {', '.join(DEVICE_MAPS)}")
    dtype = resolve_dtype(dtype, "auto" if device_map else device)  # a device_map places on CUDA when there is one
    kw: dict = {"dtype": _torch_dtype(dtype)}
    if device_map:
        kw["device_map"] = device_map
    source = ref.source
    folder = gguf_cache_folder(ref, dtype)
    cached = folder is not None and (folder / "config.json").exists()
    if cached:
        source = str(folder)
    else:
        if ref.gguf_file:
            kw["gguf_file"] = ref.gguf_file
        if ref.revision:
            kw["revision"] = ref.revision
    tok = tokenizer if tokenizer is not None else load_tokenizer(ref)
    t0 = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kw)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"model {ref.ref!r}: cannot load from {source}: {str(e).splitlines()[0]}") from None
    if ref.gguf_file:
        log.info("%s: %s in %.1f s", ref.gguf_file, "read from the conversion cache" if cached else "dequantised",
                 time.perf_counter() - t0)
    if folder is not None and not cached:
        log.info("writing the dequantised %s to the conversion cache %s", ref.gguf_file, folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        write_folder_atomically(folder, model, tok)
    if not device_map:
        model.to(pick_device(device))
    model.eval()
    return LoadedModel(ref, model, tok, content_hash(ref), str(folder) if folder is not None else "", dtype)


def check_same_tokenizer(student_tok, teacher_tok, *, student_name: str, teacher_name: str) -> None:
    """Teachers must score the student's exact token ids: same vocabulary, ids and special ids."""
    sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
    if sv != tv:
        only_s = len(set(sv) - set(tv))
        only_t = len(set(tv) - set(sv))
        moved = sum(1 for k in set(sv) & set(tv) if sv[k] != tv[k])
        raise ModelError(
            f"teacher {teacher_name!r} does not share the student's tokenizer ({student_name!r}): "
            f"vocab sizes {len(sv)} vs {len(tv)}, {only_s} tokens only in the student, {only_t} only in the "
            f"teacher, {moved} with different ids; gradalign compares distributions token id by token id"
        )
    if student_tok.eos_token_id != teacher_tok.eos_token_id:
        raise ModelError(
            f"teacher {teacher_name!r} and student {student_name!r} use different EOS ids "
            f"({teacher_tok.eos_token_id} vs {student_tok.eos_token_id})"
        )


def check_head_covers_tokenizer(model, tokenizer, *, name: str) -> int:
    """The model's LM-head rows (V_head) must cover the tokenizer's ids 0..len(tokenizer)-1 (V_tok).

    More rows than ids is padding (e.g. Qwen2.5-7B's 152,064 rows for 151,665 ids), allowed: scoring
    and the hf sampler restrict every distribution to the tokenizer's ids. Fewer is an error: the
    model cannot give a probability to ids its head lacks. Returns V_head.
    """
    rows = int(model.get_output_embeddings().weight.shape[0])
    n = len(tokenizer)
    if rows < n:
        raise ModelError(
            f"{name}: its LM head has {rows} rows but the tokenizer has {n} ids; gradalign needs a probability "
            f"for every tokenizer id (was the tokenizer extended without resizing the model?)"
        )
    if rows > n:
        log.info("%s: LM head has %d rows for %d tokenizer ids; the %d padded rows are left out of every distribution",
                 name, rows, n, rows - n)
    return rows


def eos_token_ids(tokenizer, model=None, extra: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Every token id that ends a completion, the tokenizer's EOS first (callers that need one id,
    e.g. padding, keep using it): the tokenizer's `eos_token_id`, then each id of the model's
    `generation_config.eos_token_id` (an int or a list: Qwen3's chat models end a turn with
    `<|im_end|>` as well as `<|endoftext|>`), then `extra` (`sampling.eos_token_ids`), duplicates
    dropped. An id outside the tokenizer (>= len(tokenizer)) is refused: no model could emit it."""
    ids: list[int] = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen is not None:
        ids += [int(i) for i in (gen if isinstance(gen, (list, tuple)) else [gen])]
    ids += [int(i) for i in extra]
    out = tuple(dict.fromkeys(ids))
    if not out:
        raise ModelError("the student's tokenizer has no EOS token and no eos_token_ids are configured (sampling.eos_token_ids)")
    bad = [i for i in out if not 0 <= i < len(tokenizer)]
    if bad:
        raise ModelError(f"sampling.eos_token_ids: id {bad[0]} is outside the tokenizer's {len(tokenizer)} ids")
    return out
