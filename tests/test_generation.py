"""Sampling (`generation`): the counter-based Gumbel noise against a pure-Python SplitMix64, its
uniforms and the resulting token frequencies against the softmax, and `sample`'s promises —
a sequence's tokens depend on its own seed only (not its batch), and allowances are per row."""

from __future__ import annotations

import random

import pytest
import torch

from gradalign.sampling import SamplingParams
from gradalign.sampling.hf import _i64, counter_uniform, sample, splitmix64

MASK = (1 << 64) - 1


def _ref_splitmix(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_splitmix64_matches_reference():
    rng = random.Random(0)
    xs = [rng.getrandbits(64) for _ in range(2000)] + [0, 1, MASK, 1 << 63, (1 << 63) - 1]
    got = splitmix64(torch.tensor([_i64(x) for x in xs], dtype=torch.int64)).tolist()
    assert [g & MASK for g in got] == [_ref_splitmix(x) for x in xs]


def test_counter_uniform_matches_reference_and_is_uniform():
    seeds = torch.tensor([_i64(s) for s in (0, 7, 1 << 62, MASK)], dtype=torch.int64)
    u = counter_uniform(seeds, step=5, vocab=4000)
    # entry (i, v) from the documented construction, computed with Python integers
    for i, s in enumerate((0, 7, 1 << 62, MASK)):
        key = _ref_splitmix(s ^ _ref_splitmix(5))
        for v in (0, 1, 3999):
            z = _ref_splitmix((key + (v + 1) * 0x9E3779B97F4A7C15) & MASK)
            assert u[i, v].item() == ((z >> 11) + 0.5) * 2.0**-53
    assert u.dtype == torch.float64 and 0 < u.min() and u.max() < 1
    # uniform: the 10 deciles each hold ~10% of 16k draws (binomial sd ~0.24%)
    counts = torch.histc(u.flatten(), bins=10, min=0, max=1) / u.numel()
    assert (counts - 0.1).abs().max() < 0.01, counts
    # different steps and seeds give unrelated streams
    assert not torch.equal(counter_uniform(seeds, 6, 4000), u)
    assert abs(torch.corrcoef(torch.stack([u[0], u[1]]))[0, 1]) < 0.05


def test_gumbel_max_frequencies_match_softmax():
    """argmax(z + Gumbel) over 40k seeds hits each token with probability softmax(z)."""
    z = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5, -3.0])
    n = 40_000
    u = counter_uniform(torch.arange(n, dtype=torch.int64), step=0, vocab=z.numel())
    picks = torch.argmax(z.double() + (-torch.log(-torch.log(u))), dim=-1)
    freq = torch.bincount(picks, minlength=z.numel()).double() / n
    p = torch.softmax(z.double(), -1)
    sd = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() < 4 * sd + 1e-4).all(), (freq, p)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from tiny_world import make_tiny_world

    root = make_tiny_world(tmp_path_factory.mktemp("gen"))
    return AutoModelForCausalLM.from_pretrained(root / "student").eval()


def test_sample_depends_on_own_seed_not_batch(student):
    prompts = [[4, 5], [4, 5, 5, 4], [5], [4, 5], [5, 5, 4]]
    seeds = [11, 22, 33, 44, 55]
    params = SamplingParams(max_new_tokens=12, batch_size=8)
    together = sample(student, prompts, seeds, params, eos_id=2, pad_id=0)
    alone = [sample(student, [p], [s], SamplingParams(max_new_tokens=12, batch_size=1), eos_id=2, pad_id=0)[0]
             for p, s in zip(prompts, seeds)]
    assert together == alone
    # the same prompt with another seed is (with overwhelming probability) another sample somewhere
    others = sample(student, [[4, 5]] * 8, list(range(100, 108)), params, eos_id=2, pad_id=0)
    assert len({c.token_ids for c in others}) > 1


def test_sample_respects_per_row_allowances(student):
    prompts = [[4, 5]] * 6
    allow = [0, 1, 3, 12, 5, 2]
    out = sample(student, prompts, list(range(6)), SamplingParams(max_new_tokens=12, batch_size=8),
                 eos_id=2, pad_id=0, max_new=allow)
    for c, a in zip(out, allow):
        assert len(c.token_ids) + int(c.ended_with_eos) <= a
        assert c.truncated == (not c.ended_with_eos)
        if c.truncated:
            assert len(c.token_ids) == a
    # a row's tokens do not depend on the allowance of the rows beside it
    full = sample(student, prompts, list(range(6)), SamplingParams(max_new_tokens=12, batch_size=8), eos_id=2, pad_id=0)
    for c, f, a in zip(out, full, allow):
        n = len(c.token_ids)
        assert c.token_ids == f.token_ids[:n]
