"""Per-node precision of the alignment cosine: its bootstrap interval, the ideal gradient's
signal-to-noise, whether the sign is resolved, and the residual bucket's pooling bound.

Owns: folding a node's full-vocabulary vectors onto its slots (`Folded`: every token outside the
candidates shares the residual bucket's success rate, so ``p``, ``p^2`` and ``p d`` summed over
those tokens are all the cosine needs), evaluating the ideal gradient's cosine with a direction
for a batch of success-vector replicates (`estimates.success_replicates`), and the per-row
summaries (`CosinePrecision`, `NodeNoise`). Does NOT own: sampling or grading continuations, the
replicates' resampling rule (`gradalign.estimates`), the gradient formulas
(`gradalign.gradients`; `tests/unit/test_precision.py` checks the folded cosine equals the
full-vocabulary one) or the table rows (`pipeline.alignment`).

Shapes: V vocabulary, K candidates, B bootstrap replicates; a node has K + 1 slots, the last one
the tokens outside the candidates (the residual bucket; a constant success when there is none).

Method (chosen against exact truth, bench/bench_precision.py; the replicates' rule is
`branching.uncertainty`):
- ``||g*||`` is inflated by noise (E||g_hat||^2 = ||g||^2 + tr Cov), which shrinks weak-signal cosines
  toward 0; and a slot with one or two continuations (a rare token drawn once for the residual
  bucket) reads as a success rate of 0 or 1. The interval is the percentile interval
  ``[q_2.5, q_97.5]`` of the replicates' cosines and `se` their standard deviation. With the
  default `hierarchical` replicates (posterior draws of a beta-binomial model across the node's
  slots, `estimates.hierarchical_replicates`) it covered the exact cosine in 95-96% of rows on the
  tiny exact world and 84% on the long-horizon one, against 88-95% and 73% for the Bayesian
  bootstrap of each slot's own outcomes (`bootstrap`); 80% / 38% for the basic (reflected)
  interval and 95% / 67% for cos +- 1.96 se were worse (bootstrap replicates). What the long world
  misses is the norm (bench/bench_interval_anatomy.py): the interval of ``<g*, d>`` covers 97.7%,
  that of ``||g*||`` 48%, because independent posterior spread in every slot adds norm that a
  sparse true success vector (most tokens alike, a few decisive) does not have, which pulls the
  replicate cosines toward 0. Removing that inflation covers 99% with intervals nearly [-1, 1], so
  the percentile interval stays.
- ``<g*, d>`` = ``sum_s a_s (S_s - V)`` is LINEAR in the success vector, hence its plug-in estimate
  is unbiased; `resolved`: at least 97.5% of the replicates give ``<g*, d>`` the estimate's sign
  (a 95% two-sided posterior sign test).
- ``snr`` = ``||g_hat||^2 / noise - 1`` with ``noise = mean_B ||g_b - g_hat||^2`` (the replicates'
  spread around the plug-in estimate: tr Cov(g_hat) under the bootstrap; under the hierarchical
  posterior it also holds the shrinkage of thin slots toward the node's population): <= 0 means
  the ideal gradient is not distinguishable from its noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Folded:
    """A node's student distribution folded onto its K + 1 slots.

    w: ``[K+1]`` mass per slot (p_k, then the mass outside the candidates); w2: ``[K+1]`` sum of
    p^2 per slot; outside: bool ``[V]`` mask of the tokens in the last slot."""

    w: torch.Tensor
    w2: torch.Tensor
    outside: torch.Tensor

    @classmethod
    def of(cls, p: torch.Tensor, ids: torch.Tensor) -> Folded:
        """p: ``[V]`` float64 student probabilities; ids: ``[K]`` candidate token ids."""
        outside = torch.ones_like(p, dtype=torch.bool)
        outside[ids.long()] = False
        pk, po = p[ids.long()], p[outside]
        w = torch.cat([pk, po.sum().reshape(1)])
        w2 = torch.cat([pk * pk, (po * po).sum().reshape(1)])
        return cls(w, w2, outside)

    def direction(self, p: torch.Tensor, ids: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """``[K+1]``: p * d per candidate, then summed over the tokens outside them."""
        pd = p * d
        return torch.cat([pd[ids.long()], pd[self.outside].sum().reshape(1)])


def ideal_folded(f: Folded, S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For success vectors S ``[..., K+1]``: (S - V) ``[..., K+1]`` and ``||g*||^2`` ``[...]`` where
    ``g* = p (S - V)`` over the full vocabulary."""
    V = (S * f.w).sum(-1, keepdim=True)
    diff = S - V
    return diff, (diff * diff * f.w2).sum(-1)


