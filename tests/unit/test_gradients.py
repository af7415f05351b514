"""gradalign.gradients: every direction against torch.autograd (float64), plus statistics and cosines."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gradalign import gradients as G

V = 11
B = 4
DT = torch.float64


def _logits(seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(B, V, generator=g, dtype=DT)


def _teacher_logp(seed: int = 1) -> torch.Tensor:
    return F.log_softmax(_logits(seed), dim=-1)


def _grad(loss_fn, z: torch.Tensor) -> torch.Tensor:
    """Gradient of sum over batch rows of loss_fn(z) w.r.t. z."""
    z = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(z).sum(), z)
    return grad


def trl_generalized_jsd(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-row generalized JSD written as TRL's GKDTrainer.generalized_jsd_loss does (reduction none)."""
    student_log_probs = F.log_softmax(student_logits, dim=-1)
    if beta == 0:
        jsd = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True)
    else:
        beta_t = torch.tensor(beta, dtype=student_log_probs.dtype)
        mixture_log_probs = torch.logsumexp(
            torch.stack([student_log_probs + torch.log1p(-beta_t), teacher_log_probs + torch.log(beta_t)]),
            dim=0,
        )
        kl_teacher = F.kl_div(mixture_log_probs, teacher_log_probs, reduction="none", log_target=True)
        kl_student = F.kl_div(mixture_log_probs, student_log_probs, reduction="none", log_target=True)
        jsd = beta_t * kl_teacher + (1 - beta_t) * kl_student
    return jsd.sum(dim=-1)


# ----------------------------------------------------------------------------- ideal gradient


def test_ideal_gradient_matches_autograd():
    z = _logits(0)
    S = torch.rand(B, V, generator=torch.Generator().manual_seed(5), dtype=DT)
    expected = _grad(lambda z: (torch.softmax(z, -1) * S).sum(-1), z)
    got = G.ideal_gradient(torch.softmax(z, -1), S)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert got.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(got.sum(-1), torch.zeros(B, dtype=DT), atol=1e-12, rtol=0)


def test_node_value_and_teacher_advantage():
    p = torch.tensor([0.5, 0.25, 0.25], dtype=DT)
    q = torch.tensor([0.0, 0.0, 1.0], dtype=DT)
    S = torch.tensor([0.2, 0.4, 0.9], dtype=DT)
    assert G.node_value(p, S).item() == pytest.approx(0.1 + 0.1 + 0.225)
    assert G.teacher_advantage(p, q, S).item() == pytest.approx(0.9 - 0.425)


# ----------------------------------------------------------------------------- distill directions


def test_reverse_kl_direction_matches_autograd():
    z, logq = _logits(0), _teacher_logp()
    grad = _grad(lambda z: G.kl(F.log_softmax(z, -1), logq), z)
    torch.testing.assert_close(G.reverse_kl_direction(F.log_softmax(z, -1), logq), -grad, rtol=1e-10, atol=1e-12)


