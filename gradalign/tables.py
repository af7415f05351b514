"""The one schema owner: typed rows, the manifest, atomic writes, and `load`.

Owns: the schema version; the typed row records of the four run tables (`RolloutRow`, `TokenRow`,
`NodeRow`, `AlignmentRow`) and of the weights file (`WeightRow`), whose fields (with their Arrow
type and description as field metadata) ARE the table columns; the typed `Manifest`; one atomic
writer (`write_table`: temp file + rename, schema version and table name in the Parquet metadata)
that rejects missing and unknown columns; `write_json`; `concat_tables`; and `load(dir)`, which
every reader (reports, notebooks, the CLI) goes through. Does not own computing the rows (the
pipeline stages build them) nor the run-folder layout of shards (`runfolder`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from gradalign.config import LOSSES
from gradalign.errors import GradalignError

log = logging.getLogger(__name__)

SCHEMA_VERSION = "4"  # 4: cos_low/cos_high/cos_se/resolved from the hierarchical posterior (branching.uncertainty), rows at the stop position T (branching.eos_node); 2: nodes.grader_errors / nodes.grader_timeouts; 3: alignment precision (cos_se, cos_low, cos_high, resolved, snr_ideal, norm2_ideal_split, residual_mass, pooling_bound) and parameter-space columns (cos_params...), cos_debiased removed
TABLES = ("rollouts", "tokens", "nodes", "alignment")  # the run tables; "weights" is written by `gradalign weights`


def _col(arrow_type: str, doc: str = ""):
    """A column: its Arrow type name (a `pyarrow` factory, or "bool") and its description."""
    return field(metadata={"type": arrow_type, "doc": doc})


@dataclass(frozen=True)
class RolloutRow:
    """One student rollout (rollouts.parquet)."""

    question_id: str = _col("string", "task row id")
    rollout_id: int = _col("int32", "index of the rollout within its question")
    prompt: str = _col("string", "prompt text the student saw")
    completion: str = _col("string", "decoded completion (EOS excluded)")
    n_tokens: int = _col("int32", "completion length in tokens (EOS excluded); with branching.eos_node, position n_tokens "
                                  "of the other tables is the stop decision (the EOS the rollout ended with)")
    correct: bool = _col("bool", "grader verdict (a truncated rollout is never correct)")
    extracted_answer: str | None = _col("string", "answer the grader extracted (null if none)")
    truncated: bool = _col("bool", "hit max_new_tokens without EOS")
    status: str = _col("string", "ok | timeout | error (grader status)")
    reason: str = _col("string", "grader reason ('truncated; ...' when cut)")


@dataclass(frozen=True)
class TokenRow:
    """One rollout token under one config (tokens.parquet). The scoring stage builds this table
    column-wise (`{column: list}`) for speed; the writer checks the columns against these fields."""

    question_id: str = _col("string", "")
    rollout_id: int = _col("int32", "")
    config: str = _col("string", "teacher/context config name")
    position: int = _col("int32", "completion position t (node = prompt + y_<t); with branching.eos_node, t = n_tokens "
                                  "is the EOS a finished rollout ended with (the stop decision)")
    token_id: int = _col("int32", "sampled token y_t (at t = n_tokens: the EOS id)")
    token_text: str = _col("string", "decoded y_t")
    student_logprob: float = _col("float32", "log p(y_t)")
    student_entropy: float = _col("float32", "H(p) in nats")
    teacher_logprob: float = _col("float32", "log q(y_t)")
    teacher_entropy: float = _col("float32", "H(q) in nats")
    kl_pq: float = _col("float32", "KL(p||q) (reverse KL, the OPD direction)")
    kl_qp: float = _col("float32", "KL(q||p) (forward KL)")
    jsd: float = _col("float32", "generalized JSD with the configured beta")
    dist_cos: float = _col("float32", "cosine between the p and q probability vectors")
    branched: bool = _col("bool", "position was a branched node")


@dataclass(frozen=True)
class NodeRow:
    """One candidate (or the residual bucket) at one branched node (nodes.parquet)."""

    question_id: str = _col("string", "")
    rollout_id: int = _col("int32", "")
    position: int = _col("int32", "node position t, as in the tokens table (t = n_tokens: the stop node)")
    candidate_id: int = _col("int32", "candidate token id (-1 for the residual bucket)")
    candidate_text: str = _col("string", "")
    source: str = _col("string", "sampled | student_topk | teacher_topk | coverage | residual")
    source_config: str = _col("string", "config that proposed a teacher_topk candidate")
    student_prob: float = _col("float64", "p(candidate); residual: mass outside the candidate set")
    success: float = _col("float64", "S_k: success rate of continuations after the candidate; for the residual row "
                                     "the bucket's p-weighted success (with branching.residual_per_token, its drawn tokens at "
                                     "their own rates and the rest at successes / n), so V = sum of student_prob x success")
    n: int = _col("int32", "graded continuations")
    successes: int = _col("int32", "")
    truncated: int = _col("int32", "continuations cut by max_new_tokens (counted as failures)")
    grader_errors: int = _col("int32", "continuations whose grader raised or failed (counted as failures)")
    grader_timeouts: int = _col("int32", "continuations whose grader timed out (counted as failures)")
    ci_low: float = _col("float64", "Wilson 95% interval")
    ci_high: float = _col("float64", "")
    selector: str = _col("string", "why the node was chosen")


@dataclass(frozen=True)
class AlignmentRow:
    """One branched node x config x loss (alignment.parquet)."""

    question_id: str = _col("string", "")
    rollout_id: int = _col("int32", "")
    position: int = _col("int32", "node position t, as in the tokens table (t = n_tokens: the stop node)")
    token_id: int = _col("int32", "sampled token at the node (the stop node: the EOS id the rollout ended with)")
    token_text: str = _col("string", "")
    correct: bool = _col("bool", "the rollout's verdict")
    config: str = _col("string", "")
    loss: str = _col("string", " | ".join(LOSSES))
    cos: float = _col("float64", "cosine(ideal gradient, distillation descent direction), full vocabulary")
    cos_candidates: float = _col("float64", "same, restricted to the candidate set")
    norm_ideal: float = _col("float64", "||p (S - V)||")
    norm_distill: float = _col("float64", "||d||")
    teacher_advantage: float = _col("float64", "sum q S - sum p S")
    value: float = _col("float64", "V = sum p S at the node")
    reason: str = _col("string", "why a cosine is NaN, and grader faults at the node (e.g. 'grader_errors:3/16'); "
                                 "'' when all are defined and every continuation was graded")
    cos_se: float = _col("float64", "standard deviation of cos over the node's replicates (branching.uncertainty: "
                                    "posterior draws or bootstrap; gradalign.precision)")
    cos_low: float = _col("float64", "95% interval for the exact cos, low end (2.5% quantile of the replicates' cosines, "
                                     "in [-1, 1])")
    cos_high: float = _col("float64", "95% interval for the exact cos, high end (97.5% quantile)")
    resolved: bool = _col("bool", "the sign of cos is determined at 95%: at least 97.5% of the replicates give <g*, d> "
                                  "the estimate's sign")
    snr_ideal: float = _col("float64", "||g*||^2 / noise - 1, noise = mean over replicates of ||g*_b - g*||^2 (their "
                                       "spread around the estimate); <= 0: g* is indistinguishable from its noise")
    norm2_ideal_split: float = _col("float64", "<g*_A, g*_B> from two independent halves of the continuations: "
                                               "unbiased for ||E g*||^2, may be negative (analysis.split_half_alignment)")
    residual_mass: float = _col("float64", "student mass whose success is the pooled residual rate (outside the candidates; "
                                           "with branching.residual_per_token, outside the tokens drawn too)")
    pooling_bound: float = _col("float64", "upper bound on ||delta g*|| from pooling the tokens outside the candidates "
                                           "into one success rate (units of norm_ideal)")
    # parameter space (alignment.space has "params"; NaN otherwise), `gradalign.param_space`
    cos_params: float = _col("float64", "cos(J^T g*, J^T d): the cosine of the parameter gradients over "
                                        "alignment.scope (J = d logits / d parameters at the node)")
    cos_params_se: float = _col("float64", "standard deviation of cos_params over bootstrap replicates of S "
                                           "(the uncertainty of g* propagated: the replicates behind cos_se, branching.bootstrap_replicates)")
    cos_params_sketch_se: float = _col("float64", "(1 - c^2)/sqrt(k) of the sketch method; NaN for the exact one")
    norm_ideal_params: float = _col("float64", "||J^T g*|| w.r.t. the raw logits (includes 1/temperature)")
    norm_distill_params: float = _col("float64", "||J^T d|| w.r.t. the raw logits")


@dataclass(frozen=True)
class WeightRow:
    """One completion token's loss weight for an OPD trainer (`gradalign weights`)."""

    question_id: str = _col("string", "")
    rollout_id: int = _col("int32", "")
    position: int = _col("int32", "completion position (0 = first generated token)")
    weight: float = _col("float32", "multiply the trainer's per-token loss by this")


