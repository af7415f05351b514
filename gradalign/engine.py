"""The diagnosis engine: rollouts -> nodes -> branches -> estimates -> alignment tables.

Owns the orchestration of one run (`diagnose`): sampling student rollouts, running node selectors
(with batched value queries for `refine`), scoring student and teachers over the student's exact
token ids, choosing candidates, branching M continuations per candidate (plus the residual bucket)
in large batched generate calls, grading, and turning estimates into alignment rows. Questions are
processed in shards; each shard's tables are written atomically as soon as it finishes, so a run
that dies loses nothing already computed and `resume=True` skips finished shards. The math lives
in `gradients`/`estimates`, the I/O formats in `tables`, the sampling in `generation`.

Conventions (shapes): N rollouts per question, T completion positions, K candidates at a node,
M continuations per candidate, V vocabulary, C teacher configs. Node t = prompt + y_<t; the
candidate replaces y_t. Seeds derive from the run seed and stable ids (question id, rollout index,
position, candidate token, continuation index), never from batch order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from gradalign import gradients as G
from gradalign.candidates import Candidate, candidate_set
from gradalign.config import RunConfig
from gradalign.estimates import SuccessEstimate, full_vocab_success, split_halves
from gradalign.sampling import Completion, SamplingParams, stable_seed
from gradalign.tables import COLUMNS, SCHEMA_VERSION, TABLES, RunFolderError, concat_tables, write_json, write_table

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class Run:
    """A finished run folder. `tables()` reads it through `gradalign.load`."""

    out: Path
    manifest: dict

    def tables(self):
        from gradalign.tables import load

        return load(self.out)


@dataclass(frozen=True)
class _Teacher:
    name: str
    model: object
    context: str
    model_ref: str


@dataclass(frozen=True)
class _Rollout:
    qid: str
    rid: int
    row: dict
    prompt_text: str
    prompt_ids: tuple[int, ...]
    completion: Completion
    text: str
    correct: bool
    extracted: str | None
    status: str
    reason: str


@dataclass
class _World:
    """Loaded models and the pieces every shard needs (built once per run)."""

    cfg: RunConfig
    task: object
    student: object
    tokenizer: object
    teachers: tuple[_Teacher, ...]
    grader: object
    model_hashes: dict
    sampler: object  # backends.HFSampler | backends.VLLMSampler


# ----------------------------------------------------------------------------- setup


def _load_world(cfg: RunConfig) -> _World:
    from gradalign import models
    from gradalign.graders import GraderPool
    from gradalign.preflight import preflight

    task = preflight(cfg).task  # every check that needs no weights, before any is loaded
    sref = models.resolve(cfg.student.model, gguf_file=cfg.student.gguf_file, revision=cfg.student.revision)
    student = models.load(sref, dtype=cfg.student.dtype, device=cfg.student.device)
    hashes = {cfg.student.model: student.content_hash}
    loaded: dict[tuple, object] = {}
    teachers = []
    for t in cfg.teachers:
        if t.model == "student":
            model = student.model
        else:
            key = (t.model, t.gguf_file, t.dtype or cfg.student.dtype)
            if key not in loaded:
                tref = models.resolve(t.model, gguf_file=t.gguf_file)
                ttok = models.load_tokenizer(tref)
                models.check_same_tokenizer(student.tokenizer, ttok, student_name=cfg.student.model, teacher_name=t.name)
                lm = models.load(tref, dtype=t.dtype or cfg.student.dtype, device=cfg.student.device, tokenizer=ttok)
                loaded[key] = lm.model
                hashes[t.model] = lm.content_hash
            model = loaded[key]
        teachers.append(_Teacher(t.name, model, t.context, t.model))
    from gradalign.sampling import make_sampler

    sampler = make_sampler(
        cfg.sampling.backend, student=student, params=_params(cfg), dtype=cfg.student.dtype, seed=cfg.run.seed,
        memory_fraction=cfg.sampling.vllm_memory_fraction, eager=cfg.sampling.vllm_eager,
    )
    grader = GraderPool(cfg.task.grader, timeout_s=cfg.task.grader_timeout_s)
    return _World(cfg, task, student.model, student.tokenizer, tuple(teachers), grader, hashes, sampler)


# ----------------------------------------------------------------------------- stages


def _grade(world: _World, items: Sequence[tuple[dict, str]]):
    from gradalign.graders import GradeItem

    qid = world.task.row_id
    return world.grader.grade_many([GradeItem(qid(row), text, row) for row, text in items])


def _params(cfg: RunConfig) -> SamplingParams:
    s = cfg.sampling
    return SamplingParams(s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.batch_size)


def _sample_rollouts(world: _World, rows: Sequence[dict]) -> list[_Rollout]:
    from gradalign.tasks import encode_prefix, render

    cfg, tok = world.cfg, world.tokenizer
    jobs = []
    for row in rows:
        qid = world.task.row_id(row)
        text = render(cfg.task.prompt, row, what="task.prompt", row_id=qid)
        ids = encode_prefix(tok, "", text, chat=cfg.task.chat)
        for r in range(cfg.sampling.rollouts_per_question):
            jobs.append((row, qid, r, text, ids))
    comps = world.sampler.sample([j[4] for j in jobs], [stable_seed(cfg.run.seed, "rollout", j[1], j[2]) for j in jobs])
    texts = [tok.decode(c.token_ids, skip_special_tokens=False) for c in comps]
    verdicts = _grade(world, [(j[0], t) for j, t in zip(jobs, texts)])
    # A rollout cut by max_new_tokens is a failure whatever its text says, as for continuations.
    return [
        _Rollout(j[1], j[2], j[0], j[3], j[4], c, t, bool(v.correct) and not c.truncated, v.extracted, v.status,
                 "; ".join(x for x in ("truncated" if c.truncated else "", v.reason) if x))
        for j, c, t, v in zip(jobs, comps, texts, verdicts)
    ]


def _select(world: _World, rollouts: Sequence[_Rollout]) -> list:
    """Run every rollout's selector in lockstep; refine's value queries are batched per round."""
    from gradalign.selectors import Budget, ValueObs, make_selector

    cfg, tok = world.cfg, world.tokenizer
    b = cfg.branching
    per_node = min(b.max_candidates, 1 + b.top_k * (1 + len(world.teachers))) + int(b.residual)
    sels = [
        make_selector(
            b.selector.kind, b.selector.stride, n_tokens=len(r.completion.token_ids),
            budget=Budget(b.budget_tokens, b.budget_continuations), branch_continuations=per_node * b.continuations,
            nodes_per_window=b.nodes_per_window, value_continuations=b.value_continuations, refine_nodes=b.refine_nodes,
        )
        for r in rollouts
    ]
    round_ = 0
    while True:
        queries = [(i, t) for i, s in enumerate(sels) for t in s.pending()]
        if not queries:
            break
        round_ += 1
        jobs = []  # (sel index, position, continuation index)
        obs: dict[int, dict[int, ValueObs]] = {}
        for i, t in queries:
            r = rollouts[i]
            T = len(r.completion.token_ids)
            if t >= T:  # the rollout's own end: its graded outcome, no continuation needed
                obs.setdefault(i, {})[t] = ValueObs(int(r.correct), 1)
                continue
            for m in range(b.value_continuations):
                jobs.append((i, t, m))
        if jobs:
            prompts, seeds, allow = [], [], []
            for i, t, m in jobs:
                r = rollouts[i]
                prompts.append(r.prompt_ids + r.completion.token_ids[:t])
                seeds.append(stable_seed(cfg.run.seed, "value", r.qid, r.rid, t, m))
                allow.append(cfg.sampling.max_new_tokens - t)
            comps = world.sampler.sample(prompts, seeds, allow)
            texts = [tok.decode(rollouts[i].completion.token_ids[:t] + c.token_ids) for (i, t, _), c in zip(jobs, comps)]
            verdicts = _grade(world, [(rollouts[i].row, x) for (i, _, _), x in zip(jobs, texts)])
            acc: dict[tuple[int, int], list[int]] = {}
            for (i, t, _), v in zip(jobs, verdicts):
                acc.setdefault((i, t), []).append(int(v.correct))
            for (i, t), outs in acc.items():
                obs.setdefault(i, {})[t] = ValueObs(sum(outs), len(outs))
        for i, o in obs.items():
            sels[i].observe(o)
        log.info("refine round %d: %d value queries, %d continuations", round_, len(queries), len(jobs))
    return [s.plan() for s in sels]


@dataclass(frozen=True)
class _NodeDists:
    """Full-vocabulary log-probs at one node: student [V] and each config's teacher [V]."""

    student: torch.Tensor
    teachers: dict


