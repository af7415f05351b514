"""Benchmark: scoring memory and time per 1k tokens vs completion length T, before vs after chunking.

Workload: one rollout of T completion tokens (after a 32-token prompt) scored under a student and a
teacher, both random-init Llamas with a Qwen-size LM head (V = 152,064 rows, hidden 64, 2 layers: a
small body so the full-vocabulary statistics, the part that scaled with T x V, dominate as they did
at 80% of the score stage on real models). Each (variant, T) runs in a fresh subprocess; peak memory
is that process's peak RSS minus its RSS after building the models and inputs (so: what scoring
added), time is wall time of the scoring call.

  after   `scoring.forward_rows` for both models + `scoring.pair_stats` + the node rows: what
          `pipeline.scoring.score_rollouts` runs per rollout and teacher (float32, chunks of
          `chunk_rows(V)` positions under the default 256 MiB logit budget).
  before  the pre-chunking path (git fbe4cd3): `score(..., keep_full=True)` for both models (float64
          [T, V] log_softmax, float32 [T, V] copies on the host), then gradients.kl/jsd/cosine on
          float64 [T, V] matrices. Run only where it fits the machine (it needs ~20 bytes x 7 x T x V).

`after` also splits its time into the two forwards (the models' bodies: attention is O(T^2) there,
not in gradalign's code) and the statistics after them (LM head chunks, divergences, node rows).

Usage: python bench/bench_scoring_long.py [--lengths 512,1024,...] [--before 512,1024] [--threads 2]
Prints a Markdown section (the one in bench/RESULTS.md, "Long-T scoring").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
V, H, PROMPT = 152_064, 64, 32


def _models():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=4 * H, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=16_384, tie_word_embeddings=False)
        out.append(LlamaForCausalLM(cfg).eval())
    return out


def _before(student, teacher, req, tau=1.0, beta=0.5):
    """The pre-chunking per-rollout work (fbe4cd3's score keep_full=True + float64 divergences)."""
    import torch

    from gradalign import gradients as G
    from gradalign.scoring import restrict_to_vocab

    full = []
    for m in (student, teacher):
        ids = torch.tensor([list(req.prefix) + list(req.completion)])
        T = len(req.completion)
        with torch.inference_mode():
            logits = m(input_ids=ids, logits_to_keep=T + 1).logits
            z = logits[0, :T].double() / tau
            logp, _ = restrict_to_vocab(z, V)
            tok = torch.tensor(req.completion)
            logp.gather(-1, tok[:, None])
            G.entropy(logp).float()
            logp[list(req.nodes)]
            full.append(logp.float().cpu())
            del logits, z, logp
    lp, lq = full[0].double(), full[1].double()
    return [G.kl(lp, lq), G.kl(lq, lp), G.jsd(lp, lq, beta), G.distribution_cosine(lp, lq)]


def _after(student, teacher, req, tau=1.0, beta=0.5, split=None):
    """`split`, a dict, receives the seconds of the two forwards ("forward": the models' own bodies,
    attention included) and of everything after them ("statistics": LM head chunks, node rows)."""
    from gradalign.scoring import forward_rows, node_logp, pair_stats

    t0 = time.perf_counter()
    s = forward_rows(student, [req])[0]
    t = forward_rows(teacher, [req])[0]
    t1 = time.perf_counter()
    node_logp(s, req.nodes, tau, V), node_logp(t, req.nodes, tau, V)
    out = pair_stats(s, t, req.completion, temperature=tau, beta=beta, vocab_size=V)
    if split is not None:
        split.update(forward=t1 - t0, statistics=time.perf_counter() - t1)
    return out


def _child(variant: str, T: int, threads: int) -> dict:
    import resource

    import torch

    from gradalign.scoring import ScoreRequest

    torch.set_num_threads(threads)
    student, teacher = _models()
    g = torch.Generator().manual_seed(T)
    req = ScoreRequest(tuple(torch.randint(0, V, (PROMPT,), generator=g).tolist()),
                       tuple(torch.randint(0, V, (T,), generator=g).tolist()), (0, T // 2, T - 1))
    fn = _before if variant == "before" else _after
    fn(student, teacher, ScoreRequest(req.prefix, req.completion[:8], (0,)))  # warm-up (lazy inits), small
    base = _rss_now()
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    split: dict = {}
    t0 = time.perf_counter()
    if variant == "before":
        fn(student, teacher, req)
    else:
        fn(student, teacher, req, split=split)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "T": T, "seconds": dt, "added_bytes": max(0, peak - max(base, 0)), "peak_bytes": peak,
            "peak_before_call": peak0, **split, "load_1min": os.getloadavg()[0]}


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run(lengths, before, threads: int) -> dict:
    rows = []
    for variant, Ts in (("before", before), ("after", lengths)):
        for T in Ts:
            cmd = [sys.executable, __file__, "--child", variant, str(T), "--threads", str(threads)]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200)
            if p.returncode != 0:
                rows.append({"variant": variant, "T": T, "error": (p.stderr.strip().splitlines() or ["?"])[-1]})
                continue
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr, flush=True)
    return {"rows": rows, "markdown": _markdown(rows, threads)}


def _markdown(rows, threads) -> str:
    from gradalign.scoring import chunk_rows

    mib = 1 << 20
    lines = [
        "## Long-T scoring: memory and time per 1k tokens vs T (issue 14, part A)", "",
        f"Workload: one rollout (32-token prompt + T completion tokens) scored under a student and a teacher, random-init "
        f"Llamas with a {V:,}-row LM head (hidden {H}, 2 layers), {threads} torch threads, 2 shared CPU cores; "
        f"each cell a fresh process (`python bench/bench_scoring_long.py`). Added memory = peak RSS of the scoring call "
        f"minus RSS after building the models. `after` chunks {chunk_rows(V, 256 << 20)} positions at a time "
        f"(default 256 MiB logit budget).", "",
        ("| variant | T | time s | s per 1k tokens | of which forwards | of which statistics | added peak MiB | "
         "load (1 min) at the end |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['T']} | failed: {r['error'][:80]} | | | | | |")
            continue
        k = r["T"] / 1000
        f = f"{r['forward'] / k:.2f}" if "forward" in r else ""
        st = f"{r['statistics'] / k:.2f}" if "statistics" in r else ""
        lines.append(f"| {r['variant']} | {r['T']} | {r['seconds']:.2f} | {r['seconds'] / k:.2f} | {f} | {st} | "
                     f"{r['added_bytes'] / mib:.0f} | {r.get('load_1min', float('nan')):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="512,1024,2048,4096,8192")
    ap.add_argument("--before", default="512,1024")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.child:
        print(json.dumps(_child(a.child[0], int(a.child[1]), a.threads)))
        return
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    out = run(ints(a.lengths), ints(a.before), a.threads)
    print(f"<!-- {platform.node()} {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->")
    print(out["markdown"])


if __name__ == "__main__":
    main()
