"""What every pipeline stage needs, loaded once per run: `Resources`.

Owns: loading the student, each distinct teacher model (checked to share the student's
tokenizer, and to have an LM head covering its ids: `check_head_covers_tokenizer`), the rollout
sampler (`gradalign.sampling`) and the grader pool, after preflight has run every check that needs
no weights. The comparable vocabulary is the tokenizer's ids, V_tok = len(tokenizer); a model's LM
head may have more rows (V_head, padding), which scoring and the hf sampler cut off. Does not own
any stage's work, nor closing the pool and sampler (`engine.diagnose` does, when the run ends).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradalign.config import STUDENT_MODEL, RunConfig
from gradalign.sampling import Sampler, SamplingParams


@dataclass(frozen=True)
class Teacher:
    """One teacher/context config, its model loaded (the student's own model for `model = "student"`)."""

    name: str  # config name (the `config` column of the tables)
    model: object  # a transformers causal LM
    context: str  # template rendered before the prompt (privileged context)
    model_ref: str  # what the config named: "student", a bundled name, a folder or a hub id


@dataclass(frozen=True)
class Resources:
    """Loaded models and services for one run."""

    cfg: RunConfig
    task: object  # tasks.Task: rows and their ids
    student: object  # the student's transformers causal LM (scoring)
    tokenizer: object  # the shared tokenizer
    teachers: tuple[Teacher, ...]  # in config order
    grader: object  # graders.GraderPool (grade_many, stats, close)
    sampler: Sampler  # draws every continuation
    model_hashes: dict  # model ref -> content hash (manifest)
    eos_ids: tuple[int, ...] = ()  # every id that ends a completion (`models.eos_token_ids`); () = the tokenizer's EOS
    param_scope: dict = field(default_factory=dict)  # manifest record of the `cos_params` parameter scope ({}: logit only)

    @property
    def end_ids(self) -> tuple[int, ...]:
        """The ids that end a completion: `eos_ids`, or the tokenizer's EOS when that is empty. A
        continuation whose first token is one of them is the finished head, graded without sampling."""
        return self.eos_ids or (self.tokenizer.eos_token_id,)


def sampling_params(cfg: RunConfig) -> SamplingParams:
    """The sampler's parameters from the config's `sampling` section."""
    s = cfg.sampling
    return SamplingParams(s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.batch_size, int(s.memory_gib * (1 << 30)))


def load_resources(cfg: RunConfig) -> Resources:
    """Preflight, then load the student, teachers, sampler and grader. Raises `GradalignError`
    subclasses for anything the user can fix, before any model weight is read where possible."""
    from gradalign import models
    from gradalign.graders import GraderPool
    from gradalign.preflight import preflight
    from gradalign.sampling import make_sampler

    task = preflight(cfg).task  # every check that needs no weights, before any is loaded
    st = cfg.student
    sref = models.resolve(st.model, gguf_file=st.gguf_file, revision=st.revision)
    student = models.load(sref, dtype=st.dtype, device=st.device, device_map=st.device_map)
    models.check_head_covers_tokenizer(student.model, student.tokenizer, name=f"student {st.model!r}")
    param_scope: dict = {}
    if "params" in cfg.alignment.space:  # a scope that selects nothing fails here, before any rollout
        from gradalign.param_space import resolve_scope

        scope = resolve_scope(student.model, cfg.alignment.scope)
        param_scope = {"param_scope": {"spec": scope.spec, "method": cfg.alignment.method, "parameters": scope.n_params,
                                       "names": list(scope.names)}}
    hashes = {st.model: student.content_hash}
    loaded: dict[tuple, object] = {}
    teachers = []
    for t in cfg.teachers:
        if t.model == STUDENT_MODEL:
            model = student.model
        else:
            # a teacher's own dtype, else the student's setting ("auto" resolves on the teacher's device)
            device, device_map = t.device or st.device, t.device_map or ("" if t.device else st.device_map)
            key = (t.model, t.gguf_file, t.dtype or st.dtype, device, device_map)
            if key not in loaded:
                tref = models.resolve(t.model, gguf_file=t.gguf_file)
                ttok = models.load_tokenizer(tref)
                models.check_same_tokenizer(student.tokenizer, ttok, student_name=st.model, teacher_name=t.name)
                lm = models.load(tref, dtype=t.dtype or st.dtype, device=device, device_map=device_map, tokenizer=ttok)
                models.check_head_covers_tokenizer(lm.model, student.tokenizer, name=f"teacher {t.name!r} ({t.model})")
                loaded[key] = lm.model
                hashes[t.model] = lm.content_hash
            model = loaded[key]
        teachers.append(Teacher(t.name, model, t.context, t.model))
    eos_ids = models.eos_token_ids(student.tokenizer, student.model, cfg.sampling.eos_token_ids)
    sampler = make_sampler(
        cfg.sampling.backend, student=student, params=sampling_params(cfg), dtype=student.dtype, seed=cfg.run.seed,
        memory_fraction=cfg.sampling.vllm_memory_fraction, eager=cfg.sampling.vllm_eager, eos_ids=eos_ids,
        tensor_parallel_size=st.tensor_parallel_size, max_model_len=st.max_model_len,
    )
    grader = GraderPool(cfg.task.grader, timeout_s=cfg.task.grader_timeout_s, answer_field=cfg.task.answer_field,
                       answer_delimiter=cfg.task.answer_delimiter)
    return Resources(cfg, task, student.model, student.tokenizer, tuple(teachers), grader, sampler, hashes, eos_ids,
                     param_scope)
