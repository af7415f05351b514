"""Preflight: every check a run can make before loading model weights.

Owns: checking a validated `RunConfig` against the world outside it — the task file (readable,
UTF-8, non-empty, unique ids, every template field present in every selected row), the grader spec
(importable), the model references (folders exist, configs readable), tokenizer identity between
the student and each teacher (tokenizers only, no weights), the context length (every prompt
must fit the student's max positions, and max_new_tokens after the longest), the device (CUDA
present when `student.device` names it), and a budget large enough for at least one node.
`gradalign validate` and `diagnose` both call `preflight`, so a typo fails in
seconds, before a GPU-hour is spent, and nothing is written. Does not own field-level config checks
(`config`) or loading weights (`models`).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gradalign.config import RunConfig
from gradalign.errors import GradalignError


class PreflightError(GradalignError, ValueError):
    """One line naming the file or field and the fix."""


@dataclass(frozen=True)
class PreflightReport:
    task: object  # tasks.Task, already loaded and checked
    questions: int
    configs: int
    longest_prompt_tokens: int
    max_positions: int | None


def _model_config(source: str) -> dict:
    cfg = Path(source) / "config.json"
    if not cfg.exists():
        return {}
    try:
        return json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PreflightError(f"{cfg}: unreadable model config ({e})") from None


def _max_positions(source: str, is_local: bool) -> int | None:
    if not is_local:
        return None
    data = _model_config(source)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(data.get(key), int):
            return data[key]
    return None


def _check_device(device: str, key: str = "student.device") -> None:
    """`student.device` (or a teacher's, `key`) names a device this machine has (the check
    `models.pick_device` makes at load)."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise PreflightError(f"{key}: {device!r}, but CUDA is not available on this machine; "
                             "use device = \"cpu\" (or \"auto\")")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise PreflightError(f"{key}: {device!r}, but this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")


@contextmanager
def _quiet_length_warning():
    """Silence transformers' "sequence length is longer than the specified maximum" warning while
    prompts are measured: a prompt too long is reported below as one line naming the row."""
    logger = logging.getLogger("transformers.tokenization_utils_base")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def preflight(cfg: RunConfig, *, check_tokenizers: bool = True) -> PreflightReport:
    """Run all pre-load checks; raises PreflightError / TaskError / ModelError / GraderSpecError."""
    from gradalign import models
    from gradalign.graders import check_grader
    from gradalign.selectors import branch_cost
    from gradalign.tasks import encode_prefix, load_task, prefix_options, render

    templates = {"task.prompt": cfg.task.prompt}
    for i, t in enumerate(cfg.teachers):
        templates[f"teachers[{i}].context"] = t.context
    task = load_task(
        name=cfg.task.name, path=cfg.task.path, split=cfg.task.split, limit=cfg.task.limit,
        offset=cfg.task.offset, id_field=cfg.task.id_field, answer_field=cfg.task.answer_field,
        templates=templates,
    )
    check_grader(cfg.task.grader)
    _check_device(cfg.student.device)
    for i, t in enumerate(cfg.teachers):
        if t.device:
            _check_device(t.device, f"teachers[{i}].device")
    if cfg.sampling.backend == "vllm":
        import importlib.util

        from gradalign.sampling.vllm import VLLM_INSTALL_HINT

        if importlib.util.find_spec("vllm") is None:
            raise PreflightError(VLLM_INSTALL_HINT)

    try:
        sref = models.resolve(cfg.student.model, gguf_file=cfg.student.gguf_file, revision=cfg.student.revision)
    except models.ModelError as e:
        raise PreflightError(f"student.model: {e}") from None
    if sref.is_local and not sref.gguf_file and not (Path(sref.source) / "config.json").exists():
        raise PreflightError(f"student.model: {sref.source} has no config.json (not a Hugging Face model folder)")
    if cfg.sampling.backend == "vllm" and sref.is_local and not sref.gguf_file:
        from gradalign.sampling.vllm import vllm_platform, vllm_unsupported_reason

        why = vllm_unsupported_reason(_model_config(sref.source), vllm_platform())
        if why:
            raise PreflightError(f"sampling.backend: {why} (student {cfg.student.model!r})")
    trefs = {}
    for i, t in enumerate(cfg.teachers):
        if t.model != "student":
            try:
                tr = models.resolve(t.model, gguf_file=t.gguf_file)
            except models.ModelError as e:
                raise PreflightError(f"teachers[{i}].model: {e}") from None
            if tr.is_local and not tr.gguf_file and not (Path(tr.source) / "config.json").exists():
                raise PreflightError(f"teachers[{i}].model: {tr.source} has no config.json (not a Hugging Face model folder)")
            trefs[t.name] = tr

    longest, max_pos = 0, None
    if check_tokenizers:
        stok = models.load_tokenizer(sref)
        for name, tr in trefs.items():
            models.check_same_tokenizer(stok, models.load_tokenizer(tr), student_name=cfg.student.model, teacher_name=name)
        where = ("", "")  # (row id, teacher whose context made the longest prompt; "" for no context)
        with _quiet_length_warning():
            for row in task.rows:
                rid = task.row_id(row)
                prompt = render(cfg.task.prompt, row, what="task.prompt", row_id=rid)
                for t in cfg.teachers:
                    ctx = render(t.context, row, what=f"context of teacher {t.name!r}", row_id=rid)
                    n = len(encode_prefix(stok, ctx, prompt, **prefix_options(cfg.task)))
                    if n > longest:
                        longest, where = n, (rid, t.name if ctx else "")
        max_pos = _max_positions(sref.source, sref.is_local)
        if max_pos is not None and longest >= max_pos:
            rid, teacher = where
            what = f"context of teacher {teacher!r} + prompt" if teacher else "prompt"
            raise PreflightError(
                f"task row {rid!r}: {what} is {longest:,} tokens, which leaves no room in the student's {max_pos:,} "
                "positions; shorten it or drop the row"
            )
        if max_pos is not None and longest + cfg.sampling.max_new_tokens > max_pos:
            raise PreflightError(
                f"sampling.max_new_tokens: {cfg.sampling.max_new_tokens} new tokens after prompts of up to {longest} tokens "
                f"(task row {where[0]!r}) exceed the student's {max_pos} positions; lower it to at most {max_pos - longest}"
            )

    b = cfg.branching
    # the cheapest node: the sampled token alone (a node's real candidate count is priced after scoring)
    cheapest = branch_cost(1, 0, b.continuations)  # a one-token continuation from the last position
    if b.budget_continuations and b.budget_continuations < cheapest.continuations:
        raise PreflightError(
            f"branching.budget_continuations: {b.budget_continuations} cannot fit one node "
            f"({cheapest.continuations} continuations = one candidate x M); raise it or lower continuations"
        )
    if b.budget_tokens and b.budget_tokens < cheapest.tokens:
        raise PreflightError(
            f"branching.budget_tokens: {b.budget_tokens} cannot fit one node ({cheapest.tokens} tokens at least); raise it"
        )
    return PreflightReport(task, len(task.rows), len(cfg.teachers), longest, max_pos)
