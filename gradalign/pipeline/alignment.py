"""Stage 6: from graded continuations to S, V, the ideal gradient, and cosines per config x loss.

Owns: `node_estimate` / `row_estimate` (a node's S, g*, replicates and noise; one config x loss's
direction, cosines and precision: the one place these are computed, read by `align` and by
`rounds` between rounds) and `align`: per branch, the success estimates of each candidate and the residual bucket
(`tables.NodeRow`s), the full-vocabulary success vector S (candidates' rates; the residual rate for
every other token), V = sum p S, the ideal gradient g* = p (S - V), and for every config x loss
the distillation descent direction d, cos(g*, d) over the full vocabulary and over K, its
uncertainty (`gradalign.precision`: bootstrap se and 95% interval, `resolved`, the ideal
gradient's snr, the residual mass and pooling bound), the split-half product <g*_A, g*_B> that
`analysis.split_half_alignment` aggregates, norms, the teacher advantage and the reason a cosine
is undefined (`tables.AlignmentRow`s). A non-finite student or teacher distribution is a row with a reason,
never a crash. Continuations whose grader erred or timed out count as failures; the node's rows
count them (`grader_errors`, `grader_timeouts`) and its alignment rows name them in `reason`
(`grader_errors:3/16`), and a zero ideal gradient because no continuation was graded says
`all_continuations_failed_grading`, not `zero_ideal`. With `alignment.space` holding "params", the
rows also get `cos_params` and its norms and standard errors from `gradalign.param_space` (one call
per rollout over all its nodes; this stage only hands it p, the candidates, S, its bootstrap
replicates and the directions). Does not own the formulas (`gradalign.gradients`,
`gradalign.estimates`, `gradalign.param_space`).

Shapes: V vocabulary, K candidates; p, q, S, g*, d are [V] float64.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from gradalign import gradients as G
from gradalign import precision as P
from gradalign.estimates import full_vocab_success, success_replicates
from gradalign.pipeline.branching import RESIDUAL, Branch, BranchOutcomes
from gradalign.pipeline.resources import Resources
from gradalign.pipeline.rollouts import node_tokens
from gradalign.pipeline.scoring import NodeDists
from gradalign.sampling import stable_seed
from gradalign.tables import AlignmentRow, NodeRow


@dataclass(frozen=True)
class SlotOutcomes:
    """One branch's per-continuation successes by estimation slot: the candidates, then (under
    `branching.residual_per_token`) each token drawn for the residual bucket, then the bucket
    itself; with each slot's continuation indices (its noise streams) and whether the bucket's
    outcomes are already counted in its tokens' slots (``pooled_last``)."""

    outs: list  # [slots] lists of bool
    indices: list  # [slots] continuation indices
    tokens: dict  # residual token id -> its draws' successes (the per-token slots, in order)
    pooled_last: bool
    exact: tuple  # slots of an EOS token: the finished completion graded again, a rate without noise


def slot_outcomes(res: Resources, br: Branch, bi: int, outcomes: BranchOutcomes) -> SlotOutcomes:
    """The slots of branch ``bi`` (see `SlotOutcomes`)."""
    tok_outs: dict[int, list[bool]] = {}
    tok_idx: dict[int, list[int]] = {}  # the residual draws' continuation indices
    if br.residual_tokens and res.cfg.branching.residual_per_token:
        for m, o in enumerate(outcomes.successes(bi, RESIDUAL)):
            tok_outs.setdefault(br.residual_tokens[m], []).append(o)
            tok_idx.setdefault(br.residual_tokens[m], []).append(m)
    outs = [outcomes.successes(bi, k) for k in range(len(br.candidates))] + list(tok_outs.values())
    idx = [list(range(len(o))) for o in outs[:len(br.candidates)]] + list(tok_idx.values())
    if br.residual_tokens:
        outs.append(outcomes.successes(bi, RESIDUAL))
        idx.append(list(range(len(outs[-1]))))
    ends = set(res.end_ids)
    ids = [c.token_id for c in br.candidates] + list(tok_outs)
    exact = tuple(s for s, tok in enumerate(ids) if tok in ends)
    return SlotOutcomes(outs, idx, tok_outs, bool(tok_outs) and bool(br.residual_tokens), exact)


@dataclass(frozen=True)
class NodeEstimate:
    """One branch's estimate of S and g* and the noise behind it: what every alignment row of the
    node shares. p, lp, S, g: ``[V]`` float64 (lp the student's log-probabilities; S the
    full-vocabulary success vector; g = p (S - V)); xids ``[K']`` the slots' token ids (candidates,
    then residual tokens with their own rate); S_slots ``[K'+1]`` their rates then the pooled rate
    (0 without a residual bucket); reps ``[B, K'+1]`` the replicates (`estimates.success_replicates`);
    fold the student folded onto those slots (None when p is not finite); noise `precision.NodeNoise`."""

    slots: SlotOutcomes
    p: torch.Tensor
    lp: torch.Tensor
    student_ok: bool
    ids: torch.Tensor
    xids: torch.Tensor
    S: torch.Tensor
    g: torch.Tensor
    S_slots: torch.Tensor
    reps: torch.Tensor
    fold: P.Folded | None
    noise: P.NodeNoise


