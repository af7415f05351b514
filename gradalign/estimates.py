"""Success-rate estimates from graded continuations: rates, Wilson intervals, split halves.

Owns: turning a list of graded continuation outcomes into a `SuccessEstimate` (counts, rate,
Wilson interval, truncation count), the replicates of a node's success vector behind every
interval (`success_replicates`: a Bayesian bootstrap, or `hierarchical_replicates`: posterior
draws of a beta-binomial model across the node's slots), splitting outcomes into two independent halves for the
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

from gradalign.config import UNCERTAINTY_RULES  # the rule names (branching.uncertainty)

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




def success_replicates(outcomes: Sequence[Sequence[bool]], *, B: int, seed: int, paired: bool = False,
                       rule: str = "bootstrap", pooled_last: bool = False,
                       indices: Sequence[Sequence[int]] | None = None,
                       exact: Sequence[int] = ()) -> torch.Tensor:
    """B seeded replicates of a node's success vector over its slots: ``[B, K+1]`` float64, drawn by
    ``rule`` (the default here, "bootstrap", is described first; "hierarchical" below).

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

    ``rule="hierarchical"`` draws the replicates from a posterior instead (`hierarchical_replicates`,
    which also says what ``pooled_last`` and ``indices`` mean, and pairs by
    continuation index).

    ``exact``: slots whose rate is known without sampling noise (an EOS candidate: every
    continuation is the finished completion graded again); under either rule their column is their
    observed rate in every replicate, and they do not inform the hierarchical population.
    """
    if rule == "hierarchical":
        out = hierarchical_replicates(outcomes, B=B, seed=seed, pooled_last=pooled_last, paired=paired, indices=indices,
                                      skip=exact)
    elif rule == "bootstrap":
        out = _bootstrap_replicates(outcomes, B=B, seed=seed, paired=paired)
    else:
        raise ValueError(f"rule must be one of {UNCERTAINTY_RULES}, got {rule!r}")
    for s_ in exact:
        if outcomes[s_]:  # no outcome: keep the drawn column
            out[:, s_] = sum(bool(o) for o in outcomes[s_]) / len(outcomes[s_])
    return out


def _bootstrap_replicates(outcomes: Sequence[Sequence[bool]], *, B: int, seed: int, paired: bool) -> torch.Tensor:
    """`success_replicates`' Bayesian bootstrap rule (documented there)."""
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


_MU_GRID = [0.005 + 0.01 * i for i in range(100)]  # the node's mean success rate (uniform prior)
_KAPPA_GRID = [0.5 * (2e4 ** (j / 39)) for j in range(40)]  # its concentration, 0.5 .. 1e4, log-spaced
_KAPPA_LOG_PRIOR = [-1.5 * math.log(k) for k in _KAPPA_GRID]
"""The prior's log weight of each kappa grid point: ``kappa^-1.5`` per log-spaced point (density
``kappa^-2.5``), which leans toward tokens that differ. A log-uniform prior (weight 1 per point) put
half its mass on kappa > 70, populations whose tokens are all alike within ~0.06; then 4/4 vs 0/4
successes gave the two tokens' order only 96% posterior probability, and the interval resolved 2-4
of 57 nodes of the SmolLM2 example. Chosen by measurement (bench/RESULTS.md, per-node precision;
on the former pilot allocation): coverage 0.97 / 0.95 on the tiny exact world (log-uniform:
0.94 / 0.91) and 0.82 on the long-horizon one (0.80-0.82). Leaning the other way (kappa^+0.5)
gave 0.72 there."""


def _log_rising(x, m: int):
    """``log Gamma(x + m) - log Gamma(x)`` = ``sum_{j<m} log(x + j)`` elementwise for an integer m >= 0
    (numpy; exact sums of logs, so small tensors need no lgamma kernel)."""
    import numpy as np

    if m == 0:
        return np.zeros_like(x)
    return np.log(x[..., None] + np.arange(m, dtype=np.float64)).sum(-1)


def _observed(outcomes: Sequence[Sequence[bool]], pooled_last: bool, skip: Sequence[int] = ()):
    """(n [S], k [S], obs [S] bool): counts per slot and which slots enter the model (not the pooled
    last slot under ``pooled_last``, not the ``skip`` slots)."""
    import numpy as np

    n = np.array([len(o) for o in outcomes], dtype=np.int64)
    k = np.array([sum(bool(x) for x in o) for o in outcomes], dtype=np.int64)
    obs = n > 0
    if pooled_last and len(outcomes):
        obs[-1] = False
    obs[list(skip)] = False
    return n, k, obs


def _grid():
    """(a, b): the population's Beta parameters ``mu kappa`` and ``(1 - mu) kappa`` on the grid, numpy ``[100, 40]``."""
    import numpy as np

    mu, kappa = np.array(_MU_GRID)[:, None], np.array(_KAPPA_GRID)[None]
    return mu * kappa, (1 - mu) * kappa


def _grid_loglik(n, k, obs):
    """``population_loglik`` from the counts `_observed` gives."""
    import numpy as np

    a, b = _grid()
    ll = np.zeros_like(a)
    if obs.any():
        pairs, count = np.unique(np.stack([n[obs], k[obs]], 1), axis=0, return_counts=True)  # slots share (n, k) often
        for (ni, ki), c in zip(pairs.tolist(), count.tolist()):
            ll += c * (_log_rising(a, ki) + _log_rising(b, ni - ki) - _log_rising(a + b, ni))
    return ll


