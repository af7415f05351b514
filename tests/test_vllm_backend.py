"""The vLLM rollout backend passes the same integration tests as the HF backend: its success
estimates converge to exact enumeration, and the same seed gives identical tables.

Marker `vllm` (opt-in): run with `bash .ci/vllm-cpu`, which builds a CPU vLLM virtualenv."""

from __future__ import annotations

import math

import pandas as pd
import pytest

pytest.importorskip("vllm")

from gradalign.engine import diagnose  # noqa: E402
from gradalign.tables import TABLES  # noqa: E402
from test_exact_enumeration import _config, _errors, _exact_rows  # noqa: E402
from tiny_world import make_tiny_world  # noqa: E402

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def world64(tmp_path_factory):
    return make_tiny_world(tmp_path_factory.mktemp("vllm"), hidden=128, heads=2)


def test_vllm_estimates_converge_to_exact_enumeration(world64, tmp_path):
    small = diagnose(_config(world64, 2, 0, backend="vllm"), tmp_path / "small").tables()
    large = diagnose(_config(world64, 256, 0, backend="vllm"), tmp_path / "large").tables()
    assert small.rollouts.completion.tolist() == large.rollouts.completion.tolist()
    exact = _exact_rows(world64, large)
    e_small, e_large = _errors(small, exact), _errors(large, exact)
    assert len(e_large) > 50
    mean_small, mean_large = sum(e_small) / len(e_small), sum(e_large) / len(e_large)
    assert mean_large < mean_small / 2 and mean_large < 0.08, (mean_small, mean_large)


def test_vllm_same_seed_same_tables(world64, tmp_path):
    a = diagnose(_config(world64, 4, 3, backend="vllm"), tmp_path / "a").tables()
    b = diagnose(_config(world64, 4, 3, backend="vllm"), tmp_path / "b").tables()
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)
    assert math.isfinite(a.alignment.cos.dropna().mean())
