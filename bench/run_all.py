"""Run every gradalign benchmark and write bench/RESULTS.md.

    python bench/run_all.py            # full (about 6-10 minutes on 2 CPU cores)
    python bench/run_all.py --quick    # smaller variant (under 3 minutes), writes bench/RESULTS-quick.md

Each benchmark runs in its own process (`python bench/bench_X.py --json ...`, also runnable alone)
and measures its variants side by side, interleaved, within that process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

BENCHES = (
    ("rollout", "bench_rollout.py"),
    ("rollout_vllm", "bench_rollout_vllm.py"),  # needs vLLM: see _python_for
    ("scoring", "bench_scoring.py"),
    ("estimator", "bench_estimator.py"),
    ("e2e", "bench_e2e.py"),
    ("placement", "bench_placement.py"),
    ("param_space", "bench_param_space.py"),
    ("precision", "bench_precision.py"),
    ("interval_anatomy", "bench_interval_anatomy.py"),
)


def _python_for(name: str) -> str | None:
    """The interpreter a benchmark runs under: this one, except that the vLLM benchmark needs vLLM
    ($GRADALIGN_VLLM_PYTHON, else this interpreter if it has vLLM, else .venv-vllm from
    `bash .ci/vllm-cpu --build-only`); None when there is none (the section says how to get one)."""
    if name != "rollout_vllm":
        return sys.executable
    import importlib.util
    import os

    env = os.environ.get("GRADALIGN_VLLM_PYTHON")
    if env:
        return env
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv = C.ROOT / ".venv-vllm" / "bin" / "python"
    return str(venv) if venv.exists() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every benchmark (default 2)")
    ap.add_argument("--only", nargs="*", default=None, help=f"subset of {[b for b, _ in BENCHES]}")
    ap.add_argument("--out", type=Path, default=None, help="default bench/RESULTS.md (bench/RESULTS-quick.md with --quick)")
    a = ap.parse_args()
    out = a.out or Path(__file__).with_name("RESULTS-quick.md" if a.quick else "RESULTS.md")
    here = Path(__file__).resolve().parent
    machine = C.machine_info()
    t_all = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, script in BENCHES:
            if a.only and name not in a.only:
                continue
            js = Path(tmp) / f"{name}.json"
            py = _python_for(name)
            if py is None:
                why = "skipped: no Python with vLLM here (build one: `bash .ci/vllm-cpu --build-only`, or set GRADALIGN_VLLM_PYTHON)"
                print(f"== {name}: {why}", flush=True)
                results[name] = {"name": name, "headline": why, "markdown": f"## {name}\n\n{why}.", "elapsed_s": 0.0}
                continue
            cmd = [py, str(here / script), "--threads", str(a.threads), "--json", str(js)] + (["--quick"] if a.quick else [])
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, cwd=C.ROOT).returncode
            if rc != 0 or not js.exists():
                print(f"!! {name} failed (exit {rc})", flush=True)
                results[name] = {"name": name, "headline": f"FAILED (exit {rc})", "markdown": f"## {name}\n\nFAILED (exit {rc})."}
            else:
                results[name] = json.loads(js.read_text())
            results[name]["elapsed_s"] = round(time.perf_counter() - t0, 1)
    total = time.perf_counter() - t_all
    load_after = C.loadavg()

    cmd = "python bench/run_all.py" + (" --quick" if a.quick else "") + (f" --threads {a.threads}" if a.threads != 2 else "")
    v = machine["versions"]
    md = [
        "# gradalign benchmarks" + (" (quick variant)" if a.quick else ""),
        "",
        f"- Date: {machine['date']}",
        f"- Command: `{cmd}` (total {total:.0f} s; per benchmark: "
        + ", ".join(f"{n} {r['elapsed_s']:.0f} s" for n, r in results.items()) + ")",
        f"- Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['ram_gib']} GiB RAM, {machine['platform']}; "
        f"torch threads per benchmark: {a.threads}",
        f"- Load average (1/5/15 min) before: {machine['loadavg']}, after: {load_after} (the 2 cores are shared with other "
        "work; variants are interleaved so that load hits them alike, but absolute times carry that noise)",
        f"- Versions: python {v['python']}, gradalign {v['gradalign']} (git {machine['git']}), torch {v['torch']}, "
        f"transformers {v['transformers']}, numpy {v['numpy']}, pandas {v['pandas']}, pyarrow {v['pyarrow']}",
        "",
        "## Headlines",
        "",
    ]
    md += [f"{i}. **{n}**: {r['headline']}" for i, (n, r) in enumerate(results.items(), 1)]
    for r in results.values():
        md += ["", r["markdown"]]
    out.write_text("\n".join(md) + "\n")
    print(f"\nwrote {out} ({total:.0f} s)")
    for n, r in results.items():
        print(f"  {n}: {r['headline']}")


if __name__ == "__main__":
    main()
