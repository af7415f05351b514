"""End to end on the embedded world: `gradalign demo` writes the four documented tables and a
manifest; the tables are internally consistent. Runs once per rollout backend (`backend` fixture)."""

from __future__ import annotations

import json
import math

from conftest import cli

from gradalign.tables import COLUMNS, SCHEMA_VERSION, TABLES, load
from gradalign.tasks import data_dir


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


def test_diagnose_with_eos_node_branches_the_stop(tmp_path, backend):
    """`gradalign diagnose` on the demo config with `--set branching.eos_node=true`: every rollout
    that ended with EOS has alignment rows at position n_tokens (its stop decision, token = the EOS),
    a tokens row there per config and, in the nodes table, the EOS as the sampled candidate with
    the rollout's own verdict as its exact success; V = sum p S still holds."""
    out = tmp_path / "run"
    r = cli("diagnose", str(data_dir() / "configs" / "demo.toml"), "--out", str(out), "--set", "branching.eos_node=true",
            "--set", "task.limit=2", "--set", "sampling.rollouts_per_question=2", "--set", "branching.continuations=2",
            "--set", f"sampling.backend={backend}", "--set", f"sampling.vllm_eager={str(backend == 'vllm').lower()}",
            timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    t = load(out)
    assert t.manifest["config"]["branching"]["eos_node"] is True
    key = ["question_id", "rollout_id"]
    fin = t.rollouts[~t.rollouts.truncated]
    assert len(fin) > 0
    stops = set(zip(fin.question_id, fin.rollout_id, fin.n_tokens))
    at = lambda df: df.merge(t.rollouts[[*key, "n_tokens"]], on=key).query("position == n_tokens")  # noqa: E731
    a, k, n = at(t.alignment), at(t.tokens), at(t.nodes)
    assert set(zip(a.question_id, a.rollout_id, a.position)) == stops  # an alignment row at every stop, only there
    assert len(a) == len(stops) * len(set(t.alignment.config)) * len(set(t.alignment.loss))
    assert (a.token_text == "</s>").all() and a.token_id.nunique() == 1
    eos = int(a.token_id.iloc[0])
    assert (k.token_id == eos).all() and k.branched.all() and len(k) == len(stops) * len(set(t.tokens.config))
    sampled = n[n.source == "sampled"].merge(t.rollouts[[*key, "correct"]], on=key)
    assert (sampled.candidate_id == eos).all() and (sampled.success == sampled.correct.astype(float)).all()
    assert len(n[n.source != "sampled"]) > 0  # "write one more token" is a candidate too
    keyp = [*key, "position"]
    merged = t.nodes.assign(w=t.nodes.student_prob * t.nodes.success).groupby(keyp).w.sum()
    vals = t.alignment.drop_duplicates(keyp).set_index(keyp).value
    assert (merged.loc[vals.index] - vals).abs().max() < 1e-9
