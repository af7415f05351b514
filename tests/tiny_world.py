"""A six-token world for integration tests and the estimator benchmark: random tiny Llama models over
{<pad>, <s>, </s>, <unk>, a, b}, saved as Hugging Face folders, plus a one-row task file; and
`ExactOracle`, the exact truth there (every continuation enumerated), which the engine's estimates
are checked against (tests/integration/test_exact_enumeration.py, bench/bench_estimator.py).

The task: prompt "ab"; success = the decoded completion has an odd number of "a" characters (the
`python:grader_fixtures:odd_a` grader); a completion cut by max_new_tokens is a failure. Configs:
teacher "self-hint" is the student with the row's hint "b" before the prompt; "other" is the teacher."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gradalign.world import ModelSize, build_tokenizer, new_model


def make_tiny_world(root: Path, *, nan_teacher: bool = False, hidden: int = 16, heads: int = 2) -> Path:
    """`hidden`/`heads` set the head size (vLLM's CPU kernels need a supported one, e.g. 64)."""
    tok = build_tokenizer(chars=("a", "b"), max_length=16)
    for name, seed in (("student", 1), ("teacher", 2)):
        m = new_model(tok, ModelSize(hidden=hidden, layers=1, heads=heads, ffn=2 * hidden, max_positions=16), seed)
        with torch.no_grad():  # sharpen the random logits so probabilities differ across tokens
            m.lm_head.weight.mul_(4.0 * (16 / hidden) ** 0.5)  # same logit scale for any width
            if nan_teacher and name == "teacher":
                m.lm_head.weight[5].fill_(float("nan"))
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    rows = [{"id": "q0", "question": "ab", "answer": "-", "hint": "b"}]
    (root / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def odd_a(text: str) -> bool:
    """The tiny world's success rule (same as grader_fixtures.odd_a)."""
    return text.count("a") % 2 == 1


class ExactOracle:
    """Exact S and cosines in a tiny world of horizon `horizon` (max_new_tokens), by enumerating every
    continuation; P(success) is memoised per (prefix, allowance) for the oracle's lifetime."""

    def __init__(self, root: Path, horizon: int):
        from transformers import AutoModelForCausalLM

        self.tok = build_tokenizer(chars=("a", "b"))
        self.L = horizon
        self.student = AutoModelForCausalLM.from_pretrained(root / "student").eval()
        self.teacher = AutoModelForCausalLM.from_pretrained(root / "teacher").eval()
        self.memo: dict = {}

    def success(self, prefix: list[int], allowance: int) -> float:
        """P(success) of continuing `prefix` (prompt "ab" + completion so far) with `allowance` new
        tokens (EOS included)."""
        eos = self.tok.eos_token_id

        def rec(seq: tuple[int, ...], left: int) -> float:
            key = (seq, left)
            if key in self.memo:
                return self.memo[key]
            if left == 0:
                return 0.0  # cut by max_new_tokens: a failure
            with torch.no_grad():
                probs = torch.softmax(self.student(torch.tensor([list(seq)])).logits[0, -1].double(), -1).tolist()
            total = 0.0
            for v, pv in enumerate(probs):
                if v == eos:
                    total += pv * float(odd_a(self.tok.decode(list(seq[2:]))))
                else:
                    total += pv * rec(seq + (v,), left - 1)
            self.memo[key] = total
            return total

        return rec(tuple(prefix), allowance)

    def rows(self, tables, success_out: dict | None = None) -> dict:
        """Exact cos per (rollout, position, config, loss) at every node a rollout can be branched at;
        with `success_out`, also the exact S per (rollout, position, candidate token id)."""
        from gradalign import gradients as G

        tok, L = self.tok, self.L
        eos = tok.eos_token_id
        prompt = tok("ab", add_special_tokens=False)["input_ids"]
        hint = tok("b" + "ab", add_special_tokens=False)["input_ids"]
        out = {}
        for r in tables.rollouts.itertuples():
            ids = tok(r.completion, add_special_tokens=False)["input_ids"]
            for t in range(len(ids) if r.truncated else len(ids) + 1):
                prefix = prompt + ids[:t]
                with torch.no_grad():
                    lp = torch.log_softmax(self.student(torch.tensor([prefix])).logits[0, -1].double(), -1)
                    lq_self = torch.log_softmax(self.student(torch.tensor([hint + ids[:t]])).logits[0, -1].double(), -1)
                    lq_other = torch.log_softmax(self.teacher(torch.tensor([prefix])).logits[0, -1].double(), -1)
                S = torch.tensor(
                    [float(odd_a(tok.decode(ids[:t]))) if v == eos else self.success(prefix + [v], L - t - 1)
                     for v in range(lp.numel())],
                    dtype=torch.float64,
                )
                if success_out is not None:
                    success_out.update({(r.rollout_id, t, v): float(S[v]) for v in range(S.numel())})
                g = G.ideal_gradient(lp.exp(), S)
                y = ids[t] if t < len(ids) else eos
                for cfg, lq in (("self-hint", lq_self), ("other", lq_other)):
                    for loss in G.LOSSES:
                        d = G.distill_direction(loss, lp, lq, token=torch.tensor(y))
                        out[(r.rollout_id, t, cfg, loss)] = G.cosine(g, d).value
        return out