def _score(world: _World, rollouts: Sequence[_Rollout], plans, token_cols: dict, prefix_hashes: dict) -> dict:
    """Per-token statistics for every rollout x config, appended column-wise to `token_cols`
    ({column: list}, the tokens table's columns), and the full distributions at node positions."""
    from gradalign.scoring import ScoreRequest, score
    from gradalign.tables import COLUMNS
    from gradalign.tasks import encode_prefix, render

    cfg, tok = world.cfg, world.tokenizer
    tau, beta = cfg.sampling.temperature, cfg.distill.jsd_beta
    cols = {c: token_cols.setdefault(c, []) for c, _, _ in COLUMNS["tokens"]}
    texts: dict[int, str] = {}  # token id -> decoded text, once per id
    nodes_of = [tuple(n.position for n in p.nodes) for p in plans]
    dists: dict[tuple[int, int], _NodeDists] = {}
    # rollouts scored together: bounds the [T, V] float32 matrices alive at once (student + one teacher)
    V = world.student.get_output_embeddings().weight.shape[0]
    t_max = max((len(r.completion.token_ids) for r in rollouts), default=1)
    group = max(1, min(16, (512 << 20) // (8 * max(t_max, 1) * V)))
    for g0 in range(0, len(rollouts), group):
        idx = list(range(g0, min(g0 + group, len(rollouts))))
        sreq = [ScoreRequest(rollouts[i].prompt_ids, rollouts[i].completion.token_ids, nodes_of[i]) for i in idx]
        s_out = score(world.student, sreq, temperature=tau, pad_id=tok.pad_token_id, keep_full=True)
        s_lists = {}
        for k, i in enumerate(idx):
            r = rollouts[i]
            dists[(r.qid, r.rid)] = _NodeDists(s_out[k].node_logp, {})
            ids = list(r.completion.token_ids)
            for t in ids:
                if t not in texts:
                    texts[t] = tok.decode([t])
            branched = set(nodes_of[i])
            s_lists[i] = (ids, [texts[t] for t in ids], s_out[k].token_logprob.tolist(), s_out[k].entropy.tolist(),
                          [p in branched for p in range(len(ids))])
        for teacher in world.teachers:
            treq = []
            for i in idx:
                r = rollouts[i]
                ctx = render(teacher.context, r.row, what=f"context of teacher {teacher.name!r}", row_id=r.qid)
                ids = encode_prefix(tok, ctx, r.prompt_text, chat=cfg.task.chat)
                prefix_hashes[(r.qid, teacher.name)] = hashlib.blake2b(str(ids).encode(), digest_size=8).hexdigest()
                treq.append(ScoreRequest(ids, r.completion.token_ids, nodes_of[i]))
            t_out = score(teacher.model, treq, temperature=tau, pad_id=tok.pad_token_id, keep_full=True)
            for k, i in enumerate(idx):
                r, s, t = rollouts[i], s_out[k], t_out[k]
                T = len(r.completion.token_ids)
                dists[(r.qid, r.rid)].teachers[teacher.name] = t.node_logp
                if T == 0:
                    continue
                lp, lq = s.logp_full.double(), t.logp_full.double()
                ids, txt, s_lp, s_ent, br = s_lists[i]
                cols["question_id"] += [r.qid] * T
                cols["rollout_id"] += [r.rid] * T
                cols["config"] += [teacher.name] * T
                cols["position"] += range(T)
                cols["token_id"] += ids
                cols["token_text"] += txt
                cols["student_logprob"] += s_lp
                cols["student_entropy"] += s_ent
                cols["teacher_logprob"] += t.token_logprob.tolist()
                cols["teacher_entropy"] += t.entropy.tolist()
                cols["kl_pq"] += G.kl(lp, lq).tolist()
                cols["kl_qp"] += G.kl(lq, lp).tolist()
                cols["jsd"] += G.jsd(lp, lq, beta).tolist()
                cols["dist_cos"] += G.distribution_cosine(lp, lq).tolist()
                cols["branched"] += br
            del t_out
        del s_out
    return dists


@dataclass(frozen=True)
class _Branch:
    """One node's candidates with their continuation outcomes."""

    rollout: _Rollout
    position: int
    node_index: int  # index of the node within its rollout's plan (row of the node dists)
    reason: str
    candidates: tuple[Candidate, ...]
    residual_tokens: tuple[int, ...]  # first tokens drawn outside K (empty: no residual)
    residual_mass: float


def _plan_branches(world: _World, rollouts, plans, dists) -> list[_Branch]:
    cfg = world.cfg
    b = cfg.branching
    out = []
    for r, plan in zip(rollouts, plans):
        d = dists[(r.qid, r.rid)]
        for k, node in enumerate(plan.nodes):
            t = node.position
            lp = d.student[k]
            cands = candidate_set(
                r.completion.token_ids[t], lp, {n: v[k] for n, v in d.teachers.items()},
                top_k=b.top_k, coverage=b.coverage, max_candidates=b.max_candidates,
            )
            p = lp.exp()
            ids = torch.tensor([c.token_id for c in cands])
            outside = float(1.0 - p[ids].sum().clamp(max=1.0))
            resid: tuple[int, ...] = ()
            if b.residual and outside >= b.residual_min_mass:
                w = p.clone()
                w[ids] = 0
                g = torch.Generator().manual_seed(stable_seed(cfg.run.seed, "residual", r.qid, r.rid, t))
                resid = tuple(torch.multinomial(w / w.sum(), b.continuations, replacement=True, generator=g).tolist())
            out.append(_Branch(r, t, k, node.reason, cands, resid, outside))
    return out


def _run_branches(world: _World, branches: Sequence[_Branch]):
    """Sample and grade every continuation of every branch, in large batched passes.

    Round 1 draws M continuations per candidate and the residual bucket's M (first tokens already
    drawn outside K). With adaptive M (branching.adaptive_target_width > 0), further rounds add
    continuations to candidates whose Wilson interval is still wider than the target, up to
    branching.adaptive_max. Returns ({(branch index, slot): [(success, truncated), ...]},
    continuations sampled) where slot is a candidate index or -1 for the residual bucket.
    """
    from gradalign.estimates import adaptive_needed

    b = world.cfg.branching
    want = {}
    for bi, br in enumerate(branches):
        for k, c in enumerate(br.candidates):
            want[(bi, k)] = [(c.token_id, m) for m in range(b.continuations)]
        if br.residual_tokens:
            want[(bi, -1)] = [(tok, m) for m, tok in enumerate(br.residual_tokens)]
    outcomes: dict[tuple[int, int], list[tuple[bool, bool]]] = {}
    total = _sample_and_grade(world, branches, want, outcomes)
    rounds = 0
    while b.adaptive_target_width > 0 and rounds < 8:
        rounds += 1
        want = {}
        for (bi, k), outs in outcomes.items():
            if k < 0:
                continue
            est, _ = _estimate(outs)
            extra = adaptive_needed(est, b.adaptive_target_width, b.adaptive_max)
            if extra:
                tokid = branches[bi].candidates[k].token_id
                want[(bi, k)] = [(tokid, m) for m in range(len(outs), len(outs) + extra)]
        if not want:
            break
        total += _sample_and_grade(world, branches, want, outcomes)
    return outcomes, total


def _sample_and_grade(world: _World, branches, want: dict, outcomes: dict) -> int:
    """Continue each (branch, slot) from prefix + first token for the given continuation indices;
    append (success, truncated) to `outcomes`. One batched sample() call, one grading pass."""
    cfg, tok = world.cfg, world.tokenizer
    L, eos = cfg.sampling.max_new_tokens, tok.eos_token_id
    jobs, prompts, seeds, allow = [], [], [], []
    items, meta = [], []
    for (bi, slot), firsts in want.items():
        r, t = branches[bi].rollout, branches[bi].position
        prefix = r.prompt_ids + r.completion.token_ids[:t]
        for first, m in firsts:
            if first == eos:  # the candidate ends the completion: nothing to sample
                items.append((r.row, tok.decode(r.completion.token_ids[:t])))
                meta.append((bi, slot, False))
                continue
            jobs.append((bi, slot, first))
            prompts.append(prefix + (first,))
            seeds.append(stable_seed(cfg.run.seed, "branch", r.qid, r.rid, t, slot < 0, first, m))
            allow.append(L - t - 1)
    comps = world.sampler.sample(prompts, seeds, allow) if jobs else []
    for (bi, slot, first), c in zip(jobs, comps):
        r, t = branches[bi].rollout, branches[bi].position
        items.append((r.row, tok.decode(r.completion.token_ids[:t] + (first,) + c.token_ids)))
        meta.append((bi, slot, c.truncated))
    verdicts = _grade(world, items)
    for (bi, slot, trunc), v in zip(meta, verdicts):
        outcomes.setdefault((bi, slot), []).append((bool(v.correct) and not trunc, trunc))
    return len(jobs)


def _estimate(outs) -> tuple[SuccessEstimate, object]:
    ok = [o[0] for o in outs]
    tr = [o[1] for o in outs]
    return SuccessEstimate.from_outcomes(ok, tr), split_halves(ok, tr)


def _alignment(world: _World, branches, outcomes, dists, node_rows: list, align_rows: list) -> None:
    cfg, tok = world.cfg, world.tokenizer
    beta = cfg.distill.jsd_beta
    for bi, br in enumerate(branches):
        r, t = br.rollout, br.position
        d = dists[(r.qid, r.rid)]
        plan_idx = br.node_index
        lp = d.student[plan_idx]
        p = lp.exp()
        student_ok = bool(torch.isfinite(lp).all())
        V = p.numel()
        ids = torch.tensor([c.token_id for c in br.candidates])
        ests, halves = [], []
        for k, c in enumerate(br.candidates):
            e, h = _estimate(outcomes[(bi, k)])
            ests.append(e)
            halves.append(h)
            node_rows.append(_node_row(r, t, c.token_id, tok.decode([c.token_id]), c.source, c.source_config, float(p[c.token_id]), e, br.reason))
        rest = rest_a = rest_b = None
        if br.residual_tokens:
            e, h = _estimate(outcomes[(bi, -1)])
            rest, rest_a, rest_b = e.rate, h.a.rate, h.b.rate
            node_rows.append(_node_row(r, t, -1, "", "residual", "", br.residual_mass, e, br.reason))
        rates = torch.tensor([e.rate for e in ests], dtype=torch.float64)
        S = full_vocab_success(V, ids, rates, rest)
        g = G.ideal_gradient(p, S)
        value = float(G.node_value(p, S))
        ha = torch.tensor([h.a.rate for h in halves], dtype=torch.float64)
        hb = torch.tensor([h.b.rate for h in halves], dtype=torch.float64)
        halves_ok = bool(torch.isfinite(ha).all() and torch.isfinite(hb).all()) and (
            rest is None or (math.isfinite(rest_a) and math.isfinite(rest_b))
        )
        if halves_ok:
            g_a = G.ideal_gradient(p, full_vocab_success(V, ids, ha, rest_a))
            g_b = G.ideal_gradient(p, full_vocab_success(V, ids, hb, rest_b))
        y = r.completion.token_ids[t]
        for teacher in world.teachers:
            lq = d.teachers[teacher.name][plan_idx]
            q = lq.exp()
            teacher_ok = bool(torch.isfinite(lq).all())
            adv = float(G.teacher_advantage(p, q, S))
            for loss in cfg.distill.losses:
                if not (student_ok and teacher_ok):  # a runtime fault is a row with a reason, not a crash
                    nan = G.Cosine(math.nan, "nonfinite_student_logits" if not student_ok else "nonfinite_teacher_logits")
                    dvec, c_full, c_cand, c_deb = torch.full_like(p, math.nan), nan, nan, nan
                else:
                    dvec = G.distill_direction(loss, lp, lq, token=torch.tensor(y), beta=beta)
                    c_full = G.cosine(g, dvec)
                    c_cand = G.cosine(G.restrict(g, ids), G.restrict(dvec, ids))
                    c_deb = G.debiased_cosine(g_a, g_b, dvec) if halves_ok else G.Cosine(math.nan, "halves_undefined")
                reasons = [x for x in (c_full.reason, c_cand.reason and f"candidates:{c_cand.reason}", c_deb.reason and f"debiased:{c_deb.reason}") if x]
                align_rows.append({
                    "question_id": r.qid, "rollout_id": r.rid, "position": t, "token_id": y,
                    "token_text": tok.decode([y]), "correct": r.correct, "config": teacher.name, "loss": loss,
                    "cos": c_full.value, "cos_candidates": c_cand.value, "cos_debiased": c_deb.value,
                    "norm_ideal": float(g.norm()), "norm_distill": float(dvec.norm()),
                    "teacher_advantage": adv, "value": value, "reason": ";".join(dict.fromkeys(reasons)),
                })


def _node_row(r, t, cid, ctext, source, source_config, prob, e: SuccessEstimate, reason) -> dict:
    return {
        "question_id": r.qid, "rollout_id": r.rid, "position": t, "candidate_id": cid, "candidate_text": ctext,
        "source": source, "source_config": source_config, "student_prob": prob, "success": e.rate, "n": e.n,
        "successes": e.successes, "truncated": e.truncated, "ci_low": e.ci.low, "ci_high": e.ci.high, "selector": reason,
    }


# ----------------------------------------------------------------------------- run


def _config_fingerprint(cfg: RunConfig) -> str:
    return hashlib.blake2b(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("gradalign", "torch", "transformers", "numpy", "pandas", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _shard_dir(out: Path, k: int) -> Path:
    return out / "shards" / f"{k:05d}"


def _process_shard(world: _World, rows: Sequence[dict], progress: Progress | None) -> dict:
    """All stages for one shard of questions. Returns the four tables' rows and stage timings."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rollouts = _sample_rollouts(world, rows)
    timings["rollouts"] = time.perf_counter() - t0
    if progress:
        progress("rollouts", len(rollouts), len(rollouts))

    t0 = time.perf_counter()
    plans = _select(world, rollouts)
    timings["select"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    token_cols: dict[str, list] = {}
    prefix_hashes: dict = {}
    dists = _score(world, rollouts, plans, token_cols, prefix_hashes)
    timings["score"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    branches = _plan_branches(world, rollouts, plans, dists)
    outcomes, n_cont = _run_branches(world, branches)
    timings["branch"] = time.perf_counter() - t0
    if progress:
        progress("branch", n_cont, n_cont)

    t0 = time.perf_counter()
    node_rows: list[dict] = []
    align_rows: list[dict] = []
    _alignment(world, branches, outcomes, dists, node_rows, align_rows)
    timings["align"] = time.perf_counter() - t0

    rollout_rows = [
        {
            "question_id": r.qid, "rollout_id": r.rid, "prompt": r.prompt_text, "completion": r.text,
            "n_tokens": len(r.completion.token_ids), "correct": r.correct, "extracted_answer": r.extracted,
            "truncated": r.completion.truncated, "status": r.status, "reason": r.reason,
        }
        for r in rollouts
    ]
    return {
        "tables": {"rollouts": rollout_rows, "tokens": token_cols, "nodes": node_rows, "alignment": align_rows},
        "timings": timings,
        "continuations": n_cont,
        "prefix_hashes": {f"{q}|{c}": h for (q, c), h in prefix_hashes.items()},
        "selection": [
            {"question_id": r.qid, "rollout_id": r.rid, "nodes": len(p.nodes), "dropped": p.dropped,
             "spent_tokens": p.spent_tokens, "spent_continuations": p.spent_continuations}
            for r, p in zip(rollouts, plans)
        ],
    }


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
    fp = _config_fingerprint(cfg)
    if out.exists() and any(out.iterdir()):
        old = out / "shards" / "run.json"
        if not resume:
            raise RunFolderError(f"{out}: output folder is not empty (pass resume=True / --resume, or choose a new folder)")
        if old.exists() and json.loads(old.read_text()).get("config_fingerprint") != fp:
            raise RunFolderError(f"{out}: existing shards were made with a different config; cannot resume into it")
    t_start = time.perf_counter()
    world = _load_world(cfg)  # every input check happens here, before anything is written
    load_s = time.perf_counter() - t_start
    try:
        (out / "shards").mkdir(parents=True, exist_ok=True)
        write_json({"config_fingerprint": fp, "config": cfg.to_dict()}, out / "shards" / "run.json")
        manifest_path = out / "manifest.json"
        if manifest_path.exists():
            manifest_path.unlink()  # rewritten last; its absence marks an incomplete run

        rows = list(world.task.rows)
        shards = [rows[i : i + shard_size] for i in range(0, len(rows), shard_size)]
        timings: dict[str, float] = {"load": load_s}
        selection, prefix_hashes, n_cont, resumed = [], {}, 0, 0
        for k, shard in enumerate(shards):
            sdir = _shard_dir(out, k)
            done = sdir / "shard.json"
            if done.exists():
                info = json.loads(done.read_text())
                if info.get("config_fingerprint") == fp:
                    resumed += 1
                    selection += info["selection"]
                    prefix_hashes.update(info["prefix_hashes"])
                    n_cont += info["continuations"]
                    log.info("shard %d/%d already complete; skipped", k + 1, len(shards))
                    if progress:
                        progress("questions", min((k + 1) * shard_size, len(rows)), len(rows))
                    continue
            res = _process_shard(world, shard, progress)
            for name in TABLES:
                write_table(name, res["tables"][name], sdir / f"{name}.parquet", {"config_fingerprint": fp})
            for st, v in res["timings"].items():
                timings[st] = timings.get(st, 0.0) + v
            selection += res["selection"]
            prefix_hashes.update(res["prefix_hashes"])
            n_cont += res["continuations"]
            write_json(
                {"config_fingerprint": fp, "questions": [world.task.row_id(r) for r in shard], "timings": res["timings"],
                 "selection": res["selection"], "prefix_hashes": res["prefix_hashes"], "continuations": res["continuations"]},
                done,
            )
            if progress:
                progress("questions", min((k + 1) * shard_size, len(rows)), len(rows))
    finally:
        world.grader.close()
        world.sampler.close()

    counts = {}
    for name in TABLES:
        parts = [_shard_dir(out, k) / f"{name}.parquet" for k in range(len(shards))]
        counts[name] = concat_tables(name, parts, out / f"{name}.parquet", {"config_fingerprint": fp})
    timings["total"] = time.perf_counter() - t_start
    faults = _count_faults(out)  # (NaN cosines from a zero ideal gradient are not faults: see `reason`)
    if any(faults.values()):
        log.warning("runtime faults recorded per row: %s", {k: v for k, v in faults.items() if v})
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "complete": True,
        "gradalign_version": _versions()["gradalign"],
        "versions": _versions(),
        "git_commit": _git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_fingerprint": fp,
        "config": cfg.to_dict(),
        "config_source": cfg.source,
        "models": {
            "student": {"ref": cfg.student.model, "hash": world.model_hashes.get(cfg.student.model)},
            "teachers": {t.name: {"model": t.model, "hash": world.model_hashes.get(cfg.student.model if t.model == "student" else t.model), "context": t.context} for t in cfg.teachers},
        },
        "seeds": {"run": cfg.run.seed, "derivation": "blake2b(run seed, stage, question id, rollout, position, token, index)"},
        "task": {"source": world.task.source, "questions": len(rows)},
        "row_counts": counts,
        "continuations": n_cont,
        "shards": {"total": len(shards), "resumed": resumed, "size": shard_size},
        "selection": selection,
        "teacher_prefix_hashes": prefix_hashes,
        "grader": {"spec": cfg.task.grader, **asdict(world.grader.stats)},
        "faults": faults,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "columns": {name: [c for c, _, _ in COLUMNS[name]] for name in TABLES},
    }
    write_json(manifest, manifest_path)
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
