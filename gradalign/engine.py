"""The run: shards of questions through the pipeline, written as they finish, the manifest last.

Owns: `diagnose` (load once, then for each shard of questions run the pipeline stages
(`gradalign.pipeline`: rollouts -> selection -> scoring -> branching -> alignment), write the
shard's four tables atomically, then concatenate them and write the manifest last), resume (finished
shards of a run with the same config fingerprint are kept), the config fingerprint, and the
manifest's contents. Does not own any stage's work (`gradalign.pipeline`), the table schemas and
writers (`gradalign.tables`), or input checks (`gradalign.preflight`, run inside `load_resources`).

Seeds derive from the run seed and stable ids (question id, rollout index, position, candidate
token, continuation index), never from batch order, so shards and resume give the same numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from gradalign.config import STUDENT_MODEL, RunConfig
from gradalign.pipeline import (
    Resources,
    align,
    load_resources,
    plan_branches,
    run_branches,
    sample_rollouts,
    score_rollouts,
    select_nodes,
)
from gradalign.tables import (
    COLUMNS,
    SCHEMA_VERSION,
    TABLES,
    Manifest,
    RunFolderError,
    concat_tables,
    package_versions,
    write_json,
    write_table,
)

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class Run:
    """A finished run folder and its manifest. `tables()` reads it through `gradalign.load`."""

    out: Path
    manifest: Manifest

    def tables(self):
        from gradalign.tables import load

        return load(self.out)


@dataclass(frozen=True)
class ShardResult:
    """One shard's rows for the four tables, and what the manifest sums over shards."""

    tables: dict  # table name -> row records (tokens: {column: list})
    timings: dict  # stage -> seconds
    continuations: int  # branch continuations sampled
    prefix_hashes: dict  # "question|config" -> teacher prefix hash
    selection: list  # per rollout: nodes, dropped, spent tokens and continuations


