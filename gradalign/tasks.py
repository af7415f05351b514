"""Tasks: loading question rows and rendering prompt/context templates over them.

Owns: finding a task (a bundled name under `data/tasks/` or a `.jsonl`/`.parquet` path), reading
and checking its rows (non-empty, UTF-8, required fields present, unique ids), and strict template
rendering: a row missing a field a template needs is an error, never an empty string (a silently
empty context turns self-distillation into plain distillation). Does not own grading (`graders`)
or tokenisation (`models`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from gradalign.config import template_fields
from gradalign.errors import GradalignError


class TaskError(GradalignError, ValueError):
    """A one-line, user-facing problem with a task file or template."""


def data_dir() -> Path:
    """The bundled `data/` folder: $GRADALIGN_DATA if set, else the repository's `data/`."""
    env = os.environ.get("GRADALIGN_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class Task:
    """Rows of one task split, in file order. `rows` are plain dicts (picklable for graders)."""

    name: str
    source: str
    rows: tuple[dict, ...]
    id_field: str = "id"
    answer_field: str = "answer"

    def row_id(self, row: Mapping[str, Any]) -> str:
        return str(row[self.id_field])


def render(template: str, row: Mapping[str, Any], *, what: str, row_id: str) -> str:
    """Fill `template` from `row`; a missing field raises TaskError naming the row and field."""
    missing = [f for f in template_fields(template) if f not in row or row[f] is None]
    if missing:
        raise TaskError(
            f"row {row_id!r}: {what} template needs field {missing[0]!r}, which the row does not have "
            f"(row fields: {', '.join(sorted(map(str, row)))})"
        )
    return template.format_map(row)


def resolve_task_path(name: str = "", path: str = "", split: str = "test") -> Path:
    if path:
        p = Path(path)
        if not p.exists():
            raise TaskError(f"task.path: file not found: {p}")
        if p.suffix not in (".jsonl", ".parquet"):
            raise TaskError(f"task.path: {p}: expected a .jsonl or .parquet file")
        return p
    folder = data_dir() / "tasks" / name
    if not folder.is_dir():
        known = sorted(d.name for d in (data_dir() / "tasks").glob("*") if d.is_dir())
        raise TaskError(f"task.name: no bundled task {name!r} (bundled: {', '.join(known) or 'none'})")
    for ext in (".jsonl", ".parquet"):
        if (folder / f"{split}{ext}").exists():
            return folder / f"{split}{ext}"
    raise TaskError(f"task.split: bundled task {name!r} has no split {split!r} in {folder}")


def read_rows(path: Path) -> list[dict]:
    """Rows of a .jsonl or .parquet file, with one-line errors naming the file and line."""
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            return pd.read_parquet(path).to_dict(orient="records")
        except Exception as e:  # noqa: BLE001 - surfaced as one line
            raise TaskError(f"{path}: cannot read Parquet: {e}") from None
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise TaskError(f"{path}:{lineno}: each line must be a JSON object")
        rows.append(obj)
    return rows


def load_task(
    *,
    name: str = "",
    path: str = "",
    split: str = "test",
    limit: int = 0,
    offset: int = 0,
    id_field: str = "id",
    answer_field: str = "answer",
    templates: Mapping[str, str] | None = None,
) -> Task:
    """Load and check a task. `templates` maps a label (e.g. "task.prompt",
    "teachers[0].context") to a template that every selected row must be able to fill."""
    p = resolve_task_path(name, path, split)
    rows = read_rows(p)
    if not rows:
        raise TaskError(f"{p}: task file has no rows")
    for i, r in enumerate(rows):
        for f in (id_field, answer_field):
            if f not in r or r[f] is None:
                raise TaskError(f"{p}: row {i + 1} has no {f!r} field (set task.{'id' if f == id_field else 'answer'}_field)")
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        rid = str(r[id_field])
        if rid in seen:
            raise TaskError(f"{p}: duplicate id {rid!r} in rows {seen[rid] + 1} and {i + 1}")
        seen[rid] = i
    rows = rows[offset:]
    if limit:
        rows = rows[:limit]
    if not rows:
        raise TaskError(f"{p}: no rows left after offset={offset}")
    for label, tmpl in (templates or {}).items():
        for r in rows:
            missing = [f for f in template_fields(tmpl) if f not in r or r[f] is None]
            if missing:
                raise TaskError(
                    f"{label}: row {str(r[id_field])!r} of {p} has no field {missing[0]!r} that the template needs"
                )
    return Task(name=name or p.stem, source=str(p), rows=tuple(rows), id_field=id_field, answer_field=answer_field)


def prefix_options(task_cfg) -> dict[str, Any]:
    """`encode_prefix`'s keyword options from a `config.TaskConfig`: chat, system prompt, template
    kwargs. The one place callers get them, so the student and every teacher render alike."""
    return {"chat": task_cfg.chat, "system": task_cfg.system_prompt,
            "template_kwargs": dict(task_cfg.chat_template_kwargs)}


def encode_prefix(tokenizer, context: str, prompt: str, *, chat: bool = False, system: str = "",
                  template_kwargs: Mapping[str, Any] | None = None) -> tuple[int, ...]:
    """Token ids a model sees before the completion: context + prompt.

    Plain: the text context + prompt, tokenised with the tokenizer's special tokens (e.g. BOS).
    Chat: context + prompt as ONE user message, after a system message when `system` is non-empty,
    rendered with the tokenizer's chat template, the generation prompt and `template_kwargs` (extra
    template variables, e.g. enable_thinking=False; the template supplies its own special tokens).
    Either way the completion's ids are appended as ids by the caller, never re-tokenised from text.
    `system` and `template_kwargs` need `chat` (config validation says so in one line).
    """
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise TaskError("task.chat: the student's tokenizer has no chat template; set task.chat = false")
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": context + prompt})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **dict(template_kwargs or {}))
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    if system or template_kwargs:
        raise TaskError("task.system_prompt / task.chat_template_kwargs need task.chat = true")
    return tuple(tokenizer(context + prompt, add_special_tokens=True)["input_ids"])
