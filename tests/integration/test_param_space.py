"""Parameter-space alignment on tiny Llama models (float64): the exact Gram of `param_space.exact_grams`
against fully materialised autograd gradients for every scope, the lm_head scope against the logit
cosine, and the sketch's convergence at the 1/sqrt(k) rate (fixed seed, a bound, no timing)."""

from __future__ import annotations

import math

import pytest
import torch

from gradalign import gradients as G
from gradalign import param_space as PS

V = 11


def _model(tied: bool, bias: bool, layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V + 2, hidden_size=16, intermediate_size=24, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                      tie_word_embeddings=tied, attention_bias=bias, mlp_bias=bias)
    m = LlamaForCausalLM(cfg).double().eval()  # V + 2 head rows: two padded rows beyond the V ids
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))  # non-trivial norm weights and biases
    return m


def _untied_copy(model):
    """The same function with every shared tensor copied: one tensor per parameter USE."""
    from transformers import LlamaForCausalLM

    cfg = model.config.__class__.from_dict(model.config.to_dict())
    cfg.tie_word_embeddings = False
    u = LlamaForCausalLM(cfg).double().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["lm_head.weight"] = model.get_output_embeddings().weight.detach().clone()
    u.load_state_dict(state)
    return u


def _materialised(model, ids, row, vecs, scope: PS.Scope, scale: float) -> torch.Tensor:
    """[R, P] full gradients of scale * v . z_row over the scope's uses (tied uses summed), by autograd."""
    u = _untied_copy(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    uparams = dict(u.named_parameters())
    logits = u(input_ids=ids[None]).logits[0, row, :V]
    out = []
    for v in vecs:
        grads = torch.autograd.grad(scale * (v @ logits), [uparams[n] for n in scope.names], retain_graph=True,
                                    allow_unused=True)
        by_tensor: dict[int, torch.Tensor] = {}
        for n, g in zip(scope.names, grads):
            g = torch.zeros_like(uparams[n]) if g is None else g
            key = id(params[n])
            by_tensor[key] = by_tensor[key] + g if key in by_tensor else g
        out.append(torch.cat([g.flatten() for g in by_tensor.values()]))
    return torch.stack(out)


def _nodes(L: int, R: int, rows=(2, 5, 7), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [PS.NodeVectors(r, torch.randn(R, V, generator=g, dtype=torch.float64)) for r in rows]


SCOPES = ["all", "lm_head", "no_embeddings", "last_blocks:1", "model.layers.0.*", "model.layers.*.mlp.*,!*down_proj*",
          "model.embed_tokens.weight", "*norm*"]


@pytest.mark.parametrize("tied,bias", [(True, False), (False, True)])
@pytest.mark.parametrize("spec", SCOPES)
def test_exact_gram_equals_materialised_gradients(tied, bias, spec):
    model = _model(tied, bias)
    ids = torch.tensor([1, 4, 5, 4, 9, 5, 2, 4, 7])
    scope = PS.resolve_scope(model, spec)
    nodes = _nodes(ids.numel(), 4)
    forms: dict = {}
    grams = PS.exact_grams(model, ids, nodes, scope, scale=1 / 0.7, budget_bytes=1 << 12, forms=forms)  # several chunks
    for nd, gram in zip(nodes, grams):
        full = _materialised(model, ids, nd.row, nd.vectors, scope, 1 / 0.7)
        ref = full @ full.T
        torch.testing.assert_close(gram, ref, rtol=1e-9, atol=1e-12)
    if spec == "all":
        assert set(forms.values()) <= {"write", "gram"} and forms


def test_both_linear_forms_agree():
    g = torch.Generator().manual_seed(0)
    for T, out, inn in ((3, 40, 50), (30, 4, 5)):
        D = torch.randn(3, T, out, generator=g, dtype=torch.float64)
        X = torch.randn(T, inn, generator=g, dtype=torch.float64)
        Wg = torch.einsum("rto,ti->roi", D, X).flatten(1)
        gram, form = PS._linear_gram(D, X)
        torch.testing.assert_close(gram, Wg @ Wg.T)
        assert form == ("gram" if T == 3 else "write")


def test_lm_head_scope_equals_logit_cosine():
    model = _model(tied=True, bias=False)
    ids = torch.tensor([1, 4, 5, 4, 9, 5, 2])
    row = 5
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids[None]).logits[0, row, :V], -1)
        lq = torch.log_softmax(torch.randn(V, dtype=torch.float64, generator=torch.Generator().manual_seed(3)), -1)
    p = lp.exp()
    cand = torch.tensor([2, 4, 7])
    S_full = torch.full((V,), 0.3, dtype=torch.float64)
    S_full[cand] = torch.tensor([0.9, 0.1, 0.5], dtype=torch.float64)
    g = G.ideal_gradient(p, S_full)
    ds = [G.distill_direction(loss, lp, lq, token=torch.tensor(4)) for loss in G.LOSSES]
    basis = PS.node_basis(p, cand)
    torch.testing.assert_close(basis.sum(0), p)
    masses = basis.sum(1)
    S = torch.tensor([0.9, 0.1, 0.5, 0.3], dtype=torch.float64)
    torch.testing.assert_close(PS.ideal_coefficients(masses, S) @ basis, g)  # g* = sum_j (S_j - V) b_j
    scope = PS.resolve_scope(model, "lm_head")
    assert scope.names == ("lm_head.weight",)
    gram = PS.exact_grams(model, ids, [PS.NodeVectors(row, torch.cat([basis, torch.stack(ds)]))], scope)[0]
    res = PS.param_cosines(gram, masses, S)
    for c, d in zip(res.cos.tolist(), ds):
        assert c == pytest.approx(G.cosine(g, d).value, abs=1e-12)
    # norms are the parameter gradients' norms: ||v|| ||h||
    with torch.no_grad():
        h = model.get_decoder()(input_ids=ids[None]).last_hidden_state[0, row]
    assert res.norm_ideal == pytest.approx(float(g.norm() * h.norm()), rel=1e-10)