def node_estimate(res: Resources, br: Branch, bi: int, outcomes: BranchOutcomes,
                  dists: dict[tuple[str, int], NodeDists]) -> NodeEstimate:
    """S, g*, the replicates and the noise of branch ``bi`` (`NodeEstimate`); `align` and
    `rounds` (which scores nodes between rounds) both read nodes through it."""
    cfg = res.cfg
    r, t = br.rollout, br.position
    lp = dists[(r.question_id, r.rollout_id)].student[br.node_index]
    p = lp.exp()
    student_ok = bool(torch.isfinite(lp).all())
    ids = torch.tensor([c.token_id for c in br.candidates])
    so = slot_outcomes(res, br, bi, outcomes)
    rest = outcomes.estimate(bi, RESIDUAL).estimate.rate if br.residual_tokens else None
    rates = torch.tensor([outcomes.estimate(bi, k).estimate.rate for k in range(len(br.candidates))], dtype=torch.float64)
    # residual_per_token: each token drawn for the residual bucket gets the mean of its own draws
    # (its slots join the candidates'); the pooled rate is left only for tokens never drawn
    xids = torch.tensor([c.token_id for c in br.candidates] + list(so.tokens), dtype=torch.long)
    xrates = torch.cat([rates, torch.tensor([sum(o) / len(o) for o in so.tokens.values()], dtype=torch.float64)])
    S = full_vocab_success(p.numel(), xids, xrates, rest)
    g = G.ideal_gradient(p, S)
    # precision: the node's success vector over [candidates..., outside] and its bootstrap replicates
    fold = P.Folded.of(p, xids) if student_ok else None
    reps = success_replicates(so.outs, B=cfg.branching.bootstrap_replicates, paired=cfg.branching.common_random_numbers,
                              seed=stable_seed(cfg.run.seed, "bootstrap", r.question_id, r.rollout_id, t),
                              rule=cfg.branching.uncertainty, pooled_last=so.pooled_last, indices=so.indices,
                              exact=so.exact)
    fill = 0.0 if rest is None else rest
    S_slots = torch.cat([xrates, torch.tensor([fill], dtype=torch.float64)])
    if not br.residual_tokens:
        reps = torch.cat([reps, torch.full((reps.shape[0], 1), fill, dtype=torch.float64)], dim=1)
    noise = P.node_noise(fold, S_slots, reps, p) if fold is not None else P.NodeNoise(math.nan, math.nan, math.nan, math.nan)
    return NodeEstimate(so, p, lp, student_ok, ids, xids, S, g, S_slots, reps, fold, noise)


@dataclass(frozen=True)
class RowEstimate:
    """One config x loss at a node: the descent direction d ``[V]``, cos(g*, d) over the full
    vocabulary and over the candidates, and the cosine's precision."""

    direction: torch.Tensor
    cos: G.Cosine
    cos_candidates: G.Cosine
    precision: P.CosinePrecision


def node_row_estimates(res: Resources, br: Branch, est: NodeEstimate, d: NodeDists) -> list[tuple[str, str, RowEstimate]]:
    """(config, loss, `RowEstimate`) for every teacher x loss of one node, in the alignment table's
    order: the rows `align` writes and `rounds` scores. d: the branch's rollout's `NodeDists`."""
    y = node_tokens(res, br.rollout)[br.position]  # y_t; at the stop node (t = T) the EOS the rollout ended with
    return [(teacher.name, loss, row_estimate(est, d.teachers[teacher.name][br.node_index], loss, y, res.cfg.distill.jsd_beta))
            for teacher in res.teachers for loss in res.cfg.distill.losses]


def row_estimate(est: NodeEstimate, lq: torch.Tensor, loss: str, y: int, beta: float) -> RowEstimate:
    """The row of one teacher (log-probabilities ``lq`` ``[V]``) and loss at a node; y the rollout's
    token there. A non-finite student or teacher distribution gives NaN with its reason."""
    if not (est.student_ok and bool(torch.isfinite(lq).all())):  # a runtime fault is a row with a reason, not a crash
        nan = G.Cosine(math.nan, "nonfinite_student_logits" if not est.student_ok else "nonfinite_teacher_logits")
        return RowEstimate(torch.full_like(est.p, math.nan), nan, nan, P.UNDEFINED)
    dvec = G.distill_direction(loss, est.lp, lq, token=torch.tensor(y), beta=beta)
    c_full = G.cosine(est.g, dvec)
    c_cand = G.cosine(G.restrict(est.g, est.ids), G.restrict(dvec, est.ids))
    prec = (P.cosine_precision(est.fold, est.S_slots, est.reps, est.fold.direction(est.p, est.xids, dvec), float(dvec.norm()))
            if math.isfinite(c_full.value) else P.UNDEFINED)
    return RowEstimate(dvec, c_full, c_cand, prec)


