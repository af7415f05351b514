"""Unit tier: the options reasoning models need, without a model. Chat template kwargs and a system
prompt (config, `tasks.encode_prefix`), several EOS ids (`models.eos_token_ids`, the hf sampler's cut,
the vLLM request parameters and output reading), the teacher scoring temperature setting, and the
commented config `gradalign init` writes."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from types import SimpleNamespace

import pytest

from gradalign import config as C
from gradalign.models import ModelError, eos_token_ids
from gradalign.sampling import SamplingParams
from gradalign.sampling.hf import cut_at_eos
from gradalign.sampling.vllm import completion_of, request_params
from gradalign.tasks import TaskError, encode_prefix, prefix_options

# A Qwen3-like template: system message, user message, and a thinking switch.
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and not enable_thinking %}"
    "<think></think>{% endif %}{% endif %}"
)


def _cfg(**task):
    d = C.default_config_dict()
    d["task"].update(task)
    return C.config_from_dict(d)


def _tokenizer():
    from gradalign.world import build_tokenizer

    tok = build_tokenizer(chars=tuple("abcdefghijklmnopqrstuvwxyz<>|/ "), max_length=512)
    tok.chat_template = TEMPLATE
    return tok


# -- config --------------------------------------------------------------------


def test_chat_options_parse_and_round_trip_through_toml():
    cfg = _cfg(chat=True, system_prompt="answer briefly", chat_template_kwargs={"enable_thinking": False, "depth": 2},
               answer_delimiter="</think>")
    assert cfg.task.chat_template_kwargs == (("depth", 2), ("enable_thinking", False))  # frozen, hashable
    hash(cfg.task)
    assert cfg.to_dict()["task"]["chat_template_kwargs"] == {"depth": 2, "enable_thinking": False}
    assert C.config_from_dict(tomllib.loads(cfg.to_toml())) == cfg
    assert prefix_options(cfg.task) == {"chat": True, "system": "answer briefly",
                                        "template_kwargs": {"depth": 2, "enable_thinking": False}}


@pytest.mark.parametrize("task, fragment", [
    ({"system_prompt": "hi"}, "task.system_prompt: is set but task.chat is false"),
    ({"chat_template_kwargs": {"enable_thinking": False}}, "task.chat_template_kwargs: is set but task.chat is false"),
    ({"chat": True, "chat_template_kwargs": "enable_thinking=false"}, "task.chat_template_kwargs: must be a table"),
    ({"chat": True, "chat_template_kwargs": {"x": [1]}}, "task.chat_template_kwargs.x: must be a string, boolean"),
    ({"answer_delimiter": 3}, "task.answer_delimiter: must be a string"),
])
def test_chat_options_refused_in_one_line(task, fragment):
    with pytest.raises(C.ConfigError, match=fragment.replace(".", r"\.")) as e:
        _cfg(**task)
    assert "\n" not in str(e.value)


def test_eos_ids_and_teacher_temperature_settings():
    d = C.default_config_dict()
    d["sampling"]["eos_token_ids"] = [7, 3, 7]
    d["distill"]["teacher_temperature"] = 0.5
    cfg = C.config_from_dict(d)
    assert cfg.sampling.eos_token_ids == (7, 3) and cfg.distill.teacher_temperature == 0.5
    assert C.config_from_dict(C.default_config_dict()).distill.teacher_temperature == 0.0  # 0 = the student's tau
    for bad, where in (([-1], "sampling.eos_token_ids[0]"), (["x"], "sampling.eos_token_ids[0]"), (5, "sampling.eos_token_ids")):
        d["sampling"]["eos_token_ids"] = bad
        with pytest.raises(C.ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
            C.config_from_dict(d)
    d["sampling"]["eos_token_ids"] = []
    d["distill"]["teacher_temperature"] = -1.0
    with pytest.raises(C.ConfigError, match=r"distill\.teacher_temperature: must be a number >= 0"):
        C.config_from_dict(d)


# -- prompts -------------------------------------------------------------------


def test_system_prompt_and_template_kwargs_reach_the_chat_template():
    tok = _tokenizer()
    plain = tok.decode(encode_prefix(tok, "ctx ", "q", chat=True))
    assert plain == "<|user|>ctx q<|end|><|assistant|>"
    full = tok.decode(encode_prefix(tok, "ctx ", "q", chat=True, system="be brief", template_kwargs={"enable_thinking": False}))
    assert full == "<|system|>be brief<|end|><|user|>ctx q<|end|><|assistant|><think></think>"
    # the same options through prefix_options(cfg.task), as every stage calls it
    cfg = _cfg(chat=True, system_prompt="be brief", chat_template_kwargs={"enable_thinking": False})
    assert encode_prefix(tok, "ctx ", "q", **prefix_options(cfg.task)) == encode_prefix(
        tok, "ctx ", "q", chat=True, system="be brief", template_kwargs={"enable_thinking": False})


def test_system_prompt_without_chat_is_refused():
    with pytest.raises(TaskError, match="need task.chat = true"):
        encode_prefix(_tokenizer(), "", "q", system="x")


# -- several EOS ids -----------------------------------------------------------


class _Tok:
    def __init__(self, eos, n=100):
        self.eos_token_id, self.n = eos, n

    def __len__(self):
        return self.n


def test_eos_ids_union_tokenizer_generation_config_and_extra():
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[9, 2]))
    assert eos_token_ids(_Tok(2), model, (5, 9)) == (2, 9, 5)  # tokenizer's first, duplicates dropped
    assert eos_token_ids(_Tok(2), SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=7))) == (2, 7)
    assert eos_token_ids(_Tok(2), None) == (2,)
    with pytest.raises(ModelError, match="sampling.eos_token_ids: id 100 is outside"):
        eos_token_ids(_Tok(2), None, (100,))
    with pytest.raises(ModelError, match="no EOS token"):
        eos_token_ids(_Tok(None), None)


def test_hf_cut_stops_at_the_first_of_any_eos_id():
    assert cut_at_eos([4, 5, 9, 6, 2], (2, 9)) == cut_at_eos([4, 5, 9], (2, 9))
    c = cut_at_eos([4, 5, 9, 6, 2], (2, 9))
    assert (c.token_ids, c.truncated, c.ended_with_eos, c.eos_id) == ((4, 5), False, True, 9)  # which EOS: the stop node's token
    c = cut_at_eos([4, 5, 6], (2, 9))
    assert (c.token_ids, c.truncated, c.ended_with_eos, c.eos_id) == ((4, 5, 6), True, False, None)
    assert cut_at_eos([2], (2,)).token_ids == () and cut_at_eos([2], (2,)).eos_id == 2


def test_vllm_requests_stop_on_every_eos_id_and_outputs_drop_any_of_them():
    kw = request_params(SamplingParams(max_new_tokens=64, temperature=0.7, top_k=0), 10, 2**40 + 3, (2, 9))
    assert kw["stop_token_ids"] == [2, 9] and kw["max_tokens"] == 10 and kw["ignore_eos"] is False
    assert kw["top_k"] == -1 and kw["temperature"] == 0.7 and 0 <= kw["seed"] < 2**31
    c = completion_of([4, 5, 9], "stop", (2, 9))
    assert (c.token_ids, c.truncated, c.ended_with_eos, c.eos_id) == ((4, 5), False, True, 9)
    c = completion_of([4, 5], "stop", (2, 9), stop_reason=9)  # a stop token left out of the output: vLLM's stop_reason says which
    assert (c.token_ids, c.ended_with_eos, c.eos_id) == ((4, 5), True, 9)
    assert completion_of([4, 5], "stop", (2, 9), stop_reason="\n\n").eos_id is None  # a stop string is no EOS id
    c = completion_of([4, 5, 6], "length", (2, 9))
    assert (c.token_ids, c.truncated, c.ended_with_eos, c.eos_id) == ((4, 5, 6), True, False, None)
    try:  # the real constructor accepts them, where vLLM is installed (CI's CPU vLLM venv)
        from vllm import SamplingParams as VSamplingParams
    except ImportError:
        return
    assert list(VSamplingParams(**kw).stop_token_ids) == [2, 9]


# -- gradalign init ------------------------------------------------------------


def test_init_text_documents_every_key_and_loads_as_the_defaults(tmp_path):
    text = C.init_config_text()
    path = tmp_path / "init.toml"
    path.write_text(text)
    assert C.load_config(path) == C.config_from_dict(C.default_config_dict())
    for section in C.SECTIONS:
        for f in C.dataclasses.fields(C._SECTION_CLASSES[section]):
            assert f"\n{f.name} = " in text, f"{section}.{f.name} missing"
            first_words = " ".join(f.metadata["doc"].split()[:4])
            assert first_words in " ".join(line.lstrip("# ") for line in text.splitlines()), f"{section}.{f.name} doc missing"


def test_init_cli_writes_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "g.toml"
    run = lambda *a: subprocess.run([sys.executable, "-m", "gradalign", "init", *a], capture_output=True, text=True, timeout=120)  # noqa: E731
    first = run(str(path))
    assert first.returncode == 0 and path.read_text() == C.init_config_text()
    again = run(str(path))
    assert again.returncode == 2 and "already exists; pass --force" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert run(str(path), "--force").returncode == 0


# -- the report's answer label -------------------------------------------------


def test_report_never_prints_answer_nan():
    import pandas as pd

    from gradalign.report.heatmap import answer_label

    rows = pd.DataFrame([{"extracted_answer": "Yes", "reason": "match"}, {"extracted_answer": None, "reason": "truncated; no_answer"}])
    back = pd.DataFrame({"extracted_answer": [float("nan")], "reason": ["no_answer"]})  # a null read back as NaN
    assert answer_label(rows.iloc[0]) == "answer Yes"
    assert answer_label(rows.iloc[1]) == "no answer (truncated; no_answer)"
    assert answer_label(pd.Series({"extracted_answer": float("nan"), "reason": ""})) == "no answer"
    assert answer_label(back.iloc[0]) == "no answer (no_answer)"
