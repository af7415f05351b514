"""Teacher and student scoring: log-probabilities over the student's exact token ids.

Owns: batched forward passes of a model over (prefix ids + completion ids) down to its final hidden
rows (`forward_rows`), turning those rows into per-token statistics chunk by chunk along T on the
model's device (`score` for one model, `pair_stats` for a student/teacher pair: log-probs,
entropies, KL both ways, JSD, distribution cosine), and keeping full-vocabulary log-prob vectors only
at the branched node positions. Also owns restricting a model's distribution to the tokenizer's ids
(`restrict_to_vocab`) and measuring the mass its padded LM-head rows carried. Does not own the
divergence formulas (`gradients`) or which positions are nodes (`selectors`).

Memory (the reason for the split into rows and chunks): a forward keeps only the last (T+1)
positions' final hidden rows, [T, H] per sequence (H = hidden size, ~1-4k, where V is 49k-152k), on
the model's device. The LM head is applied to `chunk` positions at a time (`chunk_rows`: sized so
a pair's float32 [chunk, V] temporaries, `LOGIT_TEMPORARIES` blocks, stay under `max_logit_bytes`), each chunk reduced
to [chunk] statistics at once; so the logits memory is bounded by the budget whatever T is, no
[T, V] tensor exists on the device or on the host, and the host receives [T] vectors and the
[n_nodes, V] node rows only. A sequence longer than `max_batch_tokens` is prefilled in slices of
that many positions through the model's KV cache (`forward_rows`), so its activations are bounded by
that slice too; its KV cache (2 x layers x kv_heads x head_dim x T) is the one part that grows with T
(`gradalign.memory` prices it).

Precision: per-token statistics are float32 (tested against the float64 reference on tiny models:
tests/integration/test_scoring_chunks.py states the tolerances); node rows are float64 log_softmax of the
float32 logits, as the gradient math downstream expects.

Shapes: for a sequence with prefix length P and completion length T, the logits at index P-1+t
predict completion token t; `logp[t]` is log softmax(logits[P-1+t][:V_tok] / temperature).
V_head: rows of the model's LM head (its logits' width); V_tok = len(tokenizer), the ids every
model of a run shares (ids 0..V_tok-1). V_head >= V_tok: heads are often padded for kernel
alignment (Qwen2.5-7B: 152,064 rows for 151,665 ids). Every returned distribution is over V_tok,
renormalised, so a padded teacher compares id by id with an unpadded student (and vice versa).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

log = logging.getLogger(__name__)


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

    logp_full: [T, V_tok] float32 on CPU — only when `keep_full` was asked (tests and small
    inspections; the pipeline never asks: `pair_stats` computes divergences chunk by chunk);
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

LOGIT_TEMPORARIES = 24
"""How many float32 [chunk, V_head] tensors' worth of memory a pair chunk takes at its peak: the
divisor `chunk_rows` uses to keep a chunk under its byte budget. About a dozen are alive at once (two
logit blocks, two log-prob blocks, p, q, the JSD mixture, the elementwise products of KL/JSD/cosine);
the allocator's slack doubles that in peak RSS: with 12, bench/bench_scoring_long.py measured a
peak of ~1.8x the 256 MiB budget on a 152k head, hence 24."""


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


def chunk_rows(vocab: int, max_logit_bytes: int, temporaries: int = LOGIT_TEMPORARIES) -> int:
    """Positions per statistics chunk: `temporaries` float32 [chunk, vocab] tensors fit in
    `max_logit_bytes` (at least 1)."""
    return max(1, int(max_logit_bytes) // (4 * int(vocab) * temporaries))


# --------------------------------------------------------------------------- forward to final rows


@dataclass(frozen=True)
class Rows:
    """One scored sequence's final rows at its completion positions, on the model's device.

    rows: [T, H] final hidden states (after the last norm) when the model splits into body + LM
    head, else [T, V_head] logits (models that do not split: tests' fakes, exotic heads);
    `head` maps a [c, ...] slice of `rows` to float32 logits [c, V_head].
    """

    rows: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor]
    v_head: int  # V_head, the width of `head`'s logits

    def logits(self, sl: slice | list) -> torch.Tensor:
        """float32 logits [c, V_head] of the positions `sl` (an inference tensor)."""
        with torch.inference_mode():
            return self.head(self.rows[sl])


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x.float()


@dataclass(frozen=True)
class _Split:
    body: object  # the model minus its LM head: forward(...) -> .last_hidden_state [B, L, H]
    head: Callable[[torch.Tensor], torch.Tensor]  # [..., H] -> float32 logits [..., V_head]


_SPLITS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _head_fn(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The LM head as the model's own forward applies it: linear layer, then the config's final
    logit scaling (Granite `logits_scaling` divides, Cohere `logit_scale` multiplies) and soft-capping
    (Gemma's `final_logit_softcapping`)."""
    lm = model.get_output_embeddings()
    cfg = getattr(model, "config", None)
    cap = getattr(cfg, "final_logit_softcapping", None)
    div = getattr(cfg, "logits_scaling", None)
    mul = getattr(cfg, "logit_scale", None)

    def head(h: torch.Tensor) -> torch.Tensor:
        z = lm(h).float()
        if div:
            z = z / div
        if mul:
            z = z * mul
        if cap:
            z = torch.tanh(z / cap) * cap
        return z

    return head


def split_model(model) -> _Split | None:
    """Body + head of a transformers causal LM, checked once per model against its own forward on
    a short input (max |logit difference| <= 1e-3 of the logits' scale); None when the model does
    not split (no `base_model`, no linear head) or the check fails: scoring then keeps logits."""
    try:
        return _SPLITS[model]
    except (KeyError, TypeError):
        pass
    split = None
    body = getattr(model, "base_model", None)
    lm = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is not None and body is not model and isinstance(lm, torch.nn.Linear):
        head = _head_fn(model)
        dev = next(model.parameters()).device
        ids = torch.tensor([[0, 1, 2, 3]], device=dev) % lm.weight.shape[0]
        try:
            with torch.inference_mode():
                want = model(input_ids=ids, logits_to_keep=2).logits.float()
                got = head(body(input_ids=ids).last_hidden_state[:, -2:])
            scale = float(want.abs().max()) + 1.0
            if float((want - got).abs().max()) <= 1e-3 * scale:
                split = _Split(body, head)
            else:
                log.warning("%s: body + LM head do not reproduce its logits; scoring keeps full logits per batch",
                            type(model).__name__)
        except Exception as e:  # noqa: BLE001 - any failure means: do not split
            log.warning("%s: cannot split into body + LM head (%s); scoring keeps full logits per batch",
                        type(model).__name__, str(e).splitlines()[0] if str(e) else type(e).__name__)
    try:
        _SPLITS[model] = split
    except TypeError:
        pass
    return split


def _batches(reqs: Sequence[ScoreRequest], max_tokens: int, max_row_elems: int, width: int):
    """Group requests (sorted by length) so that each forward stays under `max_tokens` padded
    tokens and its kept rows (rows x (max completion + 1) x width) under `max_row_elems`. A request
    longer than either bound forms a batch of its own (`forward_rows` prefills it in slices)."""
    order = sorted(range(len(reqs)), key=lambda i: (len(reqs[i].prefix) + len(reqs[i].completion), len(reqs[i].completion)))
    batch, width_, tmax = [], 0, 0
    for i in order:
        L = len(reqs[i].prefix) + len(reqs[i].completion)
        T = len(reqs[i].completion)
        w, t = max(width_, L), max(tmax, T)
        if batch and (w * (len(batch) + 1) > max_tokens or (len(batch) + 1) * (t + 1) * width > max_row_elems):
            yield batch
            batch, w, t = [], L, T
        batch.append(i)
        width_, tmax = w, t
    if batch:
        yield batch


def forward_rows(model, reqs: Sequence[ScoreRequest], *, pad_id: int = 0, max_batch_tokens: int = 16384,
                 max_row_bytes: int = 256 << 20) -> list[Rows]:
    """Forward `model` over each request -> its completion positions' final rows (`Rows`), on the
    model's device.

    Sequences are LEFT-padded (explicit position ids from the attention mask) so every row's
    completion sits at the end. Batches hold at most `max_batch_tokens` padded tokens (one longer
    sequence runs alone); a batch wider than that is prefilled `max_batch_tokens // rows` positions
    at a time through the KV cache, keeping only the last (max completion + 1) positions' rows, so
    no forward ever holds more than `max_batch_tokens` positions of activations. Models that do not
    split into body + head (`split_model`) run whole and return logits rows [T, V_head].
    """
    device = next(model.parameters()).device
    split = split_model(model)
    v_head = int(model.get_output_embeddings().weight.shape[0])
    width_of_row = int(model.get_output_embeddings().weight.shape[1]) if split else v_head
    out: list[Rows | None] = [None] * len(reqs)
    for idx in _batches(reqs, max_batch_tokens, max(1, max_row_bytes // 4), width_of_row):
        seqs = [list(reqs[i].prefix) + list(reqs[i].completion) for i in idx]
        width = max(len(s) for s in seqs)
        tmax = max(len(reqs[i].completion) for i in idx)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
        with torch.inference_mode():
            if split is None:
                rows = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=tmax + 1).logits
                head = _identity
            else:
                head = split.head
                step = max(1, max_batch_tokens // len(seqs))
                if width <= step:
                    rows = split.body(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state[:, -(tmax + 1):]
                else:
                    rows = _prefill_in_slices(split.body, ids, mask, pos, step, keep=tmax + 1)
        for r, i in enumerate(idx):
            T = len(reqs[i].completion)
            off = tmax - T  # kept index off + t predicts completion token t
            out[i] = Rows(rows[r, off : off + T], head, v_head)
        del rows
    return out  # type: ignore[return-value]


def _prefill_in_slices(body, ids, mask, pos, step: int, *, keep: int) -> torch.Tensor:
    """Final hidden rows of the last `keep` positions of a [B, L] batch, computed `step` positions
    at a time with a KV cache (the attention mask always covers everything seen so far)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    L = ids.shape[1]
    kept = []
    for a in range(0, L, step):
        b = min(L, a + step)
        h = body(input_ids=ids[:, a:b], attention_mask=mask[:, :b], position_ids=pos[:, a:b], past_key_values=cache,
                 use_cache=True).last_hidden_state
        lo = max(a, L - keep)
        if lo < b:
            kept.append(h[:, lo - a :])
    return torch.cat(kept, dim=1)


# --------------------------------------------------------------------------- statistics by chunks


def _chunk_logp(rows: Rows, sl: slice, temperature: float, n_tok: int):
    z = rows.logits(sl) / temperature  # [c, V_head] float32
    logp, padded = restrict_to_vocab(z, n_tok)
    return logp, padded


def node_logp(rows: Rows, nodes: Sequence[int], temperature: float, n_tok: int) -> torch.Tensor:
    """[n_nodes, V_tok] float64 log-probs at `nodes` (the float32 logits, widened, then restricted)."""
    if not nodes:
        return torch.zeros((0, n_tok), dtype=torch.float64)
    with torch.inference_mode():
        z = rows.logits(list(nodes)).double() / temperature
        return restrict_to_vocab(z, n_tok)[0].cpu()


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
    """Forward `model` over each request -> Scored each (one model's own statistics).

    `forward_rows`, then per sequence the LM head chunk by chunk (`chunk_rows` positions under
    `max_logit_bytes`): token log-prob, entropy and padded mass in float32, node rows in float64.
    With `keep_full` the [T, V_tok] float32 log-prob matrix is also returned on CPU (tests only).
    `vocab_size` is V_tok (the tokenizer's length); None means the head's rows (no restriction).
    """
    from gradalign.gradients import entropy

    V = model.get_output_embeddings().weight.shape[0]  # V_head: width of the logits
    n_tok = V if vocab_size is None else int(vocab_size)
    if n_tok > V:
        raise ValueError(f"the model's LM head has {V} rows, fewer than the tokenizer's {n_tok} ids")
    chunk = chunk_rows(V, max_logit_bytes, temporaries=LOGIT_TEMPORARIES // 2)
    out = []
    for req, rows in zip(reqs, forward_rows(model, reqs, pad_id=pad_id, max_batch_tokens=max_batch_tokens,
                                            max_row_bytes=max_logit_bytes)):
        T = len(req.completion)
        tok = torch.tensor(req.completion, dtype=torch.long, device=rows.rows.device)
        lp, ent, full = torch.zeros(T), torch.zeros(T), []
        padded = 0.0
        with torch.inference_mode():
            for a in range(0, T, chunk):
                sl = slice(a, min(T, a + chunk))
                logp, pm = _chunk_logp(rows, sl, temperature, n_tok)
                lp[sl] = logp.gather(-1, tok[sl, None])[:, 0].cpu()
                ent[sl] = entropy(logp).cpu()
                if n_tok < V:
                    padded = max(padded, float(pm.max()))
                if keep_full:
                    full.append(logp.cpu())
            nodes = node_logp(rows, req.nodes, temperature, n_tok)
        out.append(Scored(lp, ent, nodes, (torch.cat(full) if full else torch.zeros((0, n_tok))) if keep_full else None,
                          padded))
    return out


@dataclass(frozen=True)
class PairStats:
    """A student/teacher pair's per-token statistics over one completion, [T] float32 each on CPU
    (p = student, q = teacher, both softmax(z / temperature) over V_tok): log-probs of the tokens,
    entropies, KL(p||q), KL(q||p), generalized JSD (TRL convention, `gradients.jsd`) and the cosine
    of the probability vectors; the largest padded-head mass of each model over the positions."""

    student_logprob: torch.Tensor
    student_entropy: torch.Tensor
    teacher_logprob: torch.Tensor
    teacher_entropy: torch.Tensor
    kl_pq: torch.Tensor
    kl_qp: torch.Tensor
    jsd: torch.Tensor
    dist_cos: torch.Tensor
    student_padded: float
    teacher_padded: float


def pair_stats(student: Rows, teacher: Rows, completion: Sequence[int], *, temperature: float, beta: float, vocab_size: int,
               max_logit_bytes: int = 256 << 20, teacher_temperature: float | None = None) -> PairStats:
    """Token statistics of a student/teacher pair over `completion` (the teacher's softmax at
    `teacher_temperature`, None = `temperature`), chunk by chunk along T on the
    models' device (the teacher's rows move to the student's device if they differ), float32;
    never more than `chunk_rows(V_head)` positions of logits alive."""
    from gradalign import gradients as G

    T = len(completion)
    dev = student.rows.device
    V = max(student.v_head, teacher.v_head)
    chunk = chunk_rows(V, max_logit_bytes)
    tok = torch.tensor(list(completion), dtype=torch.long, device=dev)
    cols = {k: torch.zeros(T) for k in ("slp", "sent", "tlp", "tent", "kpq", "kqp", "jsd", "cos")}
    s_pad = t_pad = 0.0
    with torch.inference_mode():
        for a in range(0, T, chunk):
            sl = slice(a, min(T, a + chunk))
            lp, sp = _chunk_logp(student, sl, temperature, vocab_size)
            lq, tp = _chunk_logp(teacher, sl, teacher_temperature or temperature, vocab_size)
            lq = lq.to(dev)
            s_pad, t_pad = max(s_pad, float(sp.max())), max(t_pad, float(tp.max()))
            y = tok[sl, None]
            for k, v in (("slp", lp.gather(-1, y)[:, 0]), ("tlp", lq.gather(-1, y)[:, 0]), ("sent", G.entropy(lp)),
                         ("tent", G.entropy(lq)), ("kpq", G.kl(lp, lq)), ("kqp", G.kl(lq, lp)),
                         ("jsd", G.jsd(lp, lq, beta)), ("cos", G.distribution_cosine(lp, lq))):
                cols[k][sl] = v.float().cpu()
            del lp, lq
    return PairStats(cols["slp"], cols["sent"], cols["tlp"], cols["tent"], cols["kpq"], cols["kqp"], cols["jsd"],
                     cols["cos"], s_pad, t_pad)
