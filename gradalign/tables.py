"""Output tables: schemas, atomic Parquet writes, the manifest, and `load`.

Owns: the column lists and dtypes of the four long-format tables (rollouts, tokens, nodes,
alignment), writing them with the schema version in the Parquet file metadata via
write-to-temp-then-rename, the manifest written last (its presence marks a complete run), and
`load(dir)` which every reader (reports, notebooks) goes through. Does not own computing the rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from gradalign.errors import GradalignError

SCHEMA_VERSION = "1"
TABLES = ("rollouts", "tokens", "nodes", "alignment")

# name -> (column, pyarrow type name, description)
COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "rollouts": (
        ("question_id", "string", "task row id"),
        ("rollout_id", "int32", "index of the rollout within its question"),
        ("prompt", "string", "prompt text the student saw"),
        ("completion", "string", "decoded completion (EOS excluded)"),
        ("n_tokens", "int32", "completion length in tokens"),
        ("correct", "bool", "grader verdict"),
        ("extracted_answer", "string", "answer the grader extracted (null if none)"),
        ("truncated", "bool", "hit max_new_tokens without EOS"),
        ("status", "string", "ok | timeout | error (grader status)"),
        ("reason", "string", "grader reason"),
    ),
    "tokens": (
        ("question_id", "string", ""),
        ("rollout_id", "int32", ""),
        ("config", "string", "teacher/context config name"),
        ("position", "int32", "completion position t (node = prompt + y_<t)"),
        ("token_id", "int32", "sampled token y_t"),
        ("token_text", "string", "decoded y_t"),
        ("student_logprob", "float32", "log p(y_t)"),
        ("student_entropy", "float32", "H(p) in nats"),
        ("teacher_logprob", "float32", "log q(y_t)"),
        ("teacher_entropy", "float32", "H(q) in nats"),
        ("kl_pq", "float32", "KL(p||q) (reverse KL, the OPD direction)"),
        ("kl_qp", "float32", "KL(q||p) (forward KL)"),
        ("jsd", "float32", "generalized JSD with the configured beta"),
        ("dist_cos", "float32", "cosine between the p and q probability vectors"),
        ("branched", "bool", "position was a branched node"),
    ),
    "nodes": (
        ("question_id", "string", ""),
        ("rollout_id", "int32", ""),
        ("position", "int32", ""),
        ("candidate_id", "int32", "candidate token id (-1 for the residual bucket)"),
        ("candidate_text", "string", ""),
        ("source", "string", "sampled | student_topk | teacher_topk | coverage | residual"),
        ("source_config", "string", "config that proposed a teacher_topk candidate"),
        ("student_prob", "float64", "p(candidate); residual: mass outside the candidate set"),
        ("success", "float64", "S_k: success rate of continuations after the candidate"),
        ("n", "int32", "graded continuations"),
        ("successes", "int32", ""),
        ("truncated", "int32", "continuations cut by max_new_tokens (counted as failures)"),
        ("ci_low", "float64", "Wilson 95% interval"),
        ("ci_high", "float64", ""),
        ("selector", "string", "why the node was chosen"),
    ),
    "alignment": (
        ("question_id", "string", ""),
        ("rollout_id", "int32", ""),
        ("position", "int32", ""),
        ("token_id", "int32", "sampled token at the node"),
        ("token_text", "string", ""),
        ("correct", "bool", "the rollout's verdict"),
        ("config", "string", ""),
        ("loss", "string", "reverse_kl | forward_kl | jsd | sampled_token"),
        ("cos", "float64", "cosine(ideal gradient, distillation descent direction), full vocabulary"),
        ("cos_candidates", "float64", "same, restricted to the candidate set"),
        ("cos_debiased", "float64", "split-half noise-corrected cosine (may exceed 1 in magnitude)"),
        ("norm_ideal", "float64", "||p (S - V)||"),
        ("norm_distill", "float64", "||d||"),
        ("teacher_advantage", "float64", "sum q S - sum p S"),
        ("value", "float64", "V = sum p S at the node"),
        ("reason", "string", "why a cosine is NaN ('' when all are defined)"),
    ),
}


class RunIncomplete(GradalignError, RuntimeError):
    """The folder has no manifest: the run did not finish (or is not a gradalign run)."""


class RunFolderError(GradalignError, FileExistsError):
    """The output folder cannot take this run (not empty, or made with another config)."""


@dataclass(frozen=True)
class Tables:
    """The four tables of a run as pandas DataFrames, plus its manifest."""

    rollouts: Any
    tokens: Any
    nodes: Any
    alignment: Any
    manifest: dict


def arrow_schema(name: str):
    import pyarrow as pa

    return pa.schema([pa.field(c, pa.bool_() if t == "bool" else getattr(pa, t)()) for c, t, _ in COLUMNS[name]])


def write_table(name: str, rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence], path: Path, meta: Mapping[str, str] | None = None) -> None:
    """Write rows (list of dicts, or dict of columns) as Parquet, atomically (temp + rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(name)
    if isinstance(rows, Mapping):
        table = pa.Table.from_pydict({c: list(rows.get(c, [])) for c in schema.names}, schema=schema)
    else:
        table = pa.Table.from_pylist(list(rows), schema=schema)
    md = {b"gradalign.schema_version": SCHEMA_VERSION.encode(), b"gradalign.table": name.encode()}
    for k, v in (meta or {}).items():
        md[f"gradalign.{k}".encode()] = str(v).encode()
    table = table.replace_schema_metadata(md)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def concat_tables(name: str, paths: Sequence[Path], out: Path, meta: Mapping[str, str] | None = None) -> int:
    """Concatenate shard files of one table into `out` (atomic). Returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(name)
    parts = [pq.read_table(p).cast(schema) for p in paths] or [schema.empty_table()]
    table = pa.concat_tables(parts)
    md = {b"gradalign.schema_version": SCHEMA_VERSION.encode(), b"gradalign.table": name.encode()}
    for k, v in (meta or {}).items():
        md[f"gradalign.{k}".encode()] = str(v).encode()
    table = table.replace_schema_metadata(md)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return table.num_rows


def load(run_dir: str | os.PathLike, *, allow_incomplete: bool = False) -> Tables:
    """Read a run folder into DataFrames. Raises RunIncomplete if the manifest is missing."""
    import pyarrow.parquet as pq

    d = Path(run_dir)
    mpath = d / "manifest.json"
    if not mpath.exists() and not allow_incomplete:
        raise RunIncomplete(f"{d}: no manifest.json; the run is incomplete or not a gradalign run")
    manifest = json.loads(mpath.read_text()) if mpath.exists() else {}
    frames = {}
    for name in TABLES:
        p = d / f"{name}.parquet"
        if not p.exists():
            raise RunIncomplete(f"{p}: missing table")
        t = pq.read_table(p)
        version = (t.schema.metadata or {}).get(b"gradalign.schema_version", b"?").decode()
        if version != SCHEMA_VERSION:
            raise RunIncomplete(f"{p}: schema version {version}, this gradalign reads {SCHEMA_VERSION}")
        frames[name] = t.to_pandas()
    return Tables(manifest=manifest, **frames)