def test_sketch_converges_at_inverse_sqrt_k():
    """Mean |cos_sketch - cos_exact| scaled by sqrt(k) / (1 - c^2) stays bounded (E|N(0,1)| ~ 0.8) as k
    grows 16x, and the error itself falls by about 4x."""
    model = _model(tied=True, bias=False, layers=1)
    ids = torch.tensor([1, 4, 5, 4, 9, 5, 2, 4])
    scope = PS.resolve_scope(model, "all")
    nodes = _nodes(ids.numel(), 6, rows=(3, 6, 7), seed=5)
    exact = PS.exact_grams(model, ids, nodes, scope)

    def cosines(gram):
        n = gram.diagonal().sqrt()
        c = gram / (n[:, None] * n[None, :])
        iu = torch.triu_indices(c.shape[0], c.shape[0], 1)
        return c[iu[0], iu[1]]
    truth = torch.cat([cosines(g) for g in exact])
    errs = {}
    for k in (16, 256):
        sk = PS.sketch_grams(model, ids, nodes, scope, k=k, seed=7, chunk=16)
        est = torch.cat([cosines(g) for g in sk])
        scaled = (est - truth).abs() * math.sqrt(k) / (1 - truth**2)
        assert float(scaled.mean()) < 1.2, (k, float(scaled.mean()))
        errs[k] = float((est - truth).abs().mean())
    assert 2.0 < errs[16] / errs[256] < 8.0, errs
    # same seed, same sketch; the sketch leaves the model's attention setting as it was
    a = PS.sketch_grams(model, ids, nodes[:1], scope, k=8, seed=3)[0]
    b = PS.sketch_grams(model, ids, nodes[:1], scope, k=8, seed=3)[0]
    torch.testing.assert_close(a, b)
    assert model.config._attn_implementation == "sdpa"


def test_sketch_lm_head_scope_is_unbiased_gram():
    model = _model(tied=True, bias=False, layers=1)
    ids = torch.tensor([1, 4, 5, 4])
    scope = PS.resolve_scope(model, "lm_head")
    nodes = _nodes(ids.numel(), 3, rows=(2,), seed=2)
    exact = PS.exact_grams(model, ids, nodes, scope)[0]
    sk = PS.sketch_grams(model, ids, nodes, scope, k=4000, seed=1, kind="gaussian", chunk=500)[0]
    assert float(((sk - exact).abs() / exact.diagonal().max()).max()) < 0.1


def test_bad_scopes_are_one_line_errors():
    model = _model(tied=True, bias=False, layers=1)
    for spec in ("nothing.*", "last_blocks:x", "last_blocks:0"):
        with pytest.raises(PS.ScopeError, match="alignment.scope"):
            PS.resolve_scope(model, spec)
