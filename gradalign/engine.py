"""The run: shards of questions through the pipeline, written as they finish, the manifest last.

Owns: `diagnose` (plan the shards, have the executor compute those not finished yet, write each
shard's four tables atomically as it returns, then concatenate them and write the manifest last),
`process_shard` (one shard through the pipeline stages, `gradalign.pipeline`: rollouts -> selection
-> scoring -> branching (with `branching.node_rounds`, `pipeline.rounds`) -> alignment), resume (finished shards of a run with the same config
fingerprint are kept), the config fingerprint, and the manifest's contents. How and where shards
are computed (this process, or Ray actors) is `gradalign.executors`'. Does not own any stage's work (`gradalign.pipeline`), the table schemas and
writers (`gradalign.tables`), input checks (`gradalign.preflight`, run inside `load_resources`), or
the run folder itself (`gradalign.runfolder`: writability, the lock, the layout, the shard plan on
resume and which finished shards are kept).

Progress: one `progress.ProgressTracker` per run counts every stage cumulatively over the shards to
compute (rollouts and scoring in rollouts, value queries and branches in continuations, questions),
with tokens and time per stage, and hands each `ProgressEvent` to the `progress` callback; the stages
report through `gradalign.progress.advance` (sampling) and here (scoring, in chunks of rollouts).

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
from typing import Sequence

from gradalign.config import STUDENT_MODEL, RunConfig
from gradalign.executors import Executor, open_executor
from gradalign.graders import GraderBroken
from gradalign.pipeline import (
    Resources,
    align,
    fit_branches,
    mark_branched,
    plan_branches,
    run_branches,
    sample_rollouts,
    score_rollouts,
    select_nodes,
)
from gradalign.pipeline.rounds import run_rounds
from gradalign.pipeline.scoring import Scores
from gradalign.progress import Progress, ProgressTracker
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
    generated_tokens: dict = dataclasses.field(default_factory=dict)  # stage -> tokens the sampler generated (EOS counted)


def config_fingerprint(cfg: RunConfig) -> str:
    """Hash of the resolved config: resume continues only a run with the same fingerprint. The
    `[executor]` section is left out: how shards are run does not change them."""
    d = cfg.to_dict()
    d.pop("executor", None)
    return hashlib.blake2b(json.dumps(d, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class CountingSampler:
    """A `Sampler` that counts the tokens its wrapped sampler generates (a completion's tokens,
    plus its EOS when it ended with one): what the cost plan predicts and the manifest reports."""

    def __init__(self, inner) -> None:
        self.inner, self.tokens, self.sequences = inner, 0, 0

    def sample(self, prompts, seeds, max_new=None):
        out = self.inner.sample(prompts, seeds, max_new)
        self.tokens += sum(len(c.token_ids) + int(c.ended_with_eos) for c in out)
        self.sequences += len(out)
        return out

    def close(self) -> None:
        self.inner.close()


def process_shard(res: Resources, rows: Sequence[dict], progress: Progress | ProgressTracker | None = None) -> ShardResult:
    """Every pipeline stage for one shard of questions (see `gradalign.pipeline`). `progress`: the
    run's tracker, or a callback (then counts and totals cover this shard only)."""
    timings: dict[str, float] = {}
    generated: dict[str, int] = {}
    counter = CountingSampler(res.sampler)
    res = dataclasses.replace(res, sampler=counter)
    tr = progress if isinstance(progress, ProgressTracker) else ProgressTracker(progress)
    if not isinstance(progress, ProgressTracker):
        n = len(rows) * res.cfg.sampling.rollouts_per_question
        tr.expect("rollouts", n)
        tr.expect("score", n)

    def timed(stage: str, fn, *args):
        t0, n0 = time.perf_counter(), counter.tokens
        with tr.stage(stage):
            out = fn(*args)
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0
        generated[stage] = generated.get(stage, 0) + counter.tokens - n0
        return out

    g0 = res.grader.stats
    rollouts = timed("rollouts", sample_rollouts, res, rows)
    plans = timed("select", select_nodes, res, rollouts)
    scores = timed("score", _score, res, rollouts, plans, tr)
    branches = timed("branch", plan_branches, res, rollouts, plans, scores.dists)
    plans, branches = fit_branches(res, rollouts, plans, branches)  # the budget at each node's real candidate count
    mark_branched(scores.tokens, {(r.question_id, r.rollout_id): p for r, p in zip(rollouts, plans)})
    tr.expect("branch", sum((len(b.candidates) + bool(b.residual_tokens)) * res.cfg.branching.continuations for b in branches))
    if res.cfg.branching.node_rounds:  # allocation across nodes: the first round, then rounds from a shared pool
        branches, outcomes = timed("branch", run_rounds, res, branches, scores.dists)
    else:
        outcomes = timed("branch", run_branches, res, branches)
    aligned = timed("align", align, res, branches, outcomes, scores.dists)
    return ShardResult(
        tables={"rollouts": [r.to_row() for r in rollouts], "tokens": scores.tokens, "nodes": aligned.nodes,
                "alignment": aligned.rows},
        timings=timings,
        continuations=outcomes.continuations,
        prefix_hashes={f"{q}|{c}": h for (q, c), h in scores.prefix_hashes.items()},
        selection=[
            {"question_id": r.question_id, "rollout_id": r.rollout_id, "nodes": len(p.nodes), "asked": p.asked,
             "dropped": p.dropped,
             "spent_tokens": p.spent_tokens, "spent_continuations": p.spent_continuations,
             "padded_head_mass": scores.padded_faults.get((r.question_id, r.rollout_id), 0)}
            for r, p in zip(rollouts, plans)
        ],
        grader_faults={"grader_errors": res.grader.stats.errors - g0.errors,
                       "grader_timeouts": res.grader.stats.timeouts - g0.timeouts},
        generated_tokens={k: v for k, v in generated.items() if v},
    )


