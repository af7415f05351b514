"""Integration tier, tiny random models (tests/tiny_world.py): several EOS ids in the hf sampler and in
a diagnose run, the teacher scoring temperature against a direct computation, and `accuracy.solve_rates`
against the exact success probability (enumeration, `tiny_world.ExactOracle`)."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_world import ExactOracle, make_tiny_world

from gradalign.config import config_from_dict, default_config_dict

L = 4  # max_new_tokens
B = 5  # token id of "b" in the tiny world's tokenizer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_world(tmp_path_factory.mktemp("reasoning"))


def _config(root, **over):
    d = default_config_dict()
    d["run"] = {"name": "reasoning", "seed": 3}
    d["task"] = {"path": str(root / "task.jsonl"), "prompt": "{question}", "grader": "python:grader_fixtures:odd_a"}
    d["student"] = {"model": str(root / "student")}
    d["sampling"].update({"rollouts_per_question": 6, "max_new_tokens": L, "batch_size": 512})
    d["branching"].update({"selector": "every", "continuations": 2, "top_k": 2, "residual": False})
    d["teachers"] = [{"name": "self-hint", "model": "student", "context": "{hint}"},
                     {"name": "other", "model": str(root / "teacher"), "context": ""}]
    for key, value in over.items():
        section, field = key.split("__")
        d[section][field] = value
    return config_from_dict(d)


def test_hf_sampler_stops_at_the_first_of_several_eos_ids(world):
    """Counter-based noise: the same seeds with "b" as a second EOS give each sample cut at its first "b"."""
    from transformers import AutoModelForCausalLM

    from gradalign.sampling import SamplingParams
    from gradalign.sampling.hf import sample

    model = AutoModelForCausalLM.from_pretrained(world / "student").eval()
    prompts, seeds = [[4, 5]] * 200, list(range(200))
    params = SamplingParams(max_new_tokens=8, batch_size=256)
    one = sample(model, prompts, seeds, params, eos_id=2, pad_id=0)
    two = sample(model, prompts, seeds, params, eos_id=(2, B), pad_id=0)
    cut = 0
    for a, b in zip(one, two):
        if B in a.token_ids:
            k = a.token_ids.index(B)
            assert (b.token_ids, b.ended_with_eos, b.truncated) == (a.token_ids[:k], True, False)
            cut += 1
        else:
            assert b == a
    assert 20 < cut < 200  # both kinds of sample occur


def test_diagnose_with_extra_eos_id_and_teacher_temperature(world, tmp_path):
    """sampling.eos_token_ids = ["b"]: no completion holds a "b" and a branch whose first token is "b"
    is a finished completion (graded as is, nothing sampled). distill.teacher_temperature = 2: each
    teacher log-prob is log softmax(logits / 2) of the teacher at that prefix, the student's at tau = 1."""
    from transformers import AutoModelForCausalLM

    from gradalign.engine import diagnose

    cfg = _config(world, sampling__eos_token_ids=[B], distill__teacher_temperature=2.0)
    t = diagnose(cfg, tmp_path / "run").tables()
    assert not t.rollouts.completion.str.contains("b").any()
    assert (~t.rollouts.truncated).any()
    student = AutoModelForCausalLM.from_pretrained(world / "student").eval()
    teacher = AutoModelForCausalLM.from_pretrained(world / "teacher").eval()
    rows = t.tokens[t.tokens.config == "other"]
    assert len(rows) > 0
    seqs = {rid: g.sort_values("position").token_id.tolist() for rid, g in rows.groupby("rollout_id")}
    for r in rows.itertuples():
        ids = [4, 5] + seqs[r.rollout_id][: r.position]
        with torch.no_grad():
            zq = teacher(torch.tensor([ids])).logits[0, -1].double()
            zp = student(torch.tensor([ids])).logits[0, -1].double()
        assert math.isclose(r.teacher_logprob, torch.log_softmax(zq / 2.0, -1)[r.token_id].item(), abs_tol=1e-4)
        assert math.isclose(r.student_logprob, torch.log_softmax(zp, -1)[r.token_id].item(), abs_tol=1e-4)
    # candidate "b" at a node ends the completion: its continuations were not sampled, all graded alike
    b_nodes = t.nodes[t.nodes.candidate_id == B]
    assert len(b_nodes) > 0


def test_solve_rates_match_the_exact_success_probability(world):
    from gradalign.accuracy import AccuracyError, solve_rates

    cfg = _config(world)
    exact = ExactOracle(world, L).success([4, 5], L)
    rates = solve_rates(cfg, samples=600)
    (q,) = rates.questions
    assert (q.question_id, q.n, len(q.answers)) == ("q0", 600, 600)
    assert abs(q.rate - exact) < 4 * math.sqrt(exact * (1 - exact) / 600), (q.rate, exact)
    assert q.interval.low < exact < q.interval.high or abs(q.rate - exact) < 0.05
    assert rates.mean_rate == q.rate and rates.mean_interval == q.interval
    assert rates.to_frame().columns.tolist() == ["question_id", "n", "correct", "truncated", "rate", "low", "high", "informative"]
    again = solve_rates(cfg, samples=600)
    assert again.questions == rates.questions  # seeded by stable ids: a rerun reproduces the rates
    other = solve_rates(cfg, who="other", samples=50)
    assert other.who == "other" and other.model == str(world / "teacher") and other.questions[0].n == 50
    with pytest.raises(AccuracyError, match="--config 'nobody': expected 'student' or a teacher config name"):
        solve_rates(cfg, who="nobody")
    with pytest.raises(AccuracyError, match="--samples 0"):
        solve_rates(cfg, samples=0)