ROW_TYPES: dict[str, type] = {
    "rollouts": RolloutRow, "tokens": TokenRow, "nodes": NodeRow, "alignment": AlignmentRow, "weights": WeightRow,
}

# name -> ((column, arrow type name, description), ...): derived from the row records above.
COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    name: tuple((f.name, f.metadata["type"], f.metadata["doc"]) for f in dataclasses.fields(rt))
    for name, rt in ROW_TYPES.items()
}


class RunIncomplete(GradalignError, RuntimeError):
    """The folder is not a complete run of this schema (no manifest, a missing table, another
    schema version, or a file that does not parse)."""


class RunFolderError(GradalignError, FileExistsError):
    """The output folder cannot take this run (not empty, or made with another config)."""


class SchemaMismatch(ValueError):
    """Rows handed to the writer do not match the table's columns (a bug, not a user error)."""


@dataclass(frozen=True)
class Manifest(Mapping):
    """manifest.json, written last: its presence marks a complete run.

    Also a read-only `Mapping` of its fields (`m["faults"]`, `m.get("config")`, `dict(m)`), for
    code written against the earlier plain-dict manifest; new code reads attributes, and
    `to_dict()` gives the JSON-ready dict.
    """

    schema_version: str  # SCHEMA_VERSION of the tables
    complete: bool  # always True: the manifest is written only when every shard is done
    gradalign_version: str | None  # == versions["gradalign"], kept at top level for quick reading
    versions: dict  # python and package versions (`package_versions`)
    git_commit: str | None  # commit of the gradalign checkout, when run from one
    created: str  # UTC time the manifest was written (ISO 8601)
    config_fingerprint: str  # hash of the resolved config: resume only continues the same fingerprint
    config: dict  # the resolved config (`RunConfig.to_dict`)
    config_source: str  # where the config came from (file path or "<dict>")
    models: dict  # {"student": {ref, hash}, "teachers": {name: {model, hash, context}}}
    seeds: dict  # {"run": seed, "derivation": how per-item seeds derive from stable ids}
    task: dict  # {"source": task file, "questions": count}
    row_counts: dict  # table name -> rows
    continuations: int  # continuations sampled for branches (all rounds)
    shards: dict  # {"total", "resumed", "size", "executor", "workers": {worker: {shards, seconds}}, "generated_tokens": {stage: n}}
    selection: list  # per rollout: nodes chosen, nodes dropped by the budget, tokens/continuations spent
    teacher_prefix_hashes: dict  # "question|config" -> hash of the teacher's token prefix
    grader: dict  # {"spec", hits, misses, errors, timeouts, ...} (`graders.GraderStats` of this process)
    faults: dict  # runtime faults recorded per row (never a crash), by kind; grader_* over every graded call
    timings_s: dict  # seconds per stage, summed over shards, plus load and total
    columns: dict  # table name -> column names

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "manifest") -> Manifest:
        """Read a manifest dict: every field must be there; keys this version does not know
        (added by a user or a newer gradalign of the same schema) are left out, with a log line."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise RunIncomplete(f"{source}: not a complete gradalign manifest (missing {', '.join(missing)}); "
                                "rerun `gradalign diagnose ... --resume` to rewrite it")
        unknown = [k for k in d if k not in names]
        if unknown:
            log.info("%s: keys this gradalign does not read: %s", source, ", ".join(map(str, unknown)))
        return cls(**{n: d[n] for n in names})

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


@dataclass(frozen=True)
class Tables:
    """The four tables of a run as pandas DataFrames, plus its manifest (a `Manifest` for one run;
    a plain mapping {"runs": [...], "run_names": [...]} for runs combined by `analysis`)."""

    rollouts: Any
    tokens: Any
    nodes: Any
    alignment: Any
    manifest: Any


def package_versions() -> dict:
    """Python and the versions of the packages a result depends on (the one place they are read)."""
    import importlib.metadata as md
    import platform

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("gradalign", "torch", "transformers", "numpy", "pandas", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def arrow_schema(name: str):
    import pyarrow as pa

    return pa.schema([pa.field(c, pa.bool_() if t == "bool" else getattr(pa, t)()) for c, t, _ in COLUMNS[name]])


def _columns_of(name: str, rows) -> dict[str, list]:
    """Rows (a sequence of the table's row records, or a {column: list} mapping) as columns,
    refusing missing, unknown or ragged columns and rows of another record type."""
    names = [c for c, _, _ in COLUMNS[name]]
    if isinstance(rows, Mapping):
        missing = [c for c in names if c not in rows]
        unknown = [c for c in rows if c not in names]
        if missing or unknown:
            raise SchemaMismatch(f"{name}: missing columns {missing}, unknown columns {unknown}")
        lengths = {len(rows[c]) for c in names}
        if len(lengths) > 1:
            raise SchemaMismatch(f"{name}: columns of different lengths {sorted(lengths)}")
        return {c: list(rows[c]) for c in names}
    rt = ROW_TYPES[name]
    rows = list(rows)
    bad = next((r for r in rows if type(r) is not rt), None)
    if bad is not None:
        raise SchemaMismatch(f"{name}: expected {rt.__name__} rows, got {type(bad).__name__}")
    return {c: [getattr(r, c) for r in rows] for c in names}


def _write_parquet(name: str, table, path: Path, meta: Mapping[str, str] | None) -> None:
    """Stamp the schema version, table name and `meta` (as gradalign.<key>) into the Parquet
    metadata and write atomically (temp file in the same folder, then rename)."""
    import pyarrow.parquet as pq

    md = {b"gradalign.schema_version": SCHEMA_VERSION.encode(), b"gradalign.table": name.encode()}
    for k, v in (meta or {}).items():
        md[f"gradalign.{k}".encode()] = str(v).encode()
    table = table.replace_schema_metadata(md)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table(name: str, rows: Sequence[Any] | Mapping[str, Sequence], path: Path, meta: Mapping[str, str] | None = None) -> int:
    """Write one table (row records, or {column: list}) as Parquet, atomically. Returns its rows."""
    import pyarrow as pa

    table = pa.Table.from_pydict(_columns_of(name, rows), schema=arrow_schema(name))
    _write_parquet(name, table, Path(path), meta)
    return table.num_rows


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically (temp file + rename). A `Manifest` is written as its dict."""
    if isinstance(obj, Manifest):
        obj = obj.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def concat_tables(name: str, paths: Sequence[Path], out: Path, meta: Mapping[str, str] | None = None) -> int:
    """Concatenate shard files of one table into `out` (atomic), streaming: one shard in memory at a
    time, so a 10M-row tokens table is never held whole. Returns the row count."""
    import pyarrow.parquet as pq

    schema = arrow_schema(name)
    if not paths:
        _write_parquet(name, schema.empty_table(), Path(out), meta)
        return 0
    md = {b"gradalign.schema_version": SCHEMA_VERSION.encode(), b"gradalign.table": name.encode()}
    for k, v in (meta or {}).items():
        md[f"gradalign.{k}".encode()] = str(v).encode()
    schema = schema.with_metadata(md)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    n = 0
    try:
        with pq.ParquetWriter(tmp, schema) as w:
            for p in paths:
                t = pq.read_table(p).cast(schema)
                w.write_table(t)
                n += t.num_rows
                del t
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def read_manifest(run_dir: str | os.PathLike) -> Manifest:
    """The typed manifest of a finished run folder."""
    p = Path(run_dir) / "manifest.json"
    if not p.exists():
        raise RunIncomplete(f"{Path(run_dir)}: no manifest.json; the run is incomplete or not a gradalign run")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunIncomplete(f"{p}: not valid JSON ({e}); rerun `gradalign diagnose ... --resume` to rewrite it") from None
    if not isinstance(d, dict):
        raise RunIncomplete(f"{p}: expected a JSON object")
    if str(d.get("schema_version")) != SCHEMA_VERSION:
        raise RunIncomplete(f"{p}: schema version {d.get('schema_version')!r}, this gradalign reads {SCHEMA_VERSION}")
    return Manifest.from_dict(d, source=str(p))


CATEGORICAL = {"tokens": ("question_id", "config", "token_text")}
"""String columns `load` returns as pandas categoricals (dictionary-encoded in Parquet as well): a
10M-row tokens table repeats a few configs, questions and token strings millions of times."""


def _check_version(path: Path, schema) -> None:
    version = (schema.metadata or {}).get(b"gradalign.schema_version", b"?").decode()
    if version != SCHEMA_VERSION:
        raise RunIncomplete(f"{path}: schema version {version}, this gradalign reads {SCHEMA_VERSION}")


def _read_by_column(path: Path, cols: list[str] | None, cats: list[str]):
    """One Parquet file into a DataFrame one column at a time (footer parsed once), each column's
    Arrow buffers freed and handed back before the next is read: the peak is the DataFrame plus
    one column, where a whole-table read holds every column's decoded pages at once (on a 10M-row
    tokens table of 14,793 row groups: 859 vs 1,860 MiB peak RSS, bench/RESULTS.md)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path, read_dictionary=cats or None)
    _check_version(path, f.schema_arrow)
    names = f.schema_arrow.names if cols is None else cols
    missing = [c for c in names if c not in f.schema_arrow.names]
    if missing:
        raise GradalignError(f"{path}: no column(s) {', '.join(missing)}; columns: {', '.join(f.schema_arrow.names)}")
    out = {}
    for c in names:
        t = f.read(columns=[c], use_threads=False)
        out[c] = t.to_pandas(self_destruct=True, split_blocks=True)[c]
        del t
        pa.default_memory_pool().release_unused()
    return pd.DataFrame(out, copy=False) if out else pd.DataFrame(index=pd.RangeIndex(f.metadata.num_rows))


def load(run_dir: str | os.PathLike, *, allow_incomplete: bool = False,
         columns: Mapping[str, Sequence[str]] | None = None, filters: Mapping[str, Any] | None = None) -> Tables:
    """Read a run folder into DataFrames. Raises RunIncomplete if the manifest is missing.

    For large runs: `columns` {table: [column, ...]} reads only those columns of a table (others
    are absent from its DataFrame); `filters` {table: pyarrow filter} (an expression or DNF list,
    e.g. `{"tokens": [("branched", "==", True)]}`) reads only matching rows. The tokens table's
    repetitive strings arrive as categoricals (`CATEGORICAL`). Without a filter a table is read one
    column at a time (`_read_by_column`), so the peak is about the DataFrame plus one column; with a
    filter, whole through pyarrow's dataset reader (then converted column by column with Arrow's
    buffers released as it goes). Measured on a 10M-row tokens table in bench/RESULTS.md,
    "tokens.parquet at 10M rows"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = Path(run_dir)
    manifest: Any = read_manifest(d) if (d / "manifest.json").exists() or not allow_incomplete else {}
    frames = {}
    for name in TABLES:
        p = d / f"{name}.parquet"
        if not p.exists():
            raise RunIncomplete(f"{p}: missing table; rerun `gradalign diagnose ... --resume` to rewrite it")
        cols = None if columns is None or name not in columns else list(columns[name])
        cats = [c for c in CATEGORICAL.get(name, ()) if cols is None or c in cols]
        try:
            if (filters or {}).get(name) is None:
                frames[name] = _read_by_column(p, cols, cats)
                continue
            t = pq.read_table(p, columns=cols, filters=filters[name], read_dictionary=cats or None)
        except (pa.ArrowInvalid, OSError) as e:
            raise RunIncomplete(f"{p}: not a readable Parquet file ({str(e).splitlines()[0]}); "
                                "rerun `gradalign diagnose ... --resume` to rewrite it") from None
        _check_version(p, t.schema)
        frames[name] = t.to_pandas(self_destruct=True, split_blocks=True)
        del t
        pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed read buffers: hand them back
    return Tables(manifest=manifest, **frames)
