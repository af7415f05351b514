"""What determines the embedded world: `BuildConfig` (and its seconds-long `smoke()` variant).

Owns: every setting of a world build (seed, row counts, digit range, model size, step counts,
learning rate, training mixes, student selection targets, export head size). Does NOT own the
diagnosis run's config (`gradalign.config`), the build steps (`world.builder`) or runtime settings
that do not change the result's definition (torch threads, reusing the teacher-run cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradalign.world.model import ModelSize


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines the embedded world; `smoke()` gives a seconds-long variant."""

    seed: int = 0
    n_train_rows: int = 2000  # rows written to train.jsonl (training streams fresh problems)
    n_test_rows: int = 500
    digit_range: tuple[int, int] = (3, 5)
    size: ModelSize = field(default_factory=ModelSize)
    batch_size: int = 64
    lr: float = 3e-3
    teacher_steps: int = 1500
    flawed_steps: int = 300
    eval_every: int = 50
    eval_n: int = 96
    student_band: tuple[float, float] = (0.40, 0.60)
    student_solution_min: float = 0.92
    copy_force: float = 0.3  # share of solution-context examples whose reference is another problem's
    student_base_target: float = 0.45  # plain val accuracy of the checkpoint the student starts from
    student_context_steps: int = 900
    self_pool_size: int = 4096
    # Saved models get attention heads zero-padded to this size (`widen_heads`: the same function):
    # vLLM's CPU attention kernels take head sizes 32, 64, ... but not the trained 96 / 4 = 24.
    export_head_dim: int = 32
    # The student's context fine-tune: copy-forced contexts teach it to use them; "self" targets
    # (its base checkpoint's own samples on plain prompts) keep its unaided skill where it was.
    student_context_mix: tuple[tuple[str, float], ...] = (
        ("solution!", 0.45), ("summary!", 0.10), ("answer!", 0.10), ("answer", 0.05), ("self", 0.30),
    )
    # training mix over contexts (see world.arithmetic.CONTEXTS)
    mix: tuple[tuple[str, float], ...] = (
        ("none", 0.45),
        ("solution", 0.25),
        ("summary", 0.12),
        ("answer", 0.10),
        ("example", 0.08),
    )

    @staticmethod
    def smoke() -> "BuildConfig":
        return BuildConfig(
            n_train_rows=20,
            n_test_rows=10,
            size=ModelSize(hidden=32, layers=1, heads=2, ffn=64),
            batch_size=8,
            teacher_steps=6,
            flawed_steps=2,
            student_context_steps=3,
            self_pool_size=8,
            eval_every=3,
            eval_n=4,
        )
