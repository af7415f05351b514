"""Paired-difference separation, tie partners, disagreement nodes and the report's new intervals
(gradalign.analysis.separation, stats.ratio_interval, quadrant/winner/rock intervals)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradalign.analysis import disagreement_nodes, paired_difference, rank_configs, tie_partner, winner_shares
from gradalign.analysis.stats import ratio_interval


def _alignment(per_q: dict[str, list[float]], loss: str = "reverse_kl", nodes: int = 2) -> pd.DataFrame:
    """config -> per-question value; each question gets `nodes` identical node rows per config."""
    rows = []
    for cfg, vals in per_q.items():
        for q, v in enumerate(vals):
            for k in range(nodes):
                rows.append({"question_id": f"q{q:02d}", "rollout_id": 0, "position": k, "token_text": "x", "config": cfg,
                             "loss": loss, "correct": True, "cos": v})
    return pd.DataFrame(rows)


def test_paired_separates_what_overlapping_marginals_do_not():
    rng = np.random.default_rng(0)
    level = rng.uniform(-0.8, 0.8, 30)  # questions differ a lot; A is always 0.05 above B
    a = _alignment({"A": list(level + 0.05), "B": list(level)})
    r = rank_configs(a, n_boot=500).set_index("config")
    assert r.loc["A", "ci_low"] < r.loc["B", "ci_high"]  # marginal intervals overlap
    s = paired_difference(a, ("A", "reverse_kl"), ("B", "reverse_kl"), n_boot=500)
    assert math.isclose(s.diff, 0.05) and s.separated and s.low > 0 and s.n_questions == 30 and s.n_a == 60


def test_paired_uses_shared_questions_only_and_is_exact_on_pooled_means():
    a = _alignment({"A": [0.2, 0.4, 0.9], "B": [0.1, 0.1]})  # A has a third question B lacks
    s = paired_difference(a, ("A", "reverse_kl"), ("B", "reverse_kl"), n_boot=200)
    assert s.n_questions == 2 and math.isclose(s.diff, 0.3 - 0.1)


def test_paired_interval_covers_zero_at_nominal_rate_under_no_difference():
    # exact truth: A and B are exchangeable noisy copies of the same question levels (true difference 0)
    rng = np.random.default_rng(1)
    covered, trials = 0, 200
    for _ in range(trials):
        level = rng.normal(0, 0.5, 40)
        a = _alignment({"A": list(level + rng.normal(0, 0.2, 40)), "B": list(level + rng.normal(0, 0.2, 40))}, nodes=1)
        s = paired_difference(a, ("A", "reverse_kl"), ("B", "reverse_kl"), n_boot=400, seed=int(rng.integers(1 << 30)))
        covered += s.low <= 0 <= s.high
    assert 0.88 <= covered / trials <= 0.99  # percentile bootstrap, 40 questions: close to 95%


def test_tie_partner_and_disagreement_nodes():
    n = 25
    base = [0.9] * n
    flawed = list(base)
    a = _alignment({"strong": base, "flawed": flawed, "bad": [-0.5] * n})
    # flawed is far off at one node of each of three questions, slightly better elsewhere: ties on average
    a.loc[(a.config == "flawed") & (a.position == 1) & a.question_id.isin(["q00", "q01", "q02"]), "cos"] = 0.1
    a.loc[(a.config == "flawed") & (a.position == 0), "cos"] = 0.95
    r = rank_configs(a, n_boot=300)
    s = tie_partner(a, r, "reverse_kl", n_boot=300)
    assert s is not None and {s.a[0], s.b[0]} == {"strong", "flawed"} and not s.separated
    tokens = a[["question_id", "rollout_id", "position", "config", "token_text"]].assign(teacher_logprob=math.log(0.5))
    d = disagreement_nodes(a, tokens, "strong", "flawed", "reverse_kl")
    assert list(d.question_id) == ["q00", "q01", "q02"] and (d.gap.round(6) == 0.8).all()
    assert list(d.context) == ["x"] * 3 and np.allclose(d.q_a, 0.5)  # text before position 1 is token 0's text


def test_ratio_interval_and_winner_wilson():
    lo, hi = ratio_interval([1, 0, 1, 1], [1, 1, 1, 1], ["a", "a", "b", "c"], n_boot=500)
    assert 0.0 <= lo <= 0.75 <= hi <= 1.0
    assert all(math.isnan(x) for x in ratio_interval([], [], []))
    w = pd.DataFrame({"loss": ["l"] * 10, "question_id": range(10), "A": 0.0, "B": 0.0,
                      "winner": ["A"] * 5 + ["B"] * 5, "margin": 0.1})
    s = winner_shares(w).set_index("config")
    assert math.isclose(s.loc["A", "share_low"], 0.2366, abs_tol=1e-3) and math.isclose(s.loc["A", "share_high"], 0.7634,
                                                                                         abs_tol=1e-3)


def test_quadrant_summary_has_intervals_around_its_numbers():
    from gradalign.analysis import quadrant_summary, tip_quadrants

    rng = np.random.default_rng(2)
    n = 400
    tok = pd.DataFrame({"question_id": [f"q{i % 20}" for i in range(n)], "rollout_id": 0, "position": [i // 20 for i in range(n)],
                        "config": "A", "student_entropy": rng.uniform(0, 2, n), "kl_pq": rng.uniform(0, 1, n)})
    al = tok[["question_id", "rollout_id", "position", "config"]].assign(loss="reverse_kl", cos=rng.uniform(-1, 1, n))
    q = quadrant_summary(tip_quadrants(tok), al, n_boot=300)
    assert len(q) == 4 and (q.ci_low <= q.mean_alignment).all() and (q.mean_alignment <= q.ci_high).all()
    assert (q.share_low <= q.share_tokens).all() and (q.share_tokens <= q.share_high).all()
    assert math.isclose(q.share_tokens.sum(), 1.0) and q.n_nodes.sum() == n


def test_teacher_disagreements_finds_unbranched_tokens_a_teacher_gets_wrong():
    from gradalign.analysis import teacher_disagreements

    rows = []
    for cfg in ("strong", "flawed"):
        for p, ch in enumerate("9+1=10,9+1+1=11"):
            wrong = cfg == "flawed" and p == 10  # the '+' that starts the carry-in after a column summing to 10
            rows.append({"question_id": "q0", "rollout_id": 0, "position": p, "config": cfg, "token_text": ch,
                         "teacher_logprob": math.log(0.001 if wrong else 0.99), "branched": p == 14})
    d = teacher_disagreements(pd.DataFrame(rows), "strong", "flawed")
    assert len(d) == 1 and d.position[0] == 10 and d.token_text[0] == "+" and d.context[0] == "9+1=10,9+1"
    assert math.isclose(d.q_a[0], 0.99) and math.isclose(d.q_b[0], 0.001) and not d.branched[0]