def _score(res: Resources, rollouts, plans, tr: ProgressTracker) -> Scores:
    """`score_rollouts` in about ten chunks of rollouts, each reported to the tracker (rollouts, and
    tokens scored = completion tokens x (student + configs)); the chunks' records concatenated."""
    n, per = len(rollouts), 1 + len(res.teachers)
    step = max(1, -(-n // 10))
    parts = []
    for i in range(0, n, step):
        parts.append(score_rollouts(res, rollouts[i : i + step], plans[i : i + step]))
        tr.advance(len(rollouts[i : i + step]), per * sum(len(r.token_ids) for r in rollouts[i : i + step]))
    if len(parts) == 1:
        return parts[0]
    tokens = {k: [v for p in parts for v in p.tokens[k]] for k in parts[0].tokens}
    merged = [{k: v for p in parts for k, v in getattr(p, f).items()} for f in ("dists", "prefix_hashes", "padded_faults")]
    return Scores(tokens, *merged)


def diagnose(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    shard_size: int = 8,
    progress: Progress | None = None,
    executor: str | None = None,
    address: str | None = None,
    max_tokens: int | None = None,
    mean_tokens: float | None = None,
) -> Run:
    """Run the full diagnosis for `cfg`, writing tables and the manifest under `out`.

    Shards of `shard_size` questions are written as they finish (out/shards/NNNNN/); the top-level
    tables are their concatenation and manifest.json is written last. With `resume`, finished
    shards of a run with the same config fingerprint are kept (in the shard size the run started
    with) and only the rest is computed, whichever executor made them. One writer per folder:
    `out` is locked for the whole run. Ctrl-C raises `RunInterrupted` (a KeyboardInterrupt)
    saying how many shards were kept.

    `executor` ("local" | "ray") and `address` override `cfg.executor.kind` / `.address`
    (`gradalign.executors`). `max_tokens`: refuse to start (`PlanTooCostly`, nothing written) when
    the cost plan (`gradalign.plan.plan_run`, assuming rollouts of `mean_tokens` tokens, default
    the cap) exceeds that many generated tokens.
    """
    out = Path(out)
    check_shard_size(shard_size)
    if max_tokens is not None:
        from gradalign.plan import check_max_tokens, plan_run

        check_max_tokens(plan_run(cfg, mean_tokens=mean_tokens), max_tokens)
    ex = open_executor(cfg, executor, address)  # Ray missing: one line, before anything is touched
    check_writable(out)  # before anything is written or any model loads
    tally = Tally()
    with RunLock(out):
        try:
            return _run(cfg, out, resume, shard_size, progress, tally, ex)
        except KeyboardInterrupt:
            raise RunInterrupted(tally.kept, tally.total) from None


def _run(cfg: RunConfig, out: Path, resume: bool, shard_size: int, progress: Progress | None, tally: Tally,
         ex: Executor) -> Run:
    fp = config_fingerprint(cfg)
    recorded = open_run(out, fp, resume)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    infos: dict[int, dict] = {}  # shard index -> shard.json contents, kept or computed
    workers: dict[str, dict] = {}  # worker -> shards and seconds (manifest)
    tracker = ProgressTracker(progress)
    try:
        task = ex.open()  # every input check happens here, before anything is written
        timings["load"] = time.perf_counter() - t_start
        rows = list(task.rows)
        requested, shard_size = shard_size, resume_shard_size(out, recorded, shard_size)
        shards = [rows[i : i + shard_size] for i in range(0, len(rows), shard_size)]
        tally.total = len(shards)
        kept = (finished_shards(out, shards, task.row_id, fp, shard_size=shard_size, requested=requested)
                if recorded is not None else {})  # checked before any shard is computed
        tally.kept = len(kept)
        infos.update(kept)
        for k in sorted(kept):
            log.info("shard %d/%d already complete; skipped", k + 1, len(shards))
        todo = [(k, shard) for k, shard in enumerate(shards) if k not in kept]
        n_todo = sum(len(shard) for _, shard in todo)  # questions to compute
        n_roll = n_todo * cfg.sampling.rollouts_per_question
        for stage, units in (("rollouts", n_roll), ("score", n_roll), ("questions", n_todo)):
            tracker.expect(stage, units)
        with writing(out, "shards/run.json", tally):
            write_run_info(out, fp, cfg.to_dict(), cfg.source, shard_size)
            (out / "manifest.json").unlink(missing_ok=True)  # rewritten last; its absence marks an incomplete run
        for done in ex.run(todo, tracker):  # in completion order; each shard written under its own index as it returns
            k, r = done.index, done.result
            for st, v in r.timings.items():
                timings[st] = timings.get(st, 0.0) + v
            w = workers.setdefault(done.worker, {"shards": 0, "seconds": 0.0})
            w["shards"] += 1
            w["seconds"] = round(w["seconds"] + done.seconds, 3)
            info = {"config_fingerprint": fp, "questions": [task.row_id(q) for q in shards[k]], "timings": r.timings,
                    "selection": r.selection, "prefix_hashes": r.prefix_hashes, "continuations": r.continuations,
                    "grader_faults": r.grader_faults, "generated_tokens": r.generated_tokens, "worker": done.worker}
            with writing(out, f"shard {k + 1} of {len(shards)}", tally):
                write_shard(out, k, r.tables, info, fp)
            infos[k] = info
            tally.kept += 1
            tracker.advance(len(shards[k]), stage="questions")
        grader_stats = ex.grader_stats()
        model_hashes = ex.model_hashes()
        param_scope = ex.param_scope()
    except GraderBroken as e:
        raise GraderBroken(f"{e}; finished shards are kept ({tally.kept} of {tally.total})") from None
    finally:
        ex.close()

    selection, prefix_hashes, n_cont = [], {}, 0
    grader_faults = {"grader_errors": 0, "grader_timeouts": 0}  # summed over shards, resumed ones included
    generated: dict[str, int] = {}
    for k in range(len(shards)):  # in shard order, whatever order they finished in
        info = infos[k]
        selection += info["selection"]
        prefix_hashes.update(info["prefix_hashes"])
        n_cont += info["continuations"]
        for kind, v in info.get("grader_faults", {}).items():
            grader_faults[kind] = grader_faults.get(kind, 0) + v
        for stage, v in info.get("generated_tokens", {}).items():
            generated[stage] = generated.get(stage, 0) + v
    res_hashes = model_hashes
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
            "student": {"ref": cfg.student.model, "hash": res_hashes.get(cfg.student.model), **param_scope},
            "teachers": {t.name: {"model": t.model,
                                  "hash": res_hashes.get(cfg.student.model if t.model == STUDENT_MODEL else t.model),
                                  "context": t.context}
                         for t in cfg.teachers},
        },
        seeds={"run": cfg.run.seed, "derivation": "blake2b(run seed, stage, question id, rollout, position, token, index)"},
        task={"source": task.source, "questions": len(rows)},
        row_counts=counts,
        continuations=n_cont,
        shards={"total": len(shards), "resumed": len(shards) - len(todo), "size": shard_size, "executor": ex.name,
                "workers": workers, "generated_tokens": generated},
        selection=selection,
        teacher_prefix_hashes=prefix_hashes,
        grader={"spec": cfg.task.grader, **grader_stats},
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
