"""Benchmark: reading, analysing and reporting a run whose tokens.parquet has 10M rows.

Readers: `old` reads every table whole with `pq.read_table(p).to_pandas()` (what `tables.load`
did before: object/str columns, Arrow and pandas copies alive together); `new` is `tables.load`
(every column); `report` is `report.write.load_run`, what `gradalign report` reads (the tokens
columns of `report.data.TOKEN_COLUMNS`).
Builds a run folder once: the demo (`data/configs/demo.toml` cut to 2 questions x 2 rollouts, 4
configs) diagnosed for real, then its tokens table tiled with shifted rollout ids up to `--rows` rows (written in row
groups with the run's schema metadata; the other tables stay the real ones, so joins find the real
rows and the rest only adds volume, as a long run would). Then, each in a fresh process, peak RSS
and wall time of: `tables.load` (everything), `gradalign.report.report_data` on it, and the CLI
`gradalign report RUN --out DIR` (the whole report with figures).

Usage: python bench/bench_tokens_scale.py [--rows 10000000] [--dir /tmp/gradalign-10m] [--steps load:new,...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(run: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gradalign import diagnose
    from gradalign.config import apply_overrides, load_config

    if (run / "manifest.json").exists() and pq.ParquetFile(run / "tokens.parquet").metadata.num_rows >= rows:
        return
    if not (run / "manifest.json").exists():  # a small real run (2 questions, 4 configs): the tables' real shape
        cfg = apply_overrides(load_config(ROOT / "data" / "configs" / "demo.toml"), {
            "task.limit": 2, "sampling.rollouts_per_question": 2, "branching.continuations": 2})
        diagnose(cfg, run)
    src = pq.read_table(run / "tokens.parquet")
    tmp = run / "tokens.parquet.building"
    with pq.ParquetWriter(tmp, src.schema) as w:
        w.write_table(src)
        n, k = src.num_rows, 1
        rid = src.column("rollout_id").to_numpy()
        while n < rows:
            part = src.slice(0, min(src.num_rows, rows - n))
            part = part.set_column(part.schema.get_field_index("rollout_id"), "rollout_id",
                                   pa.array(rid[: part.num_rows] + 1000 * k, type=pa.int32()))
            w.write_table(part)
            n += part.num_rows
            k += 1
    os.replace(tmp, run / "tokens.parquet")


def _old_load(run: str):
    import pyarrow.parquet as pq

    from gradalign.tables import TABLES, Tables, read_manifest

    return Tables(manifest=read_manifest(run), **{n: pq.read_table(Path(run) / f"{n}.parquet").to_pandas() for n in TABLES})


READERS = {"old": "pq.read_table().to_pandas()", "new": "tables.load", "report": "report.write.load_run: the report's tokens columns"}


def _child(what: str, run: str, out: str) -> dict:
    from gradalign.report.write import load_run
    from gradalign.tables import load

    step, _, variant = what.partition(":")
    reader = {"old": _old_load, "new": load, "report": load_run}[variant]
    t0 = time.perf_counter()
    t = reader(run)
    n = len(t.tokens)
    if step == "report_data":
        from gradalign.report.data import report_data

        report_data(t)
    elif step != "load":
        raise SystemExit(what)
    return {"what": f"{step} ({READERS[variant]})", "rows": n,
            "seconds": time.perf_counter() - t0, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def measure(run: Path, out: Path, steps) -> list[dict]:
    res = []
    for what in steps:
        p = subprocess.run([sys.executable, __file__, "--child", what, "--dir", str(run.parent)], capture_output=True, text=True)
        if p.returncode != 0:
            res.append({"what": what, "seconds": float("nan"), "peak_rss": 0, "error": p.stderr.strip()[-300:]})
            continue
        res.append(json.loads(p.stdout.strip().splitlines()[-1]))
    t0 = time.perf_counter()
    p = subprocess.run(["bash", "-c", f"command time -f %M {sys.executable} -m gradalign report {run} --out {out}"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-2000:])
    res.append({"what": "gradalign report RUN (CLI: everything, figures and HTML)", "seconds": time.perf_counter() - t0,
                "peak_rss": int(p.stderr.strip().splitlines()[-1]) * 1024})
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--dir", default="/tmp/gradalign-10m")
    ap.add_argument("--child")
    ap.add_argument("--steps", default="load:old,load:new,report_data:new,report_data:report",
                    help="child steps, STEP:READER (STEP load | report_data; READER old | new | report); the CLI report always runs")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.child:
        print(json.dumps(_child(a.child, str(Path(a.dir) / "run"), "")))
        return
    run = Path(a.dir) / "run"
    build(run, a.rows)
    import pyarrow.parquet as pq

    n = pq.ParquetFile(run / "tokens.parquet").metadata.num_rows
    size = (run / "tokens.parquet").stat().st_size
    print(f"tokens.parquet: {n:,} rows, {size / 2**20:.0f} MiB on disk")
    print("| step | seconds | peak RSS MiB |\n|---|---|---|")
    for r in measure(run, Path(a.dir) / "report", a.steps.split(",")):
        print(f"| {r['what']} | {r['seconds']:.1f} | {r['peak_rss'] / 2**20:.0f} | {r.get('error', '')}")


if __name__ == "__main__":
    main()
