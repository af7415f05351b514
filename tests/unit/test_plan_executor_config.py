"""The `[executor]` config section, the executor choice and the cost plan without weights."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from gradalign.candidates import slots_per_node
from gradalign.config import ConfigError, ExecutorConfig, apply_overrides, config_from_dict, load_config
from gradalign.engine import config_fingerprint
from gradalign.executors import LocalExecutor, gpus_per_worker, open_executor
from gradalign.plan import PlanTooCostly, check_max_tokens, plan_run
from gradalign.selectors import logspace_positions
from gradalign.tasks import data_dir


@pytest.fixture(scope="module")
def demo():
    return load_config(data_dir() / "configs" / "demo.toml")


def test_executor_fields_documented_and_defaulted(demo):
    for f in dataclasses.fields(ExecutorConfig):
        assert len(f.metadata.get("doc", "").split()) >= 3, f.name
    assert demo.executor == ExecutorConfig() and demo.executor.kind == "local"
    d = demo.to_dict()
    d["executor"] = {"kind": "ray", "address": "auto", "workers": 2, "num_cpus": 0.5, "num_gpus": 1, "max_retries": 0}
    cfg = config_from_dict(d)
    assert cfg.executor == ExecutorConfig("ray", "auto", 2, 0.5, 1.0, 0)
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("key, value, message", [
    ("kind", "rey", "executor.kind: must be one of 'local', 'ray', got string 'rey'; did you mean 'ray'?"),
    ("workers", -1, "executor.workers: must be an integer >= 0, got -1"),
    ("num_cpus", 0, "executor.num_cpus: must be a number > 0, got 0"),
    ("numgpus", 1, "executor.numgpus: unknown key; did you mean 'num_gpus'?"),
])
def test_executor_bad_values_are_one_line(demo, key, value, message):
    with pytest.raises(ConfigError) as e:
        apply_overrides(demo, {f"executor.{key}": value})
    assert str(e.value) == f"overrides: {message}"


def test_fingerprint_ignores_the_executor(demo):
    ray = apply_overrides(demo, {"executor.kind": "ray", "executor.workers": 3})
    assert config_fingerprint(ray) == config_fingerprint(demo)
    assert config_fingerprint(apply_overrides(demo, {"run.seed": 1})) != config_fingerprint(demo)


def test_executor_choice_in_one_place(demo):
    assert isinstance(open_executor(demo), LocalExecutor)
    assert open_executor(apply_overrides(demo, {"executor.kind": "ray"}), "local").name == "local"  # --executor wins


def test_gpus_per_worker():
    def cfg(device="cpu", num_gpus=0.0, **student):
        return SimpleNamespace(executor=ExecutorConfig(num_gpus=num_gpus), student=SimpleNamespace(device=device, **student))

    assert gpus_per_worker(cfg()) == 0
    assert gpus_per_worker(cfg("cuda")) == 1
    assert gpus_per_worker(cfg("cuda", tensor_parallel_size=4)) == 4  # vLLM spreads one engine over 4 GPUs
    assert gpus_per_worker(cfg("cuda", num_gpus=0.5)) == 0.5


def test_static_plan_prices_the_demo_by_the_selectors(demo):
    T = 36
    plan = plan_run(demo, mean_tokens=T)
    b, R = demo.branching, 6 * 4  # 6 questions x 4 rollouts
    per_node = slots_per_node(b, len(demo.teachers)) * b.continuations
    positions = logspace_positions(T, b.nodes_per_window)
    assert plan.questions == 6 and plan.rollouts == R and plan.mean_rollout_tokens == T
    assert plan.nodes == R * len(positions)
    assert plan.stage("branches").sequences == R * len(positions) * per_node
    assert plan.stage("branches").tokens == R * per_node * sum(T - t for t in positions)
    assert plan.stage("rollouts").tokens == R * (T + 1)  # EOS counted
    assert plan.stage("value queries").sequences == 0 and plan.priced_continuations == plan.continuations
    assert plan.tokens == plan.stage("rollouts").tokens + plan.stage("branches").tokens
    assert plan_run(demo).mean_rollout_tokens == demo.sampling.max_new_tokens  # the cap when nothing is given


def test_plan_keeps_to_the_budget(demo):
    cfg = apply_overrides(demo, {"branching.budget_tokens": 2000})
    plan = plan_run(cfg, mean_tokens=40)
    assert plan.priced_tokens <= 2000 * plan.rollouts
    assert plan.nodes < plan_run(demo, mean_tokens=40).nodes  # earliest nodes dropped


def test_refine_plan_counts_value_queries(demo):
    plan = plan_run(apply_overrides(demo, {"branching.selector": "refine"}), mean_tokens=32)
    assert plan.stage("value queries").sequences > 0
    assert plan.nodes <= plan.rollouts * demo.branching.refine_nodes


def test_max_tokens_refusal(demo):
    plan = plan_run(demo, mean_tokens=10)
    check_max_tokens(plan, int(plan.tokens))  # at the limit: allowed
    with pytest.raises(PlanTooCostly, match="over --max-tokens"):
        check_max_tokens(plan, int(plan.tokens) - 1)


def test_plan_prices_the_stop_node(demo):
    """branching.eos_node: a rollout shorter than the cap ended with EOS, so the plan places the
    selector over T + 1 positions (the stop priced at 1 token per continuation under T - t); at the
    cap the rollout was cut and has no stop node."""
    T, R = 36, 6 * 4
    cfg = apply_overrides(demo, {"branching.eos_node": True, "branching.selector": "every"})
    per_node = slots_per_node(cfg.branching, len(cfg.teachers)) * cfg.branching.continuations
    plan = plan_run(cfg, mean_tokens=T)
    assert plan.nodes == R * (T + 1)
    assert plan.stage("branches").tokens == R * per_node * (sum(T - t for t in range(T)) + 1)
    off = plan_run(apply_overrides(demo, {"branching.selector": "every"}), mean_tokens=T)
    assert off.nodes == R * T
    cap = cfg.sampling.max_new_tokens
    assert plan_run(cfg).nodes == R * cap  # rollouts assumed cut at the cap: no stop decision
