"""Model references: resolving, loading, fingerprinting, and tokenizer compatibility.

Owns: turning a model reference from a config (a bundled name under `data/models/`, a local folder,
or a Hugging Face model id, optionally with a GGUF file) into a loaded `transformers` model and
tokenizer; content hashes for the manifest; the check that a teacher shares the student's
tokenizer (same vocabulary and ids: tokenizers are compared, never weight-matrix sizes); and the
check that a loaded model's LM head has a row for every tokenizer id (V_head >= V_tok =
len(tokenizer); extra rows are padding). Does not own sampling (`sampling`) or scoring (`scoring`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from gradalign.errors import GradalignError
from gradalign.tasks import data_dir

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


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
        raise ModelError(f"dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r}: CUDA is not available on this machine (use device = \"cpu\")")
    return device


def load_tokenizer(ref: ModelRef):
    from transformers import AutoTokenizer

    kw = {}
    if ref.gguf_file:
        kw["gguf_file"] = ref.gguf_file
    if ref.revision:
        kw["revision"] = ref.revision
    try:
        tok = AutoTokenizer.from_pretrained(ref.source, **kw)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"model {ref.ref!r}: cannot load tokenizer from {ref.source}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load(ref: ModelRef, *, dtype: str = "float32", device: str = "cpu", tokenizer=None) -> LoadedModel:
    """Load a causal LM (eval mode, on `device`) and its tokenizer (or reuse `tokenizer`)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress belongs to the CLI, not to library loads

    kw = {"dtype": _torch_dtype(dtype)}
    if ref.gguf_file:
        kw["gguf_file"] = ref.gguf_file
    if ref.revision:
        kw["revision"] = ref.revision
    tok = tokenizer if tokenizer is not None else load_tokenizer(ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.source, **kw)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"model {ref.ref!r}: cannot load from {ref.source}: {str(e).splitlines()[0]}") from None
    model.to(pick_device(device))
    model.eval()
    return LoadedModel(ref, model, tok, content_hash(ref))


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