def test_forward_kl_direction_matches_autograd():
    z, logq = _logits(0), _teacher_logp()
    grad = _grad(lambda z: G.kl(logq, F.log_softmax(z, -1)), z)
    torch.testing.assert_close(G.forward_kl_direction(F.log_softmax(z, -1), logq), -grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_direction_matches_trl_autograd(beta):
    z, logq = _logits(2), _teacher_logp(3)
    grad = _grad(lambda z: trl_generalized_jsd(z, logq, beta), z)
    got = G.jsd_direction(F.log_softmax(z, -1), logq, beta=beta)
    torch.testing.assert_close(got, -grad, rtol=1e-9, atol=1e-12)
    assert got.abs().max() > 1e-3
    # the value matches TRL's too
    torch.testing.assert_close(G.jsd(F.log_softmax(z, -1), logq, beta=beta), trl_generalized_jsd(z, logq, beta))


def test_jsd_endpoints_are_the_kls():
    logp, logq = F.log_softmax(_logits(4), -1), _teacher_logp()
    torch.testing.assert_close(G.jsd_direction(logp, logq, 0.0), G.forward_kl_direction(logp, logq))
    torch.testing.assert_close(G.jsd_direction(logp, logq, 1.0), G.reverse_kl_direction(logp, logq))
    with pytest.raises(ValueError):
        G.jsd_direction(logp, logq, 1.5)


def test_sampled_token_direction_matches_surrogate_autograd():
    z, logq = _logits(0), _teacher_logp()
    token = torch.tensor([0, 3, 10, 3])

    def surrogate(z):
        logp = F.log_softmax(z, -1)
        lp_y = logp.gather(-1, token[:, None]).squeeze(-1)
        adv = (logq.gather(-1, token[:, None]).squeeze(-1) - lp_y).detach()
        return -adv * lp_y

    grad = _grad(surrogate, z)
    got = G.sampled_token_direction(F.log_softmax(z, -1), logq, token)
    torch.testing.assert_close(got, -grad, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError):
        G.sampled_token_direction(F.log_softmax(z, -1), logq, token[:2])


@pytest.mark.parametrize("loss", G.LOSSES)
def test_temperature_scales_raw_gradient_by_inverse_tau(loss):
    tau = 0.7
    z_raw, t_raw = _logits(6), _logits(7)
    logq = F.log_softmax(t_raw / tau, -1)
    token = torch.tensor([1, 2, 3, 4])

    def loss_fn(z_raw):
        z = z_raw / tau
        logp = F.log_softmax(z, -1)
        if loss == "reverse_kl":
            return G.kl(logp, logq)
        if loss == "forward_kl":
            return G.kl(logq, logp)
        if loss == "jsd":
            return trl_generalized_jsd(z, logq, 0.5)
        lp_y = logp.gather(-1, token[:, None]).squeeze(-1)
        return -(logq.gather(-1, token[:, None]).squeeze(-1) - lp_y).detach() * lp_y

    grad_raw = _grad(loss_fn, z_raw)
    d = G.distill_direction(loss, F.log_softmax(z_raw / tau, -1), logq, token=token, beta=0.5)
    torch.testing.assert_close(-grad_raw, d / tau, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(G.cosine_batch(-grad_raw, d).values, torch.ones(B, dtype=DT))


def test_distill_direction_dispatch_and_errors():
    logp, logq = F.log_softmax(_logits(0), -1), _teacher_logp()
    torch.testing.assert_close(G.distill_direction("jsd", logp, logq, beta=0.3), G.jsd_direction(logp, logq, 0.3))
    torch.testing.assert_close(G.distill_direction("forward_kl", logp, logq), logq.exp() - logp.exp())
    with pytest.raises(ValueError, match="reverse_kl, forward_kl, jsd, sampled_token"):
        G.distill_direction("kl", logp, logq)
    with pytest.raises(ValueError, match="token"):
        G.distill_direction("sampled_token", logp, logq)


def test_directions_finite_with_exact_zero_probabilities():
    # token 0 masked (-inf logit: p exactly 0, logp = -inf); token 1 underflows (p == 0, logp finite)
    z = torch.tensor([[-math.inf, -2000.0, 0.0, 1.0, 2.0]], dtype=DT)
    logp = F.log_softmax(z, -1)
    p = logp.exp()
    assert p[0, 0] == 0 and p[0, 1] == 0
    logq = F.log_softmax(torch.tensor([[0.5, 0.1, 0.0, -1.0, 0.3]], dtype=DT), -1)
    for beta in (0.0, 0.5, 1.0):
        d = G.jsd_direction(logp, logq, beta)
        assert torch.isfinite(d).all()
    d_rev = G.reverse_kl_direction(logp, logq)
    assert torch.isfinite(d_rev).all() and d_rev[0, 0] == 0 and d_rev[0, 1] == 0
    # agrees with the direction computed on the surviving support only
    sub = G.reverse_kl_direction(F.log_softmax(z[:, 2:], -1), logq[:, 2:])
    torch.testing.assert_close(d_rev[:, 2:], sub)
    sub_jsd = G.jsd_direction(F.log_softmax(z[:, 2:], -1), logq[:, 2:], 0.5)
    # the JSD on the support differs (q has mass off it), so only check finiteness and zeros off-support
    assert torch.isfinite(sub_jsd).all()
    d_jsd = G.jsd_direction(logp, logq, 0.5)
    assert d_jsd[0, 0] == 0 and d_jsd[0, 1] == 0
    for value in (G.entropy(logp), G.kl(logp, logq), G.jsd(logp, logq), G.distribution_cosine(logp, logq)):
        assert torch.isfinite(value).all()
    torch.testing.assert_close(G.entropy(logp), G.entropy(F.log_softmax(z[:, 2:], -1)))


# ----------------------------------------------------------------------------- statistics


def test_statistics_match_hand_formulas():
    p = torch.tensor([0.5, 0.25, 0.25, 0.0], dtype=DT)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=DT)
    logp, logq = p.log(), q.log()  # logp[3] = -inf
    assert G.entropy(logp).item() == pytest.approx(1.5 * math.log(2))
    assert G.entropy(logq).item() == pytest.approx(math.log(4))
    assert G.kl(logp, logq).item() == pytest.approx(0.5 * math.log(2))
    assert G.kl(logq, logp).item() == math.inf
    m = 0.5 * (p + q)
    kl_pm = sum(a * math.log(a / b) for a, b in zip(p.tolist(), m.tolist()) if a > 0)
    kl_qm = sum(a * math.log(a / b) for a, b in zip(q.tolist(), m.tolist()) if a > 0)
    assert G.jsd(logp, logq).item() == pytest.approx(0.5 * kl_pm + 0.5 * kl_qm)
    m9 = 0.1 * p + 0.9 * q
    kl_pm9 = sum(a * math.log(a / b) for a, b in zip(p.tolist(), m9.tolist()) if a > 0)
    kl_qm9 = sum(a * math.log(a / b) for a, b in zip(q.tolist(), m9.tolist()) if a > 0)
    assert G.jsd(logp, logq, beta=0.9).item() == pytest.approx(0.9 * kl_qm9 + 0.1 * kl_pm9)
    assert G.jsd(logp, logq, beta=0.0).item() == math.inf  # KL(q||p) with p = 0 where q > 0
    expected_cos = (0.125 + 0.0625 + 0.0625) / (math.sqrt(0.375) * 0.5)
    assert G.distribution_cosine(logp, logq).item() == pytest.approx(expected_cos)


# ----------------------------------------------------------------------------- cosines


def test_cosine_values_and_reasons():
    a = torch.tensor([1.0, 0.0, 1.0], dtype=DT)
    b = torch.tensor([1.0, 1.0, 0.0], dtype=DT)
    c = G.cosine(a, b)
    assert c.value == pytest.approx(0.5) and c.reason == "" and c.ok
    z = torch.zeros(3, dtype=DT)
    r = G.cosine(z, b)
    assert math.isnan(r.value) and r.reason == "zero_ideal"
    r = G.cosine(a, z)
    assert math.isnan(r.value) and r.reason == "zero_distill"
    assert G.cosine(z, z).reason == "zero_ideal"
    with pytest.raises(ValueError):
        G.cosine(a[None], b[None])


def test_cosine_batch():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]], dtype=DT)
    b = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]], dtype=DT)
    out = G.cosine_batch(a, b)
    assert isinstance(out, G.CosineBatch)
    assert out.values[0].item() == pytest.approx(1 / math.sqrt(2))
    assert torch.isnan(out.values[1:]).all()
    assert out.zero_mask_a.tolist() == [False, True, False]
    assert out.zero_mask_b.tolist() == [False, False, True]


