"""Memory cost model: what a model's weights, its KV cache, a sampling batch and a scoring pass take.

Owns: `ModelShape` (the numbers of a Hugging Face `config.json` the costs depend on), the per-token
KV-cache arithmetic, `sampling_batch_size` (how many sequences of a given length an HF `generate`
batch may hold under a byte budget: the `hf` sampler's batch when `sampling.batch_size = 0`),
`scoring_bytes` (the peak of scoring one sequence of T tokens with `gradalign.scoring`: weights
excluded), and `memory_plan` / `format_plan` (a student + teacher plan, the README's GPU table).
Does not own where models are loaded (`models`), the samplers, or scoring itself; the constants here
mirror what those modules allocate (named where used) and bench/bench_scoring_long.py measures them.

Units: bytes throughout; `dtype_bytes` is 4 (float32), 2 (bfloat16/float16).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

SAMPLER_LOGIT_BYTES_PER_ID = 48
"""Bytes per (sequence, vocabulary id) that one `hf` decode step allocates beside the KV cache: the
float32 logits, the int64 SplitMix64 counters and their float64 uniforms, and the noisy float32
scores (`sampling.hf.GumbelCounter`), with a temporary or two alive at once."""

MAX_AUTO_BATCH = {"cpu": 64, "cuda": 256}
"""Upper bound of an automatic `hf` sampling batch: on CPU larger batches buy no speed (and 64 was the
fixed default before budgets); on CUDA 256 rows keep the GPU busy while the budget bounds memory."""


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on, from a transformers config. L layers, H hidden size, I MLP width,
    heads / kv_heads attention heads of size head_dim, V LM-head rows, tied input/output embeddings."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False
    name: str = ""

    @classmethod
    def from_config(cls, cfg: Mapping | object, name: str = "") -> "ModelShape":
        """From a `config.json` mapping or a transformers `PretrainedConfig`."""
        get = (lambda k, d=None: cfg.get(k, d)) if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
        if get("text_config") is not None and get("num_hidden_layers") is None:  # multimodal wrappers
            return cls.from_config(get("text_config"), name)
        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        return cls(layers=int(get("num_hidden_layers")), hidden=hidden, intermediate=int(get("intermediate_size") or 4 * hidden),
                   heads=heads, kv_heads=int(get("num_key_value_heads") or heads),
                   head_dim=int(get("head_dim") or hidden // heads), vocab=int(get("vocab_size")),
                   tied=bool(get("tie_word_embeddings", False)), name=name)

    @property
    def parameters(self) -> int:
        """P, the parameter count of a Llama-style decoder (attention, gated MLP, norms, embeddings)."""
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        per_layer = attn + mlp + 2 * self.hidden
        emb = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * per_layer + emb + self.hidden

    def weight_bytes(self, dtype_bytes: int) -> int:
        return self.parameters * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V of every layer for one token: 2 x L x kv_heads x head_dim x dtype_bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def sampling_sequence_bytes(shape: ModelShape, seq_len: int, dtype_bytes: int) -> int:
    """One sequence of an `hf` sampling batch at its longest: its KV cache over `seq_len` positions
    (prompt + allowance) and its share of a decode step's [B, V] temporaries."""
    return shape.kv_bytes_per_token(dtype_bytes) * seq_len + SAMPLER_LOGIT_BYTES_PER_ID * shape.vocab


