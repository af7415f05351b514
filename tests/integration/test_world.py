"""The embedded world: task files, tokenizer and models load through the public transformers API,
and the models' measured accuracies sit in the bands data/README.md states."""

from __future__ import annotations

import json

import pytest

from gradalign.tasks import data_dir
from gradalign.world import arithmetic as ar

MODELS = ("student", "teacher-strong", "teacher-flawed")


def test_task_files_have_the_fields_contexts_need():
    for split in ("train", "test"):
        rows = [json.loads(line) for line in (data_dir() / "tasks" / "addition" / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) >= 100
        for r in rows[:50]:
            assert {"id", "question", "answer", "solution", "summary", "example"} <= set(r)
            a, b = map(int, r["question"].split("+"))
            assert r["answer"] == str(a + b)
            assert r["solution"].endswith(f"#### {r['answer']}")
    test_q = {json.loads(line)["question"] for line in (data_dir() / "tasks/addition/test.jsonl").read_text().splitlines()}
    train_q = {json.loads(line)["question"] for line in (data_dir() / "tasks/addition/train.jsonl").read_text().splitlines()}
    assert not test_q & train_q


def test_solution_format_and_flaw():
    sol, ans, summ = ar.solve(4821, 3597)
    assert sol == "1+7=8,2+9=11,8+5+1=14,4+3+1=8\n#### 8418" and ans == "8418" and summ == "carries 0110"
    # 46+14: the first column sums to 10 -> the flawed solution drops that carry
    fsol, fans, _ = ar.solve(46, 14, flawed=True)
    assert fsol == "6+4=10,4+1=5\n#### 50" and fans == "50"
    assert ar.solve(46, 14)[0] == "6+4=10,4+1+1=6\n#### 60"


@pytest.mark.parametrize("name", MODELS)
def test_models_load_with_public_transformers_api(name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = data_dir() / "models" / name
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    text = "Q 123+456\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # character-level, exact round trip
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok))
    assert torch.isfinite(logits).all()


def test_committed_weights_are_small():
    total = sum(f.stat().st_size for f in (data_dir() / "models").rglob("*.safetensors"))
    assert total <= 40 * 2**20, total


def test_tokenizer_shared():
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(data_dir() / "models" / "tokenizer").get_vocab()
    for name in MODELS:
        assert AutoTokenizer.from_pretrained(data_dir() / "models" / name).get_vocab() == vocab


# Bands from the foundation issue, with margins for a 64-question sample (binomial sd ~ 0.06).
BANDS = {
    ("student", "none"): (0.22, 0.78),
    ("student", "solution"): (0.85, 1.0),
    ("teacher-strong", "none"): (0.82, 1.0),
}


@pytest.mark.parametrize("model,context", list(BANDS))
def test_measured_accuracy_bands(model, context):
    from gradalign.world import accuracy_on_test

    acc = accuracy_on_test(model, context, n=64, seed=1)
    lo, hi = BANDS[(model, context)]
    assert lo <= acc.rate <= hi, (model, context, acc)


def test_flawed_teacher_errs_where_a_column_sums_to_ten():
    """teacher-flawed is right on problems without a sum-10 column and wrong on most with one."""
    from gradalign import models
    from gradalign.tasks import load_task
    from gradalign.world import measure_accuracy

    rows = list(load_task(name="addition", split="test", limit=200).rows)
    clean = [r for r in rows if r["flawed_answer"] == r["answer"]][:32]
    hit = [r for r in rows if r["flawed_answer"] != r["answer"]][:32]
    lm = models.load(models.resolve("teacher-flawed"))
    a_clean = measure_accuracy(lm.model, lm.tokenizer, clean, "none", seed=2).rate
    a_hit = measure_accuracy(lm.model, lm.tokenizer, hit, "none", seed=2).rate
    assert a_clean >= 0.75 and a_hit <= 0.35, (a_clean, a_hit)


def test_builder_smoke(tmp_path):
    """The builder regenerates everything from a seed (tiny sizes, a few steps)."""
    from gradalign.world import BuildConfig, build

    report = build(tmp_path, BuildConfig.smoke())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in MODELS:
        AutoModelForCausalLM.from_pretrained(tmp_path / "models" / name)
        AutoTokenizer.from_pretrained(tmp_path / "models" / name)
    assert (tmp_path / "tasks" / "addition" / "test.jsonl").exists()
    assert json.loads((tmp_path / "models" / "build_report.json").read_text())["seed"] == 0
    assert report["student_context_step"] >= 1
    # same seed -> same task files
    again = tmp_path / "again"
    build(again, BuildConfig.smoke())
    assert (again / "tasks/addition/test.jsonl").read_text() == (tmp_path / "tasks/addition/test.jsonl").read_text()


def test_widen_heads_keeps_the_function(tmp_path):
    """Zero-padded heads (24 -> 32 dims, RoPE base adjusted, q rescaled) compute the same logits,
    and greedy decoding through the KV cache gives the same tokens, after a save/load round trip."""
    import torch
    from transformers import AutoModelForCausalLM

    from gradalign.world import ModelSize, build_tokenizer, new_model, widen_heads

    tok = build_tokenizer()
    narrow = new_model(tok, ModelSize(hidden=48, layers=2, heads=2, ffn=64), seed=3).eval()
    with torch.no_grad():
        for p in narrow.parameters():
            p.mul_(3.0)  # sharper attention than at init, so a wrong RoPE or scale would show
    widen_heads(narrow, 32).save_pretrained(tmp_path / "wide")
    wide = AutoModelForCausalLM.from_pretrained(tmp_path / "wide").eval()
    assert wide.config.head_dim == 32 and wide.config.num_attention_heads == 2
    x = torch.randint(4, len(tok), (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = narrow(x).logits, wide(x).logits
        assert (a - b).abs().max() < 1e-4 * a.abs().max()
        ga = narrow.generate(x[:, :5], max_new_tokens=20, do_sample=False, pad_token_id=0)
        gb = wide.generate(x[:, :5], max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert torch.equal(ga, gb)
    assert widen_heads(wide, 32) is wide  # already wide enough: unchanged


def test_bundled_models_have_vllm_cpu_head_size():
    for name in MODELS:
        cfg = json.loads((data_dir() / "models" / name / "config.json").read_text())
        assert cfg["head_dim"] == 32, name  # vLLM's CPU attention takes 32, 64, ... (not the trained 24)


def test_choose_student_prefers_partial_contexts_in_between():
    """In the band and using the solution: the first checkpoint where the most partial contexts
    (summary, answer hint) land between plain and solution accuracy wins over an earlier one."""
    from gradalign.world import BuildConfig, choose_student

    def ck(step, plain, sol, summary, answer):
        return {"step": step, "plain": plain, "solution": sol, "summary": summary, "answer": answer}

    stages = [
        ck(100, 0.30, 0.97, 0.50, 0.50),  # below the band
        ck(200, 0.50, 0.95, 0.40, 0.30),  # in band, neither partial context in between
        ck(300, 0.48, 0.96, 0.60, 0.30),  # one in between
        ck(400, 0.45, 0.80, 0.60, 0.60),  # does not use the solution well enough
        ck(500, 0.47, 0.98, 0.60, 0.50),  # both in between
        ck(600, 0.52, 0.97, 0.70, 0.60),  # both, but later
    ]
    assert choose_student(stages, BuildConfig())["step"] == 500
    assert choose_student(stages[:4], BuildConfig())["step"] == 300
    assert choose_student(stages[:2], BuildConfig())["step"] == 200
