"""Logit-space gradients at one node of a student rollout, and the cosines that compare them.

Owns: the "ideal" logit gradient (ascent on the student's success probability at a node), the
descent direction of each distillation loss (reverse KL, forward KL, generalized JSD, sampled-token
surrogate), per-position divergence statistics (entropy, KL, JSD, distribution cosine, teacher
advantage), and cosine similarity with explicit reasons for undefined values (including the
split-half debiased cosine). Does NOT own: running models, sampling continuations, estimating
success rates (see `gradalign.estimates`), choosing nodes, or any parameter-space gradient.

Shapes: every function accepts leading batch dims ``...`` and works on the last dim ``V`` (the
vocabulary), unless it says otherwise. ``K`` is a number of candidate tokens.

Conventions
-----------
* ``z`` are the student logits already divided by the temperature ``tau``; ``p = softmax(z)``.
  ``q`` is the teacher distribution, ``softmax(teacher_logits / tau)``. Functions take log-probs
  (``logp``, ``logq``, shape ``[..., V]``, e.g. from ``log_softmax``) for numerical stability.
* Distillation *directions* are DESCENT directions in logit space: minus the gradient of the loss
  w.r.t. ``z``, so ``z += eta * d`` decreases the loss for small ``eta``.
* The *ideal gradient* is PLUS the gradient of the success objective ``sum_j p_j S_j`` (ascent on
  success), where ``S[..., j]`` is the success rate of continuing the node with token ``j``.
  A positive cosine therefore means "the distillation step raises the student's success".
* Zero probabilities: ``p`` (or ``q``) may be exactly zero (masked logits give ``logp = -inf``,
  or ``exp`` underflows). Every ``0 * log 0`` term is taken as 0, so results stay finite.

Temperature: all directions are w.r.t. the temperature-scaled logits ``z = z_raw / tau``. W.r.t. the
raw logits each one is multiplied by ``1 / tau`` (chain rule), which leaves every cosine unchanged.

Why logit space is enough: at a node with final hidden state ``h`` (shape ``[H]``), a loss's
gradient w.r.t. the LM-head weight ``W`` (shape ``[V, H]``) is ``v h^T`` where ``v`` is its logit
gradient. For two losses, ``<v1 h^T, v2 h^T>_F = <v1, v2> ||h||^2`` and
``||v h^T||_F = ||v|| ||h||``, so the ``||h||^2`` cancels and the cosine over LM-head gradients at
that node equals the cosine over logit gradients computed here. Alignment over more parameters
(through ``h``) is `gradalign.param_space`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gradalign.config import LOSSES  # the loss names a config may list; this module implements each

# --------------------------------------------------------------------------- helpers (private)


def _check_last_dim(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_a} and {name_b} must share the last (vocab) dim, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_beta(beta: float) -> None:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")


def _plogx(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Elementwise ``p * x`` with the convention ``0 * anything = 0`` (covers ``0 * log 0``)."""
    return torch.where(p > 0, p * x, torch.zeros_like(x))


