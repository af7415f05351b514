"""Teacher and student scoring: log-probabilities over the student's exact token ids.

Owns: batched forward passes of a model over (prefix ids + completion ids), turning logits at the
completion positions into per-token statistics, and keeping full-vocabulary log-prob vectors only
at the branched node positions. Never holds T x V x C logits: each batch of sequences is reduced to
per-token statistics before the next one, and only node rows [n_nodes, V] survive.
Also owns restricting a model's distribution to the tokenizer's ids (`restrict_to_vocab`) and
measuring the mass its padded LM-head rows carried. Does not own the divergence math (`gradients`)
or which positions are nodes (`selectors`).

Shapes: for a sequence with prefix length P and completion length T, the logits at index P-1+t
predict completion token t; `logp[t]` is log softmax(logits[P-1+t][:V_tok] / temperature).
V_head: rows of the model's LM head (its logits' width); V_tok = len(tokenizer), the ids every
model of a run shares (ids 0..V_tok-1). V_head >= V_tok: heads are often padded for kernel
alignment (Qwen2.5-7B: 152,064 rows for 151,665 ids). Every returned distribution is over V_tok,
renormalised, so a padded teacher compares id by id with an unpadded student (and vice versa).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class ScoreRequest:
    """One sequence to score: the model's own prefix (prompt, or context + prompt) and the
    student's completion ids; `nodes` are completion positions whose full log-probs are kept."""

    prefix: tuple[int, ...]
    completion: tuple[int, ...]
    nodes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Scored:
    """log_softmax rows at the completion positions, reduced.

    logp_full: [T, V_tok] float32 on CPU — only when `keep_full` was asked (student, for divergences);
    token_logprob: [T] log p(y_t); entropy: [T]; node_logp: [len(nodes), V_tok] float64;
    padded_mass: the largest softmax mass the model put on padded ids (V_tok..V_head-1) at any
    completion position, before restriction (0.0 when the head is not padded).
    """

    token_logprob: torch.Tensor
    entropy: torch.Tensor
    node_logp: torch.Tensor
    logp_full: torch.Tensor | None
    padded_mass: float = 0.0


PADDED_MASS_TOLERANCE = 1e-3
"""A scored sequence whose model put more than this softmax mass on padded LM-head rows at any
position is a recorded fault (the distribution was renormalised over the tokenizer's ids, so the
numbers are still defined, but the model was not a distribution over them). Trained models give
their padded rows ~0 mass; rows never trained (zero rows: logit 0) can take real mass where the
model is unsure."""


def restrict_to_vocab(z: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-softmax of logits `z` [..., V_head] over the first `vocab_size` (V_tok) ids, renormalised,
    and the softmax mass the full row put on the padded ids V_tok..V_head-1 -> ([..., V_tok], [...]).

    With V_head == V_tok this is exactly `log_softmax(z)` and a zero mass. V_head < V_tok is an
    error: the model cannot score ids its head does not have.
    """
    V = z.shape[-1]
    if vocab_size > V:
        raise ValueError(f"vocab_size {vocab_size} exceeds the logits' width {V}")
    if vocab_size == V:
        return torch.log_softmax(z, dim=-1), torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    kept = z[..., :vocab_size]
    mass = torch.exp(torch.logsumexp(z[..., vocab_size:], dim=-1) - torch.logsumexp(z, dim=-1))
    return torch.log_softmax(kept, dim=-1), mass


def _batches(reqs: Sequence[ScoreRequest], max_tokens: int, max_logit_elems: int, vocab: int):
    """Group requests (sorted by length) so that each forward stays under `max_tokens` padded
    tokens and its kept logits (rows x (max completion + 1) x V) under `max_logit_elems`."""
    order = sorted(range(len(reqs)), key=lambda i: (len(reqs[i].prefix) + len(reqs[i].completion), len(reqs[i].completion)))
    batch, width, tmax = [], 0, 0
    for i in order:
        L = len(reqs[i].prefix) + len(reqs[i].completion)
        T = len(reqs[i].completion)
        w, t = max(width, L), max(tmax, T)
        if batch and (w * (len(batch) + 1) > max_tokens or (len(batch) + 1) * (t + 1) * vocab > max_logit_elems):
            yield batch
            batch, w, t = [], L, T
        batch.append(i)
        width, tmax = w, t
    if batch:
        yield batch


def score(
    model,
    reqs: Sequence[ScoreRequest],
    *,
    temperature: float = 1.0,
    pad_id: int = 0,
    keep_full: bool = False,
    vocab_size: int | None = None,
    max_batch_tokens: int = 16384,
    max_logit_bytes: int = 256 << 20,
) -> list[Scored]:
    """Forward `model` over each request -> Scored each.

    Sequences are LEFT-padded (explicit position ids from the attention mask) so every row's
    completion sits at the end, and only the last (max completion + 1) positions' logits are
    computed (`logits_to_keep`): the logits tensor is rows x (T+1) x V, never the full sequence,
    and batches are sized so it stays under `max_logit_bytes` (large vocabularies get small batches).
    With `keep_full`, the [T, V_tok] log-prob matrix of each sequence is returned (float32, CPU) so the
    caller can compute divergences against teachers one sequence at a time.
    `vocab_size` is V_tok (the tokenizer's length); None means the head's rows (no restriction).
    """
    from gradalign.gradients import entropy

    device = next(model.parameters()).device
    V = model.get_output_embeddings().weight.shape[0]  # V_head: width of the logits
    n_tok = V if vocab_size is None else int(vocab_size)
    if n_tok > V:
        raise ValueError(f"the model's LM head has {V} rows, fewer than the tokenizer's {n_tok} ids")
    out: list[Scored | None] = [None] * len(reqs)
    for idx in _batches(reqs, max_batch_tokens, max_logit_bytes // 4, V):
        seqs = [list(reqs[i].prefix) + list(reqs[i].completion) for i in idx]
        width = max(len(s) for s in seqs)
        tmax = max(len(reqs[i].completion) for i in idx)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                logits_to_keep=tmax + 1,
            ).logits  # [B, tmax + 1, V]: positions width-tmax-1 .. width-1
        for r, i in enumerate(idx):
            req = reqs[i]
            T = len(req.completion)
            if T == 0:
                empty = torch.zeros(0)
                out[i] = Scored(empty, empty, torch.zeros((0, n_tok), dtype=torch.float64),
                                torch.zeros((0, n_tok)) if keep_full else None)
                continue
            off = tmax - T  # logits at kept index off + t predict completion token t
            z = logits[r, off : off + T].double() / temperature  # [T, V_head]
            logp, padded = restrict_to_vocab(z, n_tok)  # [T, V_tok], [T]
            tok = torch.tensor(req.completion, dtype=torch.long, device=logp.device)
            token_lp = logp.gather(-1, tok[:, None])[:, 0]
            node_lp = logp[list(req.nodes)] if req.nodes else logp[:0]
            out[i] = Scored(
                token_logprob=token_lp.float().cpu(),
                entropy=entropy(logp).float().cpu(),
                node_logp=node_lp.cpu(),
                logp_full=logp.float().cpu() if keep_full else None,
                padded_mass=float(padded.max()) if n_tok < V else 0.0,
            )
        del logits
    return out  # type: ignore[return-value]
