"""End to end on the embedded world: `gradalign demo` writes the four documented tables and a
manifest; the tables are internally consistent. Runs once per rollout backend (`backend` fixture)."""

from __future__ import annotations

import json
import math

from gradalign.tables import COLUMNS, SCHEMA_VERSION, TABLES, load


def test_demo_writes_tables_with_documented_columns(demo_run, backend):
    out, stdout = demo_run
    t = load(out)
    for name in TABLES:
        df = getattr(t, name)
        assert list(df.columns) == [c for c, _, _ in COLUMNS[name]], name
        assert len(df) > 0, name
    m = json.loads((out / "manifest.json").read_text())
    assert m["schema_version"] == SCHEMA_VERSION and m["complete"] is True
    assert m["row_counts"] == {name: len(getattr(t, name)) for name in TABLES}
    assert m["models"]["student"]["hash"] and m["versions"]["torch"]
    assert "mean cos" in stdout
    assert m["config"]["sampling"]["backend"] == backend


def test_demo_tables_are_consistent(demo_run):
    out, _ = demo_run
    t = load(out)
    a, n, r, k = t.alignment, t.nodes, t.rollouts, t.tokens
    configs = set(t.manifest["config"]["teachers"][i]["name"] for i in range(len(t.manifest["config"]["teachers"])))
    assert set(a.config) == configs and set(k.config) == configs
    assert set(a.loss) == {"reverse_kl", "forward_kl", "jsd", "sampled_token"}
    # both verdicts occur on the embedded world (the student is right on some rollouts only)
    assert r.correct.any() and (~r.correct).any()
    # every alignment row's node has candidate rows; node probabilities sum to ~1 with the residual
    for (q, rid, pos), g in n.groupby(["question_id", "rollout_id", "position"]):
        assert 0.99 <= g.student_prob.sum() <= 1.0 + 1e-6
        assert (g.source == "sampled").sum() == 1
    # value is the p-weighted success, and cosines lie in [-1, 1]
    merged = n.assign(w=n.student_prob * n.success).groupby(["question_id", "rollout_id", "position"]).w.sum()
    vals = a.drop_duplicates(["question_id", "rollout_id", "position"]).set_index(["question_id", "rollout_id", "position"]).value
    assert (merged.loc[vals.index] - vals).abs().max() < 1e-9
    for col in ("cos", "cos_candidates"):
        finite = a[col].dropna()
        assert len(finite) > 0 and finite.between(-1 - 1e-9, 1 + 1e-9).all()
    # NaN cosines always carry a reason
    assert (a[a.cos.isna()].reason != "").all()
    # branched flags in the tokens table match the nodes table
    br = k[k.branched].drop_duplicates(["question_id", "rollout_id", "position"])
    assert len(br) == n.drop_duplicates(["question_id", "rollout_id", "position"]).shape[0]
    # token statistics are finite and KL is non-negative
    assert (k.kl_pq >= -1e-6).all() and (k.kl_qp >= -1e-6).all() and k.student_entropy.map(math.isfinite).all()