def population_loglik(outcomes: Sequence[Sequence[bool]], pooled_last: bool = False, skip: Sequence[int] = ()):
    """The beta-binomial log marginal likelihood of one node's slots on the (mu, kappa) grid:
    numpy ``[100, 40]``, ``sum_s log B(mu kappa + k_s, (1 - mu) kappa + n_s - k_s) / B(mu kappa,
    (1 - mu) kappa)`` over the slots that enter the model (see `hierarchical_replicates`)."""
    return _grid_loglik(*_observed(outcomes, pooled_last, skip))


def hierarchical_replicates(outcomes: Sequence[Sequence[bool]], *, B: int, seed: int, pooled_last: bool = False,
                            paired: bool = False, indices: Sequence[Sequence[int]] | None = None,
                            skip: Sequence[int] = ()) -> torch.Tensor:
    """B posterior draws of a node's success vector over its slots: ``[B, K+1]`` float64 (or
    ``[B, K]`` without a residual slot), the same layout as `success_replicates`.

    Model (a beta-binomial across the node's slots): every next token's success probability is a
    draw ``S_s ~ Beta(mu kappa, (1 - mu) kappa)`` from one node-level population, and slot s's
    successes are ``Binomial(n_s, S_s)``. ``mu`` (uniform on (0, 1)) and ``kappa`` (the spread, on
    [0.5, 1e4] with the prior `_KAPPA_LOG_PRIOR`) get a grid posterior from the node's
    beta-binomial marginal likelihood; each
    replicate draws (mu, kappa) from it and then every slot's rate from its posterior given them,
    ``Beta(mu kappa + k_s, (1 - mu) kappa + n_s - k_s)``. A slot with many continuations keeps its
    own rate; a slot with one or two (a rare token drawn once for the residual bucket) is pulled
    toward the node's population as far as tokens are seen to differ, so its 0/1 outcome no
    longer reads as a rate of 0 or 1.

    The slot draw is built as a Bayesian bootstrap with a prior (the Dirichlet-process posterior,
    whose mean on {0, 1} has exactly that Beta law): ``S_s = (sum_m e_m o_sm + g_s b_s) /
    (sum_m e_m + g_s)`` with ``e_m ~ Exp(1)`` per continuation, ``g_s ~ Gamma(kappa)`` and ``b_s ~
    Beta(mu kappa, (1 - mu) kappa)`` per slot. With ``paired=True`` (`branching.common_random_numbers`)
    continuation m's weight e_m is shared by every slot that has a continuation with index m, so
    slots whose continuations share noise streams keep their correlation (a heuristic: each slot's
    marginal stays exact, but the model itself has slots independent given (mu, kappa), and the
    grid likelihood treats them so); ``indices[s]`` gives
    slot s's continuation indices (default ``0..n_s - 1``; a token drawn for the residual bucket
    has the indices of its draws).

    ``pooled_last=True``: the last slot's outcomes are the residual bucket's, already counted in
    the slots of the tokens they were drawn for (`branching.residual_per_token`), so it does not
    enter the model, and its column is the rate of a token never drawn: a population draw
    ``Beta(mu kappa, (1 - mu) kappa)`` per replicate. Otherwise every slot (a pooled residual
    bucket too) is one observation. A slot with n = 0 or in ``skip`` is drawn from the population
    (`success_replicates` overwrites ``exact`` slots). The grid likelihood treats slots as
    independent. Deterministic in ``seed`` (a numpy ``Generator``).
    """
    import numpy as np

    if B < 1:
        raise ValueError(f"B must be >= 1, got {B}")
    rng = np.random.default_rng(int(seed) % (1 << 63))
    n, k, obs = _observed(outcomes, pooled_last, skip)
    idx_of = [list(range(len(o))) for o in outcomes] if indices is None else [list(i) for i in indices]
    if len(idx_of) != len(outcomes) or any(len(i) != len(o) for i, o in zip(idx_of, outcomes)):
        raise ValueError("indices must give one continuation index per outcome of every slot")
    a, b = _grid()  # [mu, kappa] grids of the population's Beta parameters
    ll = _grid_loglik(n, k, obs) + np.array(_KAPPA_LOG_PRIOR)[None]  # computed once per node
    post = np.exp(ll - ll.max()).ravel()
    pick = rng.choice(post.size, size=B, p=post / post.sum())
    A, Bb = a.ravel()[pick][:, None], b.ravel()[pick][:, None]  # [B, 1]
    slots = len(outcomes)
    prior_w = rng.gamma(A + Bb, size=(B, slots))  # g_s ~ Gamma(kappa)
    prior_v = rng.beta(np.broadcast_to(A, (B, slots)), np.broadcast_to(Bb, (B, slots)))  # b_s
    width = max((max(i) + 1 for i, use in zip(idx_of, obs) if use and i), default=0)
    shared = rng.exponential(size=(B, width)) if paired else None
    out = np.empty((B, slots), dtype=np.float64)
    for s_, (outs, ids, use) in enumerate(zip(outcomes, idx_of, obs)):
        if not use:
            out[:, s_] = prior_v[:, s_]
            continue
        x = np.array([float(bool(o)) for o in outs])
        e = shared[:, ids] if paired else rng.exponential(size=(B, len(outs)))
        out[:, s_] = (e @ x + prior_w[:, s_] * prior_v[:, s_]) / (e.sum(1) + prior_w[:, s_])
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float64))
