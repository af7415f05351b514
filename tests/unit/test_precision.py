"""gradalign.precision: the folded (K + 1 slot) cosine equals the full-vocabulary one; the
interval, `resolved` and snr behave at the extremes; the pooling bound bounds the pooling error."""

from __future__ import annotations

import math

import torch

from gradalign import gradients as G
from gradalign import precision as P
from gradalign.estimates import full_vocab_success

DT = torch.float64


def _node(seed=0, V=12, K=4):
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(V, generator=g, dtype=DT) * 2, -1)
    lq = torch.log_softmax(torch.randn(V, generator=g, dtype=DT) * 2, -1)
    ids = torch.randperm(V, generator=g)[:K]
    rates = torch.rand(K, generator=g, dtype=DT)
    rest = float(torch.rand(1, generator=g, dtype=DT))
    return lp, lq, ids, rates, rest


def test_folded_cosine_and_norm_match_full_vocabulary():
    for seed in range(5):
        lp, lq, ids, rates, rest = _node(seed)
        p = lp.exp()
        S = full_vocab_success(p.numel(), ids, rates, rest)
        g = G.ideal_gradient(p, S)
        f = P.Folded.of(p, ids)
        slots = torch.cat([rates, torch.tensor([rest], dtype=DT)])
        diff, n2 = P.ideal_folded(f, slots)
        assert math.isclose(float(n2), float(g @ g), rel_tol=1e-12)
        for loss in G.LOSSES:
            d = G.distill_direction(loss, lp, lq, token=torch.tensor(int(ids[0])))
            a = f.direction(p, ids, d)
            folded = float((diff * a).sum()) / (math.sqrt(float(n2)) * float(d.norm()))
            assert math.isclose(folded, G.cosine(g, d).value, rel_tol=1e-10, abs_tol=1e-12)


def test_precision_of_a_noise_free_node_is_tight_and_resolved():
    lp, lq, ids, rates, rest = _node(1)
    p = lp.exp()
    f = P.Folded.of(p, ids)
    slots = torch.cat([rates, torch.tensor([rest], dtype=DT)])
    d = G.distill_direction("forward_kl", lp, lq)
    S = full_vocab_success(p.numel(), ids, rates, rest)
    c = G.cosine(G.ideal_gradient(p, S), d).value
    tiny = slots + 1e-6 * torch.randn(300, slots.numel(), dtype=DT, generator=torch.Generator().manual_seed(0))
    pr = P.cosine_precision(f, slots, tiny, f.direction(p, ids, d), float(d.norm()))
    assert pr.resolved and pr.se < 1e-4 and pr.low <= c <= pr.high and pr.high - pr.low < 1e-3
    nn = P.node_noise(f, slots, tiny, p)
    assert nn.snr > 1e6 and math.isclose(nn.residual_mass, 1 - float(p[ids].sum()), rel_tol=1e-9)
    # pure noise: replicates spread over everything, the sign is not resolved and snr ~ 0 or below
    noisy = slots + 0.5 * torch.randn(300, slots.numel(), dtype=DT, generator=torch.Generator().manual_seed(1))
    pr = P.cosine_precision(f, torch.full_like(slots, 0.5) + 1e-9 * torch.arange(slots.numel()), noisy,
                            f.direction(p, ids, d), float(d.norm()))
    assert not pr.resolved and -1.0 <= pr.low <= pr.high <= 1.0
    zero = P.cosine_precision(f, torch.full_like(slots, 0.5), noisy, f.direction(p, ids, d), float(d.norm()))
    assert zero == P.UNDEFINED  # no ideal gradient: undefined, not resolved


def test_pooling_bound_holds_for_any_rates_outside_the_candidates():
    lp, lq, ids, rates, rest = _node(2)
    p = lp.exp()
    f = P.Folded.of(p, ids)
    slots = torch.cat([rates, torch.tensor([rest], dtype=DT)])
    bound = P.node_noise(f, slots, slots[None].repeat(3, 1), p).pooling_bound
    g_pooled = G.ideal_gradient(p, full_vocab_success(p.numel(), ids, rates, rest))
    gen = torch.Generator().manual_seed(5)
    worst = 0.0
    for _ in range(200):  # true rates outside K anywhere in [0, 1] (0/1 extremes included)
        S = torch.where(f.outside, torch.rand(p.numel(), generator=gen, dtype=DT).round(), torch.zeros_like(p))
        S = S.scatter(0, ids, rates)
        worst = max(worst, float((G.ideal_gradient(p, S) - g_pooled).norm()))
    assert 0 < worst <= bound
