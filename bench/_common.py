"""Shared helpers for the benchmarks in bench/: thread setup, interleaved timing, medians, machine
facts and Markdown tables. Each benchmark module exposes `run(quick, threads) -> dict` (with a
"markdown" section and a "headline" line) and a `main()` for running it alone. `RecordingSampler` and
`TimedGrader` wrap a run's sampler and grader so the benchmarks observe the pipeline stages through
`dataclasses.replace(resources, ...)` (public `gradalign.pipeline` functions only, nothing patched)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "data" / "configs" / "demo.toml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def setup_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def median(xs) -> float:
    return float(statistics.median(xs))


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, before: Callable[[int], None] | None = None):
    """Time each fn `repeats` times, interleaved (A B C, B C A, C A B, ...) so that load drift on a
    shared machine hits every variant alike; `before(repeat)` runs untimed before each call.
    Returns ({name: [seconds]}, {name: [results]})."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, list[object]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            if before is not None:
                before(r)
            t0 = time.perf_counter()
            res = fns[n]()
            times[n].append(time.perf_counter() - t0)
            results[n].append(res)
    return times, results


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine_info() -> dict:
    from gradalign.tables import package_versions

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = package_versions()
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
        commit = commit + (" (+ uncommitted changes)" if dirty else "")
    except OSError:
        commit = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": ram_gib,
        "platform": platform.platform(),
        "versions": versions,
        "git": commit,
        "loadavg": loadavg(),
    }


def count_tokens(comps) -> int:
    """Generated tokens of `Completion`s, EOS included (how every rollout benchmark counts)."""
    return sum(len(c.token_ids) + int(c.ended_with_eos) for c in comps)


def md_table(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def cli(run: Callable[..., dict], description: str) -> None:
    """The entry point of a benchmark run alone: prints its section; --json writes its results."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="smaller variant (fewer repeats / seeds)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here as JSON")
    a = ap.parse_args()
    setup_threads(a.threads)
    t0 = time.perf_counter()
    res = run(quick=a.quick, threads=a.threads)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    print(res["markdown"])
    print(f"\nheadline: {res['headline']}  ({res['wall_s']} s)")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=str))


class RecordingSampler:
    """A `gradalign.sampling.Sampler` that forwards to `inner` and records every call as
    (prompts, seeds, max_new, completions) in `calls` (with `keep=False`, only counts them);
    `sequences` counts the prompts sampled. Handed to the pipeline stages through
    `dataclasses.replace(resources, sampler=...)`."""

    def __init__(self, inner, keep: bool = True):
        self.inner = inner
        self.keep = keep
        self.calls: list[tuple] = []
        self.sequences = 0

    def sample(self, prompts, seeds, max_new=None):
        comps = self.inner.sample(prompts, seeds, max_new)
        self.sequences += len(prompts)
        if self.keep:
            self.calls.append((list(prompts), list(seeds), None if max_new is None else list(max_new), comps))
        return comps

    def close(self) -> None:
        self.inner.close()


class TimedGrader:
    """A grader (`grade_many`, `stats`, `close`) that forwards to `inner` and sums the seconds its
    `grade_many` calls take in `seconds`. Handed to the stages through `dataclasses.replace`."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds = 0.0

    def grade_many(self, items):
        t0 = time.perf_counter()
        try:
            return self.inner.grade_many(items)
        finally:
            self.seconds += time.perf_counter() - t0

    @property
    def stats(self):
        return self.inner.stats

    def close(self) -> None:
        self.inner.close()


def add_paths() -> None:
    """Make `tests/` importable (tiny_world, grader_fixtures)."""
    p = str(ROOT / "tests")
    if p not in sys.path:
        sys.path.insert(0, p)
