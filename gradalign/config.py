"""Run configuration: one TOML file validated into frozen dataclasses.

Owns: the run-config schema and its defaults (`default_config_dict`), reading TOML
(`load_config`), validating plain dicts (`config_from_dict`), dotted-key overrides
(`apply_overrides`, `parse_overrides`), writing a resolved config back out (`RunConfig.to_dict`,
`RunConfig.to_toml`), the branching-selector syntax (`SelectorSpec`, `parse_selector`), the
template syntax check (`template_fields`), and the user-facing documentation of every field: it
lives once, beside the field, as ``metadata["doc"]`` (`_doc`), and `explain_config` renders it
(`gradalign config --explain`, README's "Config reference").

Does NOT own anything that needs files or models: whether a task file or bundled task exists,
whether a model path / HF id / GGUF file resolves, whether a `python:module:function` grader
imports, or whether a task's rows carry the fields a template needs (`tasks` checks rows with
`template_fields`, run by preflight). Validation here is shape, type and range only.

Every validation failure is a `ConfigError` whose message is one line,
``"{source}: {field}: {problem}; {fix}"``, e.g.
``demo.toml: sampling.temprature: unknown key; did you mean 'temperature'?``.
Settings that are legal but bias the diagnosis (top_p < 1, top_k > 0, one continuation per
candidate) are logged as warnings and listed by `config_warnings`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import string
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gradalign.errors import GradalignError

logger = logging.getLogger(__name__)

LOSSES: tuple[str, ...] = ("reverse_kl", "forward_kl", "jsd", "sampled_token")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "auto")
BACKENDS: tuple[str, ...] = ("hf", "vllm")
EXECUTORS: tuple[str, ...] = ("local", "ray")
ALLOCATIONS: tuple[str, ...] = ("equal", "pilot")  # branching.allocation
UNCERTAINTY_RULES: tuple[str, ...] = ("hierarchical", "bootstrap")  # branching.uncertainty
BUILTIN_GRADERS: tuple[str, ...] = ("exact", "numeric", "math-verify")
SPACES: tuple[str, ...] = ("logit", "params")  # where cosines are taken (alignment.space)
PARAM_METHODS: tuple[str, ...] = ("exact", "sketch")
SELECTOR_FORMS: tuple[str, ...] = ("every", "stride:S", "logspace", "refine", "entropy")
SECTIONS: tuple[str, ...] = ("run", "task", "student", "sampling", "branching", "distill", "alignment", "executor",
                             "teachers")
REQUIRED_SECTIONS: tuple[str, ...] = ("task", "student", "teachers")
STUDENT_MODEL = "student"  # teacher model name meaning "the student itself"

_TEACHER_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_DEVICE_RE = re.compile(r"cpu|auto|cuda(:\d+)?")
_DEVICE_MAP_RE = re.compile(r"auto|balanced|balanced_low_0|sequential")
_PY_GRADER_RE = re.compile(
    r"python:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
)
_TOML_POS_RE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


class ConfigError(GradalignError, ValueError):
    """A run-config problem, as one line: ``"{source}: {field}: {problem}; {fix}"``."""

    def __init__(self, source: str, field: str, problem: str, fix: str = "") -> None:
        self.source = source
        self.field = field
        self.problem = problem
        self.fix = fix
        msg = f"{source}: {field}: {problem}"
        if fix:
            msg += f"; {fix}"
        # One line, always: a newline inside a value or a path is shown escaped.
        super().__init__(msg.replace("\r", "\\r").replace("\n", "\\n"))

    def __reduce__(self):  # keep picklable (multiprocessing) despite the 4-argument __init__
        return (type(self), (self.source, self.field, self.problem, self.fix))


# --------------------------------------------------------------------------------------------
# Dataclasses
# --------------------------------------------------------------------------------------------


def _doc(default: Any, text: str) -> Any:
    """A dataclass field with its user-facing documentation in ``metadata["doc"]``.

    The one place a config field is documented: `explain_config` renders these texts, `gradalign
    config --explain` prints them and README's "Config reference" is generated from them. Pass
    `dataclasses.MISSING` for a field without a default. Defaults must be immutable (a tuple, a
    frozen dataclass): `_Section` reads `Field.default`, so no `default_factory`.
    """
    return field(default=default, metadata={"doc": " ".join(text.split())})


@dataclass(frozen=True)
class SelectorSpec:
    """Which nodes of a rollout get branched: every | stride:S | logspace | refine | entropy."""

    kind: str = _doc(dataclasses.MISSING, "`every`, `stride`, `logspace`, `refine` or `entropy` (see `branching.selector`).")
    stride: int | None = _doc(None, "S of `stride` (an integer >= 1); None for the other kinds.")

    def __post_init__(self) -> None:
        kinds = ("every", "stride", "logspace", "refine", "entropy")
        if self.kind not in kinds:
            raise ValueError(f"selector kind must be one of {kinds}, got {self.kind!r}")
        if self.kind == "stride":
            if type(self.stride) is not int or self.stride < 1:
                raise ValueError(f"stride selector needs an integer stride >= 1, got {self.stride!r}")
        elif self.stride is not None:
            raise ValueError(f"selector {self.kind!r} takes no stride, got {self.stride!r}")

    def __str__(self) -> str:
        return f"stride:{self.stride}" if self.kind == "stride" else self.kind


@dataclass(frozen=True)
class RunSection:
    """The `[run]` table."""

    name: str = _doc("run", """
        Label of the run, recorded in the manifest and shown in the report's run description. Any
        non-empty string without control characters; no effect on results.""")
    seed: int = _doc(0, """
        Run seed, an integer >= 0. Every random draw (rollouts, refine's value queries, residual
        first tokens, branch continuations, the vLLM engine) derives from it and stable ids
        (question id, rollout, position, token, index), never from batch order, so the same seed and
        config reproduce the same samples. Change it to draw an independent replicate.""")


@dataclass(frozen=True)
class TaskConfig:
    """The `[task]` table."""

    name: str = _doc("addition", """
        Bundled task: rows come from `data/tasks/<name>/<split>.jsonl` (or `.parquet`;
        `$GRADALIGN_DATA` moves `data/`). Exactly one of `task.name` / `task.path` is set; the
        default `"addition"` (the embedded column-by-column addition task) applies only when
        `task.path` is empty.""")
    path: str = _doc("", """
        Your own task file, `.jsonl` (one JSON object per line) or `.parquet`, used instead of a
        bundled task; `""` = use `task.name`. Setting it (in the file or with `--set task.path=...`)
        drops the default name.""")
    split: str = _doc("test", """
        Split of a bundled task: the file `<split>.jsonl` or `<split>.parquet` in its folder.
        Ignored with `task.path`.""")
    limit: int = _doc(0, """
        Questions to diagnose, counted after `task.offset`, in file order; 0 = all rows. Cost is
        linear in it: each question gets `sampling.rollouts_per_question` rollouts, each branched
        at its nodes.""")
    offset: int = _doc(0, """
        Rows skipped from the start of the file before `task.limit` applies (e.g. to diagnose a
        later slice); 0 = start at the first row.""")
    prompt: str = _doc("Q {question}\n", """
        Template over the row's fields that makes the question text: plain `{field}` placeholders
        (`{{`/`}}` for literal braces; no format specs or attribute/index access), the default needs
        a `question` field. The student sees only this; each teacher sees its `context` followed by
        this. A row lacking a field the template names is an error (checked for every selected row
        before any model loads), never an empty string. Non-empty.""")
    grader: str = _doc("exact", """
        How a completion is judged correct: `exact` (the final answer, i.e. the text after the last
        `####`, else the last `\\boxed{...}`, equals the reference answer as a string), `numeric`
        (same extraction, equal as numbers within 1e-6 relative or absolute), `math-verify`
        (symbolic equivalence; `pip install 'gradalign[math]'`) or `python:module:function` (your
        `fn(completion, row) -> bool`; 0/1 are accepted, any other result, an exception or
        `sys.exit` is an `error` verdict, counted as incorrect). Verdicts are cached by (question id,
        completion). A grader that errs or times out on more than half of its calls (judged from 32
        calls on, over the run and over each stage's batch) stops the run with one line. Every success rate, and so the ideal
        gradient, is only as good as this check.""")
    grader_timeout_s: float = _doc(5.0, """
        Seconds, > 0, one grading call may take in a worker process (`math-verify` and `python:`
        graders; `exact` and `numeric` run in-process, untimed). A call that runs over is killed,
        its worker replaced, and the completion counts as incorrect (status `timeout`). Raise it for
        slow graders rather than lose verdicts to timeouts.""")
    chat: bool = _doc(False, """
        true: render context + prompt as one user message with the student's chat template (plus
        the generation prompt), for instruction-tuned students; the tokenizer must have a chat
        template. false: plain text with the tokenizer's special tokens (e.g. BOS). Either way the
        completion is appended as token ids, never re-tokenised.""")
    id_field: str = _doc("id", """
        Row field holding the question's id, present and unique in every row. The id labels output
        rows (`question_id`), keys the grader cache and enters every seed, so changing ids changes
        the samples.""")
    answer_field: str = _doc("answer", """
        Row field holding the reference answer; every row must have it (checked when the task
        loads). The built-in graders (`exact`, `numeric`, `math-verify`) compare the completion with
        this field, never with another column; a `python:` grader gets the whole row and should
        read this field itself if it needs the reference answer.""")
    system_prompt: str = _doc("", """
        Chat only (`task.chat = true`): a system message put before the user message (context +
        prompt) for the student and every teacher, e.g. the answer format you expect; `""` = no
        system message (the chat template's own default, if it has one, applies). Plain text, not a
        template: braces are literal.""")
    chat_template_kwargs: tuple = _doc((), """
        Chat only (`task.chat = true`): extra variables for the chat template, as a TOML table, e.g.
        `{enable_thinking = false}` for Qwen3; applied for the student and every teacher. Values are
        strings, booleans, integers or floats; `{}` = none.""")
    answer_delimiter: str = _doc("", """
        The built-in graders (`exact`, `numeric`, `math-verify`) read only the final-answer section:
        the text after the LAST occurrence of this string, e.g. `"</think>"` for a reasoning model
        whose thinking must not be graded. A completion without it has no answer (verdict
        `no_answer`, reason `no_final_section`). `""` = the whole completion. `python:` graders get
        the whole completion.""")


@dataclass(frozen=True)
class ModelConfig:
    """The `[student]` table."""

    model: str = _doc("student", """
        A bundled model name (`data/models/<name>`; `"student"` is the embedded tiny addition
        student), a local Hugging Face model folder, or a hub id (`HF_HUB_OFFLINE=1` uses only the
        local cache). Every teacher must share its tokenizer.""")
    dtype: str = _doc("auto", """
        Weight and compute dtype of the student, of teachers whose `dtype` is `""`, and of the vLLM
        engine: `float32`, `bfloat16`, `float16` or `auto` (bfloat16 on a CUDA device, float32 on
        CPU). float32 is exact; half precision halves memory and speeds scoring at the cost of
        noisier log-probs, hence noisier divergences and gradients (token statistics are computed
        in float32 from the model's logits either way).""")
    device: str = _doc("cpu", """
        `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available, else CPU). Teachers load on the same
        device unless their own `device` says otherwise.""")
    gguf_file: str = _doc("", """
        File name of a GGUF checkpoint inside `student.model` (folder or hub repo), dequantised by
        transformers on load (needs the `real` extra); `""` = the usual safetensors/bin weights. For
        the vLLM backend the dequantised model is written once as a folder under
        `$GRADALIGN_CACHE`.""")
    revision: str = _doc("", """
        Hub revision (branch, tag or commit) of a hub-id student; `""` = the default branch. It is
        part of the model hash in the manifest: pin a commit for a reproducible run.""")
    device_map: str = _doc("", """
        transformers `device_map` for the student (`auto`, `balanced`, `balanced_low_0` or
        `sequential`: layers spread over the visible GPUs by accelerate); `""` = the whole model on
        `device`. Overrides `device` for placement; scoring then runs where the layers are.""")
    tensor_parallel_size: int = _doc(1, """
        vLLM only: GPUs the student's sampling engine shards over (vLLM `tensor_parallel_size`),
        integer >= 1. Ignored by the hf backend.""")
    max_model_len: int = _doc(0, """
        vLLM only: the engine's context length (prompt + completion), integer >= 0; 0 = the
        model's own maximum. A smaller value shrinks the KV cache vLLM reserves (16k instead of a
        128k default, for example).""")


@dataclass(frozen=True)
class SamplingConfig:
    """The `[sampling]` table."""

    backend: str = _doc("hf", """
        `hf`: transformers `generate` with counter-based Gumbel noise, so each sequence depends only
        on its seed, never on its batch. `vllm`: vLLM's offline engine (`pip install
        'gradalign[vllm]'`, for GPU runs), one seeded request per continuation with prefix caching.
        Scoring always uses transformers.""")
    rollouts_per_question: int = _doc(4, """
        N, the student rollouts sampled per question, each graded and then branched at its nodes.
        Integer >= 1; cost is linear in it. More rollouts cover more of the student's correct and
        incorrect behaviour.""")
    max_new_tokens: int = _doc(128, """
        L, the cap on a rollout's new tokens, integer >= 1. A continuation branched at position t
        may add only L - t - 1 tokens (the limit its rollout faced). A rollout or continuation cut by
        the cap counts as a failure, so a cap too low biases success estimates down. Prompt + L
        must fit the student's positions (checked before loading weights).""")
    temperature: float = _doc(1.0, """
        Softmax temperature tau > 0, used for sampling and for scoring: student and teacher
        distributions are softmax(logits / tau) in every divergence and gradient. 1 = the models'
        own distributions; other values diagnose a tempered policy.""")
    top_p: float = _doc(1.0, """
        Nucleus truncation of sampling, in (0, 1]; 1 = none. Below 1, success estimates are for the
        truncated policy, not the student's own (a warning is logged); scoring is never
        truncated.""")
    top_k: int = _doc(0, """
        Top-k truncation of sampling, integer >= 0; 0 = none. Any k > 0 biases success estimates as
        `top_p` < 1 does (a warning is logged).""")
    batch_size: int = _doc(0, """
        `hf` backend: sequences per `generate` batch (prompts sorted by length to limit padding),
        integer >= 0; 0 = chosen per batch from `memory_gib` and the student's KV-cache size (at
        most 64 on CPU, 256 on CUDA). Speed and memory only: samples do not depend on batching.
        Ignored by `vllm`.""")
    vllm_memory_fraction: float = _doc(0.0, """
        vLLM only: share of the accelerator's memory its engine may take (weights + KV cache), in
        [0, 1). 0 = auto: half of what is free once the transformers student and teachers are
        loaded, so teacher scoring keeps room beside the engine. Ignored by the hf backend and on
        CPU.""")
    vllm_eager: bool = _doc(False, """
        vLLM only: skip torch.compile / CUDA graphs. Halves engine start-up on CPU (25 s vs 50 s for
        a one-layer test model, measured once on 2 shared cores) at some decode speed; worth it for
        small runs and tests, not for long GPU runs.""")
    memory_gib: float = _doc(0.0, """
        `hf` backend with `batch_size = 0`: the memory, in GiB, a sampling batch may take on the
        student's device (KV cache over prompt + allowance, and the decode step's [batch, V]
        temporaries: `gradalign.memory.sampling_batch_size`). 0 = auto: half of the free CUDA memory
        once the models are loaded, 4 GiB on CPU. Number >= 0.""")
    eos_token_ids: tuple[int, ...] = _doc((), """
        Extra token ids that end a completion, besides the tokenizer's EOS and every id in the
        model's `generation_config.eos_token_id` (Qwen3 ends a chat turn with `<|im_end|>`, others
        with `<|eot_id|>`: all of them are honoured automatically). A completion stops at the first
        of any of them, under both backends, and the stop token is not part of it. Array of
        integers >= 0; `[]` = only the automatic ones.""")


@dataclass(frozen=True)
class BranchingConfig:
    """The `[branching]` table."""

    selector: SelectorSpec = _doc(SelectorSpec("logspace"), """
        Which rollout positions (nodes) are branched. `every`: all T positions (T^2 continuation
        tokens). `stride:S`: positions 0, S, 2S, ... and the last. `logspace`: windows of length 1,
        1, 2, 4, 8, ... back from the end with `nodes_per_window` nodes each (O(k log T) nodes for
        O(kT) tokens; dense near the answer, sparse early). `refine`: bisects towards decisive
        tokens with value queries, then branches the `refine_nodes` best. `entropy`: the
        `refine_nodes` positions where the student's next-token entropy is highest (its hesitations:
        the decisions of a chain wherever they sit; one extra student forward per rollout).""")
    continuations: int = _doc(8, """
        M, continuations sampled to the end and graded per candidate token at a node (and for the
        residual bucket); a candidate's success rate is successes / M. Integer >= 1; cost is linear
        in it, and a rate's 95% interval is about 1.96/sqrt(M) wide at 50%. The split-half
        aggregate splits the M into two halves, so M = 1 leaves it unavailable (a warning is logged).""")
    top_k: int = _doc(3, """
        Candidate tokens per source: the student's top-k and each teacher config's top-k join the
        sampled token. Integer >= 0; 0 = the sampled token only (plus `coverage`). Each candidate
        costs M continuations; tokens outside the candidates share the residual bucket's pooled
        estimate, so a small k leans on it.""")
    coverage: float = _doc(0.0, """
        Extra candidates: the student's tokens by descending probability until the candidates hold
        this much of its probability mass, in [0, 1); 0 = off. Capped by `max_candidates`; counted
        by the budget like every candidate.""")
    max_candidates: int = _doc(16, """
        Cap on the candidate tokens per node, residual bucket not counted, integer >= 1. When it
        bites, the sampled token comes first, then the student's top-k, the teachers' top-k in
        config order, and coverage tokens last.""")
    residual: bool = _doc(True, """
        Estimate the tokens outside the candidates too: draw M first tokens from the student's
        distribution restricted to them, continue each once, and give every such token that pooled
        success rate (M more continuations per node). false: they get success 0, which biases the
        ideal gradient in proportion to the student's mass outside the candidates.""")
    residual_min_mass: float = _doc(1e-3, """
        Student probability mass outside the candidates below which the residual bucket is skipped
        and those tokens get success 0 (a bias bounded by this mass), in [0, 1]. Saves M
        continuations at nodes whose candidates already hold nearly all the mass; 0 = never skip it
        (when `residual` is true).""")
    budget_tokens: int = _doc(0, """
        Per-rollout cap on continuation tokens, integer >= 0; 0 = unlimited. Counted by the
        selectors' cost model at the true length cap: a continuation from node t costs
        `sampling.max_new_tokens` - t - 1 tokens (a value query - t; at least 1), a branched node its
        actual candidates (+ the residual bucket when drawn) x M continuations, refine's value
        queries included. Nodes that do not fit are dropped, earliest (most expensive) first (refine:
        lowest ranked first); the log, `diagnose`'s summary and the manifest's `selection` (`asked`,
        `nodes`, `dropped`) say when a rollout kept fewer nodes than asked. Must fit one node of one
        candidate (checked before loading weights). Adaptive extra continuations are not counted.""")
    budget_continuations: int = _doc(0, """
        Per-rollout cap on continuations, integer >= 0; 0 = unlimited. Same accounting and dropping
        as `budget_tokens`, counting continuations instead of tokens.""")
    nodes_per_window: int = _doc(2, """
        `logspace` and `refine`: k, the nodes kept per logspace window (a window no longer than k
        keeps all its positions), integer >= 1. For `refine` it also sets the anchors and how many
        intervals are bisected per round. Ignored by `every` and `stride`.""")
    value_continuations: int = _doc(4, """
        `refine` only: continuations sampled and graded per value query V(t), the on-policy success
        rate from position t. Integer >= 1; more steadies the bisection at proportional cost, paid
        from the same budget as branching.""")
    refine_nodes: int = _doc(4, """
        `refine` and `entropy`: nodes finally branched per rollout, integer >= 1: those with the
        largest estimated |V(t+1) - V(t)| (refine) or the largest student entropy (entropy).""")
    adaptive_target_width: float = _doc(0.0, """
        Adaptive M: after the first M continuations, each candidate (not the residual bucket) whose
        Wilson 95% interval is wider than this gets more, over up to 8 extra rounds, until it is
        narrow enough or has `adaptive_max`. A width in success-rate units, >= 0; 0 = off (fixed M).
        Spends continuations where estimates are uncertain; not counted by the budget.""")
    adaptive_max: int = _doc(32, """
        Adaptive M only: the most continuations one candidate may get, an integer >= `continuations`
        (checked when `adaptive_target_width` > 0), so adaptive M costs at most adaptive_max /
        continuations times fixed M.""")
    bootstrap_replicates: int = _doc(200, """
        B, replicates of each node's success vector (drawn by the `uncertainty` rule) behind every
        alignment row's `cos_se`, `cos_low`/`cos_high`, `resolved` and `snr_ideal` (and
        `cos_params_se`). Integer >= 2; costs no continuations, only B x (candidates + 1)
        arithmetic per node and config x loss.""")
    uncertainty: str = _doc("hierarchical", """
        How the replicates behind each row's interval are drawn. `hierarchical`: posterior draws
        of a beta-binomial model across the node's slots (every next token's success rate comes
        from one node-level population whose mean and spread the node's slots estimate), so a slot
        with one or two continuations is pulled toward the others instead of reading as a rate of
        0 or 1; paired across slots under `common_random_numbers`. `bootstrap`: a Bayesian
        bootstrap of each slot's own continuations. Either way an EOS candidate (the finished
        completion, graded again) holds its rate exactly. Interval coverage of the exact cosine
        (bench/RESULTS.md): hierarchical 0.95-0.96 on the tiny exact world and 0.84 on the
        long-horizon one, bootstrap 0.88-0.95 and 0.73. Neither changes `cos` itself (the plug-in
        cosine of the observed rates).""")
    common_random_numbers: bool = _doc(True, """
        Common random numbers: continuation m of every candidate (and of the residual bucket) at a
        node shares one noise stream (its seed does not depend on the first token), so S_k - V is
        estimated from positively correlated outcomes. Each S_k stays an unbiased proportion; the
        bootstrap resamples the candidates' continuations in pairs to account for the correlation.
        false: every continuation has its own stream (the behaviour before issue 11).""")
    allocation: str = _doc("equal", """
        How a node's (candidates + 1) x M continuations are split across its slots. `equal`: M
        each. `pilot`: `allocation_floor` each first, then the rest in proportion to p_k x sd_k
        (student probability times the pilot's binomial sd; the residual bucket weighs its mass, an
        EOS candidate nothing: graded without sampling, it is exact),
        since the error of g*_k = p_k (S_k - V) scales with p_k. Same continuations per node.
        `equal` is the default because with `common_random_numbers` it measured better: every slot
        then has continuations 0..M-1, so all of them share their noise streams, while pilot's uneven
        counts leave a light slot paired on its few indices only (bench/bench_precision.py, M = 8:
        mean abs(cos - exact) 0.273 vs 0.310 over every row, 0.298 vs 0.330 over the rows with a
        cosine; resolved rows with the wrong sign 8% vs 24%).""")
    allocation_floor: int = _doc(2, """
        `allocation = "pilot"` or `node_rounds` > 0 only: continuations every slot gets in the first
        round (and at least keeps), an integer >= 1; capped by `continuations`.""")
    node_rounds: int = _doc(0, """
        Allocation across nodes: after the first round, this many sequential rounds spend a pool of
        continuations held back from every node of the shard where the cosine is still unresolved
        and the signal large (`gradalign.pipeline.rounds` says how nodes are scored), and within a
        node by `allocation` (equal counts per slot, or the pilot rule p_k x sd_k). Integer >= 0;
        0 = off. Same continuations per shard as off, but moved between nodes and rollouts of a
        shard, so `budget_continuations` holds only summed over the shard (`budget_tokens` and
        adaptive M cannot be combined with it). S_k stays unbiased (exact-enumeration tests), but
        `resolved` becomes a sequential test: a node that reads resolved early keeps its verdict
        while unresolved ones get more looks, so its 95% is no longer exact. On the long-horizon
        exact world (bench/RESULTS.md) it did not cut the cosine's error at equal continuations
        (0.275-0.278 vs 0.273 with 2 rounds), hence off.""")
    node_share: float = _doc(0.25, """
        `node_rounds` > 0 only: the share of each node's (candidates + 1) x M continuations held
        back from its first round and pooled across the shard's nodes for the rounds, in (0, 1); a
        node always keeps `allocation_floor` per slot.""")
    residual_per_token: bool = _doc(True, """
        Stop pooling what was observed: every token drawn for the residual bucket gets the success
        rate of its own draws (as if it were a candidate), and only the tokens never drawn share
        the pooled residual rate. No extra continuations; false: all tokens outside the candidates
        share the pooled rate (which can average a decisive rare token with harmless ones).""")
    eos_node: bool = _doc(False, """
        Branch the stop decision: for a rollout that ended with EOS (not one cut by
        `sampling.max_new_tokens`), position T (the node prompt + the whole completion, where the
        student sampled EOS) becomes a node the selectors may choose (`every` and `stride` include
        it, it is `logspace`'s last window, `refine` bisects up to it, `entropy` ranks it by the
        student's entropy there), with candidates the EOS the rollout sampled (source `sampled`)
        plus the usual top-k, so "stop here" is compared with "write one more token". An EOS
        candidate is graded as the finished completion without sampling. The tokens table gains the
        EOS's row (position T = rollouts.n_tokens) for every such rollout. Off by default: it adds a
        node and a tokens row per finished rollout, so every position-keyed consumer (e.g. `gradalign
        weights`, one weight per row) sees the EOS, which older runs never had.""")


@dataclass(frozen=True)
class DistillConfig:
    """The `[distill]` table."""

    losses: tuple[str, ...] = _doc(LOSSES, """
        Losses whose per-token descent direction is compared with the ideal gradient: a non-empty,
        duplicate-free array of `reverse_kl`, `forward_kl`, `jsd` and `sampled_token` (the
        on-policy surrogate with advantage log q(y) - log p(y) of the sampled token). Each adds one
        alignment row per node and teacher config; cheap beside sampling.""")
    jsd_beta: float = _doc(0.5, """
        beta of the generalized Jensen-Shannon divergence (TRL GKD convention), in [0, 1]: 0 =
        KL(teacher || student), 1 = KL(student || teacher), 0.5 = symmetric. Used by the `jsd` loss
        and the tokens table's `jsd` column only.""")
    teacher_temperature: float = _doc(0.0, """
        Softmax temperature of the teachers' distributions: q = softmax(teacher logits / this) in
        every divergence, gradient and tokens-table column. 0 = the student's
        `sampling.temperature` (the student's p is always at that temperature, the policy that
        samples). Set it, > 0, to diagnose distillation towards a sharpened or flattened teacher.""")


@dataclass(frozen=True)
class ExecutorConfig:
    """The `[executor]` table: how shards are run. Not part of the config fingerprint, so a run
    started with one executor resumes with another (`--resume`)."""

    kind: str = _doc("local", """
        `local`: every shard in this process, one after another. `ray`: whole shards on Ray actors
        (`pip install 'gradalign[ray]'`), each loading the student, teachers and sampler once; the
        driver writes each shard as it returns and the manifest last. Same tables either way (same
        config and seed); `--executor` on the command line overrides it.""")
    address: str = _doc("", """
        Ray only: the cluster to join, e.g. `auto` (the cluster `ray start --head` started on this
        machine) or `ray://HOST:10001`; `""` = start a private Ray instance on this machine for the
        run (or use the one this Python process already initialised).""")
    workers: int = _doc(0, """
        Ray only: actors to start, integer >= 0; 0 = as many as the cluster's CPUs and GPUs allow
        with `num_cpus` / `num_gpus` each, never more than the shards left to compute.""")
    num_cpus: float = _doc(1.0, """
        Ray only: CPUs reserved per actor, > 0 (Ray also sets the actor's thread count from it).""")
    num_gpus: float = _doc(0.0, """
        Ray only: GPUs reserved per actor, >= 0; 0 = none on `student.device = "cpu"`, else one per
        actor, or the model config's vLLM `tensor_parallel_size` when that field is set and larger.
        A fraction (e.g. 0.5) packs several small-model actors onto one GPU.""")
    max_retries: int = _doc(3, """
        Ray only: restarts of a worker that dies (killed, out of memory, node lost) and retries of
        the shard it was running, integer >= 0. A shard whose worker is gone for good goes to
        another worker; shards already written are never recomputed.""")


@dataclass(frozen=True)
class AlignmentConfig:
    """The `[alignment]` table: where the ideal gradient and the distillation directions are compared."""

    space: tuple[str, ...] = _doc(("logit",), """
        `["logit"]`: cosines over the node's logits (the `cos` columns; always computed). Add
        `"params"` for the cosine of the parameter-space vectors J^T g* and J^T d the optimiser sees
        (`cos_params` columns; J = d logits / d parameters over `scope`), at the cost of one student
        forward and batched backward passes per rollout (`exact`) or k forward-mode passes (`sketch`).""")
    scope: str = _doc("all", """
        Parameters of the student that J covers: `all`; `lm_head` (equals the logit cosine);
        `last_blocks:N` (the last N decoder blocks, the final norm and the head); `no_embeddings`;
        or comma-separated glob patterns over parameter names, `!` excluding (e.g.
        `"model.layers.2*,lm_head.weight"`). A tied head and input embedding are two names of one
        tensor: selecting both adds their gradients. Used with `"params"` only.""")
    method: str = _doc("exact", """
        `exact`: the Gram matrix of the node's vectors from batched backward passes (never a full
        per-node gradient held); `sketch`: k seeded random parameter tangents and forward-mode
        products, a cosine with standard error about (1 - c^2)/sqrt(k) (`cos_params_sketch_se`).""")
    k: int = _doc(64, """
        Random tangents of the `sketch` method (an integer >= 1); its standard error falls as
        1/sqrt(k), its cost grows as k forward-mode passes per rollout.""")
    memory_mb: int = _doc(256, """
        Memory budget (MiB): of the per-vector module gradients one batched backward of the `exact`
        method holds (more nodes per backward when larger; a node is never split), and of the
        parameter-sized tangents the `sketch` method keeps in flight (at least one, at most 8).""")


@dataclass(frozen=True)
class TeacherConfig:
    """One `[[teachers]]` table."""

    name: str = _doc("self-solution", """
        The config's label in every output table (`config` column) and report; unique across
        teachers; letters, digits, `_`, `.` and `-` only.""")
    model: str = _doc(STUDENT_MODEL, """
        `"student"`: the student itself, i.e. self-distillation, usually with a privileged
        `context`. Else a bundled name, a local folder or a hub id, as `student.model`. It must share
        the student's tokenizer (vocabulary, ids, EOS); loaded on `student.device`, once per (model,
        gguf_file, dtype).""")
    context: str = _doc("Reference solution: {solution}\n", """
        Template over the row's fields (plain `{field}` placeholders, as `task.prompt`), prepended to
        the prompt for this teacher only (the student never sees it); `""` = the plain prompt. A row lacking a field it names is an
        error, never an empty string; the default needs a `solution` field.""")
    dtype: str = _doc("", """
        `""` = the student's dtype; else `float32`, `bfloat16` or `float16`.""")
    gguf_file: str = _doc("", """
        GGUF file name inside this teacher's `model`, as `student.gguf_file`; `""` = the usual
        weights.""")
    device: str = _doc("", """
        `""` = the student's device; else `cpu`, `cuda`, `cuda:N` or `auto`, as `student.device`
        (e.g. an 8B teacher on a second GPU). Its distributions move to the student's device for the
        divergences, a chunk of positions at a time.""")
    device_map: str = _doc("", """
        transformers `device_map` for this teacher (`auto`, `balanced`, `balanced_low_0`,
        `sequential`), as `student.device_map`; `""` = the whole model on `device`.""")

    @property
    def is_student(self) -> bool:
        """True when the teacher is the student model itself (self-distillation with a context)."""
        return self.model == STUDENT_MODEL


@dataclass(frozen=True)
class RunConfig:
    """A validated run config: one frozen dataclass per TOML section."""

    run: RunSection = _doc(dataclasses.MISSING, "The run's label and seed. Optional.")
    task: TaskConfig = _doc(dataclasses.MISSING, "Which questions, how they are prompted and graded. Required.")
    student: ModelConfig = _doc(dataclasses.MISSING, """
        The model whose rollouts are diagnosed. Required (an empty table takes every default).""")
    sampling: SamplingConfig = _doc(dataclasses.MISSING, """
        How rollouts and continuations are drawn from the student. Optional.""")
    branching: BranchingConfig = _doc(dataclasses.MISSING, """
        Which nodes are branched, which tokens get their own success estimate and how many
        continuations each gets: the cost and the variance of the diagnosis. Optional.""")
    distill: DistillConfig = _doc(dataclasses.MISSING, """
        Which distillation losses are compared with the ideal gradient. Optional.""")
    teachers: tuple[TeacherConfig, ...] = _doc(dataclasses.MISSING, """
        One `[[teachers]]` table per teacher/context config to diagnose. Required, at least
        one.""")
    alignment: AlignmentConfig = _doc(AlignmentConfig(), """
        Where cosines are taken: logit space (default) and, optionally, the student's parameter
        space. Optional.""")
    executor: ExecutorConfig = _doc(ExecutorConfig(), """
        How shards are run: in this process or on a Ray cluster. Optional; no effect on results and
        left out of the config fingerprint.""")
    source: str = field(default="<dict>", compare=False, metadata={"doc": (
        "Where the config came from (file path or `<dict>`); not a TOML key, not part of equality or hashing.")})

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict in the TOML schema; `config_from_dict(c.to_dict()) == c`."""
        out: dict[str, Any] = {}
        for name in SECTIONS[:-1]:
            section = dataclasses.asdict(getattr(self, name))
            for key, value in section.items():
                if isinstance(value, tuple):
                    section[key] = list(value)
            out[name] = section
        out["branching"]["selector"] = str(self.branching.selector)
        out["task"]["chat_template_kwargs"] = dict(self.task.chat_template_kwargs)
        out["teachers"] = [dataclasses.asdict(t) for t in self.teachers]
        return out

    def to_toml(self) -> str:
        """The resolved config as TOML text (`tomllib.loads` of it gives back `to_dict()`)."""
        d = self.to_dict()
        lines: list[str] = []
        for name in SECTIONS[:-1]:
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in d[name].items()]
            lines.append("")
        for teacher in d["teachers"]:
            lines.append("[[teachers]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in teacher.items()]
            lines.append("")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def default_config_dict() -> dict[str, Any]:
    """The defaults as a nested dict (a complete, valid config: one self-solution teacher)."""
    return RunConfig(
        run=RunSection(),
        task=TaskConfig(),
        student=ModelConfig(),
        sampling=SamplingConfig(),
        branching=BranchingConfig(),
        distill=DistillConfig(),
        teachers=(TeacherConfig(),),
        alignment=AlignmentConfig(),
        executor=ExecutorConfig(),
    ).to_dict()


def parse_selector(text: str) -> SelectorSpec:
    """Parse a selector string ("every", "stride:S", "logspace", "refine", "entropy"); ValueError if bad."""
    forms = ", ".join(repr(f) for f in SELECTOR_FORMS)
    if not isinstance(text, str):
        raise ValueError(f"must be a string, one of {forms}, got {_show(text)}")
    if text in ("every", "logspace", "refine", "entropy"):
        return SelectorSpec(text)
    m = re.fullmatch(r"stride:(\d+)", text)
    if m and int(m.group(1)) >= 1:
        return SelectorSpec("stride", int(m.group(1)))
    raise ValueError(f"invalid selector {text!r}; valid forms: {forms} (S an integer >= 1)")


def template_fields(template: str) -> tuple[str, ...]:
    """Row field names a str.format template needs, in first-use order, without duplicates.

    ``"Q {question} {answer!r}"`` -> ``("question", "answer")``. Only plain ``{field}`` (with an
    optional ``!r``/``!s``/``!a`` conversion): raises ValueError for bad braces, positional fields
    (``{}``, ``{0}``), a bad conversion, and format specs or attribute/index access
    (``{question:d}``, ``{question.x}``, ``{question[0]}``), which depend on a row value's type and
    would fail only when a row is rendered.
    """
    names: list[str] = []
    _collect_fields(template, names)
    return tuple(dict.fromkeys(names))


def parse_overrides(items: Iterable[str]) -> dict[str, object]:
    """Turn CLI ``key=value`` strings into an overrides dict for `apply_overrides`.

    The value is read as a TOML value when it parses (``3``, ``0.5``, ``true``, ``["jsd"]``,
    ``"quoted"``) and taken as a bare string otherwise (``task.name=addition``).
    """
    out: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("overrides", item, "expected KEY=VALUE", "e.g. sampling.temperature=0.7")
        text = text.strip()
        try:
            value: object = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out[key] = value
    return out


def config_warnings(cfg: RunConfig) -> tuple[str, ...]:
    """Legal settings that bias or weaken the diagnosis, one line each (also logged on load)."""
    out: list[str] = []
    if cfg.sampling.top_p < 1.0:
        out.append(
            f"sampling.top_p = {cfg.sampling.top_p} < 1 truncates the student's distribution: "
            "success estimates are for the truncated policy, not the student's own"
        )
    if cfg.sampling.top_k > 0:
        out.append(
            f"sampling.top_k = {cfg.sampling.top_k} > 0 truncates the student's distribution: "
            "success estimates are for the truncated policy, not the student's own"
        )
    if cfg.branching.continuations == 1:
        out.append(
            "branching.continuations = 1: the split-half aggregate (analysis.split_half_alignment) "
            "needs >= 2 continuations per candidate and will be unavailable"
        )
    return tuple(out)


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a TOML run config; any problem is a one-line ConfigError."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError(source, "<file>", "config file not found", "check the path") from None
    except IsADirectoryError:
        raise ConfigError(source, "<file>", "is a directory, not a TOML file", "pass the .toml file") from None
    except OSError as exc:
        raise ConfigError(source, "<file>", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "<file>", f"not valid UTF-8 ({exc.reason} at byte {exc.start})",
                          "save the file as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _TOML_POS_RE.search(msg)
        if m and m.group(1):
            line, where = m.group(1), f" (column {m.group(2)})"
        else:
            line, where = str(max(1, len(text.splitlines()))), " (at end of file)" if m else ""
        problem = (msg[: m.start()] if m else msg) + where
        raise ConfigError(f"{source}:{line}", "<toml>", f"invalid TOML: {problem}",
                          "fix the TOML syntax on that line") from None
    return config_from_dict(data, source=source)


def config_from_dict(d: Mapping[str, Any], source: str = "<dict>") -> RunConfig:
    """Validate a nested dict (the TOML schema) into a RunConfig; warnings are logged."""
    if not isinstance(d, Mapping):
        raise ConfigError(source, "<root>", f"must be a table of sections, got {_show(d)}")
    for key in d:
        if key not in SECTIONS:
            raise ConfigError(source, str(key), "unknown section", _suggest(str(key), SECTIONS))
    for name in REQUIRED_SECTIONS:
        if name not in d:
            example = "[[teachers]]" if name == "teachers" else f"[{name}]"
            raise ConfigError(source, name, "missing required section", f"add a {example} table")
    cfg = RunConfig(
        run=_parse_run(_Section(source, "run", d.get("run", {}), RunSection)),
        task=_parse_task(_Section(source, "task", d["task"], TaskConfig)),
        student=_parse_student(_Section(source, "student", d["student"], ModelConfig)),
        sampling=_parse_sampling(_Section(source, "sampling", d.get("sampling", {}), SamplingConfig)),
        branching=_parse_branching(_Section(source, "branching", d.get("branching", {}), BranchingConfig)),
        distill=_parse_distill(_Section(source, "distill", d.get("distill", {}), DistillConfig)),
        teachers=_parse_teachers(source, d["teachers"]),
        alignment=_parse_alignment(_Section(source, "alignment", d.get("alignment", {}), AlignmentConfig)),
        executor=_parse_executor(_Section(source, "executor", d.get("executor", {}), ExecutorConfig)),
        source=source,
    )
    for warning in config_warnings(cfg):
        logger.warning("%s: %s", source, warning)
    return cfg


def apply_overrides(cfg: RunConfig, overrides: Mapping[str, object]) -> RunConfig:
    """Return `cfg` with dotted-key overrides applied and the result re-validated.

    Keys are ``section.key`` (``"task.limit"``) or ``teachers[i].key`` / ``teachers.i.key``.
    Setting ``task.path`` without ``task.name`` clears ``task.name`` (and vice versa), so a
    path override replaces a bundled task instead of tripping the exactly-one-of check.
    Errors name the source ``overrides``.
    """
    src = "overrides"
    d = cfg.to_dict()
    for dotted, value in overrides.items():
        section, index, key = _split_override_key(src, dotted)
        if section == "teachers":
            teachers = d["teachers"]
            if index is None:
                raise ConfigError(src, dotted, "teacher overrides need an index",
                                  "use teachers[0].KEY (or teachers.0.KEY)")
            if index >= len(teachers):
                raise ConfigError(src, dotted, f"no teacher at index {index} ({len(teachers)} defined)",
                                  f"use an index in 0..{len(teachers) - 1}")
            table, valid = teachers[index], _field_names(TeacherConfig)
        else:
            if index is not None:
                raise ConfigError(src, dotted, f"section {section!r} is not an array",
                                  f"use {section}.KEY")
            table, valid = d[section], _field_names(_SECTION_CLASSES[section])
        if key not in valid:
            raise ConfigError(src, dotted, "unknown key", _suggest_key(key, section, valid))
        table[key] = list(value) if isinstance(value, tuple) else value
    for mine, other in (("path", "name"), ("name", "path")):
        if f"task.{mine}" in overrides and f"task.{other}" not in overrides and overrides[f"task.{mine}"]:
            d["task"][other] = ""
    new = config_from_dict(d, source=src)
    return dataclasses.replace(new, source=cfg.source)


EXPLAIN_FORMATS: tuple[str, ...] = ("text", "markdown")


def explain_config(fmt: str = "text") -> str:
    """Every section and field of the run config: dotted name, TOML type, default and its doc.

    `fmt` is ``"text"`` (terminal, wrapped at 100 columns) or ``"markdown"`` (README's "Config
    reference" is exactly this output). The docs are the fields' ``metadata["doc"]``.
    """
    if fmt not in EXPLAIN_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose {' or '.join(EXPLAIN_FORMATS)}")
    import textwrap

    def wrap(text: str, indent: str) -> list[str]:
        return textwrap.wrap(text, 100, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)

    sections = {f.name: f.metadata["doc"] for f in dataclasses.fields(RunConfig) if f.name in SECTIONS}
    out: list[str] = []
    for section in SECTIONS:
        head = "[[teachers]]" if section == "teachers" else f"[{section}]"
        if fmt == "markdown":
            out += [f"### `{head}`", "", sections[section], ""]
        else:
            out += [head] + wrap(sections[section], "  ")
        for f in dataclasses.fields(_SECTION_CLASSES[section]):
            name = f"teachers[i].{f.name}" if section == "teachers" else f"{section}.{f.name}"
            kind = _TOML_TYPES[str(f.type)]
            default = _toml_value(_default_as_toml(f))
            if fmt == "markdown":
                out.append(f"- `{name}` ({kind}, default `{default}`): {f.metadata['doc']}")
            else:
                out.append(f"  {name}  ({kind}, default {default})")
                out += wrap(f.metadata["doc"], "      ")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def init_config_text() -> str:
    """A complete run config as TOML text: every section and key at its default, each key preceded by
    its documentation as `#` comments (the same field docs `explain_config` renders, so it cannot
    drift). `load_config` of it equals `config_from_dict(default_config_dict())`; `gradalign init`
    writes it."""
    import textwrap

    def comment(text: str) -> list[str]:
        return textwrap.wrap(text, 98, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)

    defaults = default_config_dict()
    sections = {f.name: f.metadata["doc"] for f in dataclasses.fields(RunConfig) if f.name in SECTIONS}
    out = ["# gradalign run config: every key at its default, documented.",
           "# Edit what you need; `gradalign config --explain` prints these docs, `gradalign validate FILE` checks a config.", ""]
    for section in SECTIONS:
        head = "[[teachers]]" if section == "teachers" else f"[{section}]"
        values = defaults["teachers"][0] if section == "teachers" else defaults[section]
        out += comment(sections[section]) + [head]
        for f in dataclasses.fields(_SECTION_CLASSES[section]):
            out += comment(f.metadata["doc"]) + [f"{f.name} = {_toml_value(values[f.name])}", ""]
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------

_SECTION_CLASSES: dict[str, type] = {
    "run": RunSection,
    "task": TaskConfig,
    "student": ModelConfig,
    "sampling": SamplingConfig,
    "branching": BranchingConfig,
    "distill": DistillConfig,
    "alignment": AlignmentConfig,
    "executor": ExecutorConfig,
    "teachers": TeacherConfig,
}


# TOML type of each annotation used by a section dataclass (a selector is written as a string).
_TOML_TYPES: dict[str, str] = {
    "str": "string", "int": "integer", "float": "float", "bool": "boolean",
    "tuple[str, ...]": "array of strings", "SelectorSpec": "string",
    "tuple[int, ...]": "array of integers", "tuple": "table",
}


def _default_as_toml(f: dataclasses.Field) -> object:
    """A field's default as its TOML value: a selector as its string, a table (`tuple` pairs) as a dict."""
    if isinstance(f.default, SelectorSpec):
        return str(f.default)
    if str(f.type) == "tuple":
        return dict(f.default)
    return f.default


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _show(value: object) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return repr(value)
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    kind = {str: "string", list: "array", tuple: "array", dict: "table"}.get(type(value), type(value).__name__)
    return f"{kind} {text}"


def _suggest(key: str, valid: Iterable[str]) -> str:
    valid = tuple(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "valid: " + ", ".join(valid)


def _suggest_key(key: str, section: str, valid: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    elsewhere = [s for s, cls in _SECTION_CLASSES.items() if s != section and key in _field_names(cls)]
    if elsewhere:
        where = f"teachers[i].{key}" if elsewhere[0] == "teachers" else f"{elsewhere[0]}.{key}"
        return f"did you mean {where!r}? ({key} is not in [{section}])"
    return f"valid keys in [{section}]: " + ", ".join(valid)


def _split_override_key(src: str, dotted: str) -> tuple[str, int | None, str]:
    if not isinstance(dotted, str):
        raise ConfigError(src, repr(dotted), "override keys must be strings", "e.g. 'task.limit'")
    m = re.fullmatch(r"([A-Za-z_]+)(?:\[(\d+)\]|\.(\d+))?\.([A-Za-z0-9_]+)", dotted)
    if not m:
        raise ConfigError(src, dotted, "not a dotted key",
                          "use SECTION.KEY (e.g. task.limit) or teachers[i].KEY")
    section, index = m.group(1), m.group(2) or m.group(3)
    if section not in SECTIONS:
        raise ConfigError(src, dotted, "unknown section", _suggest(section, SECTIONS))
    return section, (int(index) if index is not None else None), m.group(4)


def _collect_fields(template: str, names: list[str]) -> None:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad braces: {exc} (write literal braces as '{{{{' and '}}}}')") from None
    for _literal, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        base = re.match(r"[^.\[]*", field_name).group()
        if base == "" or base.isdigit():
            raise ValueError(
                f"positional field '{{{field_name}}}' cannot be filled from a row; name a row field "
                "like {question}"
            )
        if conversion not in (None, "r", "s", "a"):
            raise ValueError(f"bad conversion '!{conversion}' in '{{{field_name}}}'; use !r, !s or !a")
        if spec or field_name != base:
            shown = "{" + field_name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"{shown!r}: format specs and attribute/index access are not supported; use plain {{{base}}}")
        names.append(base)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            esc = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}
            if ch in esc:
                out.append(esc[ch])
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04X}")
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # an inline table; keys are written as quoted strings
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


class _Section:
    """Typed, range-checked reads from one table; unknown keys are rejected up front."""

    def __init__(self, source: str, prefix: str, table: object, cls: type) -> None:
        self.source, self.prefix = source, prefix
        self.defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        section = prefix.split("[")[0]
        if not isinstance(table, Mapping):
            hint = f"write [{section}] with KEY = VALUE lines" if section != "teachers" else "write [[teachers]] entries"
            raise ConfigError(source, prefix, f"must be a table, got {_show(table)}", hint)
        for key in table:
            if key not in self.defaults:
                raise ConfigError(source, f"{prefix}.{key}", "unknown key",
                                  _suggest_key(str(key), section, tuple(self.defaults)))
        self.table = table

    def error(self, key: str, problem: str, fix: str = "") -> ConfigError:
        return ConfigError(self.source, f"{self.prefix}.{key}", problem, fix)

    def has(self, key: str) -> bool:
        return key in self.table

    def get(self, key: str, default: object = dataclasses.MISSING) -> object:
        if key in self.table:
            return self.table[key]
        return self.defaults[key] if default is dataclasses.MISSING else default

    def int(self, key: str, lo: int | None = None, lo_name: str | None = None) -> int:
        v = self.get(key)
        bound = f" >= {lo_name or lo}" if lo is not None else ""
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(key, f"must be an integer{bound}, got {_show(v)}")
        if lo is not None and v < lo:
            raise self.error(key, f"must be an integer{bound}, got {v}")
        return v

    def float(self, key: str, *, gt: float | None = None, ge: float | None = None,
              le: float | None = None, lt: float | None = None) -> float:
        v = self.get(key)
        parts = [f"> {gt}" if gt is not None else "", f">= {ge}" if ge is not None else "",
                 f"<= {le}" if le is not None else "", f"< {lt}" if lt is not None else ""]
        rng = " and ".join(p for p in parts if p)
        want = f"must be a number {rng}".rstrip()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(key, f"{want}, got {_show(v)}")
        x = float(v)
        bad = (not math.isfinite(x) or (gt is not None and not x > gt) or (ge is not None and not x >= ge)
               or (le is not None and not x <= le) or (lt is not None and not x < lt))
        if bad:
            raise self.error(key, f"{want}, got {v!r}")
        return x

    def str(self, key: str, *, nonempty: bool = False, default: object = dataclasses.MISSING) -> str:
        v = self.get(key, default)
        if not isinstance(v, str):
            raise self.error(key, f"must be a string, got {_show(v)}")
        if nonempty and not v.strip():
            raise self.error(key, "must be a non-empty string")
        return v

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        v = self.get(key)
        if not isinstance(v, str) or v not in choices:
            fix = _suggest(v, choices) if isinstance(v, str) else ""
            valid = ", ".join(repr(c) for c in choices)
            raise self.error(key, f"must be one of {valid}, got {_show(v)}", fix if "did you" in fix else "")
        return v

    def bool(self, key: str) -> bool:
        v = self.get(key)
        if not isinstance(v, bool):
            raise self.error(key, f"must be true or false, got {_show(v)}")
        return v

    def template(self, key: str, *, nonempty: bool) -> str:
        v = self.str(key, nonempty=nonempty)
        try:
            template_fields(v)
        except ValueError as exc:
            raise self.error(key, f"invalid template {v!r}: {exc}") from None
        return v


def _parse_run(s: _Section) -> RunSection:
    name = s.str("name", nonempty=True)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise s.error("name", f"must not contain control characters, got {name!r}")
    return RunSection(name=name, seed=s.int("seed", lo=0))


def _parse_task(s: _Section) -> TaskConfig:
    # `name` defaults to the bundled task only when no `path` is given.
    name = s.str("name", default="" if s.has("path") else dataclasses.MISSING)
    path = s.str("path")
    if bool(name) == bool(path):
        what = "both are set" if name else "neither is set"
        raise s.error("name", f"exactly one of task.name / task.path must be set, {what}",
                      "set one and leave the other \"\" (name: a bundled task; path: a .jsonl or .parquet file)")
    if path and not path.lower().endswith((".jsonl", ".parquet")):
        raise s.error("path", f"must be a .jsonl or .parquet file, got {path!r}")
    grader = s.str("grader", nonempty=True)
    if grader not in BUILTIN_GRADERS and not _PY_GRADER_RE.fullmatch(grader):
        valid = ", ".join(repr(g) for g in BUILTIN_GRADERS)
        raise s.error("grader", f"must be one of {valid} or 'python:module:function', got {grader!r}",
                      _suggest(grader, BUILTIN_GRADERS) if not grader.startswith("python") else
                      "module is a dotted import path, function an identifier")
    return TaskConfig(
        name=name,
        path=path,
        split=s.str("split", nonempty=True),
        limit=s.int("limit", lo=0),
        offset=s.int("offset", lo=0),
        prompt=s.template("prompt", nonempty=True),
        grader=grader,
        grader_timeout_s=s.float("grader_timeout_s", gt=0),
        chat=s.bool("chat"),
        id_field=s.str("id_field", nonempty=True),
        answer_field=s.str("answer_field", nonempty=True),
        **_parse_chat_options(s),
    )


def _device(s: _Section, key: str, *, allow_empty: bool = False) -> str:
    """A device string (`cpu`, `cuda`, `cuda:N`, `auto`; `""` too when `allow_empty`)."""
    device = s.str(key, nonempty=not allow_empty)
    if (device or not allow_empty) and not _DEVICE_RE.fullmatch(device):
        empty = "'' (the student's), " if allow_empty else ""
        raise s.error(key, f"must be {empty}'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    return device


def _device_map(s: _Section) -> str:
    value = s.str("device_map")
    if value and not _DEVICE_MAP_RE.fullmatch(value):
        raise s.error("device_map", f"must be '', 'auto', 'balanced', 'balanced_low_0' or 'sequential', got {value!r}")
    return value


_TEMPLATE_KWARG_TYPES = (str, bool, int, float)


def _parse_chat_options(s: _Section) -> dict[str, Any]:
    """`task.system_prompt`, `task.chat_template_kwargs` (stored as sorted (key, value) pairs, so the
    config stays frozen and hashable) and `task.answer_delimiter`."""
    chat = s.bool("chat")
    system = s.str("system_prompt")
    raw = s.get("chat_template_kwargs")
    if isinstance(raw, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in raw):
        raw = dict(raw)  # already parsed (pairs)
    if not isinstance(raw, Mapping):
        raise s.error("chat_template_kwargs", f"must be a table, got {_show(raw)}", "e.g. {enable_thinking = false}")
    for k, v in raw.items():
        if not isinstance(v, _TEMPLATE_KWARG_TYPES) or isinstance(v, float) and not math.isfinite(v):
            raise s.error(f"chat_template_kwargs.{k}", f"must be a string, boolean, integer or float, got {_show(v)}")
    for key, value in (("system_prompt", system), ("chat_template_kwargs", raw)):
        if value and not chat:
            raise s.error(key, "is set but task.chat is false", "set task.chat = true (it applies to chat templates only)")
    return {"system_prompt": system, "chat_template_kwargs": tuple(sorted((str(k), v) for k, v in raw.items())),
            "answer_delimiter": s.str("answer_delimiter")}


def _parse_student(s: _Section) -> ModelConfig:
    return ModelConfig(
        model=s.str("model", nonempty=True),
        dtype=s.choice("dtype", DTYPES),
        device=_device(s, "device"),
        gguf_file=s.str("gguf_file"),
        revision=s.str("revision"),
        device_map=_device_map(s),
        tensor_parallel_size=s.int("tensor_parallel_size", lo=1),
        max_model_len=s.int("max_model_len", lo=0),
    )


def _parse_sampling(s: _Section) -> SamplingConfig:
    return SamplingConfig(
        backend=s.choice("backend", BACKENDS),
        rollouts_per_question=s.int("rollouts_per_question", lo=1),
        max_new_tokens=s.int("max_new_tokens", lo=1),
        temperature=s.float("temperature", gt=0),
        top_p=s.float("top_p", gt=0, le=1),
        top_k=s.int("top_k", lo=0),
        batch_size=s.int("batch_size", lo=0),
        vllm_memory_fraction=s.float("vllm_memory_fraction", ge=0, lt=1),
        vllm_eager=s.bool("vllm_eager"),
        memory_gib=s.float("memory_gib", ge=0),
        eos_token_ids=_parse_eos_ids(s),
    )


def _parse_eos_ids(s: _Section) -> tuple[int, ...]:
    raw = s.get("eos_token_ids")
    if not isinstance(raw, (list, tuple)):
        raise s.error("eos_token_ids", f"must be an array of integers >= 0, got {_show(raw)}")
    for i, v in enumerate(raw):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise s.error(f"eos_token_ids[{i}]", f"must be an integer >= 0, got {_show(v)}")
    return tuple(dict.fromkeys(raw))


def _parse_branching(s: _Section) -> BranchingConfig:
    raw = s.get("selector")
    if isinstance(raw, SelectorSpec):  # already parsed (programmatic use)
        selector = raw
    else:
        try:
            selector = parse_selector(raw)
        except ValueError as exc:
            raise s.error("selector", str(exc)) from None
    continuations = s.int("continuations", lo=1)
    adaptive_target_width = s.float("adaptive_target_width", ge=0)
    adaptive_max = s.int("adaptive_max", lo=1)
    if adaptive_target_width > 0 and adaptive_max < continuations:
        raise s.error("adaptive_max", f"must be an integer >= branching.continuations ({continuations}) "
                      f"when adaptive_target_width > 0, got {adaptive_max}")
    allocation = s.choice("allocation", ALLOCATIONS)
    node_rounds = s.int("node_rounds", lo=0)
    if node_rounds > 0 and adaptive_target_width > 0:
        raise s.error("node_rounds", "cannot be combined with branching.adaptive_target_width > 0 (adaptive M would add "
                      "continuations on top of the pooled budget)", "set node_rounds = 0 or adaptive_target_width = 0")
    if node_rounds > 0 and s.int("budget_tokens", lo=0) > 0:
        raise s.error("node_rounds", "cannot be combined with branching.budget_tokens > 0 (rounds move continuations "
                      "between nodes whose continuations differ in length)", "set node_rounds = 0 or budget_tokens = 0")
    return BranchingConfig(
        selector=selector,
        continuations=continuations,
        top_k=s.int("top_k", lo=0),
        coverage=s.float("coverage", ge=0, lt=1),
        max_candidates=s.int("max_candidates", lo=1),
        residual=s.bool("residual"),
        residual_min_mass=s.float("residual_min_mass", ge=0, le=1),
        budget_tokens=s.int("budget_tokens", lo=0),
        budget_continuations=s.int("budget_continuations", lo=0),
        nodes_per_window=s.int("nodes_per_window", lo=1),
        value_continuations=s.int("value_continuations", lo=1),
        refine_nodes=s.int("refine_nodes", lo=1),
        adaptive_target_width=adaptive_target_width,
        adaptive_max=adaptive_max,
        bootstrap_replicates=s.int("bootstrap_replicates", lo=2),
        uncertainty=s.choice("uncertainty", UNCERTAINTY_RULES),
        common_random_numbers=s.bool("common_random_numbers"),
        allocation=allocation,
        allocation_floor=s.int("allocation_floor", lo=1),
        node_rounds=node_rounds,
        node_share=s.float("node_share", gt=0, lt=1),
        residual_per_token=s.bool("residual_per_token"),
        eos_node=s.bool("eos_node"),
    )


def _parse_distill(s: _Section) -> DistillConfig:
    raw = s.get("losses")
    valid = ", ".join(repr(x) for x in LOSSES)
    if not isinstance(raw, (list, tuple)) or not raw:
        raise s.error("losses", f"must be a non-empty array of loss names, got {_show(raw)}",
                      f"valid losses: {valid}")
    seen: set[str] = set()
    for i, loss in enumerate(raw):
        if not isinstance(loss, str) or loss not in LOSSES:
            fix = _suggest(loss, LOSSES) if isinstance(loss, str) else ""
            raise s.error(f"losses[{i}]", f"unknown loss {_show(loss)}; valid losses: {valid}",
                          fix if "did you" in fix else "")
        if loss in seen:
            raise s.error(f"losses[{i}]", f"duplicate loss {loss!r}", "list each loss once")
        seen.add(loss)
    return DistillConfig(losses=tuple(raw), jsd_beta=s.float("jsd_beta", ge=0, le=1),
                         teacher_temperature=s.float("teacher_temperature", ge=0))


def _parse_executor(s: _Section) -> ExecutorConfig:
    return ExecutorConfig(
        kind=s.choice("kind", EXECUTORS),
        address=s.str("address"),
        workers=s.int("workers", lo=0),
        num_cpus=s.float("num_cpus", gt=0),
        num_gpus=s.float("num_gpus", ge=0),
        max_retries=s.int("max_retries", lo=0),
    )


def _parse_alignment(s: _Section) -> AlignmentConfig:
    raw = s.get("space")
    valid = ", ".join(repr(x) for x in SPACES)
    if not isinstance(raw, (list, tuple)) or not raw or any(x not in SPACES for x in raw) or len(set(raw)) != len(raw):
        raise s.error("space", f"must be a duplicate-free array of {valid}, got {_show(raw)}", 'e.g. ["logit", "params"]')
    if "logit" not in raw:
        raise s.error("space", f"must include 'logit' (the logit-space cosines are always computed), got {_show(raw)}")
    scope = s.str("scope", nonempty=True).strip()
    if scope.startswith("last_blocks:"):
        n = scope.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise s.error("scope", f"last_blocks:N needs an integer N >= 1, got {scope!r}")
    return AlignmentConfig(space=tuple(raw), scope=scope, method=s.choice("method", PARAM_METHODS), k=s.int("k", lo=1),
                           memory_mb=s.int("memory_mb", lo=1))


def _parse_teachers(source: str, raw: object) -> tuple[TeacherConfig, ...]:
    if isinstance(raw, Mapping):
        raise ConfigError(source, "teachers", "must be an array of tables, got a single table",
                          "write [[teachers]] (double brackets), once per teacher")
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(source, "teachers", f"must be an array of tables, got {_show(raw)}",
                          "write one [[teachers]] table per teacher")
    if not raw:
        raise ConfigError(source, "teachers", "needs at least one teacher", "add a [[teachers]] table")
    out: list[TeacherConfig] = []
    first_index: dict[str, int] = {}
    for i, table in enumerate(raw):
        s = _Section(source, f"teachers[{i}]", table, TeacherConfig)
        name = s.str("name", nonempty=True)
        if not _TEACHER_NAME_RE.fullmatch(name) or name in (".", ".."):
            raise s.error("name", f"must match [A-Za-z0-9_.-]+, got {name!r}",
                          "use letters, digits, '_', '.', '-' only")
        if name in first_index:
            raise s.error("name", f"duplicate teacher name {name!r} (also teachers[{first_index[name]}])",
                          "give each teacher a unique name")
        first_index[name] = i
        dtype = s.str("dtype")
        if dtype and dtype not in DTYPES:
            valid = ", ".join(repr(c) for c in ("",) + DTYPES)
            raise s.error("dtype", f"must be one of {valid}, got {dtype!r}", "\"\" means same as the student")
        out.append(TeacherConfig(
            name=name,
            model=s.str("model", nonempty=True),
            context=s.template("context", nonempty=False),
            dtype=dtype,
            gguf_file=s.str("gguf_file"),
            device=_device(s, "device", allow_empty=True),
            device_map=_device_map(s),
        ))
        if out[-1].is_student and (out[-1].device or out[-1].device_map):
            key = "device" if out[-1].device else "device_map"
            raise s.error(key, "a teacher with model = \"student\" is the student's own model, placed by student.device",
                          f"remove teachers[{i}].{key} or name a model")
    return tuple(out)
