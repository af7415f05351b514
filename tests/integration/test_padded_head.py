"""A model pair whose LM heads are padded beyond the tokenizer's ids (like Qwen2.5-7B's 152,064 rows
teaching Qwen2.5-1.5B's 151,936, both over 151,665 tokenizer ids): padded copies of the bundled models
(100 ids, head resized to 128 rows) as teacher and as student. Distributions are compared over the
tokenizer's ids only (log_softmax over the first len(tokenizer) logits, renormalised), so a padded
model whose extra rows carry ~0 mass gives the unpadded run's numbers, and one whose extra rows carry
mass is renormalised and counted in the manifest's faults (`padded_head_mass`)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from gradalign.config import load_config
from gradalign.engine import diagnose
from gradalign.tasks import data_dir

V_TOK, PAD = 100, 28  # the bundled tokenizer's ids; padded rows (head: 128 rows)


def _padded_copy(name: str, dst, *, mass: bool):
    """data/models/<name> with its (tied) LM head resized to V_TOK + PAD rows. mass=False: zero rows
    (logit 0, ~0 mass next to the trained rows' large logits on the task's rollouts); mass=True: the
    padded rows copy rows 0..27 (pad, BOS, EOS, unk, digits, letters), so a padded id ties with the
    likely digit or EOS and takes about half the mass there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = data_dir() / "models" / name
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.resize_token_embeddings(V_TOK + PAD, mean_resizing=False)
    with torch.no_grad():
        w = model.get_output_embeddings().weight
        w[V_TOK:] = w[:PAD] if mass else 0.0
    assert model.get_output_embeddings().weight.shape[0] == V_TOK + PAD
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    root = tmp_path_factory.mktemp("padded")
    return {
        "teacher-zero": _padded_copy("teacher-strong", root / "teacher-zero", mass=False),
        "teacher-mass": _padded_copy("teacher-strong", root / "teacher-mass", mass=True),
        "student-mass": _padded_copy("student", root / "student-mass", mass=True),
    }


CFG_TOML = """
[task]
name = "addition"
split = "test"
limit = 2
prompt = "Q {{question}}\\n"
grader = "exact"

[student]
model = "{student}"

[sampling]
rollouts_per_question = 2
max_new_tokens = 64

[branching]
selector = "logspace"
nodes_per_window = 1
continuations = 2
top_k = 1

[[teachers]]
name = "a"
model = "{teacher_a}"
context = ""

[[teachers]]
name = "b"
model = "{teacher_b}"
context = ""
"""


def _toml(student="student", teacher_a="teacher-strong", teacher_b="teacher-strong") -> str:
    return CFG_TOML.format(student=student, teacher_a=teacher_a, teacher_b=teacher_b)


def _run(tmp_path_factory, label: str, **models):
    folder = tmp_path_factory.mktemp(label)
    (folder / "cfg.toml").write_text(_toml(**models))
    run = diagnose(load_config(folder / "cfg.toml"), folder / "run")
    return run, run.tables()


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("question_id", "rollout_id", "config", "position", "candidate_id", "loss") if c in df.columns]
    return df.sort_values(keys).reset_index(drop=True)


@pytest.fixture(scope="module")
def unpadded(tmp_path_factory):
    """The bundled student and teacher-strong (under two config names), no padding."""
    return _run(tmp_path_factory, "unpadded")[1]


def _assert_same_results(t, base) -> None:
    """The padded run's tables equal the unpadded run's: the same rollouts, candidates and outcomes, and
    alignment numbers up to float rounding of the wider LM-head matmul."""
    for name in ("rollouts", "nodes"):
        a, b = _sorted(getattr(t, name)), _sorted(getattr(base, name))
        assert a[["question_id", "rollout_id"]].equals(b[["question_id", "rollout_id"]])
        if name == "rollouts":
            assert a.completion.equals(b.completion) and a.correct.equals(b.correct)
        else:
            assert a.candidate_id.equals(b.candidate_id) and a.n.equals(b.n) and a.successes.equals(b.successes)
    a, b = _sorted(t.alignment), _sorted(base.alignment)
    assert len(a) == len(b) > 0 and a[["position", "config", "loss"]].equals(b[["position", "config", "loss"]])
    # finite wherever defined (NaN only from a zero ideal gradient, which is not a fault), never non-finite logits
    assert np.isfinite(a.cos).any() and (np.isfinite(a.cos) | a.reason.str.contains("zero_ideal")).all()
    assert not a.reason.str.contains("nonfinite").any()
    for col in ("cos", "cos_candidates", "cos_low", "cos_high", "norm2_ideal_split", "teacher_advantage", "value"):
        np.testing.assert_allclose(a[col], b[col], rtol=0, atol=1e-9, equal_nan=True, err_msg=col)
    ta, tb = _sorted(t.tokens), _sorted(base.tokens)
    for col in ("student_logprob", "teacher_logprob", "kl_pq", "kl_qp", "dist_cos"):
        np.testing.assert_allclose(ta[col], tb[col], rtol=0, atol=1e-6, err_msg=col)


def test_padded_teachers_score_over_the_tokenizer_ids(tmp_path_factory, padded, unpadded):
    """Teacher a's padded rows carry ~0 mass, teacher b's about half at some positions of every rollout:
    both renormalised over the tokenizer's ids give the unpadded teacher's numbers; b's rollouts count."""
    run, t = _run(tmp_path_factory, "teachers", teacher_a=padded["teacher-zero"], teacher_b=padded["teacher-mass"])
    assert run.manifest.faults["padded_head_mass"] == len(t.rollouts) == 4  # teacher b's sequence of each rollout
    assert [s["padded_head_mass"] for s in run.manifest.selection] == [1, 1, 1, 1]
    _assert_same_results(t, unpadded)


def test_padded_student_through_the_cli(tmp_path, padded, unpadded):
    """The case that crashed after loading: exits 0 and warns. The student's padded rows carry mass, yet
    the sampler never draws a padded id (masked) and scoring renormalises, so the results are the
    unpadded run's; each rollout's student sequence counts as a fault."""
    import gradalign

    (tmp_path / "cfg.toml").write_text(_toml(student=padded["student-mass"]))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "gradalign", "diagnose", str(tmp_path / "cfg.toml"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "padded LM-head rows" in r.stderr and "padded head mass 4" in r.stdout
    t = gradalign.load(out)
    assert t.manifest.faults["padded_head_mass"] == 4
    assert t.tokens.token_id.max() < V_TOK and t.nodes.candidate_id.max() < V_TOK
    _assert_same_results(t, unpadded)


def test_validate_accepts_a_padded_pair(tmp_path, padded):
    """Preflight compares tokenizers, not LM-head sizes (different tokenizers: tests/e2e/test_bad_inputs.py)."""
    from gradalign.preflight import preflight

    (tmp_path / "cfg.toml").write_text(_toml(student=padded["student-mass"], teacher_a=padded["teacher-zero"]))
    assert preflight(load_config(tmp_path / "cfg.toml")).configs == 2
