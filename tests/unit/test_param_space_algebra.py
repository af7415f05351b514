"""Parameter-space algebra without a model: cos_params from a node's Gram matrix equals the cosine of
the vectors themselves for any replicate of S, the bootstrap replicates, and the `[alignment]` section."""

from __future__ import annotations

import pytest
import torch

from gradalign import gradients as G
from gradalign import param_space as PS
from gradalign.config import ConfigError, config_from_dict, default_config_dict


def _setup(seed=0, V=9, P=30):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(V, generator=g, dtype=torch.float64), -1)
    ids = torch.tensor([1, 4, 6])
    J = torch.randn(V, P, generator=g, dtype=torch.float64)  # a stand-in Jacobian: J^T v = v @ J
    ds = torch.randn(5, V, generator=g, dtype=torch.float64)
    return p, ids, J, ds


def test_param_cosines_equal_direct_cosines_for_every_replicate():
    p, ids, J, ds = _setup()
    basis = PS.node_basis(p, ids)
    masses = basis.sum(1)
    vecs = torch.cat([basis, ds]) @ J
    gram = vecs @ vecs.T
    reps = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.5, 0.0], [1.0, 1.0, 0.0, 0.5]], dtype=torch.float64)
    for S in reps:
        S_full = torch.full_like(p, float(S[-1]))
        S_full[ids] = S[:-1]
        gp = G.ideal_gradient(p, S_full) @ J
        res = PS.param_cosines(gram, masses, S)
        for c, d in zip(res.cos.tolist(), ds @ J):
            assert c == pytest.approx(G.cosine(gp, d).value, abs=1e-12)
        assert res.norm_ideal == pytest.approx(float(gp.norm()), rel=1e-12)
        torch.testing.assert_close(res.norm_distill, (ds @ J).norm(dim=1))
        assert torch.isnan(res.se).all() and torch.isnan(res.sketch_se).all()
    res = PS.param_cosines(gram, masses, reps[0], replicates=reps, sketch_k=16)
    direct = torch.stack([PS.param_cosines(gram, masses, S).cos for S in reps])
    torch.testing.assert_close(res.se, direct.std(0))
    torch.testing.assert_close(res.sketch_se, (1 - res.cos**2) / 4)


def test_zero_ideal_gives_nan():
    p, ids, J, ds = _setup()
    basis = PS.node_basis(p, ids)
    vecs = torch.cat([basis, ds]) @ J
    res = PS.param_cosines(vecs @ vecs.T, basis.sum(1), torch.full((4,), 0.5, dtype=torch.float64))
    assert torch.isnan(res.cos).all() and res.norm_ideal == pytest.approx(0, abs=1e-12)


def test_alignment_section():
    d = default_config_dict()
    assert d["alignment"] == {"space": ["logit"], "scope": "all", "method": "exact", "k": 64, "memory_mb": 256}
    cfg = config_from_dict({**d, "alignment": {"space": ["logit", "params"], "scope": "last_blocks:2", "method": "sketch",
                                               "k": 32}})
    assert cfg.alignment.space == ("logit", "params") and cfg.alignment.k == 32
    for bad, field in ((["params"], "space"), ("logit", "space"), (["logit", "logit"], "space")):
        with pytest.raises(ConfigError, match=f"alignment.{field}"):
            config_from_dict({**d, "alignment": {"space": bad}})
    for key, value in (("method", "full"), ("k", 0), ("scope", "last_blocks:x")):
        with pytest.raises(ConfigError, match=f"alignment.{key}"):
            config_from_dict({**d, "alignment": {key: value}})