@dataclass(frozen=True)
class NodeNoise:
    """The ideal gradient's noise at one node.

    snr: ``||g_hat||^2 / noise - 1`` (nan without replicates); noise: ``mean_B ||g_b - g_hat||^2``;
    residual_mass: student mass outside the candidates; pooling_bound: an upper bound on
    ``||delta g*||`` from giving every token outside the candidates the pooled residual rate
    (each such token's true rate lies in [0, 1]), in the units of `norm_ideal`."""

    snr: float
    noise: float
    residual_mass: float
    pooling_bound: float


def node_noise(f: Folded, S: torch.Tensor, reps: torch.Tensor, p: torch.Tensor) -> NodeNoise:
    """S: ``[K+1]`` point rates; reps: ``[B, K+1]`` replicates; p: ``[V]`` (for ``||p||``)."""
    diff, n2 = ideal_folded(f, S)
    rdiff, _ = ideal_folded(f, reps)
    noise = float(((rdiff - diff) ** 2 * f.w2).sum(-1).mean()) if reps.numel() else math.nan
    snr = float(n2) / noise - 1.0 if noise > 0 else math.nan
    rest = float(S[-1])
    c = max(rest, 1.0 - rest) if math.isfinite(rest) else 1.0
    bound = c * (math.sqrt(float(f.w2[-1])) + float(f.w[-1]) * float(p.norm()))
    return NodeNoise(snr, noise, float(f.w[-1]), bound)


@dataclass(frozen=True)
class CosinePrecision:
    """The cosine's uncertainty at one row: se (sd over the replicates), [low, high] (their 2.5% and
    97.5% quantiles, clipped to [-1, 1]) and resolved (the sign of ``<g*, d>`` is determined at 95%)."""

    se: float
    low: float
    high: float
    resolved: bool


UNDEFINED = CosinePrecision(math.nan, math.nan, math.nan, False)


def cosine_precision(f: Folded, S: torch.Tensor, reps: torch.Tensor, a: torch.Tensor, d_norm: float,
                     eps: float = 1e-12) -> CosinePrecision:
    """S ``[K+1]`` point rates, reps ``[B, K+1]``, a ``[K+1]`` the folded direction
    (`Folded.direction`), d_norm ``||d||`` over the full vocabulary."""
    diff, n2 = ideal_folded(f, S)
    if not (d_norm >= eps and float(n2) > eps * eps) or reps.shape[0] < 2:
        return UNDEFINED
    rdiff, rn2 = ideal_folded(f, reps)
    num = (rdiff * a).sum(-1)
    ok = torch.isfinite(num) & (rn2 > eps * eps)
    if int(ok.sum()) < 2:
        return UNDEFINED
    rc = (num[ok] / (rn2[ok].sqrt() * d_norm)).clamp(-1.0, 1.0)
    q_lo, q_hi = torch.quantile(rc, torch.tensor([0.025, 0.975], dtype=rc.dtype)).tolist()
    low, high = max(-1.0, q_lo), min(1.0, q_hi)
    num_hat = float((diff * a).sum())
    fin = num[torch.isfinite(num)]
    # the sign of <g*, d> is resolved when at least 97.5% of the replicates agree with the estimate's
    agree = float((torch.sign(fin) == math.copysign(1.0, num_hat)).double().mean()) if num_hat != 0 else 0.0
    return CosinePrecision(float(rc.std()), low, high, agree >= 1.0 - (1.0 - 0.95) / 2)