def test_restrict_and_candidate_cosine():
    vec = torch.arange(2 * V, dtype=DT).reshape(2, V)
    idx = torch.tensor([3, 0, 7])
    assert G.restrict(vec, idx).tolist() == [[3.0, 0.0, 7.0], [14.0, 11.0, 18.0]]
    g = torch.tensor([1.0, 5.0, 0.0, 2.0], dtype=DT)
    d = torch.tensor([1.0, -9.0, 3.0, 2.0], dtype=DT)
    cand = torch.tensor([0, 3])
    assert G.cosine(G.restrict(g, cand), G.restrict(d, cand)).value == pytest.approx(1.0)


def test_debiased_cosine_exact_and_reasons():
    g = torch.tensor([1.0, 2.0, -3.0], dtype=DT)
    d = torch.tensor([0.5, 1.0, 1.0], dtype=DT)
    # noise-free halves: identical to the plain cosine
    assert G.debiased_cosine(g, g, d).value == pytest.approx(G.cosine(g, d).value)
    g_a = torch.tensor([1.0, 0.0, 0.0], dtype=DT)
    g_b = torch.tensor([1.0, 2.0, 0.0], dtype=DT)
    d2 = torch.tensor([0.0, 1.0, 0.0], dtype=DT)
    # <g, d> = 1, sqrt(<g_a, g_b>) = 1, ||d|| = 1: exceeds the naive cos and is not clipped
    assert G.debiased_cosine(g_a, g_b, d2).value == pytest.approx(1.0)
    assert G.debiased_cosine(g_a, g_b, 3 * d2 + torch.tensor([0.0, 0.0, 0.1], dtype=DT)).value > G.cosine(
        0.5 * (g_a + g_b), d2
    ).value
    big = G.debiased_cosine(torch.tensor([1.0, 0.0], dtype=DT), torch.tensor([0.01, 4.0], dtype=DT),
                            torch.tensor([0.0, 1.0], dtype=DT))
    assert big.ok and big.value > 1.0  # 2 / sqrt(0.01) = 20
    assert big.value == pytest.approx(20.0)
    r = G.debiased_cosine(g_a, torch.tensor([-1.0, 0.0, 0.0], dtype=DT), d)
    assert math.isnan(r.value) and r.reason == "ideal_below_noise"
    r = G.debiased_cosine(g_a, torch.tensor([0.0, 1.0, 0.0], dtype=DT), d)  # orthogonal halves: <=0
    assert r.reason == "ideal_below_noise"
    r = G.debiased_cosine(g, g, torch.zeros(3, dtype=DT))
    assert math.isnan(r.value) and r.reason == "zero_distill"


