"""Parameter-space alignment: Gram matrices of J_t^T v for a node's logit-space vectors.

Owns: which parameters a scope selects (`resolve_scope`), the exact Gram matrix of the
parameter-space vectors ``J_t^T v`` of every node of one rollout (`exact_grams`: one forward, batched
VJPs chunked to a memory budget, per-module Gram accumulation, never a full per-vector gradient),
the sketched Gram (`sketch_grams`: k seeded random parameter tangents, forward-mode JVPs at every
position at once), and the cheap algebra from a node's Gram to ``cos_params``, its norms and
standard errors (`node_basis`, `ideal_coefficients`, `param_cosines`; the replicates come from `estimates.success_replicates`).
Does NOT own the logit-space formulas (`gradalign.gradients`), the success estimates
(`gradalign.estimates`), nor where nodes come from (`gradalign.pipeline.alignment` calls this).

Definitions. At a node (completion position t, logits ``z_t``, Jacobian ``J_t = dz_t / dtheta`` over
the scope's parameters), a logit-space vector ``v`` ``[V]`` maps to ``J_t^T v`` ``[P]``; ``cos_params =
cos(J_t^T g*, J_t^T d)``. The vectors are w.r.t. the temperature-scaled logits ``z / tau``; the
parameter gradient is ``(1 / tau) J_t^T v``, which `exact_grams` and `sketch_grams` apply (`scale`),
so the norms are those of real parameter gradients (cosines do not depend on it).

Why a basis: the estimated S is one rate per candidate (K) plus ONE residual rate for every other
token, so ``g* = p (S - V) = sum_j (S_j - V) b_j`` over the K+1 fixed vectors ``b_k = p_k e_k`` and
``b_res = p 1[token not in K]`` (`node_basis`). ``J^T`` is linear, so the Gram matrix of
``{J^T b_j} u {J^T d_c}`` (size K+1+C*L) gives ``cos_params`` for any replicate of S by algebra
(`param_cosines`): propagating the uncertainty of S costs no model pass.

How the exact Gram is built. Every vector enters the network at the final hidden state:
``J_t^T v`` restricted to parameters below the LM head is ``(dh_t/dtheta)^T u`` with ``u = W_U^T v``
(``[d_model]``), so one batched backward from ``h`` (cotangents ``[R, L, d]``, nonzero at each node's
row) gives, per module in scope, the output gradients ``Delta_r`` ``[T, out]``. A linear layer's weight
gradient is ``Delta_r^T X``; its Gram entry ``<Delta_r^T X, Delta_s^T X>_F`` is computed either by writing
the gradients out (``R T out in`` flops) or as ``<Delta_r, (X X^T) Delta_s>`` (``R T^2 (out) + T^2 in``),
whichever is cheaper for that layer's T and width. Embeddings scatter ``Delta`` by token id; the LM
head's gradient is ``v h_t^T`` (Gram ``<v_r, v_s> ||h_t||^2``: the logit cosine, exactly); a head tied
to the input embedding adds the cross terms; any other parameter (norm weights, ...) takes its
gradient from autograd. Only the T = t + 1 positions up to the node carry gradient (causality).

Scopes (`resolve_scope`) select parameter USES by name, as ``model.named_parameters(remove_duplicate=
False)`` lists them, so a tied LM head appears as both ``lm_head.weight`` and the input embedding's
name: ``lm_head`` selects the head's use only; ``all`` selects both (their gradients add, as an
optimiser sees the shared tensor).

Shapes: L sequence length (prompt + completion), T positions up to a node, d hidden size, V the
tokenizer's ids (V_tok; padded head rows get zero), K candidates, R vectors of a node (K+1+C*L_loss),
k sketch tangents, B bootstrap replicates.

Limits: the model must compute logits as ``lm_head(h)`` from its decoder's last hidden state (HF
causal LMs without logit soft-capping or scaling); the sketch runs attention in "eager" mode while
it works (forward-mode AD has no fused-attention kernels) and restores the model's setting after.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from gradalign.errors import GradalignError

log = logging.getLogger(__name__)

SCOPE_HELP = (
    '"all" (every parameter), "lm_head" (the output head only: equals the logit-space cosine), '
    '"last_blocks:N" (the last N decoder blocks, the final norm and the head), "no_embeddings" (all but the '
    'input embedding), or comma-separated glob patterns over parameter names ("!" excludes), e.g. '
    '"model.layers.2.*,lm_head.weight"'
)


class ScopeError(GradalignError, ValueError):
    """A parameter scope that selects nothing, or that this module cannot compute."""


# --------------------------------------------------------------------------- scopes


@dataclass(frozen=True)
class Scope:
    """The parameter uses one `scope` string selects in one model.

    spec: the string as given; names: selected names from ``named_parameters(remove_duplicate=False)``
    in model order; n_params: distinct parameters (elements) they cover.
    """

    spec: str
    names: tuple[str, ...]
    n_params: int


def _block_index(name: str) -> int | None:
    m = re.search(r"\.(?:layers|h|blocks)\.(\d+)\.", "." + name)
    return int(m.group(1)) if m else None


def _head_names(model) -> set[str]:
    head = model.get_output_embeddings()
    return {f"{n}.{pn}" for n, mod in model.named_modules() if mod is head for pn, _ in mod.named_parameters()}


def _input_embedding_names(model) -> set[str]:
    emb = model.get_input_embeddings()
    return {f"{n}.{pn}" for n, mod in model.named_modules(remove_duplicate=False) if mod is emb
            for pn, _ in mod.named_parameters()}


def resolve_scope(model, spec: str) -> Scope:
    """The parameter uses `spec` selects (grammar: `SCOPE_HELP`). Raises `ScopeError` when it selects
    nothing or is malformed."""
    named = list(model.named_parameters(remove_duplicate=False))
    all_names = [n for n, _ in named]
    head = _head_names(model)
    s = spec.strip()
    if s == "all":
        chosen = all_names
    elif s == "lm_head":
        chosen = [n for n in all_names if n in head]
    elif s == "no_embeddings":
        emb = _input_embedding_names(model)
        chosen = [n for n in all_names if n not in emb]
    elif s.startswith("last_blocks:"):
        try:
            n_blocks = int(s.split(":", 1)[1])
        except ValueError:
            raise ScopeError(f"alignment.scope {spec!r}: expected last_blocks:N with an integer N") from None
        idx = [i for i in (_block_index(n) for n in all_names) if i is not None]
        if n_blocks < 1 or not idx:
            raise ScopeError(f"alignment.scope {spec!r}: N must be >= 1 and the model must have numbered blocks")
        first = max(idx) + 1 - n_blocks
        emb = _input_embedding_names(model)
        chosen = []
        for n in all_names:
            b = _block_index(n)
            if (b is not None and b >= first) or n in head or (b is None and n not in emb):
                chosen.append(n)
    else:
        pats = [p.strip() for p in s.split(",") if p.strip()]
        inc = [p for p in pats if not p.startswith("!")]
        exc = [p[1:] for p in pats if p.startswith("!")]
        chosen = [n for n in all_names if (not inc or any(fnmatch.fnmatchcase(n, p) for p in inc))
                  and not any(fnmatch.fnmatchcase(n, p) for p in exc)]
    if not chosen:
        raise ScopeError(f"alignment.scope {spec!r} selects no parameter of the student (valid: {SCOPE_HELP})")
    params = dict(named)
    n_params = sum(t.numel() for t in {id(params[n]): params[n] for n in chosen}.values())
    return Scope(spec, tuple(chosen), n_params)


# --------------------------------------------------------------------------- node vectors and algebra


@dataclass(frozen=True)
class NodeVectors:
    """The logit-space vectors of one node, as cotangents of one rollout's forward.

    row: index in the forward's sequence (prompt + completion) of the logits that predict the node's
    token (``len(prompt) + t - 1`` for completion position t); vectors: ``[R, V]`` (V = the tokenizer's ids).
    """

    row: int
    vectors: torch.Tensor


def node_basis(p: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The K+1 basis vectors ``[K+1, V]``: ``b_k = p_k e_{ids_k}``, then ``b_res = p 1[token not in ids]``.

    p: ``[V]`` student probabilities; ids: LongTensor ``[K]`` distinct candidate ids. ``sum_j b_j = p``.
    """
    K, V = ids.numel(), p.numel()
    B = torch.zeros(K + 1, V, dtype=p.dtype, device=p.device)
    B[torch.arange(K), ids] = p[ids]
    rest = p.clone()
    rest[ids] = 0
    B[K] = rest
    return B


def ideal_coefficients(masses: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Coefficients ``a`` with ``g* = sum_j a_j b_j``: ``a_j = S_j - V``, ``V = sum_j m_j S_j``.

    masses: ``[K+1]`` student mass of each basis vector (``p[ids]`` then the residual mass); S:
    ``[..., K+1]`` success rates (candidates, then the residual rate). Returns ``[..., K+1]``.
    """
    value = (S * masses).sum(-1, keepdim=True)
    return S - value


@dataclass(frozen=True)
class ParamCosines:
    """Parameter-space results of one node, one entry per distillation direction (C*L of them).

    cos: ``cos(J^T g*, J^T d_c)`` (nan when a norm is 0); norm_ideal: ``||J^T g*||`` (scalar);
    norm_distill: ``||J^T d_c||``; se: standard deviation of cos over the replicates of S (nan without
    replicates); sketch_se: ``(1 - cos^2) / sqrt(k)`` for a k-tangent sketch, nan for the exact method.
    """

    cos: torch.Tensor  # [C*L] float64
    norm_ideal: float
    norm_distill: torch.Tensor  # [C*L]
    se: torch.Tensor  # [C*L]
    sketch_se: torch.Tensor  # [C*L]


def _cos_from_gram(Gbb: torch.Tensor, Gbd: torch.Tensor, dd: torch.Tensor, a: torch.Tensor, eps: float):
    """a ``[..., K+1]`` -> (cos ``[..., C]``, ||J^T g*|| ``[...]``)."""
    ng2 = torch.einsum("...i,ij,...j->...", a, Gbb, a).clamp_min(0)
    ng = ng2.sqrt()
    dots = a @ Gbd  # [..., C]
    nd = dd.clamp_min(0).sqrt()
    cos = dots / (ng.unsqueeze(-1) * nd)
    bad = (ng.unsqueeze(-1) < eps) | (nd < eps)
    return cos.masked_fill(bad, math.nan), ng


def param_cosines(gram: torch.Tensor, masses: torch.Tensor, S: torch.Tensor, replicates: torch.Tensor | None = None,
                  sketch_k: int | None = None, eps: float = 1e-12) -> ParamCosines:
    """``cos_params`` and its norms from one node's Gram matrix.

    gram: ``[K+1+C, K+1+C]`` Gram of ``J^T`` of (the K+1 basis vectors of `node_basis`, then the C
    distillation directions); masses: ``[K+1]`` (see `ideal_coefficients`); S: ``[K+1]`` the point
    estimate of the success rates; replicates: optional ``[B, K+1]`` replicate success vectors (e.g.
    `estimates.success_replicates`), whose spread of cos gives `ParamCosines.se` (over the replicates where cos is
    defined: one whose g* is zero has none; NaN when fewer than two are); sketch_k: the number of
    tangents when `gram` is a sketch, for `ParamCosines.sketch_se`.
    """
    G = gram.double()
    K1 = masses.numel()
    Gbb, Gbd, dd = G[:K1, :K1], G[:K1, K1:], G[K1:, K1:].diagonal()
    cos, ng = _cos_from_gram(Gbb, Gbd, dd, ideal_coefficients(masses.double(), S.double()), eps)
    C = cos.numel()
    se = torch.full((C,), math.nan, dtype=torch.float64)
    if replicates is not None and replicates.shape[0] > 1:
        rc, _ = _cos_from_gram(Gbb, Gbd, dd, ideal_coefficients(masses.double(), replicates.double()), eps)
        fin = torch.isfinite(rc)
        n = fin.sum(0)
        mean = torch.where(fin, rc, 0).sum(0) / n.clamp_min(1)
        var = torch.where(fin, (rc - mean) ** 2, 0).sum(0) / (n - 1).clamp_min(1)
        se = torch.where(n >= 2, var.sqrt(), se)
    sk = (1 - cos**2) / math.sqrt(sketch_k) if sketch_k else torch.full((C,), math.nan, dtype=torch.float64)
    return ParamCosines(cos, float(ng), dd.clamp_min(0).sqrt(), se, sk)


# --------------------------------------------------------------------------- model plumbing


def _decoder(model):
    dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    if dec is None or dec is model:
        raise ScopeError(f"{type(model).__name__}: parameter-space alignment needs a causal LM with a decoder "
                         "(get_decoder) and an output head (get_output_embeddings)")
    return dec


@contextlib.contextmanager
def _grad_only(params: dict, keep: set[int]):
    """requires_grad on exactly the tensors in `keep` (by id) while inside; restored after."""
    before = {id(p): p.requires_grad for p in params.values()}
    try:
        for p in params.values():
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p in params.values():
            p.requires_grad_(before[id(p)])


@dataclass(frozen=True)
class _Plan:
    """A scope split by how each use's Gram is computed."""

    linears: dict  # module name -> (module, weight?, bias?)
    embeddings: dict  # module name -> module (weight in scope)
    head_weight: bool
    head_bias: bool
    tied: str  # the embedding module whose weight is the head's tensor, both uses in scope ("" if none)
    others: dict  # param name -> tensor, gradients from autograd


def _plan(model, scope: Scope) -> _Plan:
    chosen = set(scope.names)
    head = model.get_output_embeddings()
    emb_in = model.get_input_embeddings()
    linears, embeddings, others, done = {}, {}, {}, set()
    head_weight = head_bias = False
    for mname, mod in model.named_modules(remove_duplicate=False):
        own = {pn: p for pn, p in mod.named_parameters(recurse=False)}
        names = {pn: f"{mname}.{pn}" if mname else pn for pn in own}
        sel = {pn for pn, full in names.items() if full in chosen}
        if not sel:
            continue
        if mod is head:
            head_weight, head_bias = "weight" in sel, "bias" in sel
            done.update(names[pn] for pn in sel)
        elif isinstance(mod, torch.nn.Linear):
            linears[mname] = (mod, "weight" in sel, "bias" in sel)
            done.update(names[pn] for pn in sel)
        elif isinstance(mod, torch.nn.Embedding) and sel == {"weight"}:
            embeddings[mname] = mod
            done.add(names["weight"])
    params = dict(model.named_parameters(remove_duplicate=False))
    for n in scope.names:
        if n not in done:
            others[n] = params[n]
    tied = next((n for n, m in embeddings.items() if head_weight and m is emb_in and m.weight is head.weight), "")
    # a tensor selected under two names must be a head/embedding pair (cross terms below) or appear once
    seen: dict[int, list[str]] = {}
    for n in scope.names:
        seen.setdefault(id(params[n]), []).append(n)
    for ns in seen.values():
        if len(ns) > 1 and not (tied and len(ns) == 2):
            raise ScopeError(f"alignment.scope {scope.spec!r}: parameters {ns} share one tensor; only a head tied to the "
                             "input embedding is supported")
    if any(len(m.weight.shape) != 2 for m in embeddings.values()):
        raise ScopeError("embedding weights must be 2-D")
    return _Plan(linears, embeddings, head_weight, head_bias, tied, others)


def _head_matrix(model, V: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = model.get_output_embeddings()
    W = head.weight[:V]
    b = head.bias[:V] if getattr(head, "bias", None) is not None else None
    return W, b


# --------------------------------------------------------------------------- exact method


def _linear_gram(D: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Gram ``[R, R]`` of ``D_r^T X`` for D ``[R, T, out]``, X ``[T, in]``; picks the cheaper form."""
    R, T, out = D.shape
    inn = X.shape[1]
    write = R * T * out * inn + R * R * out * inn
    gog = R * T * T * out + T * T * inn + R * R * T * out
    if write <= gog:
        Wg = torch.matmul(D.transpose(1, 2), X).reshape(R, -1)  # [R, out * in]
        return Wg @ Wg.T, "write"
    KD = torch.matmul(X @ X.T, D)  # [R, T, out]
    return D.reshape(R, -1) @ KD.reshape(R, -1).T, "gram"


def _blocks(dec) -> tuple[str, list] | None:
    """The decoder's block list: (its name inside the decoder, the blocks), the ModuleList holding
    the most parameters; None when there is none."""
    best = None
    for name, mod in dec.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) and name:
            n = sum(p.numel() for p in mod.parameters())
            if best is None or n > best[0]:
                best = (n, name, list(mod))
    return None if best is None else (best[1], best[2])


@dataclass
class _Segment:
    """A stretch of the network between two cut tensors: the batched backward from `top` (whose
    cotangent is known) to `bottom` gives the output gradients of the modules in it."""

    modules: list  # names of captured linears / embeddings whose output gradient is taken here
    others: list  # names of parameters whose gradient autograd gives here
    top: object = None  # tensor (set after the forward)
    bottom: object = None  # tensor or None (the lowest segment)


def exact_grams(model, input_ids: torch.Tensor, nodes: Sequence[NodeVectors], scope: Scope, *, scale: float = 1.0,
                budget_bytes: int = 256 << 20, forms: dict | None = None) -> list[torch.Tensor]:
    """Exact Gram ``[R_n, R_n]`` (float64) of ``scale * J^T v`` for each node's vectors, one forward.

    input_ids: LongTensor ``[L]`` (prompt + completion); nodes: each node's row and vectors ``[R_n, V]``
    (V <= the head's rows; missing rows are zero). The backward runs block by block, top down: each
    batched VJP goes from one block's output to its input (the cotangent handed on), so the
    per-vector gradients alive at once are one block's module outputs (a decoder without a block
    list takes one VJP for all). Nodes are batched so that those gradients stay within
    `budget_bytes` (a node is never split: a node larger than the budget runs alone). `forms`, when
    given, receives ``{module: "write" | "gram"}`` as chosen.
    """
    if not nodes:
        return []
    dec = _decoder(model)
    plan = _plan(model, scope)
    params = dict(model.named_parameters(remove_duplicate=False))
    keep = {id(params[n]) for n in scope.names}
    V = nodes[0].vectors.shape[-1]
    device = next(model.parameters()).device
    ids = input_ids.to(device).long()
    L = ids.numel()
    if max(n.row for n in nodes) >= L or min(n.row for n in nodes) < 0:
        raise ValueError(f"node rows must lie in [0, {L})")
    prefix = next(n for n, m in model.named_modules() if m is dec)
    found = _blocks(dec)
    nb = len(found[1]) if found else 0
    bname = f"{prefix}.{found[0]}." if found and prefix else (f"{found[0]}." if found else "")

    def block_of(full: str) -> int | None:
        if not bname or not full.startswith(bname):
            return None
        return int(full[len(bname):].split(".", 1)[0])
    # segments top down: [top (above the blocks)], block nb-1, ..., block 0, [bottom (embeddings)]
    segs = [_Segment([], []) for _ in range(nb + 2)]

    def seg_of(full: str, bottom: bool) -> _Segment:
        b = block_of(full)
        return segs[nb - b] if b is not None else (segs[-1] if bottom else segs[0])
    for name in plan.linears:
        seg_of(name, False).modules.append(name)
    for name in plan.embeddings:
        seg_of(name, True).modules.append(name)
    for name in plan.others:
        seg_of(name, False).others.append(name)
    acts: dict[str, tuple] = {}
    cuts: dict[int, list] = {}
    hooks = []

    def grab(name):
        def hook(mod, inp, out):
            if name in acts:
                raise ScopeError(f"module {name!r} runs twice in one forward; parameter-space alignment needs one call")
            acts[name] = (inp[0].detach()[0], out)
        return hook

    def grab_in(i):
        def pre(mod, args, kwargs):
            cuts.setdefault(i, [None, None])[0] = args[0] if args else kwargs.get("hidden_states")
        return pre

    def grab_out(i):
        def post(mod, args, kwargs, out):
            cuts.setdefault(i, [None, None])[1] = out[0] if isinstance(out, (tuple, list)) else out
        return post
    for name, (mod, _, _) in plan.linears.items():
        hooks.append(mod.register_forward_hook(grab(name)))
    for name, mod in plan.embeddings.items():
        hooks.append(mod.register_forward_hook(grab(name)))
    if found:
        for i, blk in enumerate(found[1]):
            hooks.append(blk.register_forward_pre_hook(grab_in(i), with_kwargs=True))
            hooks.append(blk.register_forward_hook(grab_out(i), with_kwargs=True))
    try:
        with _grad_only(params, keep), torch.enable_grad():
            h = dec(input_ids=ids[None]).last_hidden_state  # [1, L, d]
            chained = found and len(cuts) == nb and all(
                isinstance(cuts[i][0], torch.Tensor) and isinstance(cuts[i][1], torch.Tensor) for i in range(nb)) and all(
                cuts[i][1] is cuts[i + 1][0] for i in range(nb - 1))
            if chained:
                segs[0].top, segs[0].bottom = h, cuts[nb - 1][1]
                for i in range(nb - 1, -1, -1):
                    segs[nb - i].top, segs[nb - i].bottom = cuts[i][1], cuts[i][0]
                segs[-1].top = cuts[0][0]
            else:  # no chain of blocks: one VJP from h for everything
                allm = [m for sg in segs for m in sg.modules]
                allo = [o for sg in segs for o in sg.others]
                segs = [_Segment(allm, allo, h, None)]
            # drop the segments below the lowest one holding anything in scope
            while segs and not (segs[-1].modules or segs[-1].others):
                segs.pop()
            if segs:
                segs[-1].bottom = None
            if segs and not h.requires_grad:
                raise ScopeError(f"alignment.scope {scope.spec!r}: no selected parameter reaches the output")
            W, _ = _head_matrix(model, V)
            W, hd = W.detach(), h.detach()[0]
            per_vec = max([sum(acts[m][1].numel() for m in sg.modules) + sum(params[o].numel() for o in sg.others)
                           + (sg.bottom.numel() if sg.bottom is not None else 0) for sg in segs], default=0) * h.element_size()
            chunks, cur, size = [], [], 0
            for i, nd in enumerate(nodes):
                need = nd.vectors.shape[0] * per_vec
                if cur and size + need > budget_bytes:
                    chunks.append(cur)
                    cur, size = [], 0
                cur.append(i)
                size += need
            chunks.append(cur)
            out: list[torch.Tensor | None] = [None] * len(nodes)
            for chunk in chunks:
                vecs = [nodes[i].vectors.to(device=device, dtype=torch.float64) * scale for i in chunk]
                spans, r0 = [], 0
                for v in vecs:
                    spans.append(slice(r0, r0 + v.shape[0]))
                    r0 += v.shape[0]
                grams = [_head_gram(plan, v, hd[nodes[i].row]) for i, v in zip(chunk, vecs)]
                if segs:
                    cot = torch.zeros(r0, *h.shape, dtype=h.dtype, device=device)
                    for i, v, sp in zip(chunk, vecs, spans):
                        cot[sp, 0, nodes[i].row] = (v @ W.double()).to(h.dtype)
                for sg in segs:
                    below = [sg.bottom] if sg.bottom is not None else []
                    inputs = below + [acts[m][1] if acts[m][1] is not sg.top else None for m in sg.modules] + [
                        params[o] for o in sg.others]
                    # a module output that IS the segment's top (an embedding feeding block 0) gets the cotangent itself
                    req = [x for x in inputs if x is not None]
                    got = iter(torch.autograd.grad(sg.top, req, cot, is_grads_batched=True, retain_graph=True,
                                                   allow_unused=True) if req else [])
                    res = [next(got) if x is not None else cot for x in inputs]
                    mod_g = res[len(below):len(below) + len(sg.modules)]
                    oth_g = res[len(below) + len(sg.modules):]
                    for (i, v, sp), G in zip(zip(chunk, vecs, spans), grams):
                        _accumulate(plan, acts, sg.modules, mod_g, sg.others, oth_g, sp, v, nodes[i].row, ids, hd, G, forms)
                    if below:
                        cot = res[0] if res[0] is not None else torch.zeros_like(cot)
                    del res, mod_g, oth_g
                for i, G in zip(chunk, grams):
                    out[i] = G
    finally:
        for hk in hooks:
            hk.remove()
    return out


def _head_gram(plan: _Plan, v: torch.Tensor, h_row: torch.Tensor) -> torch.Tensor:
    """The LM head's part of a node's Gram: ``<v_r h^T, v_s h^T> = <v_r, v_s> ||h||^2`` (+ bias ``<v_r, v_s>``)."""
    G = torch.zeros(v.shape[0], v.shape[0], dtype=torch.float64, device=v.device)
    h = h_row.to(torch.float64)
    if plan.head_weight:
        G += (v @ v.T) * float(h @ h)
    if plan.head_bias:
        G += v @ v.T
    return G


def _accumulate(plan: _Plan, acts, modules, mod_grads, others, other_grads, rows: slice, v: torch.Tensor, row: int,
                ids, hd, G: torch.Tensor, forms) -> None:
    """Add one segment's modules and parameters to a node's Gram `G` (in place); `rows` picks the
    node's vectors out of the chunk's batched gradients."""
    T = row + 1  # causality: positions after the node carry no gradient
    R = v.shape[0]
    f32 = torch.float64 if hd.dtype == torch.float64 else torch.float32
    h = hd[row].to(torch.float64)
    for n, g in zip(modules, mod_grads):
        if g is None:
            continue
        X, _ = acts[n]
        D = g[rows][:, 0, :T].to(f32)
        if n in plan.linears:
            mod, w, bsel = plan.linears[n]
            if w:
                gram, form = _linear_gram(D, X[:T].to(f32))
                G += gram.double()
                if forms is not None:
                    forms[n] = form
            if bsel:
                bg = D.sum(1)
                G += (bg @ bg.T).double()
        else:  # input embedding: scatter by token id
            uniq, inv = ids[:T].unique(return_inverse=True)
            Ge = torch.zeros(R, uniq.numel(), D.shape[-1], dtype=f32, device=D.device).index_add_(1, inv, D)
            flat = Ge.flatten(1)
            G += (flat @ flat.T).double()
            if plan.tied == n:  # the head's use of the same tensor: cross terms <v_r h^T, scatter(D_s)>
                inside = uniq < v.shape[1]
                va = torch.zeros(R, uniq.numel(), dtype=torch.float64, device=v.device)
                va[:, inside] = v[:, uniq[inside]]
                cross = va @ (Ge.double() @ h).T  # [r head, s embedding]
                G += cross + cross.T
    for g in other_grads:
        if g is None:
            continue
        flat = g[rows].flatten(1).to(torch.float64)
        G += flat @ flat.T


# --------------------------------------------------------------------------- sketched method


@contextlib.contextmanager
def eager_attention(model):
    """Run attention in "eager" mode inside (forward-mode AD has no fused-attention kernels); restore after."""
    cfg = model.config
    before = getattr(cfg, "_attn_implementation", None)
    if before in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def _tangent(p: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    if kind == "rademacher":
        r = torch.randint(0, 2, p.shape, generator=g, dtype=torch.int8).to(p.dtype) * 2 - 1
    elif kind == "gaussian":
        r = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)
    else:
        raise ValueError(f"tangent kind must be 'rademacher' or 'gaussian', got {kind!r}")
    return r.to(p.device)


def sketch_grams(model, input_ids: torch.Tensor, nodes: Sequence[NodeVectors], scope: Scope, *, k: int, seed: int = 0,
                 kind: str = "rademacher", scale: float = 1.0, chunk: int = 8) -> list[torch.Tensor]:
    """Sketched Gram ``[R_n, R_n]`` per node: ``S S^T / k`` with ``S[r, i] = <scale J^T v_r, w_i>``.

    w_1..w_k are seeded random tangents over the scope's distinct parameter tensors (Rademacher or
    Gaussian entries: ``E[w w^T] = I``, so the Gram is unbiased); ``J w`` at every position comes from
    one forward-mode JVP per tangent (`chunk` of them vmapped together), shared by every node and
    vector of the rollout. The cosine from this Gram has a standard error of about ``(1 - c^2)/sqrt(k)``.
    """
    if not nodes:
        return []
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    from torch.func import functional_call, jvp, vmap

    dec = _decoder(model)
    plan = _plan(model, scope)
    params = dict(model.named_parameters(remove_duplicate=False))
    prefix = next(n for n, m in model.named_modules() if m is dec)
    dec_names = {n: n[len(prefix) + 1:] for n in scope.names if prefix and n.startswith(prefix + ".")}
    head = model.get_output_embeddings()
    head_w = params[next(n for n in scope.names if params[n] is head.weight)] if plan.head_weight else None
    # distinct tensors get one tangent each (a tied head and embedding share theirs)
    distinct: dict[int, torch.Tensor] = {}
    for n in scope.names:
        distinct.setdefault(id(params[n]), params[n])
    for n in scope.names:
        if n not in dec_names and params[n] is not head.weight and not (plan.head_bias and params[n] is head.bias):
            raise ScopeError(f"alignment.scope {scope.spec!r}: parameter {n!r} is neither in the decoder nor the head; "
                             "the sketch cannot perturb it")
    V = nodes[0].vectors.shape[-1]
    device = next(model.parameters()).device
    ids = input_ids.to(device).long()[None]
    dec_keys = list(dec_names)  # full names in the decoder
    primals = tuple(params[n].detach() for n in dec_keys)
    W, b = _head_matrix(model, V)
    W = W.detach()
    g = torch.Generator().manual_seed(int(seed))
    vecs = [nd.vectors.to(device=device, dtype=torch.float64) * scale for nd in nodes]
    sk = [torch.zeros(v.shape[0], k, dtype=torch.float64, device=device) for v in vecs]
    rows = torch.tensor([nd.row for nd in nodes], device=device)

    def f(*ps):
        return functional_call(dec, {dec_names[n]: p for n, p in zip(dec_keys, ps)}, (), {"input_ids": ids}).last_hidden_state[0]
    with eager_attention(model), torch.no_grad():
        h = dec(input_ids=ids).last_hidden_state[0].double()
        hr = h[rows]  # [N, d]
        for i0 in range(0, k, chunk):
            kc = min(chunk, k - i0)
            tang = {pid: torch.stack([_tangent(p, kind, g) for _ in range(kc)]) for pid, p in distinct.items()}
            if dec_keys:
                ts = tuple(tang[id(params[n])] for n in dec_keys)
                try:
                    dh = vmap(lambda *t: jvp(f, primals, t)[1])(*ts)  # [kc, L, d]
                except RuntimeError:  # a model vmap cannot batch: one JVP per tangent
                    dh = torch.stack([jvp(f, primals, tuple(t[i] for t in ts))[1] for i in range(kc)])
                dz_h = torch.einsum("knd,vd->knv", dh[:, rows].double(), W.double())  # [kc, N, V]
            else:
                dz_h = torch.zeros(kc, len(nodes), V, dtype=torch.float64, device=device)
            if head_w is not None:
                dz_h = dz_h + torch.einsum("kvd,nd->knv", tang[id(head_w)][:, :V].double(), hr)
            if plan.head_bias:
                dz_h = dz_h + tang[id(head.bias)][:, None, :V].double()
            for j, v in enumerate(vecs):
                sk[j][:, i0:i0 + kc] = v @ dz_h[:, j].T
    return [s @ s.T / k for s in sk]


# --------------------------------------------------------------------------- one rollout, as the alignment stage asks


@dataclass(frozen=True)
class ParamNode:
    """One node's logit-space inputs (the alignment stage builds them; shapes as the module docstring).

    row: the logits row predicting the node's token in the rollout's sequence; p: ``[V]`` student
    probabilities; ids: ``[K]`` candidate ids; S: ``[K+1]`` success rates (candidates, then the residual
    rate, as `estimates.full_vocab_success` fills the rest of the vocabulary); directions: ``[C, V]``
    distillation descent directions (non-finite rows are treated as zero: their cosine is NaN);
    replicates: optional ``[B, K+1]`` replicate success vectors for `ParamCosines.se`.
    """

    row: int
    p: torch.Tensor
    ids: torch.Tensor
    S: torch.Tensor
    directions: torch.Tensor
    replicates: torch.Tensor | None = None


def rollout_param_cosines(model, input_ids: torch.Tensor, nodes: Sequence[ParamNode], scope: Scope, *, method: str,
                          k: int = 64, memory_mb: int = 256, scale: float = 1.0, seed: int = 0) -> list[ParamCosines]:
    """`ParamCosines` for every node of one rollout (input_ids ``[L]``: prompt + completion), from one
    `exact_grams` or `sketch_grams` call over the basis and directions of all its nodes."""
    vecs = []
    for nd in nodes:
        d = nd.directions.double()
        d = torch.where(torch.isfinite(d).all(-1, keepdim=True), d, torch.zeros_like(d))
        vecs.append(NodeVectors(nd.row, torch.cat([node_basis(nd.p.double(), nd.ids.long()), d])))
    if method == "exact":
        grams = exact_grams(model, input_ids, vecs, scope, scale=scale, budget_bytes=memory_mb << 20)
        sk = None
    elif method == "sketch":
        elem = next(model.parameters()).element_size()
        chunk = max(1, min(8, (memory_mb << 20) // max(1, scope.n_params * elem)))  # tangents in flight: each is P-sized
        grams = sketch_grams(model, input_ids, vecs, scope, k=k, seed=seed, scale=scale, chunk=chunk)
        sk = k
    else:
        raise ValueError(f"method must be 'exact' or 'sketch', got {method!r}")
    out = []
    for nd, gram in zip(nodes, grams):
        masses = node_basis(nd.p.double(), nd.ids.long()).sum(1)
        out.append(param_cosines(gram, masses, nd.S, nd.replicates, sketch_k=sk))
    return out
