"""Benchmark 4: end-to-end demo wall time and peak RSS, and how each selector's cost grows with
rollout length.

(a) `gradalign demo --out TMP` in a child process (OMP_NUM_THREADS = --threads): wall time and the
    child's own peak RSS (os.wait4 rusage, ru_maxrss), plus the manifest's per-stage timings.
(b) Planned cost from gradalign.selectors' cost model for T = 32 .. 512: continuation tokens,
    continuations and nodes of `make_selector(...).plan()` for every, stride:8, logspace (k = 1, 2)
    and refine, at the demo's branch size (12 candidate slots x M = 8 = 96 continuations per node),
    with no cap (growth exponent = log-log slope over T) and with a fixed token cap (nodes kept).
    refine is answered with a synthetic value curve: V = 0 before a single decisive token at T/3,
    1 after it (value queries are answered with n = value_continuations).
(c) Measured: `gradalign.sampling.hf.sample` on a random tiny Llama (vocabulary of 6, 1 layer,
    hidden 32) for the branch workload each selector plans on a synthetic rollout of length T (each
    node: 8 continuations of prefix + y_<t + one token, allowance T - t - 1, as the pipeline's
    branching stage builds them). EOS is set to an id the model cannot emit, so every continuation
    runs its full allowance, as the cost model assumes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

LENGTHS = (32, 64, 128, 256, 512)
SLOTS, M = 12, 8  # demo: min(16, 1 + 2 * (1 + 4)) candidates + residual; continuations per candidate
PER_NODE = SLOTS * M


def _slope(xs, ys) -> float:
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y > 0]
    if len(pts) < 2:
        return math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


# ----------------------------------------------------------------------------- (a) demo


def _demo_once(threads: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="gradalign-bench-demo-")) / "demo"
    exe = shutil.which("gradalign")
    cmd = [exe, "demo", "--out", str(out)] if exe else [sys.executable, "-m", "gradalign", "demo", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=C.ROOT)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"gradalign demo failed ({p.returncode}):\n{err[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out.parent, ignore_errors=True)
    return {"wall_s": wall, "peak_rss_mib": ru.ru_maxrss / 1024, "timings_s": manifest["timings_s"],
            "continuations": manifest["continuations"], "cmd": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd[:2]))}


# ----------------------------------------------------------------------------- (b) planned cost


def _plan(kind: str, T: int, budget_tokens: int = 0, k: int = 1):
    from gradalign.selectors import Budget, ValueObs, make_selector

    sel = make_selector(kind, None, n_tokens=T, budget=Budget(budget_tokens, 0), branch_continuations=PER_NODE,
                        nodes_per_window=k, value_continuations=4, refine_nodes=4)
    decisive = T // 3
    while qs := sel.pending():
        sel.observe({t: ValueObs(1, 1) if t >= T else ValueObs(4 * int(t > decisive), 4) for t in qs})
    return sel.plan()


SELECTORS = (("every", "every", 1), ("stride:8", "stride:8", 1), ("logspace k=1", "logspace", 1),
             ("logspace k=2", "logspace", 2), ("refine", "refine", 2))


def _planned(cap: int) -> dict:
    out = {}
    for label, kind, k in SELECTORS:
        out[label] = [_plan(kind, T, 0, k) for T in LENGTHS]
        out[label + " (cap)"] = [_plan(kind, T, cap, k) for T in LENGTHS]
    return out


# ----------------------------------------------------------------------------- (c) measured


def _measured(quick: bool, threads: int) -> dict:
    import random

    from gradalign.sampling import SamplingParams
    from gradalign.sampling.hf import sample
    from gradalign.world import ModelSize, build_tokenizer, new_model

    tok = build_tokenizer(chars=("a", "b"), max_length=1100)
    model = new_model(tok, ModelSize(hidden=32, layers=1, heads=2, ffn=64, max_positions=1100), 0).eval()
    V = len(tok)
    never = V  # an id outside the vocabulary: no continuation ever ends early
    per_node = 8
    limits = {"every": 64 if quick else 128, "logspace k=1": 512, "refine": 512}
    res: dict[str, list] = {}
    rng = random.Random(0)
    for label, kind, k in (("every", "every", 1), ("logspace k=1", "logspace", 1), ("refine", "refine", 2)):
        rows = []
        for T in LENGTHS:
            if T > limits[label]:
                continue
            y = [rng.randrange(4, V) for _ in range(T)]
            plan = _plan(kind, T, 0, k)
            prompts, seeds, allow = [], [], []
            for n in plan.nodes:
                for j in range(per_node):
                    prompts.append([4, 5] + y[: n.position] + [4 + j % 2])
                    seeds.append(hash((T, n.position, j)) & (2**62))
                    allow.append(T - n.position - 1)
            params = SamplingParams(max_new_tokens=T, batch_size=256)
            t0 = time.perf_counter()
            comps = sample(model, prompts, seeds, params, eos_id=never, pad_id=tok.pad_token_id, max_new=allow)
            dt = time.perf_counter() - t0
            order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), -allow[i]))  # sample()'s batching
            steps = sum(max(allow[i] for i in order[s : s + 256]) for s in range(0, len(order), 256))
            rows.append({"T": T, "nodes": len(plan.nodes), "continuations": len(prompts),
                         "tokens": sum(len(c.token_ids) for c in comps), "seconds": dt, "decode_steps": steps})
            print(f"[scaling] {label} T={T}: {rows[-1]}", flush=True)
        res[label] = rows
    return res


# ----------------------------------------------------------------------------- run


def _measured_text(measured, mslopes) -> str:
    ls = measured.get("logspace k=1") or []
    if len(ls) < 2:
        return ""
    a, b = ls[0], ls[-1]
    step_a, step_b = 1e3 * a["seconds"] / a["decode_steps"], 1e3 * b["seconds"] / b["decode_steps"]
    return (
        f"Measured sampling of the planned workloads: logspace's tokens grow with exponent "
        f"{mslopes['logspace k=1'][0]:.2f} but its time with {mslopes['logspace k=1'][1]:.2f}, every's time with "
        f"{mslopes['every'][1]:.2f} over T <= {measured['every'][-1]['T']}. The extra growth is per-step cost, not token "
        f"count: a decode step of the logspace batch costs {step_a:.1f} ms at T={a['T']} and {step_b:.1f} ms at T={b['T']}, "
        f"consistent with each step attending over a context of up to about 2T positions (the batch is left-padded to "
        f"the longest prefix, about T, and then decodes up to the longest allowance, about T); not broken down further "
        f"here. The cost model counts generated tokens only, so on long rollouts wall time grows faster than planned "
        f"tokens for every selector; logspace stays far below every at equal T."
    )


def run(quick: bool = False, threads: int = 2) -> dict:
    import statistics

    demos = [_demo_once(threads) for _ in range(1 if quick else 3)]
    print(f"[e2e] demo wall {[round(d['wall_s'], 2) for d in demos]} s, peak RSS {[round(d['peak_rss_mib']) for d in demos]} MiB", flush=True)
    wall = statistics.median(d["wall_s"] for d in demos)
    rss = max(d["peak_rss_mib"] for d in demos)
    stages = {k: statistics.median(d["timings_s"][k] for d in demos) for k in demos[0]["timings_s"]}

    cap = 200_000
    planned = _planned(cap)
    measured = _measured(quick, threads)

    md = [
        "## 4. End-to-end demo and selector scaling",
        "",
        f"### Demo (`gradalign demo`, {len(demos)} run(s), OMP_NUM_THREADS={threads})",
        "",
        C.md_table(["wall s (median)", "peak RSS MiB (max)", "continuations"] + [f"{k} s" for k in stages],
                   [[wall, rss, demos[0]["continuations"]] + list(stages.values())]),
        "",
        "Wall time includes interpreter start-up and imports; stage timings are the manifest's `timings_s` (medians).",
        "",
        f"### Planned cost vs rollout length (cost model, {PER_NODE} continuations per node, no cap)",
        "",
    ]
    rows, slopes = [], {}
    for label, _, _ in SELECTORS:
        plans = planned[label]
        toks = [p.spent_tokens for p in plans]
        conts = [p.spent_continuations for p in plans]
        slopes[label] = (_slope(LENGTHS, toks), _slope(LENGTHS, conts))
        rows.append([label] + [f"{t:,} / {len(p.nodes)}" for t, p in zip(toks, plans)] + [f"{slopes[label][0]:.2f}", f"{slopes[label][1]:.2f}"])
    md.append(C.md_table(["selector"] + [f"T={T}: tokens / nodes" for T in LENGTHS] + ["slope tokens", "slope continuations"], rows))
    md += ["", f"With a fixed cap of {cap:,} continuation tokens per rollout (nodes kept / dropped):", ""]
    rows = []
    for label, _, _ in SELECTORS:
        plans = planned[label + " (cap)"]
        rows.append([label] + [f"{len(p.nodes)} / {p.dropped} ({p.spent_tokens:,} tok)" for p in plans])
    md.append(C.md_table(["selector"] + [f"T={T}" for T in LENGTHS], rows))
    md += ["", "### Measured: `sampling.hf.sample` on each selector's branch workload (random tiny Llama, 8 continuations per node, no early EOS)", ""]
    rows, mslopes = [], {}
    for label, rs in measured.items():
        Ts = [r["T"] for r in rs]
        mslopes[label] = (_slope(Ts, [r["tokens"] for r in rs]), _slope(Ts, [r["seconds"] for r in rs]))
        by_T = {r["T"]: r for r in rs}
        rows.append([label] + [f"{by_T[T]['seconds']:.2f} s / {by_T[T]['tokens']:,} / {1e3 * by_T[T]['seconds'] / by_T[T]['decode_steps']:.1f}" if T in by_T else "-" for T in LENGTHS]
                    + [f"{mslopes[label][0]:.2f}", f"{mslopes[label][1]:.2f}"])
    md.append(C.md_table(["selector"] + [f"T={T}: time / tokens / ms per step" for T in LENGTHS] + ["slope tokens", "slope time"], rows))

    ls = slopes["logspace k=1"][0]
    ev = slopes["every"][0]
    rf = slopes["refine"][0]
    interp = (
        f"Interpretation. The demo runs in {wall:.1f} s wall ({stages.get('total', float('nan')):.1f} s inside `diagnose`, "
        f"of which branching {stages.get('branch', float('nan')):.1f} s and model loading {stages.get('load', float('nan')):.1f} s) "
        f"with a peak RSS of {rss:.0f} MiB. Planned continuation tokens grow with exponent {ev:.2f} for every "
        f"(quadratic), {slopes['stride:8'][0]:.2f} for stride:8 (quadratic, 8x smaller), {ls:.2f} for logspace k=1 "
        f"and {slopes['logspace k=2'][0]:.2f} for k=2 (linear: O(k log T) nodes whose costs halve window by window) "
        f"and {rf:.2f} for refine (anchors as logspace plus O(log T) bisection queries); continuations grow as "
        f"T for every and about log T for logspace (exponent {slopes['logspace k=1'][1]:.2f} over this range). "
        f"Under the fixed cap, every/stride keep only their latest nodes once T grows (every keeps "
        f"{len(planned['every (cap)'][-1].nodes)} of {LENGTHS[-1]} at T={LENGTHS[-1]}), while logspace keeps all of its nodes "
        f"up to the largest T. "
        + _measured_text(measured, mslopes)
    )
    md += ["", interp]
    headline = (f"demo {wall:.1f} s wall, peak RSS {rss:.0f} MiB; planned-token growth exponent every {ev:.2f}, "
                f"logspace {ls:.2f}, refine {rf:.2f}")
    return {"name": "e2e", "headline": headline, "markdown": "\n".join(md), "demos": demos,
            "summary": {"demo_wall_s": wall, "peak_rss_mib": rss, "slopes_tokens": {k: v[0] for k, v in slopes.items()},
                        "measured_slopes_time": {k: v[1] for k, v in mslopes.items()}},
            "measured": measured}


if __name__ == "__main__":
    C.cli(run, "demo wall time / peak RSS and selector scaling")