def _centered(p: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``p * (f - E_p[f])`` over the last dim, ignoring ``f`` wherever ``p == 0``."""
    f = torch.where(p > 0, f, torch.zeros_like(f))
    mean = (p * f).sum(dim=-1, keepdim=True)
    return p * (f - mean)


def _log_mixture(logp: torch.Tensor, logq: torch.Tensor, beta: float) -> torch.Tensor:
    """``log m`` with ``m = (1 - beta) p + beta q``, via logsumexp (0 < beta < 1)."""
    return torch.logsumexp(
        torch.stack([logp + math.log1p(-beta), logq + math.log(beta)]),
        dim=0,
    )


# --------------------------------------------------------------------------- ideal gradient


def node_value(p: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Success probability of the node, ``V_node = sum_j p_j S_j``.

    p: ``[..., V]`` student probabilities; S: ``[..., V]`` per-token success rates.
    Returns ``[...]``.
    """
    _check_last_dim("p", p, "S", S)
    return (p * S).sum(dim=-1)


def ideal_gradient(p: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Ascent direction on success: ``d/dz sum_j softmax(z)_j S_j = p * (S - V_node)``.

    p: ``[..., V]`` student probabilities; S: ``[..., V]`` success rate of each next token over the
    full vocabulary. Returns ``[..., V]``; it sums to 0 over V. Sign: PLUS the gradient (a step
    ``z += eta * g`` raises the success probability).
    """
    _check_last_dim("p", p, "S", S)
    return p * (S - node_value(p, S).unsqueeze(-1))


def teacher_advantage(p: torch.Tensor, q: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """How much more often the teacher's next-token choice succeeds: ``sum q S - sum p S``.

    p, q, S: ``[..., V]``. Returns ``[...]``; positive means sampling the next token from the
    teacher (then continuing with the student) succeeds more often than from the student.
    """
    _check_last_dim("p", p, "q", q)
    return node_value(q, S) - node_value(p, S)


# --------------------------------------------------------------------------- distillation directions


def reverse_kl_direction(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Descent direction of reverse KL: ``-d/dz KL(p || q) = p * (f - E_p[f])``, ``f = log q - log p``.

    logp, logq: ``[..., V]``. Returns ``[..., V]`` (sums to 0). ``q`` must be positive wherever
    ``p`` is (otherwise the KL is infinite); entries with ``p == 0`` get exactly 0.
    """
    _check_last_dim("logp", logp, "logq", logq)
    return _centered(logp.exp(), logq - logp)


def forward_kl_direction(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Descent direction of forward KL: ``-d/dz KL(q || p) = q - p``.

    logp, logq: ``[..., V]``. Returns ``[..., V]`` (sums to 0).
    """
    _check_last_dim("logp", logp, "logq", logq)
    return logq.exp() - logp.exp()


def jsd_direction(logp: torch.Tensor, logq: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Descent direction of the generalized JSD in the TRL GKD convention.

    ``m = (1 - beta) p + beta q`` and ``JSD_beta = beta KL(q || m) + (1 - beta) KL(p || m)``.
    The endpoints are special-cased exactly as TRL's ``generalized_jsd_loss`` does:
    ``beta = 0`` is forward KL(q || p) and ``beta = 1`` is reverse KL(p || q) (so this dispatches to
    `forward_kl_direction` / `reverse_kl_direction` there; the mixture formula itself would vanish).

    For ``0 < beta < 1``: ``JSD_beta = beta sum q log q + (1 - beta) sum p log p - sum m log m``, so
    ``dJ/dp_j = (1 - beta)(log p_j - log m_j)`` and, through the softmax Jacobian,
    ``-dJ/dz = (1 - beta) * p * (b - E_p[b])`` with ``b = log m - log p``.

    logp, logq: ``[..., V]``; beta in [0, 1]. Returns ``[..., V]`` (sums to 0).
    """
    _check_last_dim("logp", logp, "logq", logq)
    _check_beta(beta)
    if beta == 0.0:
        return forward_kl_direction(logp, logq)
    if beta == 1.0:
        return reverse_kl_direction(logp, logq)
    logm = _log_mixture(logp, logq, beta)
    return (1.0 - beta) * _centered(logp.exp(), logm - logp)


def sampled_token_direction(logp: torch.Tensor, logq: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """Descent direction of the sampled-token surrogate used by on-policy trainers.

    The surrogate loss is ``-stopgrad(A) * log p(y)`` with advantage ``A = log q(y) - log p(y)`` for
    the sampled token ``y``; its descent direction is ``A * (onehot(y) - p)``.

    logp, logq: ``[..., V]``; token: LongTensor ``[...]`` holding ``y``. Returns ``[..., V]``.
    """
    _check_last_dim("logp", logp, "logq", logq)
    if token.shape != logp.shape[:-1]:
        raise ValueError(f"token must have shape {tuple(logp.shape[:-1])}, got {tuple(token.shape)}")
    idx = token.long().unsqueeze(-1)
    adv = logq.gather(-1, idx) - logp.gather(-1, idx)
    onehot = F.one_hot(token.long(), num_classes=logp.shape[-1]).to(logp.dtype)
    return adv * (onehot - logp.exp())


def distill_direction(
    loss: str,
    logp: torch.Tensor,
    logq: torch.Tensor,
    token: torch.Tensor | None = None,
    beta: float = 0.5,
) -> torch.Tensor:
    """Descent direction ``[..., V]`` of the named distillation loss (one of `LOSSES`).

    ``token`` (LongTensor ``[...]``) is required for ``"sampled_token"``; ``beta`` is used by
    ``"jsd"`` only.
    """
    if loss == "reverse_kl":
        return reverse_kl_direction(logp, logq)
    if loss == "forward_kl":
        return forward_kl_direction(logp, logq)
    if loss == "jsd":
        return jsd_direction(logp, logq, beta=beta)
    if loss == "sampled_token":
        if token is None:
            raise ValueError("loss 'sampled_token' needs the sampled token (token=...)")
        return sampled_token_direction(logp, logq, token)
    raise ValueError(f"unknown loss {loss!r}; valid names: {', '.join(LOSSES)}")


# --------------------------------------------------------------------------- per-position statistics


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats, ``-sum p log p`` (``0 log 0 = 0``). logp ``[..., V]`` -> ``[...]``."""
    return -_plogx(logp.exp(), logp).sum(dim=-1)


def kl(logp_a: torch.Tensor, logp_b: torch.Tensor) -> torch.Tensor:
    """``KL(a || b) = sum a (log a - log b)`` in nats. logp_a, logp_b ``[..., V]`` -> ``[...]``.

    Terms with ``a == 0`` are 0; ``b == 0`` where ``a > 0`` gives ``+inf`` (the true value).
    """
    _check_last_dim("logp_a", logp_a, "logp_b", logp_b)
    return _plogx(logp_a.exp(), logp_a - logp_b).sum(dim=-1)


def jsd(logp: torch.Tensor, logq: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalized JSD value (TRL GKD convention, see `jsd_direction`). ``[..., V]`` -> ``[...]``.

    ``beta = 0`` gives KL(q || p), ``beta = 1`` gives KL(p || q); in between
    ``beta KL(q || m) + (1 - beta) KL(p || m)`` with ``m = (1 - beta) p + beta q``.
    """
    _check_last_dim("logp", logp, "logq", logq)
    _check_beta(beta)
    if beta == 0.0:
        return kl(logq, logp)
    if beta == 1.0:
        return kl(logp, logq)
    logm = _log_mixture(logp, logq, beta)
    return beta * kl(logq, logm) + (1.0 - beta) * kl(logp, logm)


def distribution_cosine(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Cosine between the probability vectors p and q. ``[..., V]`` -> ``[...]``, in [0, 1]."""
    _check_last_dim("logp", logp, "logq", logq)
    p, q = logp.exp(), logq.exp()
    return (p * q).sum(dim=-1) / (p.norm(dim=-1) * q.norm(dim=-1))


# --------------------------------------------------------------------------- cosines


@dataclass(frozen=True)
class Cosine:
    """A cosine similarity and why it is undefined.

    ``reason`` is ``""`` when ``value`` is valid; otherwise ``value`` is nan and ``reason`` is one of
    ``"zero_ideal"``, ``"zero_distill"``, ``"ideal_below_noise"``.
    """

    value: float
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.reason == ""


@dataclass(frozen=True, eq=False)  # holds tensors: elementwise __eq__ would be ambiguous
class CosineBatch:
    """Batched cosines: ``values`` ``[...]`` (nan where undefined) and boolean masks ``[...]``
    marking a zero-norm first argument (ideal) and a zero-norm second argument (distill)."""

    values: torch.Tensor
    zero_mask_a: torch.Tensor
    zero_mask_b: torch.Tensor


def _check_vectors(**vecs: torch.Tensor) -> None:
    shapes = {name: tuple(v.shape) for name, v in vecs.items()}
    if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"expected 1-D vectors of equal length, got shapes {shapes}")


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> Cosine:
    """Cosine between 1-D vectors a ``[V]`` (the ideal gradient) and b ``[V]`` (a distill direction).

    Computed in float64. A norm below ``eps`` gives nan with reason ``"zero_ideal"`` (checked first,
    for ``a``) or ``"zero_distill"`` (for ``b``).
    """
    _check_vectors(a=a, b=b)
    a, b = a.double(), b.double()
    na, nb = float(a.norm()), float(b.norm())
    if not na >= eps:
        return Cosine(math.nan, "zero_ideal")
    if not nb >= eps:
        return Cosine(math.nan, "zero_distill")
    return Cosine(float(a @ b) / (na * nb))


def cosine_batch(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> CosineBatch:
    """Cosine over the last dim for batches a, b ``[..., V]`` -> `CosineBatch` with ``[...]`` fields.

    Values are nan wherever either side has norm below ``eps``. Computed in the inputs' promoted
    dtype (pass float64 for exact comparisons).
    """
    _check_last_dim("a", a, "b", b)
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    zero_a, zero_b = na < eps, nb < eps
    values = (a * b).sum(dim=-1) / (na * nb)
    values = values.masked_fill(zero_a | zero_b, math.nan)
    return CosineBatch(values=values, zero_mask_a=zero_a, zero_mask_b=zero_b)


def debiased_cosine(g_a: torch.Tensor, g_b: torch.Tensor, d: torch.Tensor, eps: float = 1e-12) -> Cosine:
    """Alignment of d ``[V]`` with the ideal gradient, corrected for continuation noise.

    g_a, g_b ``[V]``: ideal gradients from two independent halves of the continuations (same ``p``,
    ``S`` estimated from each half); ``g = (g_a + g_b) / 2``. Returns

        ``<g, d> / (sqrt(<g_a, g_b>) * ||d||)``.

    The numerator is unbiased for ``<E g, d>`` and, because the halves are independent,
    ``<g_a, g_b>`` is unbiased for ``||E g||^2``; the naive ``cos(g, d)`` instead divides by
    ``||g||``, which noise inflates, shrinking alignment toward 0 when there are few continuations.
    The value is NOT clipped: at small M it can exceed 1 in magnitude.

    Undefined cases (value nan): ``<g_a, g_b> <= eps**2`` (the ideal gradient is not resolved above
    the noise, including when it is exactly zero) gives ``"ideal_below_noise"``; ``||d|| < eps``
    gives ``"zero_distill"``. Computed in float64.
    """
    _check_vectors(g_a=g_a, g_b=g_b, d=d)
    g_a, g_b, d = g_a.double(), g_b.double(), d.double()
    cross = float(g_a @ g_b)
    if not cross > eps * eps:
        return Cosine(math.nan, "ideal_below_noise")
    nd = float(d.norm())
    if not nd >= eps:
        return Cosine(math.nan, "zero_distill")
    g = 0.5 * (g_a + g_b)
    return Cosine(float(g @ d) / (math.sqrt(cross) * nd))


def restrict(vec: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Entries of vec ``[..., V]`` at candidate ids index (LongTensor ``[K]``) -> ``[..., K]``.

    Used for ``cos_candidates``: the cosine restricted to the candidate set K, e.g.
    ``cosine(restrict(g, ids), restrict(d, ids))``.
    """
    if index.dim() != 1:
        raise ValueError(f"index must be 1-D [K], got shape {tuple(index.shape)}")
    return vec.index_select(-1, index.long())