def config_fingerprint(cfg: RunConfig) -> str:
    """Hash of the resolved config: resume continues only a run with the same fingerprint."""
    return hashlib.blake2b(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def process_shard(res: Resources, rows: Sequence[dict], progress: Progress | None = None) -> ShardResult:
    """Every pipeline stage for one shard of questions (see `gradalign.pipeline`)."""
    timings: dict[str, float] = {}

    def timed(stage: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0
        return out

    rollouts = timed("rollouts", sample_rollouts, res, rows)
    if progress:
        progress("rollouts", len(rollouts), len(rollouts))
    plans = timed("select", select_nodes, res, rollouts)
    scores = timed("score", score_rollouts, res, rollouts, plans)
    branches = timed("branch", plan_branches, res, rollouts, plans, scores.dists)
    outcomes = timed("branch", run_branches, res, branches)
    if progress:
        progress("branch", outcomes.continuations, outcomes.continuations)
    aligned = timed("align", align, res, branches, outcomes, scores.dists)
    return ShardResult(
        tables={"rollouts": [r.to_row() for r in rollouts], "tokens": scores.tokens, "nodes": aligned.nodes,
                "alignment": aligned.rows},
        timings=timings,
        continuations=outcomes.continuations,
        prefix_hashes={f"{q}|{c}": h for (q, c), h in scores.prefix_hashes.items()},
        selection=[
            {"question_id": r.question_id, "rollout_id": r.rollout_id, "nodes": len(p.nodes), "dropped": p.dropped,
             "spent_tokens": p.spent_tokens, "spent_continuations": p.spent_continuations}
            for r, p in zip(rollouts, plans)
        ],
    )


def _shard_dir(out: Path, k: int) -> Path:
    return out / "shards" / f"{k:05d}"


def diagnose(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    shard_size: int = 8,
    progress: Progress | None = None,
) -> Run:
    """Run the full diagnosis for `cfg`, writing tables and the manifest under `out`.

    Shards of `shard_size` questions are written as they finish (out/shards/NNNNN/); the top-level
    tables are their concatenation and manifest.json is written last. With `resume`, finished
    shards of a run with the same config fingerprint are kept and only the rest is computed.
    """
    out = Path(out)
    fp = config_fingerprint(cfg)
    if out.exists() and any(out.iterdir()):
        old = out / "shards" / "run.json"
        if not resume:
            raise RunFolderError(f"{out}: output folder is not empty (pass resume=True / --resume, or choose a new folder)")
        if old.exists() and json.loads(old.read_text()).get("config_fingerprint") != fp:
            raise RunFolderError(f"{out}: existing shards were made with a different config; cannot resume into it")
    t_start = time.perf_counter()
    res = load_resources(cfg)  # every input check happens here, before anything is written
    timings: dict[str, float] = {"load": time.perf_counter() - t_start}
    rows = list(res.task.rows)
    shards = [rows[i : i + shard_size] for i in range(0, len(rows), shard_size)]
    selection, prefix_hashes, n_cont, resumed = [], {}, 0, 0
    try:
        (out / "shards").mkdir(parents=True, exist_ok=True)
        write_json({"config_fingerprint": fp, "config": cfg.to_dict()}, out / "shards" / "run.json")
        (out / "manifest.json").unlink(missing_ok=True)  # rewritten last; its absence marks an incomplete run
        for k, shard in enumerate(shards):
            done = _shard_dir(out, k) / "shard.json"
            info = json.loads(done.read_text()) if done.exists() else None
            if info is not None and info.get("config_fingerprint") == fp:
                resumed += 1
                log.info("shard %d/%d already complete; skipped", k + 1, len(shards))
            else:
                r = process_shard(res, shard, progress)
                for name in TABLES:
                    write_table(name, r.tables[name], _shard_dir(out, k) / f"{name}.parquet", {"config_fingerprint": fp})
                for st, v in r.timings.items():
                    timings[st] = timings.get(st, 0.0) + v
                info = {"config_fingerprint": fp, "questions": [res.task.row_id(q) for q in shard], "timings": r.timings,
                        "selection": r.selection, "prefix_hashes": r.prefix_hashes, "continuations": r.continuations}
                write_json(info, done)
            selection += info["selection"]
            prefix_hashes.update(info["prefix_hashes"])
            n_cont += info["continuations"]
            if progress:
                progress("questions", min((k + 1) * shard_size, len(rows)), len(rows))
    finally:
        res.grader.close()
        res.sampler.close()

    counts = {name: concat_tables(name, [_shard_dir(out, k) / f"{name}.parquet" for k in range(len(shards))],
                                  out / f"{name}.parquet", {"config_fingerprint": fp}) for name in TABLES}
    timings["total"] = time.perf_counter() - t_start
    faults = _count_faults(out)  # (NaN cosines from a zero ideal gradient are not faults: see `reason`)
    if any(faults.values()):
        log.warning("runtime faults recorded per row: %s", {k: v for k, v in faults.items() if v})
    versions = package_versions()
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        complete=True,
        gradalign_version=versions["gradalign"],
        versions=versions,
        git_commit=_git_commit(),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        config_fingerprint=fp,
        config=cfg.to_dict(),
        config_source=cfg.source,
        models={
            "student": {"ref": cfg.student.model, "hash": res.model_hashes.get(cfg.student.model)},
            "teachers": {t.name: {"model": t.model, "context": t.context,
                                  "hash": res.model_hashes.get(cfg.student.model if t.model == STUDENT_MODEL else t.model)}
                         for t in cfg.teachers},
        },
        seeds={"run": cfg.run.seed, "derivation": "blake2b(run seed, stage, question id, rollout, position, token, index)"},
        task={"source": res.task.source, "questions": len(rows)},
        row_counts=counts,
        continuations=n_cont,
        shards={"total": len(shards), "resumed": resumed, "size": shard_size},
        selection=selection,
        teacher_prefix_hashes=prefix_hashes,
        grader={"spec": cfg.task.grader, **dataclasses.asdict(res.grader.stats)},
        faults=faults,
        timings_s={k: round(v, 3) for k, v in timings.items()},
        columns={name: [c for c, _, _ in COLUMNS[name]] for name in TABLES},
    )
    write_json(manifest, out / "manifest.json")
    return Run(out, manifest)


def _count_faults(out: Path) -> dict:
    """Runtime faults recorded per row (never a crash of the run), counted for the manifest."""
    import pyarrow.parquet as pq

    r = pq.read_table(out / "rollouts.parquet", columns=["status", "truncated", "n_tokens"]).to_pandas()
    a = pq.read_table(out / "alignment.parquet", columns=["reason"]).to_pandas()
    return {
        "grader_errors": int((r.status == "error").sum()),
        "grader_timeouts": int((r.status == "timeout").sum()),
        "truncated_rollouts": int(r.truncated.sum()),
        "empty_completions": int((r.n_tokens == 0).sum()),
        "nonfinite_logit_rows": int(a.reason.str.contains("nonfinite").sum()),
    }
