"""Stage 3: the student's and every teacher's distributions over each rollout.

Owns: `score_rollouts`: one forward pass per rollout for the student and per (rollout, config) for
the teachers over the student's exact token ids (a teacher sees its rendered context + the prompt
before them); the per-token rows of the tokens table (log-probs, entropies, KL both ways, JSD,
distribution cosine, built column-wise: one list per `tables.TokenRow` field, from
`gradalign.scoring.pair_stats`, chunked along T); the full
full-vocabulary log-probs at branched positions (`NodeDists`) for the later stages; the hash of
each teacher's token prefix per question (manifest); and, per rollout, how many of its scored
sequences (under the student or a config) put more than `scoring.PADDED_MASS_TOLERANCE` on padded
LM-head rows (a fault the engine counts in the manifest). Does not own the forward pass, its memory
bounds and the restriction to the tokenizer's ids (`gradalign.scoring.score`) nor the divergence
formulas (`gradalign.gradients`).

The stop node (`branching.eos_node`, a rollout that ended with EOS): the rollout is scored over its
completion plus that EOS (`rollouts.node_tokens`), so position T has the node's distributions (the
logits after y_{T-1}) and a tokens-table row of its own (the EOS's log-probs, entropies and
divergences at the stop decision); one more input position per forward, nothing else changes.

Shapes: T completion positions of a rollout (T + 1 with the stop node), V = V_tok = len(tokenizer), the ids all models share
(a model's LM head may have more rows, V_head, as padding: they are cut off and the rest
renormalised, `scoring.restrict_to_vocab`); node log-probs are [n_nodes, V_tok], temperature-scaled
(z / tau) like the sampler's: the student's at `sampling.temperature`, the teachers' at
`distill.teacher_temperature` (0 = the same tau).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from gradalign.pipeline.resources import Resources
from gradalign.pipeline.rollouts import Rollout, node_tokens
from gradalign.selectors import SelectionPlan
from gradalign.tables import TokenRow

log = logging.getLogger(__name__)

ROWS_BYTES = 512 << 20
"""Bound on the student's final hidden rows ([T, H] per rollout) kept alive while the teachers of a
group of rollouts are scored."""


@dataclass(frozen=True)
class NodeDists:
    """Log-probs over the tokenizer's ids at one rollout's branched nodes, in plan order."""

    student: torch.Tensor  # [n_nodes, V_tok]
    teachers: dict  # config name -> [n_nodes, V_tok]


@dataclass(frozen=True)
class Scores:
    """What scoring hands on: the tokens table's columns, node distributions, prefix hashes and
    padded-head faults."""

    tokens: dict  # {TokenRow field: list}, one entry per rollout token x config
    dists: dict  # (question_id, rollout_id) -> NodeDists
    prefix_hashes: dict  # (question_id, config) -> blake2b of the teacher's prefix token ids
    # (question_id, rollout_id) -> scored sequences of the rollout (student, each config) whose model put
    # more than scoring.PADDED_MASS_TOLERANCE on padded LM-head rows at some position (0 when none)
    padded_faults: dict = dataclasses.field(default_factory=dict)


def score_rollouts(res: Resources, rollouts: Sequence[Rollout], plans: Sequence[SelectionPlan]) -> Scores:
    """Score every rollout under the student and every config; keep full distributions at nodes.

    Memory: a group of rollouts keeps the student's final hidden rows ([T, H] each, on its device)
    while each teacher's rows are computed; the per-token statistics come from
    `scoring.pair_stats`, chunk by chunk along T, so no [T, V] matrix exists anywhere."""
    from gradalign.scoring import PADDED_MASS_TOLERANCE, ScoreRequest, forward_rows, node_logp, pair_stats
    from gradalign.tasks import encode_prefix, prefix_options, render

    cfg, tok = res.cfg, res.tokenizer
    tau, beta = cfg.sampling.temperature, cfg.distill.jsd_beta
    tau_q = cfg.distill.teacher_temperature or tau  # teachers' softmax temperature (0 = the student's)
    cols: dict[str, list] = {f.name: [] for f in dataclasses.fields(TokenRow)}
    texts: dict[int, str] = {}  # token id -> decoded text, once per id
    prefix_hashes: dict[tuple[str, str], str] = {}
    nodes_of = [p.positions for p in plans]
    ys = [node_tokens(res, r) for r in rollouts]  # the scored tokens: the completion (+ its EOS, stop node)
    dists: dict[tuple[str, int], NodeDists] = {}
    n_tok = len(tok)  # V_tok: every distribution is over the tokenizer's ids (padded head rows cut off)
    padded_faults = {(r.question_id, r.rollout_id): 0 for r in rollouts}
    worst: dict[str, float] = {}  # model (student / config) -> largest padded mass over its faulty sequences

    def padded(r, who: str, mass: float) -> None:
        if mass > PADDED_MASS_TOLERANCE:
            padded_faults[(r.question_id, r.rollout_id)] += 1
            worst[who] = max(worst.get(who, 0.0), mass)
    # rollouts scored together: bounds the student's [T, H] rows alive at once (4 bytes a value at most)
    H = int(res.student.get_output_embeddings().weight.shape[1])
    t_max = max((len(y) for y in ys), default=1)
    group = max(1, min(16, (ROWS_BYTES // (4 * max(t_max, 1) * H))))
    for g0 in range(0, len(rollouts), group):
        idx = list(range(g0, min(g0 + group, len(rollouts))))
        sreq = [ScoreRequest(rollouts[i].prompt_ids, ys[i], nodes_of[i]) for i in idx]
        s_rows = forward_rows(res.student, sreq, pad_id=tok.pad_token_id)
        s_lists = {}
        for k, i in enumerate(idx):
            r = rollouts[i]
            dists[(r.question_id, r.rollout_id)] = NodeDists(node_logp(s_rows[k], nodes_of[i], tau, n_tok), {})
            ids = list(ys[i])
            for t in ids:
                if t not in texts:
                    texts[t] = tok.decode([t])
            branched = set(nodes_of[i])
            s_lists[i] = (ids, [texts[t] for t in ids], [p in branched for p in range(len(ids))])
        student_padded_seen: set[int] = set()
        for teacher in res.teachers:
            treq = []
            for i in idx:
                r = rollouts[i]
                ctx = render(teacher.context, r.row, what=f"context of teacher {teacher.name!r}", row_id=r.question_id)
                ids = encode_prefix(tok, ctx, r.prompt_text, **prefix_options(cfg.task))
                prefix_hashes[(r.question_id, teacher.name)] = hashlib.blake2b(str(ids).encode(), digest_size=8).hexdigest()
                treq.append(ScoreRequest(ids, ys[i], nodes_of[i]))
            t_rows = forward_rows(teacher.model, treq, pad_id=tok.pad_token_id)
            for k, i in enumerate(idx):
                r = rollouts[i]
                T = len(ys[i])
                dists[(r.question_id, r.rollout_id)].teachers[teacher.name] = node_logp(t_rows[k], nodes_of[i], tau_q, n_tok)
                ps = pair_stats(s_rows[k], t_rows[k], ys[i], temperature=tau, teacher_temperature=tau_q, beta=beta,
                                vocab_size=n_tok)
                if i not in student_padded_seen:  # the student's sequence counts once, whatever the teachers
                    student_padded_seen.add(i)
                    padded(r, "student", ps.student_padded)
                padded(r, f"config {teacher.name!r}", ps.teacher_padded)
                if T == 0:
                    continue
                ids, txt, br = s_lists[i]
                cols["question_id"] += [r.question_id] * T
                cols["rollout_id"] += [r.rollout_id] * T
                cols["config"] += [teacher.name] * T
                cols["position"] += range(T)
                cols["token_id"] += ids
                cols["token_text"] += txt
                cols["student_logprob"] += ps.student_logprob.tolist()
                cols["student_entropy"] += ps.student_entropy.tolist()
                cols["teacher_logprob"] += ps.teacher_logprob.tolist()
                cols["teacher_entropy"] += ps.teacher_entropy.tolist()
                cols["kl_pq"] += ps.kl_pq.tolist()
                cols["kl_qp"] += ps.kl_qp.tolist()
                cols["jsd"] += ps.jsd.tolist()
                cols["dist_cos"] += ps.dist_cos.tolist()
                cols["branched"] += br
            del t_rows
        del s_rows
    if worst:
        log.warning(
            "padded LM-head rows (ids >= the tokenizer's %d) carried more than %g softmax mass in %d scored sequences "
            "(largest: %s); distributions were renormalised over the tokenizer's ids and each such sequence is "
            "counted in the manifest's faults (padded_head_mass)", n_tok, PADDED_MASS_TOLERANCE,
            sum(padded_faults.values()), ", ".join(f"{w} {m:.3g}" for w, m in worst.items()))
    return Scores(cols, dists, prefix_hashes, padded_faults)