@dataclass(frozen=True)
class Alignment:
    """The nodes and alignment tables' rows of one batch of branches."""

    nodes: list[NodeRow]
    rows: list[AlignmentRow]


def align(res: Resources, branches: Sequence[Branch], outcomes: BranchOutcomes,
          dists: dict[tuple[str, int], NodeDists]) -> Alignment:
    """Node rows (one per candidate, plus the residual bucket) and alignment rows (one per node x
    config x loss) for every branch, in branch order."""
    cfg, tok = res.cfg, res.tokenizer
    node_rows: list[NodeRow] = []
    align_rows: list[AlignmentRow] = []
    params = "params" in cfg.alignment.space
    param_nodes: dict[tuple[str, int], list] = {}  # rollout -> [(ParamNode, first alignment row index)]
    for bi, br in enumerate(branches):
        r, t = br.rollout, br.position
        d = dists[(r.question_id, r.rollout_id)]
        est = node_estimate(res, br, bi, outcomes, dists)
        p, student_ok, ids, S, g, xids = est.p, est.student_ok, est.ids, est.S, est.g, est.xids
        V = p.numel()

        def node_row(cid: int, text: str, source: str, source_config: str, prob: float, e, faults) -> NodeRow:
            return NodeRow(
                question_id=r.question_id, rollout_id=r.rollout_id, position=t, candidate_id=cid, candidate_text=text,
                source=source, source_config=source_config, student_prob=prob, success=e.rate, n=e.n,
                successes=e.successes, truncated=e.truncated, grader_errors=faults[0], grader_timeouts=faults[1],
                ci_low=e.ci.low, ci_high=e.ci.high, selector=br.reason,
            )

        slots = [outcomes.estimate(bi, k) for k in range(len(br.candidates))]
        faults = [outcomes.grader_faults(bi, k) for k in range(len(br.candidates))]
        for c, s, f in zip(br.candidates, slots, faults):
            node_rows.append(node_row(c.token_id, tok.decode([c.token_id]), c.source, c.source_config, float(p[c.token_id]),
                                      s.estimate, f))
        n_cont = sum(s.estimate.n for s in slots)
        rest = rest_a = rest_b = None
        if br.residual_tokens:
            s, f = outcomes.estimate(bi, RESIDUAL), outcomes.grader_faults(bi, RESIDUAL)
            rest, rest_a, rest_b = s.estimate.rate, s.halves.a.rate, s.halves.b.rate
            node_rows.append(node_row(-1, "", "residual", "", br.residual_mass, s.estimate, f))
            faults.append(f)
            n_cont += s.estimate.n
        n_err, n_timeout = sum(f[0] for f in faults), sum(f[1] for f in faults)
        grading = [f"{kind}:{k}/{n_cont}" for kind, k in (("grader_errors", n_err), ("grader_timeouts", n_timeout)) if k]
        ungraded = n_cont > 0 and n_err + n_timeout == n_cont  # S = 0 everywhere because nothing was graded

        def why(c: G.Cosine, prefix: str = "") -> str:
            if ungraded and c.reason in ("zero_ideal", "ideal_below_noise"):
                return "all_continuations_failed_grading"
            return c.reason and prefix + c.reason
        value = float(G.node_value(p, S))
        tok_outs = est.slots.tokens
        if tok_outs and rest is not None and br.residual_mass > 0:  # the residual row's success: what the bucket adds to V
            drawn = [(float(p[tk]), sum(o) / len(o)) for tk, o in tok_outs.items()]
            eff = (sum(pt * st for pt, st in drawn) + (br.residual_mass - sum(pt for pt, _ in drawn)) * rest) / br.residual_mass
            node_rows[-1] = dataclasses.replace(node_rows[-1], success=eff)
        ha = torch.tensor([s.halves.a.rate for s in slots], dtype=torch.float64)
        hb = torch.tensor([s.halves.b.rate for s in slots], dtype=torch.float64)
        halves_ok = bool(torch.isfinite(ha).all() and torch.isfinite(hb).all()) and (
            rest is None or (math.isfinite(rest_a) and math.isfinite(rest_b))
        )
        split = math.nan  # from the pooled residual rate's halves, also under residual_per_token
        if halves_ok:
            g_a = G.ideal_gradient(p, full_vocab_success(V, ids, ha, rest_a))
            g_b = G.ideal_gradient(p, full_vocab_success(V, ids, hb, rest_b))
            split = float(g_a @ g_b)
        noise = est.noise
        y = node_tokens(res, r)[t]  # y_t; at the stop node (t = T) the EOS the rollout ended with
        first_row, dirs = len(align_rows), []
        adv = {tc.name: float(G.teacher_advantage(p, d.teachers[tc.name][br.node_index].exp(), S)) for tc in res.teachers}
        for config, loss, row in node_row_estimates(res, br, est, d):
            dvec, c_full, c_cand, prec = row.direction, row.cos, row.cos_candidates, row.precision
            dirs.append(dvec)
            reasons = [x for x in (why(c_full), why(c_cand, "candidates:"), *grading) if x]
            align_rows.append(AlignmentRow(
                question_id=r.question_id, rollout_id=r.rollout_id, position=t, token_id=y,
                token_text=tok.decode([y]), correct=r.correct, config=config, loss=loss,
                cos=c_full.value, cos_candidates=c_cand.value,
                norm_ideal=float(g.norm()), norm_distill=float(dvec.norm()),
                teacher_advantage=adv[config], value=value, reason=";".join(dict.fromkeys(reasons)),
                cos_se=prec.se, cos_low=prec.low, cos_high=prec.high, resolved=prec.resolved,
                snr_ideal=noise.snr, norm2_ideal_split=split, residual_mass=noise.residual_mass,
                pooling_bound=noise.pooling_bound,
                cos_params=math.nan, cos_params_se=math.nan, cos_params_sketch_se=math.nan,
                norm_ideal_params=math.nan, norm_distill_params=math.nan,
            ))
        if params and student_ok:
            param_nodes.setdefault((r.question_id, r.rollout_id), []).append(
                (_param_node(br, p, xids, est.S_slots, est.reps, torch.stack(dirs)), first_row))
    if param_nodes:
        _fill_params(res, branches, param_nodes, align_rows)
    return Alignment(node_rows, align_rows)


