"""Integration tier: scoring's chunked float32 token statistics against the float64 reference.

The reference is what scoring computed before it was chunked: the model's full logits, widened to
float64, log_softmax over the tokenizer's ids, then `gradients.entropy/kl/jsd/distribution_cosine`
on whole [T, V] matrices. The chunked path (`scoring.pair_stats` over `scoring.forward_rows`) runs
the LM head a few positions at a time in float32. Stated tolerances (absolute, nats or cosine units):
log-probs and entropies 2e-5, KL both ways and JSD 2e-5 + 1e-4 relative, cosine 1e-5 — met on a
100-id bundled pair (trained, peaked) and on random-init Llamas with 50,000- and 152,064-row heads
(flat distributions over many ids, where float32 sums lose the most), so float64 is kept only for
the node rows that the gradient math consumes.
"""

from __future__ import annotations

import pytest
import torch

from gradalign import gradients as G
from gradalign.scoring import ScoreRequest, forward_rows, node_logp, pair_stats, restrict_to_vocab, score, split_model
from gradalign.tasks import data_dir

TOL = {"lp": 2e-5, "ent": 2e-5, "kl": 2e-5, "cos": 1e-5}


def _reference(model, req: ScoreRequest, tau: float, n_tok: int):
    """[T, V_tok] float64 log-probs from one whole forward (the pre-chunking path)."""
    ids = torch.tensor([list(req.prefix) + list(req.completion)])
    with torch.no_grad():
        z = model(input_ids=ids).logits[0, len(req.prefix) - 1 : -1].double() / tau
    return restrict_to_vocab(z, n_tok)[0]


def _random_llama(vocab: int, seed: int, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def _pairs():
    from transformers import AutoModelForCausalLM

    d = data_dir() / "models"
    yield "bundled", AutoModelForCausalLM.from_pretrained(d / "student").eval(), \
        AutoModelForCausalLM.from_pretrained(d / "teacher-strong").eval(), 100
    yield "random-50k", _random_llama(50_000, 1), _random_llama(50_000, 2), 50_000
    yield "random-152k-padded", _random_llama(152_064, 3, hidden=16), _random_llama(152_064, 4, hidden=16), 151_665


def _check(name, got, want, tol, rel=0.0):
    err = (got.double() - want).abs()
    bound = tol + rel * want.abs()
    assert bool((err <= bound).all()), f"{name}: max error {float(err.max()):.3g} (tolerance {tol} + {rel} relative)"


def test_chunked_float32_statistics_match_the_float64_reference():
    g = torch.Generator().manual_seed(0)
    for (label, student, teacher, n_tok), tau in zip(_pairs(), (1.0, 0.7, 1.3)):
        reqs = [ScoreRequest(tuple(torch.randint(0, n_tok, (n,), generator=g).tolist()),
                             tuple(torch.randint(0, n_tok, (T,), generator=g).tolist()), (0, T - 1))
                for n, T in ((3, 37), (5, 20), (1, 1))]
        tprefix = [(7, 8) + r.prefix for r in reqs]
        # a tiny logit budget forces chunks of 1-2 positions (the long-T case in miniature)
        s_rows = forward_rows(student, reqs, max_batch_tokens=40)
        t_rows = forward_rows(teacher, [ScoreRequest(p, r.completion) for p, r in zip(tprefix, reqs)], max_batch_tokens=40)
        for r, p, sr, tr in zip(reqs, tprefix, s_rows, t_rows):
            ps = pair_stats(sr, tr, r.completion, temperature=tau, beta=0.3, vocab_size=n_tok, max_logit_bytes=200_000)
            lp = _reference(student, r, tau, n_tok)
            lq = _reference(teacher, ScoreRequest(p, r.completion), tau, n_tok)
            y = torch.tensor(r.completion)[:, None]
            _check(f"{label} student_logprob", ps.student_logprob, lp.gather(-1, y)[:, 0], TOL["lp"])
            _check(f"{label} teacher_logprob", ps.teacher_logprob, lq.gather(-1, y)[:, 0], TOL["lp"])
            _check(f"{label} student_entropy", ps.student_entropy, G.entropy(lp), TOL["ent"])
            _check(f"{label} teacher_entropy", ps.teacher_entropy, G.entropy(lq), TOL["ent"])
            _check(f"{label} kl_pq", ps.kl_pq, G.kl(lp, lq), TOL["kl"], 1e-4)
            _check(f"{label} kl_qp", ps.kl_qp, G.kl(lq, lp), TOL["kl"], 1e-4)
            _check(f"{label} jsd", ps.jsd, G.jsd(lp, lq, 0.3), TOL["kl"], 1e-4)
            _check(f"{label} dist_cos", ps.dist_cos, G.distribution_cosine(lp, lq), TOL["cos"])
            nodes = node_logp(sr, r.nodes, tau, n_tok)
            assert nodes.dtype == torch.float64 and nodes.shape == (2, n_tok)
            torch.testing.assert_close(nodes, lp[list(r.nodes)], rtol=1e-6, atol=1e-5)  # batched vs whole forward


def test_split_head_and_sliced_prefill_reproduce_the_whole_forward():
    model = _random_llama(1000, 5)
    split = split_model(model)
    assert split is not None, "a Llama splits into body + LM head"
    req = ScoreRequest(tuple(range(1, 60)), tuple(range(100, 190)), ())
    whole = forward_rows(model, [req], max_batch_tokens=10_000)[0]
    sliced = forward_rows(model, [req], max_batch_tokens=16)[0]  # 149 positions prefilled 16 at a time
    assert whole.rows.shape == sliced.rows.shape == (90, 32)
    torch.testing.assert_close(sliced.rows, whole.rows, rtol=0, atol=1e-4)
    ids = torch.tensor([list(req.prefix) + list(req.completion)])
    with torch.no_grad():
        want = model(input_ids=ids).logits[0, len(req.prefix) - 1 : -1]
    torch.testing.assert_close(whole.logits(slice(None)), want, rtol=0, atol=1e-4)


def test_score_gives_the_same_numbers_in_any_chunking():
    model = _random_llama(3000, 6)
    reqs = [ScoreRequest((1, 2, 3), tuple(range(10, 60)), (4, 49)), ScoreRequest((5,), tuple(range(70, 75)), (0,))]
    big = score(model, reqs, keep_full=True, vocab_size=2990)
    small = score(model, reqs, keep_full=True, vocab_size=2990, max_logit_bytes=30_000, max_batch_tokens=8)
    for a, b in zip(big, small):
        assert a.logp_full.shape == (len(a.token_logprob), 2990)
        torch.testing.assert_close(a.token_logprob, b.token_logprob, rtol=0, atol=1e-5)
        torch.testing.assert_close(a.entropy, b.entropy, rtol=0, atol=1e-5)
        torch.testing.assert_close(a.node_logp, b.node_logp, rtol=0, atol=1e-5)
        assert a.padded_mass == pytest.approx(b.padded_mass, abs=1e-6) and a.padded_mass > 0
