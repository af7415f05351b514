"""Success-rate estimates from graded continuations: rates, Wilson intervals, split halves.

Owns: turning a list of graded continuation outcomes into a `SuccessEstimate` (counts, rate,
Wilson interval, truncation count), splitting outcomes into two independent halves for the
debiased cosine (`gradalign.gradients.debiased_cosine`), scattering per-candidate rates into the
full-vocabulary success vector ``S`` (shape ``[V]``), and the deterministic rule for how many more
continuations to draw. Does NOT own: sampling or grading continuations, choosing candidate tokens,
or any gradient computation.

Shapes: ``V`` vocabulary size, ``K`` number of candidate tokens, ``M`` continuations per candidate.
A truncated continuation (cut by ``max_new_tokens``) always counts as a failure.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch

log = logging.getLogger(__name__)

Z_95 = 1.959964  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Interval:
    """A closed interval ``[low, high]`` inside [0, 1]."""

    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low


def _wilson(rate: float, n: int, z: float) -> Interval:
    """Wilson interval at a (possibly fractional) observed rate, n > 0."""
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (rate + z2 / (2 * n)) / denom
    half = (z / denom) * math.sqrt(rate * (1.0 - rate) / n + z2 / (4 * n * n))
    # At rate 0 (1) the lower (upper) bound is exactly 0 (1); pin it against rounding.
    low = 0.0 if rate <= 0.0 else max(0.0, center - half)
    high = 1.0 if rate >= 1.0 else min(1.0, center + half)
    return Interval(low, high)


def wilson_interval(successes: int, n: int, z: float = Z_95) -> Interval:
    """Wilson score interval for a binomial rate (``n = 0`` gives ``Interval(0.0, 1.0)``).

    Example: 5/10 at z = 1.96 gives about (0.2366, 0.7634).
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return Interval(0.0, 1.0)
    return _wilson(successes / n, n, z)


@dataclass(frozen=True)
class SuccessEstimate:
    """Graded continuations from one node/candidate.

    ``successes`` counts non-truncated correct continuations out of ``n``; ``truncated`` counts the
    truncated ones (already included in the failures). ``rate = successes / n`` (nan when
    ``n == 0``); ``ci`` is its Wilson interval.
    """

    successes: int
    n: int
    truncated: int
    rate: float
    ci: Interval

    @classmethod
    def from_outcomes(
        cls,
        outcomes: Sequence[bool],
        truncated: Sequence[bool] | None = None,
        z: float = Z_95,
    ) -> SuccessEstimate:
        """Build from per-continuation grades ``[M]`` and optional truncation flags ``[M]``.

        A continuation counts as a success only if it is graded correct and not truncated.
        """
        outcomes = [bool(o) for o in outcomes]
        flags = [False] * len(outcomes) if truncated is None else [bool(t) for t in truncated]
        if len(flags) != len(outcomes):
            raise ValueError(f"outcomes has {len(outcomes)} entries but truncated has {len(flags)}")
        n = len(outcomes)
        successes = sum(o and not t for o, t in zip(outcomes, flags))
        rate = successes / n if n else math.nan
        return cls(
            successes=successes,
            n=n,
            truncated=sum(flags),
            rate=rate,
            ci=wilson_interval(successes, n, z),
        )


@dataclass(frozen=True)
class Halves:
    """Two independent, near-equal halves of one node's continuations (even -> a, odd -> b)."""

    a: SuccessEstimate
    b: SuccessEstimate


def split_halves(
    outcomes: Sequence[bool],
    truncated: Sequence[bool] | None = None,
    z: float = Z_95,
) -> Halves:
    """Split ``[M]`` outcomes by alternating index: even indices -> ``a``, odd -> ``b``.

    Continuations are i.i.d. given the node, so the halves are independent; their sizes differ by
    at most one (``a`` gets the extra one when M is odd).
    """
    outcomes = list(outcomes)
    flags = None if truncated is None else list(truncated)
    if flags is not None and len(flags) != len(outcomes):
        raise ValueError(f"outcomes has {len(outcomes)} entries but truncated has {len(flags)}")
    return Halves(
        a=SuccessEstimate.from_outcomes(outcomes[0::2], None if flags is None else flags[0::2], z),
        b=SuccessEstimate.from_outcomes(outcomes[1::2], None if flags is None else flags[1::2], z),
    )


def full_vocab_success(
    V: int,
    candidate_ids: torch.Tensor,
    candidate_rates: torch.Tensor,
    rest_rate: float | None,
    fill: float = 0.0,
) -> torch.Tensor:
    """The per-token success vector ``S`` ``[V]`` over the full vocabulary.

    candidate_ids: LongTensor ``[K]`` of distinct token ids; candidate_rates: ``[K]`` their success
    rates (finite, in [0, 1]). Every token outside the candidates gets ``rest_rate``: the pooled
    success rate of continuations that started with a non-candidate token. The caller passes
    ``rest_rate=None`` only when the student's mass outside the candidates is negligible
    (< 1e-3) and was not sampled; those tokens then get ``fill`` (default 0.0), which barely moves
    ``ideal_gradient`` because it is weighted by that tiny mass.

    Output dtype/device follow ``candidate_rates``. Raises ValueError on duplicate or out-of-range
    ids, mismatched shapes, or rates that are not finite values in [0, 1].
    """
    if candidate_ids.dim() != 1 or candidate_rates.shape != candidate_ids.shape:
        raise ValueError(
            f"candidate_ids and candidate_rates must both be [K], got {tuple(candidate_ids.shape)} "
            f"and {tuple(candidate_rates.shape)}"
        )
    ids = candidate_ids.long()
    if ids.numel():
        if int(ids.min()) < 0 or int(ids.max()) >= V:
            raise ValueError(f"candidate ids must lie in [0, {V}), got {ids.tolist()}")
        if ids.unique().numel() != ids.numel():
            raise ValueError(f"duplicate candidate ids: {ids.tolist()}")
        if not bool(torch.isfinite(candidate_rates).all()) or bool(
            ((candidate_rates < 0) | (candidate_rates > 1)).any()
        ):
            raise ValueError(f"candidate rates must be finite and in [0, 1], got {candidate_rates.tolist()}")
    if rest_rate is None:
        log.debug("rest_rate is None: filling %d non-candidate tokens with %s", V - ids.numel(), fill)
        rest = fill
    else:
        rest = rest_rate
    if not 0.0 <= rest <= 1.0:
        raise ValueError(f"rest rate must be in [0, 1], got {rest}")
    dtype = candidate_rates.dtype if candidate_rates.is_floating_point() else torch.float64
    S = torch.full((V,), float(rest), dtype=dtype, device=candidate_rates.device)
    return S.scatter(0, ids.to(S.device), candidate_rates.to(dtype))