def test_debiased_cosine_beats_naive_under_noise():
    gen = torch.Generator().manual_seed(1234)
    g_true = torch.randn(V, generator=gen, dtype=DT)
    g_true = g_true / g_true.norm()
    noise_dir = torch.randn(V, generator=gen, dtype=DT)
    noise_dir = noise_dir - (noise_dir @ g_true) * g_true
    d = 0.6 * g_true + 0.8 * noise_dir / noise_dir.norm()
    true_cos = G.cosine(g_true, d).value
    assert true_cos == pytest.approx(0.6)
    sigma = 0.25  # per-coordinate noise of each half; ||noise|| ~ 0.83 vs ||g_true|| = 1
    debiased, naive = [], []
    for _ in range(2000):
        g_a = g_true + sigma * torch.randn(V, generator=gen, dtype=DT)
        g_b = g_true + sigma * torch.randn(V, generator=gen, dtype=DT)
        c = G.debiased_cosine(g_a, g_b, d)
        if c.ok:
            debiased.append(c.value)
        naive.append(G.cosine(0.5 * (g_a + g_b), d).value)
    assert len(debiased) > 1900
    mean_debiased = sum(debiased) / len(debiased)
    mean_naive = sum(naive) / len(naive)
    assert abs(mean_debiased - true_cos) < abs(mean_naive - true_cos)
    assert mean_naive < true_cos - 0.05  # naive really is shrunk toward 0
    # the ratio keeps a small positive Jensen bias (E[1/sqrt(<g_a,g_b>)] > 1/||E g||): ~0.024 here vs ~0.08
    assert abs(mean_debiased - true_cos) < 0.04
