"""Integration tier: the engine's estimates against exact enumeration on a tiny random model.

The world: vocabulary {<pad>, <s>, </s>, <unk>, a, b}, prompt "ab", rollouts of at most 4 tokens,
one-layer random Llamas (`world64`: head size 64, a size vLLM's CPU kernels take, so both backends
run the same tests on it; `tiny_world`: head size 8, for the backend-independent estimator tests),
success = the decoded completion has an odd number of "a" characters (a python grader), so every
candidate at every node has its own non-trivial success probability. With every token a candidate (top_k = V)
the engine's S_k are plain Monte Carlo estimates of exactly enumerable probabilities, so its
cosines must converge to the exact ones as M grows.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from tiny_world import ExactOracle, make_tiny_world

from gradalign.config import config_from_dict, default_config_dict
from gradalign.tables import TABLES

L = 4  # max_new_tokens


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    return make_tiny_world(tmp_path_factory.mktemp("enum"))


@pytest.fixture(scope="module")
def world64(tmp_path_factory):
    return make_tiny_world(tmp_path_factory.mktemp("enum64"), hidden=128, heads=2)


def _config(root: Path, M: int, seed: int, top_k: int = 6, rollouts: int = 6, backend: str = "hf", **branching):
    d = default_config_dict()
    d["run"] = {"name": "enum", "seed": seed}
    d["task"] = {"path": str(root / "task.jsonl"), "prompt": "{question}", "grader": "python:grader_fixtures:odd_a"}
    d["student"] = {"model": str(root / "student")}
    d["sampling"].update({"rollouts_per_question": rollouts, "max_new_tokens": L, "batch_size": 512, "backend": backend,
                          "vllm_eager": backend == "vllm"})
    d["branching"].update({"selector": "every", "continuations": M, "top_k": top_k, "max_candidates": 6, "residual": True,
                           **branching})
    d["teachers"] = [
        {"name": "self-hint", "model": "student", "context": "{hint}"},
        {"name": "other", "model": str(root / "teacher"), "context": ""},
    ]
    return config_from_dict(d)


_ORACLES: dict = {}


def _exact_rows(root: Path, tables, success_out: dict | None = None) -> dict:
    """Exact cos per (rollout, position, config, loss) at every node (`tiny_world.ExactOracle`, one
    oracle per world so its memo is shared across calls)."""
    if root not in _ORACLES:
        _ORACLES[root] = ExactOracle(root, L)
    return _ORACLES[root].rows(tables, success_out)


def _run(root, tmp_path, M, seed, rollouts=6, backend="hf", **branching):
    from gradalign.engine import diagnose

    tag = "".join(f"-{k}{v}" for k, v in sorted(branching.items()))
    run = diagnose(_config(root, M, seed, rollouts=rollouts, backend=backend, **branching),
                   tmp_path / f"run-M{M}-s{seed}-r{rollouts}-{backend}{tag}")
    return run.tables()


def _errors(tables, exact, col="cos", keys=None):
    """|estimate - exact| per alignment row where both are finite, keyed like `exact`."""
    errs = {}
    for a in tables.alignment.itertuples():
        key = (a.rollout_id, a.position, a.config, a.loss)
        e = exact[key]
        v = getattr(a, col)
        if math.isfinite(e) and math.isfinite(v) and (keys is None or key in keys):
            errs[key] = abs(v - e)
    return list(errs.values()) if keys is None else errs


def test_success_estimates_are_unbiased_binomials(world64, tmp_path, backend):
    """Every S_k is a binomial proportion around the exact success probability: exact where that
    is 0 or 1, and z = (S_hat - S) / sd(S_hat) has mean ~0 and variance ~1 over all candidates.
    A biased sampler (wrong noise, a wrong allowance, continuations that share randomness) fails."""
    t = _run(world64, tmp_path, 64, 0, rollouts=24, backend=backend)
    exact_s: dict = {}
    _exact_rows(world64, t, exact_s)
    zs, exact_hits = [], 0
    for n in t.nodes[t.nodes.source != "residual"].itertuples():
        S = exact_s[(n.rollout_id, n.position, n.candidate_id)]
        if S < 1e-12 or S > 1 - 1e-12:
            assert n.success == round(S), (n, S)
            exact_hits += 1
        else:
            zs.append((n.success - S) / math.sqrt(S * (1 - S) / n.n))
    assert len(zs) > 100 and exact_hits > 0
    mean = sum(zs) / len(zs)
    var = sum((z - mean) ** 2 for z in zs) / (len(zs) - 1)
    assert abs(mean) < 4 / math.sqrt(len(zs)), mean  # no bias beyond 4 standard errors
    assert 0.6 < var < 1.5, var  # binomial spread: independent continuations


def _z_scores(t, exact_s):
    zs = []
    for n in t.nodes[t.nodes.source != "residual"].itertuples():
        S = exact_s[(n.rollout_id, n.position, n.candidate_id)]
        if 1e-12 < S < 1 - 1e-12:
            zs.append((n.success - S) / math.sqrt(S * (1 - S) / n.n))
    mean = sum(zs) / len(zs)
    return zs, mean, sum((z - mean) ** 2 for z in zs) / (len(zs) - 1)


OFF = {"common_random_numbers": False, "allocation": "equal", "residual_per_token": False}  # before issue 11


@pytest.mark.slow  # about 90 s per option on 2 shared cores: M = 64 against exact enumeration
@pytest.mark.parametrize("option", [{"common_random_numbers": True}, {"allocation": "pilot"},
                                    {"common_random_numbers": True, "residual_per_token": True},
                                    {"common_random_numbers": True, "residual_per_token": True,
                                     "node_rounds": 2, "node_share": 0.5}],
                         ids=["crn", "pilot", "combined", "rounds"])
def test_noise_cuts_keep_s_unbiased(tiny_world, tmp_path, option):
    """Each noise cut keeps every S_k an unbiased binomial proportion (z mean ~0, variance ~1 over
    candidates): common random numbers (continuation m of every candidate shares its noise), pilot
    allocation (M split by p_k sd_k after a pilot round), the default combination (common random
    numbers, equal allocation, per-token residual), and with allocation
    across nodes on top (`node_rounds`: half of every node's budget pooled and spent in two rounds
    by priority; a node's sample size then depends on its earlier outcomes). Only the
    continuations change, not the rollouts. (Their effect on the cosine's error is measured in
    bench/bench_precision.py.)"""
    t = _run(tiny_world, tmp_path, 64, 0, rollouts=24, top_k=0, **{**OFF, **option})  # top_k 0: a residual bucket at most nodes
    exact_s: dict = {}
    _exact_rows(tiny_world, t, exact_s)
    zs, mean, var = _z_scores(t, exact_s)
    assert len(zs) > 30
    assert abs(mean) < 4 / math.sqrt(len(zs)), mean
    assert 0.5 < var < 1.6, var
    off = _run(tiny_world, tmp_path, 4, 0, rollouts=24, **OFF)  # the cuts are on by default: switch them off
    on = _run(tiny_world, tmp_path, 4, 0, rollouts=24, **{**OFF, **option})
    assert on.rollouts.completion.tolist() == off.rollouts.completion.tolist()  # branching noise only
    assert not on.nodes.successes.equals(off.nodes.successes)
    n = t.nodes.groupby(["rollout_id", "position"]).n
    if "node_rounds" in option:  # the shard's budget is kept, moved between nodes
        assert n.sum().sum() == 64 * n.size().sum() and (n.sum() != 64 * n.size()).any()
    elif option.get("allocation") == "pilot":  # the node's budget is kept, split unequally
        assert (n.sum() == 64 * n.size()).all() and (n.max() > n.min()).any()


@pytest.mark.slow  # about 25 s per allocation on 2 shared cores: 6 seeds x 24 rollouts at M = 8
@pytest.mark.parametrize("allocation", ["equal", "pilot"])
def test_node_rounds_keep_s_unbiased_at_small_m(tiny_world, tmp_path, allocation):
    """Allocation across nodes at its most adaptive (three quarters of every node's budget pooled,
    four rounds) where optional stopping bites hardest, at M = 8: over 6 seeds the candidates' z
    stay centred with binomial spread. (A rule that gave nodes with an all-alike first round no
    priority locked them at their counts: z mean -0.18 +- 0.04, variance 0.44; `rounds.ZERO_IDEAL_SE`.)"""
    option = {"common_random_numbers": True, "allocation": allocation, "residual_per_token": True, "node_rounds": 4,
              "node_share": 0.75}
    zs = []
    for seed in range(6):
        t = _run(tiny_world, tmp_path, 8, seed, rollouts=24, top_k=0, **{**OFF, **option})
        exact_s: dict = {}
        _exact_rows(tiny_world, t, exact_s)
        zs += _z_scores(t, exact_s)[0]
    mean = sum(zs) / len(zs)
    var = sum((z - mean) ** 2 for z in zs) / (len(zs) - 1)
    assert len(zs) > 200
    assert abs(mean) < 3 / math.sqrt(len(zs)), mean
    assert 0.7 < var < 1.5, var


def test_cosines_converge_to_exact_enumeration(world64, tmp_path, backend):
    small = _run(world64, tmp_path, 2, 0, backend=backend)
    large = _run(world64, tmp_path, 256, 0, backend=backend)
    # same seed -> same rollouts and nodes, so both runs are compared on identical nodes
    assert small.rollouts.completion.tolist() == large.rollouts.completion.tolist()
    exact = _exact_rows(world64, large)
    assert len(large.alignment) > 0
    e_large = _errors(large, exact)
    defined = sum(math.isfinite(exact[(a.rollout_id, a.position, a.config, a.loss)]) for a in large.alignment.itertuples())
    assert len(e_large) >= 0.9 * defined and len(e_large) > 50  # NaN estimates only where exact is NaN too
    # on the nodes M = 2 can estimate at all, M = 256 is closer (compared node for node)
    finite_large = _errors(large, exact, keys=set(exact))
    e2 = _errors(small, exact, keys=set(finite_large))
    e256 = {k: finite_large[k] for k in e2}
    assert len(e2) > 30 and sum(e256.values()) < 0.75 * sum(e2.values()), (sum(e2.values()), sum(e256.values()))
    # the typical node is close; the mean carries nodes whose exact ideal gradient is near zero,
    # where even M = 256 cannot resolve the direction (measured on 3 seeds: median 0.05-0.07, mean 0.08-0.14)
    assert sorted(e_large)[len(e_large) // 2] < 0.1 and sum(e_large) / len(e_large) < 0.2
    nodes = large.nodes
    assert (nodes.source != "residual").all() or nodes[nodes.source == "residual"].student_prob.max() < 1e-3


def test_same_seed_gives_identical_tables(world64, tmp_path, backend):
    """Seeds are per continuation (stable ids), so two runs match exactly under either backend."""
    a = _run(world64, tmp_path / "a", 4, 3, backend=backend)
    b = _run(world64, tmp_path / "b", 4, 3, backend=backend)
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)
    assert math.isfinite(a.alignment.cos.dropna().mean())


@pytest.mark.slow  # about 25 s per M on 2 cores: 24 seeds x 24 rollouts against exact enumeration
@pytest.mark.parametrize("M", [2, 4])
def test_split_half_aggregate_is_closer_at_small_m(tiny_world, tmp_path, M):
    """At small M the naive cosine is shrunk toward 0 (noise inflates ||g||); the split-half
    aggregate (`analysis.split_half_alignment`, mean over nodes of <g, d> / (sqrt(<g_A, g_B>) ||d||))
    is closer to the mean exact cosine than the naive mean over the same rows. The per-node ratio is
    too noisy to be a column; only its mean is an estimate."""
    from gradalign.analysis import split_half_alignment

    frames = []
    for seed in range(24):  # ~580 rollouts: the comparison needs many nodes, per-node values are noisy
        t = _run(tiny_world, tmp_path, M, 100 + seed, rollouts=24)
        ex = _exact_rows(tiny_world, t)
        a = t.alignment.copy()
        a["question_id"] = a["question_id"] + f"-s{seed}"  # clusters: one per seed's question
        a["exact"] = [ex[(r.rollout_id, r.position, r.config, r.loss)] for r in a.itertuples()]
        frames.append(a)
    a = pd.concat(frames, ignore_index=True)
    a = a[a.exact.notna() & a.cos.notna() & (a.norm2_ideal_split > 0)].copy()
    assert len(a) > 300
    sign = a.exact.where(a.exact > 0, -1.0).where(a.exact <= 0, 1.0)  # measured toward each exact value's sign
    a["exact"], a["cos"] = a.exact * sign, a.cos * sign
    agg = split_half_alignment(a, by=[], n_boot=200)
    exact_mean, naive_mean = float(a.exact.mean()), float(a.cos.mean())
    assert int(agg["n"].iloc[0]) == len(a) and int(agg["n_below_noise"].iloc[0]) == 0
    split_mean = float(agg["mean"].iloc[0])
    assert abs(naive_mean) < abs(exact_mean)  # shrinkage toward 0 is real at this M
    assert abs(split_mean - exact_mean) < abs(naive_mean - exact_mean), (exact_mean, naive_mean, split_mean)


def _coverage(root, tmp_path, rule, seeds, top_k):
    """(coverage of [cos_low, cos_high], rows, resolved rows, resolved rows whose sign is wrong) over
    every alignment row with a defined exact cosine and interval, runs at M = 4 with 12 rollouts."""
    hit = rows = res = wrong = 0
    for seed in seeds:
        t = _run(root, tmp_path / rule, 4, seed, rollouts=12, top_k=top_k, uncertainty=rule)
        ex = _exact_rows(root, t)
        for a in t.alignment.itertuples():
            e = ex[(a.rollout_id, a.position, a.config, a.loss)]
            if math.isfinite(e) and math.isfinite(a.cos_low):
                rows += 1
                hit += a.cos_low <= e <= a.cos_high
                if a.resolved:
                    res += 1
                    wrong += (a.cos > 0) != (e > 0)
    return hit / rows, rows, res, wrong


@pytest.mark.slow  # about 60 s on 2 cores: 6 seeds x 12 rollouts per rule against exact enumeration
@pytest.mark.parametrize("top_k", [1, 6])
def test_cosine_intervals_cover_the_exact_cosine(tiny_world, tmp_path, top_k):
    """The 95% [cos_low, cos_high] of the default `hierarchical` rule holds the exact cosine in about
    95% of rows (not all: an interval that always covers says nothing), at least as often as the
    bootstrap rule give or take its noise, and a resolved row's sign is rarely wrong (measured on equal
    allocation: coverage 0.947 / 0.960, bootstrap 0.883 / 0.954; wrong signs 2 of 114 and 2 of 201).
    top_k = 1 leaves most tokens to the residual bucket (drawn per token), top_k = 6 makes every
    token a candidate."""
    seeds = range(400, 406)
    cov, rows, res, wrong = _coverage(tiny_world, tmp_path, "hierarchical", seeds, top_k)
    boot, _, _, _ = _coverage(tiny_world, tmp_path, "bootstrap", seeds, top_k)
    assert rows > 300
    assert 0.90 <= cov <= 0.99, (cov, rows)  # measured 0.947 / 0.960 at top_k 1 / 6 (bootstrap: 0.883 / 0.954)
    assert cov >= boot - 0.06, (cov, boot)  # on the long world (bench_precision) the bootstrap covers far less
    assert res > 0.05 * rows and wrong <= 0.1 * res, (res, wrong)


def _stop_keys(t) -> set:
    """(rollout_id, position T) of every rollout that ended with EOS: its stop node."""
    return {(r.rollout_id, r.n_tokens) for r in t.rollouts.itertuples() if not r.truncated}


def _assert_value_is_sum_p_s(t):
    """V = sum_j p_j S_j holds from the nodes table alone (residual row included) at every node."""
    nd = t.nodes.assign(ps=t.nodes.student_prob * t.nodes.success).groupby(["rollout_id", "position"]).ps.sum()
    v = t.alignment.drop_duplicates(["rollout_id", "position"]).set_index(["rollout_id", "position"]).value
    assert len(v) == len(nd) and (nd.reindex(v.index) - v).abs().max() < 1e-9


def test_stop_node_joins_every_table(tiny_world, tmp_path):
    """branching.eos_node: each rollout that ended with EOS has its stop decision at position T =
    n_tokens in the tokens table (the EOS it sampled, branched), the nodes table (that EOS as the
    sampled candidate, graded exactly: the rollout's own verdict) and the alignment table; truncated
    rollouts have no position T; the other positions keep their rows; V = sum p S still holds."""
    t = _run(tiny_world, tmp_path, 4, 5, rollouts=12, eos_node=True)
    off = _run(tiny_world, tmp_path, 2, 5, rollouts=12)
    stops = _stop_keys(t)
    assert stops and len(stops) < len(t.rollouts)  # some finished, some cut: both kinds are checked
    eos = 2  # </s> in the tiny world
    correct = dict(zip(t.rollouts.rollout_id, t.rollouts.correct))
    n_tok = dict(zip(t.rollouts.rollout_id, t.rollouts.n_tokens))
    tok_end = t.tokens[t.tokens.position >= t.tokens.rollout_id.map(n_tok)]
    assert set(zip(tok_end.rollout_id, tok_end.position)) == stops
    assert (tok_end.token_id == eos).all() and tok_end.branched.all() and (tok_end.token_text == "</s>").all()
    assert len(tok_end) == 2 * len(stops)  # one row per config
    keys = lambda df: set(zip(df.rollout_id, df.position))  # noqa: E731
    assert keys(t.nodes) == keys(t.alignment) and keys(t.alignment) <= keys(t.tokens[t.tokens.branched])
    assert stops <= keys(t.alignment)
    s = t.nodes[t.nodes.source == "sampled"].set_index(["rollout_id", "position"])
    for rid, pos in stops:
        row = s.loc[(rid, pos)]
        assert row.candidate_id == eos and row.success == float(correct[rid]) and row.n > 0
        a = t.alignment[(t.alignment.rollout_id == rid) & (t.alignment.position == pos)]
        assert (a.token_id == eos).all() and len(a) == 2 * len(a.loss.unique())
    _assert_value_is_sum_p_s(t)
    # the other positions are untouched: same rollouts, same tokens rows (scored with one more input position)
    assert t.rollouts.completion.tolist() == off.rollouts.completion.tolist()
    inner = t.tokens[t.tokens.position < t.tokens.rollout_id.map(n_tok)].reset_index(drop=True)
    assert len(inner) == len(off.tokens) and (off.tokens.position < off.tokens.rollout_id.map(n_tok)).all()
    for col in ("student_logprob", "teacher_logprob", "kl_pq", "jsd"):
        assert (inner[col] - off.tokens[col]).abs().max() < 1e-5, col


@pytest.mark.slow  # about 40 s per allocation on 2 shared cores: M = 64, 64 rollouts against exact enumeration
@pytest.mark.parametrize("allocation", ["equal", "pilot"])
def test_stop_node_keeps_s_unbiased(tiny_world, tmp_path, allocation):
    """At the stop node every S_k is an unbiased binomial proportion of the exact success
    probability (z mean ~0, variance ~1 over its non-degenerate candidates: writing one more token
    and going on), the EOS candidate is exact (the rollout's own verdict), V = sum p S holds in the
    nodes table, and the cosines there converge to the exact ones (the oracle enumerates position T
    with y = EOS). Common random numbers on (the default), under the default equal allocation and
    under pilot, whose EOS rule (an EOS candidate gets only the floor) changes how M is spent."""
    t = _run(tiny_world, tmp_path, 64, 0, rollouts=64, top_k=6, eos_node=True, allocation=allocation)
    exact_s: dict = {}
    exact = _exact_rows(tiny_world, t, exact_s)
    stops = _stop_keys(t)
    zs, exact_hits = [], 0
    for n in t.nodes.itertuples():
        if (n.rollout_id, n.position) not in stops:
            continue
        S = exact_s[(n.rollout_id, n.position, n.candidate_id)]
        if n.candidate_id == 2:
            assert n.source == "sampled" and n.success == S  # stopping: the verdict, exactly
        if S < 1e-12 or S > 1 - 1e-12:
            assert n.success == round(S), (n, S)
            exact_hits += 1
        else:
            zs.append((n.success - S) / math.sqrt(S * (1 - S) / n.n))
    assert len(zs) > 40 and exact_hits >= len(stops)
    mean = sum(zs) / len(zs)
    var = sum((z - mean) ** 2 for z in zs) / (len(zs) - 1)
    assert abs(mean) < 4 / math.sqrt(len(zs)), mean
    assert 0.5 < var < 1.6, var
    _assert_value_is_sum_p_s(t)
    errs = sorted(abs(a.cos - exact[(a.rollout_id, a.position, a.config, a.loss)]) for a in t.alignment.itertuples()
                  if (a.rollout_id, a.position) in stops and math.isfinite(a.cos)
                  and math.isfinite(exact[(a.rollout_id, a.position, a.config, a.loss)]))
    assert len(errs) > 50 and errs[len(errs) // 2] < 0.15  # measured: median 0.055 over 120 rows
