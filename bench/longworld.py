"""A long-horizon world with exact truth: bigram transformers models and a grader over token counts.

Owns: `make_long_world` (a student and two external teachers saved as Hugging Face Llama folders
whose next-token distribution depends ONLY on the last token, plus a one-row task file), the
grader `grade`, and `LongOracle`, the exact success probabilities S and cosines at any node by
dynamic programming over (allowance left, last token, count state). Used by
bench/bench_precision.py; nothing in gradalign imports it.

The models: a one-layer Llama whose attention output and MLP output projections are zero, so the
final hidden state is the last token's embedding; embeddings are scaled one-hot rows (hidden >= V),
the final RMSNorm maps them to sqrt(hidden) e_u, and the (untied) LM head holds the bigram logits
``L[u, v] / sqrt(hidden)``. So ``p(v | prefix) = softmax(L[last token])`` at any position, exactly
what `transformers` computes.

The task: prompt "mn"; characters a..l plus two rare ones, x (fatal) and y (rescue). Success =
the completion contains a "y", or it contains no "x" and an even number of "a"; a completion cut
by max_new_tokens fails. The parity of "a" is weak, long-range signal; x and y carry little student
mass (outside a top-2 candidate set, so the residual bucket pools them with harmless tokens) but
move S by a lot. Teachers: "guide" shifts mass from x to y and jitters "a" (it cannot see parity:
it is a bigram too); "noisy" is the student with independent logit noise.

Exact S at a node: the state after a prefix is (last token, parity of a, x seen, y seen); with
``f[l][u, par, sx, sy]`` the success probability with l tokens of allowance left (EOS counted),
``f[0] = 0`` and ``f[l] = sum_v p(v|u) (grade if v = EOS else f[l-1][v, ...'])``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

CHARS = tuple("abcdefghijkl") + ("x", "y")
PROMPT = "mn"  # prompt characters are never generated (logit -30)
HIDDEN = 32


def grade(completion: str, row: dict) -> bool:
    """Success: a "y", or no "x" and an even number of "a"."""
    return "y" in completion or ("x" not in completion and completion.count("a") % 2 == 0)


def _tokenizer():
    from gradalign.world import build_tokenizer

    return build_tokenizer(chars=CHARS + tuple(PROMPT), max_length=512)


def _tables(V: int, tok) -> dict[str, torch.Tensor]:
    """Bigram logits [V, V] (row: last token) of the student and the two teachers."""
    g = torch.Generator().manual_seed(11)
    ids = {c: tok.convert_tokens_to_ids(c) for c in CHARS}
    special = [tok.pad_token_id, tok.bos_token_id, tok.unk_token_id]
    eos = tok.eos_token_id
    prompt_only = [i for i in tok(PROMPT, add_special_tokens=False)["input_ids"] if i not in ids.values()]
    Ls = torch.randn(V, V, generator=g, dtype=torch.float64) * 1.3
    Ls[:, ids["x"]] -= 2.2  # rare but decisive tokens
    Ls[:, ids["y"]] -= 2.6
    Ls[:, ids["a"]] += 0.3
    Ls[:, eos] = Ls[:, eos] * 0.3 - 0.2  # expected length ~ 35 tokens, well inside the 128 horizon
    noisy = Ls + torch.randn(V, V, generator=g, dtype=torch.float64) * 1.0
    guide = Ls.clone()
    guide[:, ids["x"]] -= 2.0
    guide[:, ids["y"]] += 1.5
    guide[:, ids["a"]] += 0.4 * torch.randn(V, generator=g, dtype=torch.float64)
    out = {}
    for name, L in (("student", Ls), ("guide", guide), ("noisy", noisy)):
        L = L.clone()
        L[:, special + prompt_only] = -30.0
        out[name] = L
    return out


def _model(L: torch.Tensor, tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    V = L.shape[0]
    cfg = LlamaConfig(vocab_size=V, hidden_size=HIDDEN, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        m.model.embed_tokens.weight.zero_()
        m.model.embed_tokens.weight[:, :V].copy_(torch.eye(V))
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        m.lm_head.weight.zero_()
        m.lm_head.weight[:, :V].copy_((L.T / math.sqrt(HIDDEN)).float())
    return m.eval()


def make_long_world(root: Path) -> Path:
    """Save student/, guide/, noisy/ (models + tokenizer) and task.jsonl under root."""
    tok = _tokenizer()
    for name, L in _tables(len(tok), tok).items():
        m = _model(L, tok)
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "task.jsonl").write_text(json.dumps({"id": "q0", "question": PROMPT, "answer": "-"}) + "\n")
    return root


class LongOracle:
    """Exact S and cosines in the long world at horizon L (max_new_tokens), from the saved models'
    own float logits (so the truth is the distribution the pipeline samples)."""

    TEACHERS = ("guide", "noisy")

    def __init__(self, root: Path, horizon: int):
        from transformers import AutoModelForCausalLM

        self.tok = _tokenizer()
        self.L = horizon
        V = len(self.tok)
        self.logp = {}
        for name in ("student", *self.TEACHERS):
            m = AutoModelForCausalLM.from_pretrained(root / name).eval()
            with torch.no_grad():
                self.logp[name] = torch.log_softmax(m(torch.arange(V)[:, None]).logits[:, -1].double(), -1)  # [V, V]
        self.a, self.x, self.y = (self.tok.convert_tokens_to_ids(c) for c in "axy")
        self.eos = self.tok.eos_token_id
        self.f = self._dp(self.logp["student"].exp())

    def _dp(self, P: torch.Tensor) -> torch.Tensor:
        """f [L+1, V, 2, 2, 2]: success probability from (last token, parity, x seen, y seen), l left."""
        V = P.shape[0]
        f = torch.zeros(self.L + 1, V, 2, 2, 2, dtype=torch.float64)
        for left in range(1, self.L + 1):
            for par in (0, 1):
                for sx in (0, 1):
                    for sy in (0, 1):
                        nxt = torch.empty(V, dtype=torch.float64)
                        for v in range(V):
                            if v == self.eos:
                                nxt[v] = float(bool(sy) or (not sx and par == 0))
                            else:
                                nxt[v] = f[left - 1, v, par ^ (v == self.a), sx | (v == self.x), sy | (v == self.y)]
                        f[left, :, par, sx, sy] = P @ nxt
        return f

    def state(self, completion_ids) -> tuple[int, int, int]:
        c = list(completion_ids)
        return c.count(self.a) % 2, int(self.x in c), int(self.y in c)

    def success_vector(self, last: int, completion_ids, left: int) -> torch.Tensor:
        """Exact S [V] at a node: the next token v, then `left` more tokens of allowance (EOS counted)."""
        par, sx, sy = self.state(completion_ids)
        V = self.f.shape[1]
        S = torch.empty(V, dtype=torch.float64)
        for v in range(V):
            if v == self.eos:
                S[v] = float(bool(sy) or (not sx and par == 0))
            else:
                S[v] = self.f[left, v, par ^ (v == self.a), sx | (v == self.x), sy | (v == self.y)]
        return S

    def rows(self, rollouts, alignment, losses) -> dict:
        """Exact cos per (rollout, position, config, loss) at every alignment row's node, and the
        exact S per node under key (rollout, position) -> [V]."""
        from gradalign import gradients as G

        tok = self.tok
        prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
        comp = {r.rollout_id: tok(r.completion, add_special_tokens=False)["input_ids"] for r in rollouts.itertuples()}
        cos, S_of = {}, {}
        for (rid, t) in sorted(set(zip(alignment.rollout_id, alignment.position))):
            ids = comp[rid]
            last = (prompt + ids[:t])[-1]
            S = self.success_vector(last, ids[:t], self.L - t - 1)
            S_of[(rid, t)] = S
            lp = self.logp["student"][last]
            g = G.ideal_gradient(lp.exp(), S)
            y = ids[t] if t < len(ids) else self.eos
            for cfg in self.TEACHERS:
                for loss in losses:
                    d = G.distill_direction(loss, lp, self.logp[cfg][last], token=torch.tensor(y))
                    cos[(rid, t, cfg, loss)] = G.cosine(g, d).value
        return {"cos": cos, "S": S_of}


class BigramSampler:
    """A `gradalign.sampling.Sampler` for this world: the HF sampler's exact draw (Gumbel-max with the
    same counter-based noise, `sampling.hf.counter_uniform` keyed by (seed, step, token)) over the
    student's bigram log-probabilities, vectorised over all sequences at once instead of a transformer
    forward per step. `bench_precision` checks it reproduces `sampling.hf.sample` token for token
    on a sample of prompts before it measures anything."""

    def __init__(self, logp: torch.Tensor, eos_id: int, max_new_tokens: int):
        self.logits = logp.float()  # [V, V]; the HF sampler adds the noise to float32 logits as well
        self.eos = eos_id
        self.max_new = max_new_tokens

    def sample(self, prompts, seeds, max_new=None):
        from gradalign.sampling.hf import _i64, counter_uniform
        from gradalign.sampling.protocol import Completion

        n = len(prompts)
        allow = torch.tensor([self.max_new if max_new is None else min(int(a), self.max_new) for a in
                              (max_new or [self.max_new] * n)])
        last = torch.tensor([p[-1] for p in prompts])
        s = torch.tensor([_i64(int(x) % (1 << 64)) for x in seeds], dtype=torch.int64)
        toks = torch.full((n, self.max_new), -1, dtype=torch.long)
        alive = allow > 0
        ended = torch.zeros(n, dtype=torch.bool)
        V = self.logits.shape[0]
        for step in range(self.max_new):
            if not bool(alive.any()):
                break
            u = counter_uniform(s, step, V)
            z = self.logits[last] + (-torch.log(-torch.log(u))).float()
            nxt = z.argmax(-1)
            toks[alive, step] = nxt[alive]
            eos_now = alive & (nxt == self.eos)
            ended |= eos_now
            last = torch.where(alive, nxt, last)
            alive = alive & ~eos_now & (step + 1 < allow)
        out = []
        for i in range(n):
            row = [t for t in toks[i].tolist() if t >= 0]
            if ended[i]:
                out.append(Completion(tuple(row[:-1]), truncated=False, ended_with_eos=True, eos_id=int(row[-1])))
            else:
                out.append(Completion(tuple(row), truncated=True, ended_with_eos=False))
        return out

    def close(self) -> None:
        pass
