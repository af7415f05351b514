"""Analysis functions on small hand-built DataFrames with known answers (no model, no run)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gradalign import analysis as A
from gradalign.tables import COLUMNS, Tables


def _frame(name: str, rows: list[dict]) -> pd.DataFrame:
    cols = [c for c, _, _ in COLUMNS[name]]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)


def _align_rows(spec):
    """spec: iterable of (question_id, rollout_id, position, correct, config, loss, cos, value)."""
    rows = []
    for q, r, pos, ok, cfg, loss, cos, value in spec:
        rows.append({"question_id": q, "rollout_id": r, "position": pos, "token_id": 1, "token_text": "a", "correct": ok,
                     "config": cfg, "loss": loss, "cos": cos, "cos_candidates": cos,
                     "norm_ideal": 1.0, "norm_distill": 1.0, "teacher_advantage": 0.0, "value": value, "reason": ""})
    return _frame("alignment", rows)


# ----------------------------------------------------------------------------- bootstrap


def _clustered_sample(rng, n_q=30, mu=0.2):
    effects = rng.normal(0.0, 0.3, n_q)
    sizes = rng.integers(3, 11, n_q)
    vals = np.concatenate([mu + e + rng.normal(0.0, 0.3, s) for e, s in zip(effects, sizes)])
    clusters = np.repeat(np.arange(n_q), sizes)
    return vals, clusters


def test_cluster_bootstrap_covers_true_mean_at_nominal_rate():
    rng = np.random.default_rng(123)
    reps, hits, naive_hits = 200, 0, 0
    for i in range(reps):
        vals, clusters = _clustered_sample(rng)
        iv = A.bootstrap_ci(vals, clusters, n_boot=400, seed=i)
        hits += iv.low <= 0.2 <= iv.high
        assert iv.n == len(vals) and iv.n_clusters == 30 and iv.low <= iv.mean <= iv.high
        naive = A.bootstrap_ci(vals, np.arange(len(vals)), n_boot=400, seed=i)  # resampling tokens, the wrong unit
        naive_hits += naive.low <= 0.2 <= naive.high
    assert 0.88 <= hits / reps <= 0.99, hits / reps
    # token resampling ignores the question effect and under-covers badly: why we resample questions
    assert naive_hits / reps < 0.85, naive_hits / reps


def test_cluster_bootstrap_is_seeded_and_drops_nan():
    df = pd.DataFrame({"g": ["a"] * 6 + ["b"] * 6, "question_id": list("xxyyzz") * 2,
                       "v": [1, 2, 3, 4, 5, np.nan, 0, 0, 1, 1, 2, 2]})
    r1 = A.cluster_bootstrap(df, "v", ["g"], n_boot=300, seed=7)
    r2 = A.cluster_bootstrap(df, "v", ["g"], n_boot=300, seed=7)
    pd.testing.assert_frame_equal(r1, r2)
    assert list(r1.g) == ["a", "b"] and list(r1.n) == [5, 6] and list(r1.n_clusters) == [3, 3]
    assert r1.loc[0, "mean"] == pytest.approx(3.0) and r1.loc[1, "mean"] == pytest.approx(1.0)
    with pytest.raises(A.AnalysisError):
        A.cluster_bootstrap(df, "v", ["g"], ci=1.5)


def test_rank_configs_orders_by_mean_and_splits_by_verdict():
    spec = []
    for q in ("q1", "q2", "q3"):
        for cfg, base in (("good", 0.5), ("bad", -0.2)):
            spec += [(q, 0, 1, True, cfg, "reverse_kl", base - 0.1, 0.5), (q, 1, 1, False, cfg, "reverse_kl", base + 0.1, 0.5)]
    a = _align_rows(spec)
    r = A.rank_configs(a, n_boot=200)
    assert list(r.config) == ["good", "bad"] and list(r["rank"]) == [1, 2]
    good = r.iloc[0]
    assert good["mean"] == pytest.approx(0.5) and good.mean_correct == pytest.approx(0.4) and good.mean_incorrect == pytest.approx(0.6)
    assert good.n == 6 and good.n_correct == 3 and good.n_incorrect == 3 and good.n_questions == 3
    assert good.ci_low <= good["mean"] <= good.ci_high
    # summary_table keeps working on the same frame and agrees
    s = A.summary_table(a)
    assert s.loc[("good", "reverse_kl"), "mean_all"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- winners


def test_question_winners_and_shares():
    spec = [("q1", 0, 1, True, "A", "reverse_kl", 0.9, 0.5), ("q1", 0, 1, True, "B", "reverse_kl", 0.1, 0.5),
            ("q2", 0, 1, True, "A", "reverse_kl", 0.8, 0.5), ("q2", 0, 1, True, "B", "reverse_kl", 0.2, 0.5),
            ("q3", 0, 1, True, "A", "reverse_kl", 0.1, 0.5), ("q3", 0, 1, True, "B", "reverse_kl", 0.7, 0.5)]
    w = A.question_winners(_align_rows(spec))
    assert list(w.winner) == ["A", "A", "B"]
    assert w.margin.tolist() == pytest.approx([0.8, 0.6, 0.6])
    s = A.winner_shares(w)
    assert s.set_index("config").share.to_dict() == pytest.approx({"A": 2 / 3, "B": 1 / 3})
    assert A.single_winner(s, "reverse_kl") is None
    w2 = A.question_winners(_align_rows(spec[:4]))
    assert A.single_winner(A.winner_shares(w2), "reverse_kl") == "A"


# ----------------------------------------------------------------------------- TIP quadrants


def _tokens(rows):
    base = {"token_text": "x", "teacher_entropy": 1.0, "kl_qp": 0.0, "jsd": 0.0, "dist_cos": 1.0, "branched": False,
            "student_logprob": -1.0, "teacher_logprob": -1.0, "token_id": 0}
    return _frame("tokens", [{**base, **r} for r in rows])


def test_tip_quadrant_thresholds_and_assignment():
    # entropies 1..4 and kl 10..40 paired so each quadrant gets one token at the 0.5/0.5 medians (2.5, 25)
    rows = [{"question_id": "q", "rollout_id": 0, "config": "T", "position": i, "student_entropy": h, "kl_pq": d}
            for i, (h, d) in enumerate([(4, 40), (3, 10), (1, 30), (2, 20)])]
    t = _tokens(rows)
    th = A.tip_thresholds(t)
    assert th.entropy_threshold.item() == pytest.approx(2.5) and th.divergence_threshold.item() == pytest.approx(25)
    q = A.tip_quadrants(t)
    assert list(q.quadrant) == ["Q1", "Q2", "Q3", "Q4"]
    # a higher entropy quantile moves the 3-nat token to "low H"
    q75 = A.tip_quadrants(t, h_quantile=0.75)
    assert A.tip_thresholds(t, h_quantile=0.75).entropy_threshold.item() == pytest.approx(3.25)
    assert list(q75.quadrant) == ["Q1", "Q4", "Q3", "Q4"]
    # the distribution cosine is a similarity: low cosine = high divergence
    t2 = t.assign(dist_cos=[0.1, 0.9, 0.2, 0.8])
    assert list(A.tip_quadrants(t2, divergence="dist_cos").quadrant) == ["Q1", "Q2", "Q3", "Q4"]
    with pytest.raises(A.AnalysisError):
        A.tip_quadrants(t, d_quantile=1.0)
    with pytest.raises(A.AnalysisError):
        A.tip_quadrants(t, divergence="nope")


def test_quadrant_summary_joins_alignment_at_branched_nodes():
    rows = [{"question_id": "q", "rollout_id": 0, "config": "T", "position": i, "student_entropy": h, "kl_pq": d, "branched": i in (0, 2)}
            for i, (h, d) in enumerate([(4, 40), (3, 10), (1, 30), (2, 20)])]
    q = A.tip_quadrants(_tokens(rows))
    a = _align_rows([("q", 0, 0, True, "T", "reverse_kl", 0.3, 0.5), ("q", 0, 2, True, "T", "reverse_kl", -0.4, 0.5)])
    s = A.quadrant_summary(q, a).set_index("quadrant")
    assert s.share_tokens.tolist() == pytest.approx([0.25] * 4)
    assert s.loc["Q1", "mean_alignment"] == pytest.approx(0.3) and s.loc["Q3", "mean_alignment"] == pytest.approx(-0.4)
    assert s.loc["Q2", "n_nodes"] == 0 and math.isnan(s.loc["Q2", "mean_alignment"])


# ----------------------------------------------------------------------------- Rock tokens


def test_rock_ranking_score_filters_and_order():
    # token id -> (frequency, loss per occurrence)
    spec = {1: (10, 0.01), 2: (4, 0.5), 3: (6, 0.2), 4: (1, 5.0), 5: (3, -0.1), 6: (2, 0.3)}
    rows, pos = [], 0
    for tid, (f, l) in spec.items():
        for _ in range(f):
            rows.append({"question_id": "q", "rollout_id": 0, "config": "T", "position": pos, "token_id": tid,
                         "token_text": f"t{tid}", "student_logprob": -1.0 + l, "teacher_logprob": -1.0,
                         "student_entropy": 1.0, "kl_pq": abs(l)})
            pos += 1
    t = _tokens(rows)
    r = A.rock_tokens(t, min_freq=2, drop_top=1, top_n=10)
    # type 1 dropped as the most frequent, type 4 below min_freq, type 5 not high-loss (mean l_t < 0);
    # scores: 2 -> 4 x 0.5 = 2.0, 3 -> 6 x 0.2 = 1.2, 6 -> 2 x 0.3 = 0.6
    assert list(r.token_id) == [2, 3, 6]
    assert r.score.tolist() == pytest.approx([2.0, 1.2, 0.6])
    assert list(r["rank"]) == [1, 2, 3] and list(r.freq) == [4, 6, 2]
    assert list(A.rock_tokens(t, min_freq=2, drop_top=0, top_n=2).token_id) == [2, 3]
    assert list(A.rock_tokens(t, min_freq=1, drop_top=0, top_n=1).token_id) == [4]  # 1 x 5.0 beats 4 x 0.5
    s = A.rock_summary(t, _align_rows([("q", 0, 0, True, "T", "sampled_token", 0.5, 0.5)]), r.head(2))
    assert s.share_tokens.item() == pytest.approx(10 / 26)
    assert s.share_kl.item() == pytest.approx(3.2 / (0.1 + 3.2 + 5.0 + 0.3 + 0.6))


def test_opd_norm_estimate_is_a_lower_bound_within_sqrt2():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.dirichlet(np.full(8, rng.uniform(0.05, 2.0)))
        y = int(rng.integers(8))
        l = float(rng.normal())
        exact = abs(l) * np.linalg.norm(np.eye(8)[y] - p)
        h = float(-(p[p > 0] * np.log(p[p > 0])).sum())
        t = pd.DataFrame({"student_logprob": [np.log(p[y])], "teacher_logprob": [np.log(p[y]) - l], "student_entropy": [h]})
        est = A.opd_norm_estimate(t)[0]
        assert est <= exact + 1e-9 and est >= exact / math.sqrt(2) - 1e-9
    # exact when p is uniform on its support
    p = np.array([0.25] * 4)
    t = pd.DataFrame({"student_logprob": [np.log(0.25)], "teacher_logprob": [np.log(0.25) - 1.0], "student_entropy": [np.log(4)]})
    assert A.opd_norm_estimate(t)[0] == pytest.approx(np.linalg.norm(np.eye(4)[0] - p))


# ----------------------------------------------------------------------------- correlations, position, decisive nodes


def test_spearman_known_values():
    x = [1, 2, 3, 4, 5]
    assert A.spearman(x, [10, 20, 30, 40, 1000]) == pytest.approx(1.0)
    assert A.spearman(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert A.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(A.spearman([1, 2], [1, 2])) and math.isnan(A.spearman([1, 1, 1], [1, 2, 3]))


def test_divergence_correlations_per_config():
    spec, rows = [], []
    for i in range(5):
        spec.append(("q", 0, i, True, "T", "reverse_kl", 0.1 * i, 0.5))
        rows.append({"question_id": "q", "rollout_id": 0, "config": "T", "position": i, "student_entropy": 1.0,
                     "kl_pq": float(i), "kl_qp": float(-i), "jsd": 1.0, "dist_cos": float(i % 2)})
    c = A.divergence_correlations(_align_rows(spec), _tokens(rows)).set_index("measure").rho
    assert c["kl_pq"] == pytest.approx(1.0) and c["kl_qp"] == pytest.approx(-1.0) and math.isnan(c["jsd"])


def test_relative_position_and_decisive_nodes():
    a = _align_rows([("q", 0, 0, False, "T", "reverse_kl", 0.1, 0.5), ("q", 0, 5, False, "T", "reverse_kl", 0.9, 0.5),
                     ("q", 0, 9, False, "T", "reverse_kl", 0.2, 0.2)])
    roll = _frame("rollouts", [{"question_id": "q", "rollout_id": 0, "n_tokens": 10, "correct": False}])
    rp = A.relative_position(a, roll, bins=2)
    assert rp.rel_pos.tolist() == pytest.approx([0.0, 0.5, 0.9]) and rp.pos_bin.tolist() == [0, 1, 1]
    nodes = _frame("nodes", [{"question_id": "q", "rollout_id": 0, "position": p, "source": "sampled", "success": s, "candidate_id": 1}
                             for p, s in ((0, 0.5), (5, 0.1), (9, 0.3))])
    d = A.decisive_nodes(a, nodes)
    assert d.delta_v.tolist() == pytest.approx([0.0, -0.4, 0.1]) and d.decisive.tolist() == [False, True, False]
    s = A.alignment_at_decisive(a, nodes, n_boot=50).set_index("decisive")
    assert s.loc[True, "mean"] == pytest.approx(0.9) and s.loc[False, "mean"] == pytest.approx(0.15)
    pb = A.alignment_by_position(a, roll, bins=2, n_boot=50)
    assert pb["mean"].tolist() == pytest.approx([0.1, 0.55])


# ----------------------------------------------------------------------------- weights and combining runs


def test_token_weights_rules_multiply():
    rows = [{"question_id": "q", "rollout_id": 0, "config": "T", "position": i, "student_entropy": h, "kl_pq": d,
             "token_id": tid, "student_logprob": -1.0 + l}
            for i, (h, d, tid, l) in enumerate([(4, 40, 7, 1.0), (3, 10, 7, 1.0), (1, 30, 8, 0.1), (2, 20, 9, 0.0)])]
    t = _tokens(rows)
    a = _align_rows([("q", 0, 2, True, "T", "reverse_kl", -0.5, 0.5), ("q", 0, 0, True, "T", "reverse_kl", 0.5, 0.5)])
    w = A.token_weights(t, a, config="T", rules=["zero-negative"])
    assert list(w.columns) == ["question_id", "rollout_id", "position", "weight"] and w.weight.tolist() == [1, 1, 0, 1]
    assert A.token_weights(t, a, config="T", rules=["keep-tip:Q3"]).weight.tolist() == [0, 0, 1, 0]
    assert A.token_weights(t, a, config="T", rules=["keep-tip:q1,Q3"]).weight.tolist() == [1, 0, 1, 0]
    # rock types with drop_top=0, min_freq=2: only token 7 (twice, loss 1.0)
    fr = A.token_weights(t, a, config="T", rules=["freeze-rocks"], drop_top=0)
    assert fr.weight.tolist() == [0, 0, 1, 1] and fr.attrs["gradalign_weights"]["rock_token_ids"] == [7]
    assert A.token_weights(t, a, config="T", rules=["freeze-rocks", "keep-tip:Q1,Q3"], drop_top=0).weight.tolist() == [0, 0, 1, 0]
    for bad in ("keep-tip", "keep-tip:Q5", "nope", "freeze-rocks:x"):
        with pytest.raises(A.AnalysisError):
            A.parse_rule(bad)
    with pytest.raises(A.AnalysisError):
        A.token_weights(t, a, config="missing", rules=["zero-negative"])


def test_combine_runs_offsets_rollouts_and_relabels_shared_configs():
    def run(name, cfgs):
        a = _align_rows([("q", r, 0, True, c, "reverse_kl", 0.1, 0.5) for c in cfgs for r in (0, 1)])
        t = _tokens([{"question_id": "q", "rollout_id": r, "config": c, "position": 0, "student_entropy": 1.0, "kl_pq": 0.1}
                     for c in cfgs for r in (0, 1)])
        roll = _frame("rollouts", [{"question_id": "q", "rollout_id": r, "n_tokens": 1, "correct": True} for r in (0, 1)])
        return Tables(roll, t, _frame("nodes", []), a, {"config": {"run": {"name": name}}})

    c = A.combine_runs([run("r1", ["self", "strong"]), run("r2", ["self", "other"])])
    assert sorted(set(c.alignment.config)) == ["other", "r1/self", "r2/self", "strong"]
    assert sorted(c.rollouts.rollout_id) == [0, 1, 2, 3] and set(c.rollouts.run) == {"r1", "r2"}
    assert c.manifest["run_names"] == ["r1", "r2"]


def test_split_half_alignment_and_resolved_counts():
    import numpy as np

    from gradalign.analysis import resolved_counts, split_half_alignment

    a = _align_rows([("q0", 0, 0, True, "A", "reverse_kl", 0.5, 0.5), ("q0", 0, 1, True, "A", "reverse_kl", 0.2, 0.5),
                     ("q1", 1, 0, False, "A", "reverse_kl", -0.4, 0.5), ("q1", 1, 1, False, "B", "reverse_kl", 0.1, 0.5)])
    a["norm_ideal"] = [2.0, 1.0, 1.0, 1.0]
    a["norm2_ideal_split"] = [1.0, 4.0, -0.5, 0.25]  # row 3: not resolved above the noise
    a["resolved"] = [True, False, True, False]
    a["cos_se"] = [0.1, 0.2, 0.3, 0.4]
    r = split_half_alignment(a, n_boot=50).set_index("config")
    # A: ratios 0.5*2/1 = 1.0 and 0.2*1/2 = 0.1 (the third row has no ratio); B: 0.1*1/0.5 = 0.2
    assert r.loc["A", "mean"] == pytest.approx(0.55) and r.loc["A", "n"] == 2 and r.loc["A", "n_below_noise"] == 1
    assert r.loc["B", "mean"] == pytest.approx(0.2) and r.loc["B", "n_below_noise"] == 0
    rc = resolved_counts(a).set_index("config")
    assert rc.loc["A", "rows"] == 3 and rc.loc["A", "resolved"] == 2 and rc.loc["B", "resolved"] == 0
    assert rc.loc["A", "share"] == pytest.approx(2 / 3) and rc.loc["A", "mean_se"] == pytest.approx(0.2)
    assert np.isfinite(r["ci_low"]).all()


# ----------------------------------------------------------------------------- large tokens tables (issue 14)


def _wide_run(seed=0):
    """A tokens table where most rows are not nodes (other rollouts, other positions) and categorical
    strings, as `tables.load` returns them; alignment rows at a few (rollout, position) pairs."""
    rng = np.random.default_rng(seed)
    rows = [{"question_id": f"q{r % 3}", "rollout_id": r, "config": c, "position": p, "student_entropy": float(rng.random()),
             "kl_pq": float(rng.random()), "kl_qp": float(rng.random()), "token_id": int(rng.integers(5)), "branched": p % 7 == 3}
            for r in range(6) for c in ("a", "b") for p in range(30)]
    t = _tokens(rows)
    for col in ("question_id", "config", "token_text"):
        t[col] = t[col].astype("category")
    spec = [(f"q{r % 3}", r, p, r % 2 == 0, c, loss, float(rng.uniform(-1, 1)), 0.5)
            for r in (1, 4) for p in (3, 10, 24) for c in ("a", "b") for loss in ("reverse_kl", "sampled_token")]
    return t, _align_rows(spec)


def test_joins_with_alignment_equal_a_plain_merge_over_every_token_row():
    t, a = _wide_run()
    want = a.merge(t.astype({"question_id": str, "config": str})[[*A.TOKEN_KEY, "kl_pq", "kl_qp"]], on=A.TOKEN_KEY, how="left")
    got = A.join_tokens(a, t, ("kl_pq", "kl_qp"))
    assert len(got) == len(a) and got[["kl_pq", "kl_qp"]].to_numpy().tolist() == want[["kl_pq", "kl_qp"]].to_numpy().tolist()
    assert got["kl_pq"].notna().all()
    q = A.tip_quadrants(t)
    s = A.quadrant_summary(q, a, n_boot=20).set_index(["config", "loss", "quadrant"])
    j = a.merge(q.astype({"question_id": str, "config": str, "quadrant": str})[[*A.TOKEN_KEY, "quadrant"]], on=A.TOKEN_KEY)
    assert s["n_nodes"].sum() == len(j)
    assert s["n_nodes"].to_dict() == {k: int(v) for k, v in j.groupby(["config", "loss", "quadrant"]).size().reindex(s.index, fill_value=0).items()}
    check = A.opd_norm_check(t, a)
    assert check.set_index("config")["n"].to_dict() == {"a": 6, "b": 6}


def test_tip_quadrants_leave_the_tokens_frame_unchanged_and_store_a_categorical():
    t, _ = _wide_run(1)
    before = t.copy(deep=True)
    q = A.tip_quadrants(t)
    pd.testing.assert_frame_equal(t, before)  # the new columns never reach the caller's frame
    assert isinstance(q["quadrant"].dtype, pd.CategoricalDtype) and list(q["quadrant"].cat.categories) == list(A.QUADRANTS)


def test_rock_summary_marks_each_configs_own_rock_types():
    t, a = _wide_run(2)
    rocks = pd.DataFrame({"config": ["a", "b"], "token_id": [1, 2]})
    s = A.rock_summary(t, a, rocks, n_boot=20).set_index("config")
    for c, tid in (("a", 1), ("b", 2)):
        tc = t[t.config == c]
        assert s.loc[c, "share_tokens"] == pytest.approx((tc.token_id == tid).mean())
        tok = tc[[*A.NODE_KEY, "token_id"]].astype({"question_id": str}).rename(columns={"token_id": "tok"})
        nodes = a[(a.config == c) & (a.loss == "sampled_token")].merge(tok, on=A.NODE_KEY)
        assert len(nodes) == 6 and s.loc[c, "n_nodes_rock"] == int((nodes.tok == tid).sum())


def test_combine_runs_accepts_tables_loaded_without_tokens_columns():
    t, a = _wide_run(3)
    roll = _frame("rollouts", [{"question_id": f"q{r % 3}", "rollout_id": r, "n_tokens": 30, "correct": True} for r in range(6)])
    runs = [Tables(roll, t.iloc[:, :0], _frame("nodes", []), a, {"config": {"run": {"name": n}}}) for n in ("x", "y")]
    c = A.combine_runs(runs)
    assert len(c.tokens) == 2 * len(t) and list(c.tokens.columns) == ["run"]
    assert sorted(set(c.alignment.config)) == ["x/a", "x/b", "y/a", "y/b"] and c.alignment.rollout_id.max() == 4 + 6