def _param_node(br: Branch, p: torch.Tensor, xids: torch.Tensor, S_slots: torch.Tensor, reps: torch.Tensor,
                dirs: torch.Tensor):
    """The parameter-space inputs of one node: the slots' token ids (candidates, then residual tokens
    with their own rate), S per basis vector (those slots, then the pooled rate of every other token,
    0 where no residual was sampled, as `full_vocab_success` fills it), the same bootstrap replicates
    the logit cosine's interval uses ([B, K'+1], `estimates.success_replicates`), and the C*L
    directions."""
    from gradalign import param_space as PS

    row = len(br.rollout.prompt_ids) + br.position - 1  # logits row predicting completion token t
    return PS.ParamNode(row, p, xids, S_slots, dirs, reps)


def _fill_params(res: Resources, branches: Sequence[Branch], param_nodes: dict, align_rows: list[AlignmentRow]) -> None:
    """cos_params and its norms/SEs into `align_rows` (in place), one `param_space` call per rollout."""
    from gradalign import param_space as PS
    from gradalign.sampling.protocol import stable_seed

    cfg, acfg = res.cfg, res.cfg.alignment
    scope = PS.resolve_scope(res.student, acfg.scope)
    rollouts = {(br.rollout.question_id, br.rollout.rollout_id): br.rollout for br in branches}
    for key, items in param_nodes.items():
        r = rollouts[key]
        ids = torch.tensor(list(r.prompt_ids) + list(r.token_ids), dtype=torch.long)
        out = PS.rollout_param_cosines(
            res.student, ids, [nd for nd, _ in items], scope, method=acfg.method, k=acfg.k, memory_mb=acfg.memory_mb,
            scale=1.0 / cfg.sampling.temperature, seed=stable_seed(cfg.run.seed, "param_sketch", *key))
        for (_, first), pc in zip(items, out):
            for j in range(pc.cos.numel()):
                a = align_rows[first + j]
                c = float(pc.cos[j])
                extra = ""
                if not math.isfinite(c) and "nonfinite" not in a.reason:
                    extra = "params:zero_ideal" if not pc.norm_ideal >= 1e-12 else "params:zero_distill"
                reason = ";".join(dict.fromkeys(x for x in (*a.reason.split(";"), extra) if x))
                align_rows[first + j] = dataclasses.replace(
                    a, cos_params=c, cos_params_se=float(pc.se[j]), cos_params_sketch_se=float(pc.sketch_se[j]),
                    norm_ideal_params=pc.norm_ideal, norm_distill_params=float(pc.norm_distill[j]), reason=reason)
