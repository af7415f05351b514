"""vLLM-only behaviour. The integration tests both backends share (exact enumeration, determinism,
the demo, kill/resume, the SmolLM2 real-model run) take the `backend` fixture in their own modules.

Marker `vllm` (opt-in): run with `bash .ci/vllm-cpu`, which builds a CPU vLLM virtualenv."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tiny_world import make_tiny_world  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

pytestmark = pytest.mark.vllm


def test_preflight_refuses_a_head_size_vllm_cannot_run(tmp_path):
    """Head size 24 is not among vLLM's CPU attention kernels: `validate` says so in one line, before
    any engine starts (on a GPU, flash attention takes it, and validate passes)."""
    from gradalign.cli.app import app

    from gradalign.sampling.vllm import vllm_platform

    root = make_tiny_world(tmp_path / "w", hidden=48, heads=2)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[task]\npath = "{root / "task.jsonl"}"\nprompt = "{{question}}"\ngrader = "exact"\n'
        f'[student]\nmodel = "{root / "student"}"\n[sampling]\nbackend = "vllm"\n'
        '[[teachers]]\nname = "self"\nmodel = "student"\ncontext = "{hint}"\n'
    )
    r = CliRunner().invoke(app, ["validate", str(cfg)])
    if vllm_platform().on_cpu:
        assert r.exit_code == 2 and "head size 24" in r.stderr and 'sampling.backend = "hf"' in r.stderr, r.output
        assert len(r.stderr.strip().splitlines()) == 1
    else:
        assert r.exit_code == 0, r.output
