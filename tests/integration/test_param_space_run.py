"""`diagnose` with `alignment.space = ["logit", "params"]` on the tiny world: the lm_head scope
reproduces the logit cosine row by row, its norm is ||g*|| ||h_t|| / tau at the node's own prefix
(the right logits row), the exact and sketched methods agree within the sketch's error, the bootstrap
SE is there, and the manifest records the scope."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_world import make_tiny_world

from gradalign.config import config_from_dict, default_config_dict


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_world(tmp_path_factory.mktemp("ps"))


def _run(root, out, **alignment):
    from gradalign.engine import diagnose

    d = default_config_dict()
    d["run"] = {"name": "ps", "seed": 3}
    d["task"] = {"path": str(root / "task.jsonl"), "prompt": "{question}", "grader": "python:grader_fixtures:odd_a"}
    d["student"] = {"model": str(root / "student")}
    d["sampling"].update({"rollouts_per_question": 4, "max_new_tokens": 4, "temperature": 0.8})
    d["branching"].update({"selector": "every", "continuations": 4, "top_k": 2, "max_candidates": 3})
    d["teachers"] = [{"name": "self-hint", "model": "student", "context": "{hint}"},
                     {"name": "other", "model": str(root / "teacher"), "context": ""}]
    d["alignment"] = {"space": ["logit", "params"], **alignment}
    return diagnose(config_from_dict(d), out)


def test_params_run(world, tmp_path):
    from transformers import AutoModelForCausalLM

    run = _run(world, tmp_path / "head", scope="lm_head")
    a = run.tables().alignment
    ok = a[a.cos.notna()]
    assert len(ok) >= 8
    assert (ok.cos_params - ok.cos).abs().max() < 1e-9
    assert ok.cos_params_se.notna().all() and ok.cos_params_sketch_se.isna().all()
    m = json.loads((tmp_path / "head" / "manifest.json").read_text())
    assert m["models"]["student"]["param_scope"]["names"] == ["lm_head.weight"]
    # the norm is that of a real parameter gradient at the node's own prefix: ||g*|| ||h_t|| / tau
    student = AutoModelForCausalLM.from_pretrained(world / "student").eval()
    rollouts = run.tables().rollouts.set_index("rollout_id")
    from gradalign.world import build_tokenizer
    tok = build_tokenizer(chars=("a", "b"))
    for r in ok.drop_duplicates(["rollout_id", "position"]).itertuples():
        ids = tok("ab" + rollouts.loc[r.rollout_id].completion, add_special_tokens=False)["input_ids"][:2 + r.position]
        with torch.no_grad():
            h = student.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        assert r.norm_ideal_params == pytest.approx(r.norm_ideal * float(h.norm()) / 0.8, rel=1e-5)

    exact = _run(world, tmp_path / "all", scope="all").tables().alignment
    sketch = _run(world, tmp_path / "sk", scope="all", method="sketch", k=400).tables().alignment
    assert exact.cos_params.notna().sum() == len(ok) and (exact.cos_params - exact.cos).abs().max() > 1e-3
    both = exact.cos_params.notna()
    z = (sketch.cos_params[both] - exact.cos_params[both]).abs() / (sketch.cos_params_sketch_se[both] + 1e-3)
    assert float(z.max()) < 5 and math.isfinite(float(z.mean()))
    assert (sketch.cos - exact.cos).abs().max() == 0  # the logit-space columns do not move


def test_report_shows_both_spaces(world, tmp_path):
    from gradalign import load
    from gradalign.report import build_report

    _run(world, tmp_path / "run", scope="last_blocks:1")
    files = build_report(load(tmp_path / "run"), tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    assert "7. Logit space vs parameter space" in page and "last_blocks:1" in page
    assert "in logit and parameter space" in page or "CHANGES between the spaces" in page
    assert (tmp_path / "report" / "spaces.png").stat().st_size > 1000 and files is not None
    assert "## Logit vs parameter space" in (tmp_path / "report" / "summary.md").read_text()