def sampling_batch_size(shape: ModelShape, seq_len: int, budget_bytes: int, dtype_bytes: int, *, cap: int = 256) -> int:
    """Sequences per `generate` batch whose KV caches and decode temporaries fit `budget_bytes`
    (at least 1: one sequence always runs; at most `cap`)."""
    per = sampling_sequence_bytes(shape, max(1, seq_len), dtype_bytes)
    return int(max(1, min(cap, budget_bytes // per)))


def scoring_bytes(shape: ModelShape, T: int, dtype_bytes: int, *, max_batch_tokens: int = 16384,
                  max_logit_bytes: int = 256 << 20, flash_attention: bool = True) -> int:
    """Peak bytes (weights excluded) of scoring one sequence of T positions alone with
    `scoring.forward_rows` + `pair_stats`: the KV cache of its sliced prefill (the only term linear
    in T besides the [T, H] rows), one slice's activations (`max_batch_tokens` positions through
    attention, the gated MLP and the hidden stream; attention scores slice x T per head when the
    attention kernel is not a flash kernel), the kept final rows [T, H], and the logit budget."""
    s = min(T, max_batch_tokens)
    kv = shape.kv_bytes_per_token(dtype_bytes) * T
    act = s * (4 * shape.hidden + 3 * shape.intermediate + 2 * shape.heads * shape.head_dim) * dtype_bytes
    scores = 0 if flash_attention else s * T * shape.heads * 4
    rows = T * shape.hidden * dtype_bytes
    return kv + act + scores + rows + max_logit_bytes


@dataclass(frozen=True)
class PlanLine:
    what: str
    bytes: int
    note: str = ""


@dataclass(frozen=True)
class MemoryPlan:
    """A student + teacher GPU plan at context T: lines of bytes, and the sampling batch chosen."""

    T: int
    lines: tuple[PlanLine, ...]
    batch_size: int
    fixed_batch_kv_bytes: int  # the KV cache of the old fixed batch of 64 at this T, for comparison
    notes: tuple[str, ...] = field(default_factory=tuple)


def memory_plan(student: ModelShape, teacher: ModelShape, *, T: int, dtype_bytes: int = 2, device_bytes: int = 80 << 30,
                sampling_budget_fraction: float = 0.5, max_batch_tokens: int = 16384,
                max_logit_bytes: int = 256 << 20) -> MemoryPlan:
    """The plan for sampling with `student` and scoring with both on one device of `device_bytes`:
    weights resident, then the sampling batch under `sampling_budget_fraction` of what the weights
    leave, then the scoring peak of one T-token sequence (the stages run one after the other)."""
    ws, wt = student.weight_bytes(dtype_bytes), teacher.weight_bytes(dtype_bytes)
    free = max(0, device_bytes - ws - wt)
    budget = int(free * sampling_budget_fraction)
    b = sampling_batch_size(student, T, budget, dtype_bytes)
    seq = sampling_sequence_bytes(student, T, dtype_bytes)
    ss = scoring_bytes(student, T, dtype_bytes, max_batch_tokens=max_batch_tokens, max_logit_bytes=max_logit_bytes)
    st = scoring_bytes(teacher, T, dtype_bytes, max_batch_tokens=max_batch_tokens, max_logit_bytes=max_logit_bytes)
    lines = (
        PlanLine(f"weights {student.name or 'student'}", ws, f"{student.parameters / 1e9:.2f}B parameters"),
        PlanLine(f"weights {teacher.name or 'teacher'}", wt, f"{teacher.parameters / 1e9:.2f}B parameters"),
        PlanLine("student KV cache per token", student.kv_bytes_per_token(dtype_bytes)),
        PlanLine("teacher KV cache per token", teacher.kv_bytes_per_token(dtype_bytes)),
        PlanLine(f"sampling: one sequence of {T} tokens", seq, "KV cache + decode-step temporaries"),
        PlanLine(f"sampling: batch of {b} (budget {sampling_budget_fraction:.0%} of free)", b * seq),
        PlanLine(f"scoring peak, student, one {T}-token sequence", ss, "sliced prefill KV + slice + rows + logit budget"),
        PlanLine(f"scoring peak, teacher, one {T}-token sequence", st, "as above, teacher's shape"),
        PlanLine("peak while sampling", ws + wt + b * seq, "both models resident"),
        PlanLine("peak while scoring", ws + wt + st + T * student.hidden * dtype_bytes,
                 "teacher pass; the student's [T, H] rows stay alive"),
    )
    return MemoryPlan(T, lines, b, 64 * seq)


def format_plan(plan: MemoryPlan) -> str:
    """A Markdown table of a plan (GiB / MiB)."""
    def size(n: int) -> str:
        return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"

    out = ["| item | memory | note |", "|---|---|---|"]
    out += [f"| {ln.what} | {size(ln.bytes)} | {ln.note} |" for ln in plan.lines]
    out.append(f"| (old fixed batch of 64 at T = {plan.T}: KV alone) | {size(plan.fixed_batch_kv_bytes)} | what a fixed batch would need |")
    return "\n".join(out)


QWEN3 = {
    # config.json numbers of the public Qwen3 checkpoints (Qwen/Qwen3-1.7B, Qwen/Qwen3-8B), for the README plan
    "Qwen3-1.7B": {"num_hidden_layers": 28, "hidden_size": 2048, "intermediate_size": 6144, "num_attention_heads": 16,
                   "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True},
    "Qwen3-8B": {"num_hidden_layers": 36, "hidden_size": 4096, "intermediate_size": 12288, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": False},
}


def main() -> None:  # python -m gradalign.memory [T] [device GiB]
    import sys

    T = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
    gib = float(sys.argv[2]) if len(sys.argv) > 2 else 80.0
    s = ModelShape.from_config(QWEN3["Qwen3-1.7B"], "Qwen3-1.7B")
    t = ModelShape.from_config(QWEN3["Qwen3-8B"], "Qwen3-8B")
    plan = memory_plan(s, t, T=T, device_bytes=int(gib * (1 << 30)))
    print(f"Qwen3-1.7B student + Qwen3-8B teacher, bfloat16, T = {T}, one {gib:g} GiB device")
    print(format_plan(plan))


if __name__ == "__main__":
    main()
