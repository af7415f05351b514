"""Unit tier, sampling (`gradalign.sampling.hf`): the counter-based Gumbel noise against a pure-Python
SplitMix64, its uniforms and the resulting token frequencies against the softmax. `sample` on a
model: tests/integration/test_sampling_models.py."""

from __future__ import annotations

import random

import torch

from gradalign.sampling.hf import _i64, counter_uniform, splitmix64

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