def adaptive_needed(est: SuccessEstimate, target_width: float, cap: int, z: float = Z_95) -> int:
    """How many more continuations to draw so the Wilson interval narrows to ``target_width``.

    Rule (deterministic): return 0 if the current interval is already no wider than
    ``target_width`` or ``est.n >= cap``. Otherwise assume the rate stays at its current point
    estimate (0.5 when ``n == 0``, the widest case) and return ``n' - n`` for the smallest
    ``n' <= cap`` whose Wilson width at that rate is ``<= target_width`` (the width is decreasing in
    ``n'`` for a fixed rate, so a binary search finds it); if even ``cap`` is not enough, return
    ``cap - n``. Pass the same ``z`` the estimate was built with.
    """
    if target_width <= 0:
        raise ValueError(f"target_width must be positive, got {target_width}")
    if cap < 0:
        raise ValueError(f"cap must be non-negative, got {cap}")
    if est.n >= cap or est.ci.width <= target_width:
        return 0
    rate = est.successes / est.n if est.n else 0.5

    def width(n: int) -> float:
        return _wilson(rate, n, z).width

    lo, hi = est.n + 1, cap
    if width(hi) > target_width:
        return cap - est.n
    while lo < hi:
        mid = (lo + hi) // 2
        if width(mid) <= target_width:
            hi = mid
        else:
            lo = mid + 1
    return lo - est.n


def success_replicates(outcomes: Sequence[Sequence[bool]], *, B: int, seed: int, paired: bool = False) -> torch.Tensor:
    """B seeded bootstrap replicates of a node's success vector over its slots: ``[B, K+1]`` float64.

    outcomes: one sequence of per-continuation successes per slot, candidates first and the
    residual bucket last (``[candidates..., residual]``; pass only the K candidates' when the node
    has no residual bucket, giving ``[B, K]``). A success is a continuation graded correct and
    not truncated (``SuccessEstimate``'s rule). Column s of the result is slot s's success rate in
    each replicate: the spread of the replicates is the sampling spread of the estimate, so the
    ideal gradient ``g* = p (S - V)`` and any linear map of S (e.g. ``J^T`` to parameter space) are
    evaluated per replicate row to get their uncertainty.

    Rule (a Bayesian bootstrap with a Jeffreys-like prior): a slot with n continuations draws
    weights ``w ~ Dirichlet(1, ..., 1)`` over its n outcomes plus one pseudo-outcome of value 0.5,
    and its replicate rate is ``sum_m w_m o_m + w_0 * 0.5``. Mean ``(successes + 0.5) / (n + 1)``,
    variance about ``r (1 - r) / (n + 2)``; unlike the plain bootstrap a slot whose outcomes are
    all equal (0/8, 8/8) still has noise. Replicates lie in [0, 1]. With ``paired=True`` slots of
    equal n share the weights of their outcomes in a replicate (continuation m of every slot gets
    the same w_m, before normalising), which keeps the correlation between slots whose continuation
    m shares its noise stream (`branching.common_random_numbers`); the pseudo-outcome's weight stays
    each slot's own, so two slots with identical outcomes (common under shared noise, when a rare
    difference went unseen) still differ by about the noise of one unseen continuation rather than
    being called exactly equal. A slot with n = 0 is NaN in every replicate.
    Deterministic in ``seed`` (a CPU ``torch.Generator``).
    """
    if B < 1:
        raise ValueError(f"B must be >= 1, got {B}")
    gen = torch.Generator().manual_seed(int(seed) % (1 << 63))
    out = torch.empty((B, len(outcomes)), dtype=torch.float64)
    shared: dict[int, torch.Tensor] = {}  # n -> [B, n] Exp(1) draws of the outcomes' weights (paired mode)

    def exp(shape) -> torch.Tensor:
        return -torch.log(torch.rand(shape, generator=gen, dtype=torch.float64).clamp_min(1e-300))

    for s, outs in enumerate(outcomes):
        x = torch.tensor([float(bool(o)) for o in outs], dtype=torch.float64)
        n = x.numel()
        if n == 0:
            out[:, s] = math.nan
            continue
        if paired:
            if n not in shared:
                shared[n] = exp((B, n))
            e = shared[n]
        else:
            e = exp((B, n))
        e0 = exp((B,))  # the pseudo-outcome's weight is the slot's own, also when paired
        out[:, s] = (e @ x + 0.5 * e0) / (e.sum(dim=1) + e0)
    return out
