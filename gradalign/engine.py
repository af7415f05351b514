"""The run: shards of questions through the pipeline, written as they finish, the manifest last.

Owns: `diagnose` (load once, then for each shard of questions run the pipeline stages
(`gradalign.pipeline`: rollouts -> selection -> scoring -> branching -> alignment), write the
shard's four tables atomically, then concatenate them and write the manifest last), resume (finished
shards of a run with the same config fingerprint are kept), the config fingerprint, and the
manifest's contents. Does not own any stage's work (`gradalign.pipeline`), the table schemas and
writers (`gradalign.tables`), input checks (`gradalign.preflight`, run inside `load_resources`), or
the run folder itself (`gradalign.runfolder`: writability, the lock, the layout, the shard plan on
resume and which finished shards are kept).

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
from gradalign.graders import GraderBroken
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
from gradalign.runfolder import (
    RunInterrupted,
    RunLock,
    Tally,
    check_shard_size,
    check_writable,
    finished_shards,
    open_run,
    resume_shard_size,
    shard_dir,
    write_run_info,
    write_shard,
    writing,
)
from gradalign.tables import COLUMNS, SCHEMA_VERSION, TABLES, Manifest, concat_tables, package_versions, write_json

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
    grader_faults: dict  # grader_errors / grader_timeouts over every graded call (rollouts, value queries, branches)


def config_fingerprint(cfg: RunConfig) -> str:
    """Hash of the resolved config: resume continues only a run with the same fingerprint."""
    return hashlib.blake2b(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def _param_scope(cfg: RunConfig, student) -> dict:
    """The manifest's record of the parameter scope `cos_params` covers ({} for logit-only runs)."""
    if "params" not in cfg.alignment.space:
        return {}
    from gradalign.param_space import resolve_scope

    scope = resolve_scope(student, cfg.alignment.scope)
    return {"param_scope": {"spec": scope.spec, "method": cfg.alignment.method, "parameters": scope.n_params,
                            "names": list(scope.names)}}


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

    g0 = res.grader.stats
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
             "spent_tokens": p.spent_tokens, "spent_continuations": p.spent_continuations,
             "padded_head_mass": scores.padded_faults.get((r.question_id, r.rollout_id), 0)}
            for r, p in zip(rollouts, plans)
        ],
        grader_faults={"grader_errors": res.grader.stats.errors - g0.errors,
                       "grader_timeouts": res.grader.stats.timeouts - g0.timeouts},
    )


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
    shards of a run with the same config fingerprint are kept (in the shard size the run started
    with) and only the rest is computed. One writer per folder: `out` is locked for the whole run.
    Ctrl-C raises `RunInterrupted` (a KeyboardInterrupt) saying how many shards were kept.
    """
    out = Path(out)
    check_shard_size(shard_size)
    check_writable(out)  # before anything is written or any model loads
    tally = Tally()
    with RunLock(out):
        try:
            return _run(cfg, out, resume, shard_size, progress, tally)
        except KeyboardInterrupt:
            raise RunInterrupted(tally.kept, tally.total) from None


def _run(cfg: RunConfig, out: Path, resume: bool, shard_size: int, progress: Progress | None, tally: Tally) -> Run:
    fp = config_fingerprint(cfg)
    recorded = open_run(out, fp, resume)
    t_start = time.perf_counter()
    res = load_resources(cfg)  # every input check happens here, before anything is written
    timings: dict[str, float] = {"load": time.perf_counter() - t_start}
    rows = list(res.task.rows)
    requested, shard_size = shard_size, resume_shard_size(out, recorded, shard_size)
    shards = [rows[i : i + shard_size] for i in range(0, len(rows), shard_size)]
    tally.total = len(shards)
    selection, prefix_hashes, n_cont, resumed = [], {}, 0, 0
    grader_faults = {"grader_errors": 0, "grader_timeouts": 0}  # summed over shards, resumed ones included
    try:
        kept = (finished_shards(out, shards, res.task.row_id, fp, shard_size=shard_size, requested=requested)
                if recorded is not None else {})  # checked before any shard is computed
        tally.kept = len(kept)
        with writing(out, "shards/run.json", tally):
            write_run_info(out, fp, cfg.to_dict(), cfg.source, shard_size)
            (out / "manifest.json").unlink(missing_ok=True)  # rewritten last; its absence marks an incomplete run
        for k, shard in enumerate(shards):
            info = kept.get(k)
            if info is not None:
                resumed += 1
                log.info("shard %d/%d already complete; skipped", k + 1, len(shards))
            else:
                r = process_shard(res, shard, progress)
                for st, v in r.timings.items():
                    timings[st] = timings.get(st, 0.0) + v
                info = {"config_fingerprint": fp, "questions": [res.task.row_id(q) for q in shard], "timings": r.timings,
                        "selection": r.selection, "prefix_hashes": r.prefix_hashes, "continuations": r.continuations,
                        "grader_faults": r.grader_faults}
                with writing(out, f"shard {k + 1} of {len(shards)}", tally):
                    write_shard(out, k, r.tables, info, fp)
                tally.kept += 1
            selection += info["selection"]
            prefix_hashes.update(info["prefix_hashes"])
            n_cont += info["continuations"]
            for kind, v in info.get("grader_faults", {}).items():
                grader_faults[kind] = grader_faults.get(kind, 0) + v
            if progress:
                progress("questions", min((k + 1) * shard_size, len(rows)), len(rows))
    except GraderBroken as e:
        raise GraderBroken(f"{e}; finished shards are kept ({tally.kept} of {tally.total})") from None
    finally:
        res.grader.close()
        res.sampler.close()

    with writing(out, "the run tables", tally):
        counts = {name: concat_tables(name, [shard_dir(out, k) / f"{name}.parquet" for k in range(len(shards))],
                                      out / f"{name}.parquet", {"config_fingerprint": fp}) for name in TABLES}
    timings["total"] = time.perf_counter() - t_start
    faults = _count_faults(out, grader_faults)  # (NaN cosines from a zero ideal gradient are not faults: see `reason`)
    faults["padded_head_mass"] = sum(s.get("padded_head_mass", 0) for s in selection)  # scoring.PADDED_MASS_TOLERANCE
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
            "student": {"ref": cfg.student.model, "hash": res.model_hashes.get(cfg.student.model),
                        **_param_scope(cfg, res.student)},
            "teachers": {t.name: {"model": t.model,
                                  "hash": res.model_hashes.get(cfg.student.model if t.model == STUDENT_MODEL else t.model),
                                  "context": t.context}
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
    with writing(out, "manifest.json", tally):
        write_json(manifest, out / "manifest.json")
    return Run(out, manifest)


def _count_faults(out: Path, grader_faults: dict) -> dict:
    """Runtime faults recorded per row (never a crash of the run), counted for the manifest. Grader
    errors/timeouts come from the pool over every graded call (rollouts, value queries, branches),
    as the manifest's `grader` section counts them; the tables hold them per row (rollouts.status,
    nodes.grader_errors/grader_timeouts), value queries in no table."""
    import pyarrow.parquet as pq

    r = pq.read_table(out / "rollouts.parquet", columns=["truncated", "n_tokens"]).to_pandas()
    a = pq.read_table(out / "alignment.parquet", columns=["reason"]).to_pandas()
    return {
        "grader_errors": int(grader_faults.get("grader_errors", 0)),
        "grader_timeouts": int(grader_faults.get("grader_timeouts", 0)),
        "truncated_rollouts": int(r.truncated.sum()),
        "empty_completions": int((r.n_tokens == 0).sum()),
        "nonfinite_logit_rows": int(a.reason.str.contains("nonfinite").sum()),
    }
