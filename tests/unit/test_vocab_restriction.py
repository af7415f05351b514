"""Distributions over the tokenizer's ids (V_tok) when an LM head has more rows (V_head, padding):
`scoring.restrict_to_vocab`, `score` on a fake padded model, the hf sampler's mask and the load check."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from gradalign.models import ModelError, check_head_covers_tokenizer
from gradalign.sampling.hf import MaskPadded
from gradalign.scoring import PADDED_MASS_TOLERANCE, ScoreRequest, restrict_to_vocab, score


def test_restriction_renormalises_over_the_tokenizer_ids_and_reports_the_padded_mass():
    z = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    logp, mass = restrict_to_vocab(z, 9)
    assert logp.shape == (3, 5, 9) and mass.shape == (3, 5)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 5, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(logp, torch.log_softmax(z[..., :9], -1), rtol=0, atol=1e-12)
    torch.testing.assert_close(mass, torch.softmax(z, -1)[..., 9:].sum(-1), rtol=0, atol=1e-12)


def test_restriction_is_plain_log_softmax_without_padding():
    z = torch.randn(4, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logp, mass = restrict_to_vocab(z, 7)
    assert torch.equal(logp, torch.log_softmax(z, -1)) and torch.equal(mass, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="exceeds"):
        restrict_to_vocab(z, 8)


def test_padded_rows_with_negligible_mass_report_about_zero():
    z = torch.zeros(2, 6, dtype=torch.float64)
    z[:, :4] = torch.tensor([10.0, 1.0, 0.0, -1.0])
    z[:, 4:] = -30.0  # what trained models give padded rows
    logp, mass = restrict_to_vocab(z, 4)
    assert (mass < 1e-12).all() and float(mass.max()) < PADDED_MASS_TOLERANCE
    torch.testing.assert_close(logp, torch.log_softmax(z[:, :4], -1), rtol=0, atol=0)


class _FakeLM(torch.nn.Module):
    """Logits depend on the current token only: head(embed(id)); `V_head` output rows."""

    def __init__(self, v_tok: int, v_head: int, padded_logit: float):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(v_tok, v_head, generator=g) * 2)
        with torch.no_grad():
            self.table[:, v_tok:] = padded_logit
        self.head = SimpleNamespace(weight=torch.empty(v_head, 1))

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        return SimpleNamespace(logits=self.table[input_ids][:, -logits_to_keep:])


@pytest.mark.parametrize("padded_logit", [-50.0, 3.0])
def test_score_restricts_a_padded_model_to_the_tokenizer_ids(padded_logit):
    v_tok, v_head = 10, 16
    padded, plain = _FakeLM(v_tok, v_head, padded_logit), _FakeLM(v_tok, v_tok, 0.0)
    with torch.no_grad():
        plain.table.copy_(padded.table[:, :v_tok])
    reqs = [ScoreRequest((1, 2), (3, 4, 5), nodes=(0, 2)), ScoreRequest((1,), (6, 7), nodes=(1,))]
    a = score(padded, reqs, keep_full=True, vocab_size=v_tok)
    b = score(plain, reqs, keep_full=True, vocab_size=v_tok)
    for x, y in zip(a, b):
        assert x.node_logp.shape[-1] == x.logp_full.shape[-1] == v_tok
        torch.testing.assert_close(x.node_logp, y.node_logp, rtol=0, atol=1e-12)
        torch.testing.assert_close(x.token_logprob, y.token_logprob, rtol=0, atol=0)
        torch.testing.assert_close(x.node_logp.exp().sum(-1), torch.ones(len(x.node_logp), dtype=torch.float64))
        assert y.padded_mass == 0.0
        assert (x.padded_mass > PADDED_MASS_TOLERANCE) == (padded_logit > 0)
    full = score(padded, reqs[:1], vocab_size=None)[0]  # no restriction asked: the head's rows
    assert full.node_logp.shape[-1] == v_head


def test_the_sampler_mask_sends_padded_ids_to_minus_infinity():
    scores = torch.randn(3, 12)
    out = MaskPadded(9)(torch.zeros(3, 4, dtype=torch.long), scores)
    assert torch.equal(out[:, :9], scores[:, :9]) and (out[:, 9:] == -math.inf).all()


def _model(rows: int):
    return SimpleNamespace(get_output_embeddings=lambda: SimpleNamespace(weight=torch.empty(rows, 2)))


def test_a_head_must_cover_the_tokenizer_ids_and_may_be_padded():
    tok = list(range(100))  # len() is what counts
    assert check_head_covers_tokenizer(_model(100), tok, name="student 's'") == 100
    assert check_head_covers_tokenizer(_model(128), tok, name="teacher 't'") == 128
    with pytest.raises(ModelError, match="96 rows but the tokenizer has 100 ids"):
        check_head_covers_tokenizer(_model(96), tok, name="teacher 't'")
