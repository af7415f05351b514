"""Test tiers, by folder: `unit/` needs no model (pure tensors, configs, graders, fakes);
`integration/` uses tiny models built in tmp dirs, the bundled world or a pip-shipped model;
`e2e/` drives the installed CLI in subprocesses. Each test gets its tier as a marker (`-m unit`,
`-m integration`, `-m e2e`); `slow`, `gpu` and `vllm` are opt-in (`-m slow`).

Integration and e2e tests that sample take the `backend` fixture, so the same test runs once per
rollout backend: `hf` in the default run, `vllm` under `-m vllm` (`bash .ci/vllm-cpu` builds the
env). The demo is diagnosed once per backend per session (`demo_run`), shared by every test that
reads it. tests/ itself is on sys.path (pytest inserts this conftest's folder), so support modules
`tiny_world` and `grader_fixtures` import by name, in grader worker processes too."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TIERS = ("unit", "integration", "e2e")
BACKENDS = [
    "hf",
    pytest.param("vllm", marks=[
        pytest.mark.vllm,
        pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (bash .ci/vllm-cpu)"),
    ]),
]


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        tier = Path(item.fspath).relative_to(here).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of tests/{{{','.join(TIERS)}}}/")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    """The rollout backend under test ("hf" | "vllm"); session-scoped so session fixtures share it."""
    return request.param


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed CLI (`python -m gradalign ...`) in a subprocess, capturing its output."""
    return subprocess.run([sys.executable, "-m", "gradalign", *args], capture_output=True, text=True, timeout=timeout)


def message_lines(stderr: str) -> list[str]:
    """The non-empty lines of a CLI's stderr that are messages (errors, warnings), not the plain
    progress lines a run without a terminal prints (`cli.progress.PREFIX`)."""
    from gradalign.cli.progress import PREFIX

    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(PREFIX)]


_DEMOS: dict[str, tuple[Path, str]] = {}


def _demo(backend: str, factory) -> tuple[Path, str]:
    if backend not in _DEMOS:
        out = factory.mktemp(f"demo-{backend}") / "run"
        r = cli("demo", "--out", str(out), "--backend", backend, timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        _DEMOS[backend] = (out, r.stdout)
    return _DEMOS[backend]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, backend) -> tuple[Path, str]:
    """(run folder, CLI stdout) of `gradalign demo` under `backend`, run once per session."""
    return _demo(backend, tmp_path_factory)


@pytest.fixture(scope="session")
def hf_demo_run(tmp_path_factory) -> Path:
    """The `hf` demo run folder (the same one `demo_run` gives for hf), for backend-free readers."""
    return _demo("hf", tmp_path_factory)[0]
