"""Integration tier, `sampling.hf.sample` on a tiny model: a sequence's tokens depend on its own seed
only (not its batch), and allowances are per row."""

from __future__ import annotations

import pytest

from gradalign.sampling import SamplingParams
from gradalign.sampling.hf import sample


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    from tiny_world import make_tiny_world
    from transformers import AutoModelForCausalLM

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
