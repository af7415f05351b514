"""Benchmark: per-node precision of the alignment cosine against exact truth at a long horizon.

World: bench/longworld.py (bigram transformers models, horizon L = 128 new tokens, a grader over
token counts, exact S by dynamic programming, rare decisive tokens outside a top-2 candidate set).
Each variant runs the REAL pipeline (`engine.process_shard` on one `load_resources`, re-configured
per run with `dataclasses.replace(res, cfg=...)`; the sampler is `longworld.BigramSampler`, the HF
sampler's exact draw vectorised over sequences, checked token for token against it at start-up) on the same rollouts (the rollout seed does not
depend on branching settings) and is scored against `LongOracle` on every alignment row:

  err       mean |cos - exact cos| over rows where the exact cos is defined; a row whose cos is
            undefined (say every continuation at the node failed: no ideal gradient seen) counts as
            answering 0, so budgets are compared on the same rows
  defined   share of those rows whose cos is defined (and the err over those rows only)
  corr      Pearson correlation of cos (undefined = 0) with the exact cos
  coverage  share of rows whose [cos_low, cos_high] holds the exact cos
  resolved  share of rows marked `resolved`; wrong = of those, the share whose sign is wrong
  S z       candidates' (S_hat - S) / sd: mean and variance (unbiasedness check, ~0 and ~1)
  tokens    continuation tokens generated (counted from the sampler's completions, EOS included;
            the rollouts' own tokens excluded), per node

Run: `python bench/bench_precision.py [--quick]`.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import statistics
import tempfile
from pathlib import Path

import _common as C

L = 128
ROLLOUTS = 16  # the setting


def _config(root: Path, seed: int, **branching):
    from gradalign.config import config_from_dict, default_config_dict

    d = default_config_dict()
    d["run"] = {"name": "bench-precision", "seed": seed}
    d["task"] = {"path": str(root / "task.jsonl"), "prompt": "{question}", "grader": "python:longworld:grade"}
    d["student"] = {"model": str(root / "student")}
    d["sampling"].update({"rollouts_per_question": ROLLOUTS, "max_new_tokens": L, "batch_size": 1024})
    d["branching"].update({"selector": "logspace", "continuations": 8, "top_k": 2, **branching})
    d["teachers"] = [{"name": n, "model": str(root / n), "context": ""} for n in ("guide", "noisy")]
    return config_from_dict(d)


class _TokenCounter(C.RecordingSampler):
    def __init__(self, inner):
        super().__init__(inner, keep=False)
        self.tokens = 0

    def sample(self, prompts, seeds, max_new=None):
        comps = super().sample(prompts, seeds, max_new)
        self.tokens += C.count_tokens(comps)
        return comps


class _Runner:
    """One `load_resources`; the sampler is swapped for `longworld.BigramSampler` (the same draw as
    the HF sampler, vectorised; checked token for token here on 48 prompts) wrapped in a counter."""

    def __init__(self, root: Path, oracle):
        from longworld import BigramSampler

        from gradalign.pipeline import load_resources

        self.root = root
        loaded = load_resources(_config(root, 0))
        fast = BigramSampler(oracle.logp["student"], oracle.eos, L)
        prompts = [list(loaded.task.rows[0:1] and oracle.tok("mn")["input_ids"]) + [5 + i % 12] * (i % 9) for i in range(48)]
        allow = [L if i % 4 else 30 for i in range(48)]
        if loaded.sampler.sample(prompts, list(range(48)), allow) != fast.sample(prompts, list(range(48)), allow):
            raise AssertionError("BigramSampler does not reproduce the HF sampler's draws")
        loaded.sampler.close()
        self.counter = _TokenCounter(fast)
        self.res = dataclasses.replace(loaded, sampler=self.counter)

    def run(self, seed: int, **branching):
        import pandas as pd

        from gradalign.engine import process_shard

        res = dataclasses.replace(self.res, cfg=_config(self.root, seed, **branching))
        self.counter.tokens = 0
        shard = process_shard(res, list(res.task.rows))
        t = {k: pd.DataFrame(v) for k, v in shard.tables.items()}
        rollout_tokens = int((t["rollouts"].n_tokens + (~t["rollouts"].truncated)).sum())
        return t, self.counter.tokens - rollout_tokens

    def close(self):
        self.res.grader.close()
        self.res.sampler.close()


def _score(t, oracle) -> dict:
    import numpy as np

    ex = oracle.rows(t["rollouts"], t["alignment"], sorted(set(t["alignment"].loss)))
    a = t["alignment"]
    e = np.array([ex["cos"][(r.rollout_id, r.position, r.config, r.loss)] for r in a.itertuples()])
    c_raw = a.cos.to_numpy(float)
    ok = np.isfinite(e)
    c = np.where(np.isfinite(c_raw), c_raw, 0.0)  # an undefined cosine answers 0 ("no signal seen")
    lo, hi = a.cos_low.to_numpy(float), a.cos_high.to_numpy(float)
    okc = ok & np.isfinite(c_raw) & np.isfinite(lo)
    res = a.resolved.to_numpy(bool) & ok
    zs = []
    for n in t["nodes"][t["nodes"].source != "residual"].itertuples():
        S = float(ex["S"][(n.rollout_id, n.position)][n.candidate_id])
        if 1e-9 < S < 1 - 1e-9:
            zs.append((n.success - S) / math.sqrt(S * (1 - S) / n.n))
    nodes = len(set(zip(a.rollout_id, a.position)))
    return {
        "err": float(np.abs(c[ok] - e[ok]).mean()), "rows": int(ok.sum()), "nodes": nodes,
        "defined": float(np.isfinite(c_raw[ok]).mean()),
        "err_defined": float(np.abs(c_raw[ok & np.isfinite(c_raw)] - e[ok & np.isfinite(c_raw)]).mean()),
        "zero": float(np.abs(e[ok]).mean()),  # the error of always answering 0: the floor an estimator must beat
        "corr": float(np.corrcoef(c[ok], e[ok])[0, 1]),
        "coverage": float(((lo <= e) & (e <= hi))[okc].mean()),
        "resolved": float(res.sum() / ok.sum()),
        "wrong": float((np.sign(c[res]) != np.sign(e[res])).mean()) if res.any() else math.nan,
        "z_mean": statistics.mean(zs) if zs else math.nan, "z_var": statistics.variance(zs) if len(zs) > 1 else math.nan,
        "n_z": len(zs), "resid_mass": float(a.residual_mass.mean()),
        "errs": (c[ok] - e[ok]).tolist(),
    }


TODAY = {"common_random_numbers": False, "allocation": "equal", "residual_per_token": False,  # before issue 11
         "uncertainty": "bootstrap", "node_rounds": 0}
ALL = {"common_random_numbers": True, "allocation": "equal", "residual_per_token": True,  # the default
       "uncertainty": "hierarchical", "node_rounds": 0}
VARIANTS = {  # name -> branching overrides (on top of: logspace, top_k = 2, M = 8), explicit so defaults can move
    "before (M=8)": TODAY,
    "before (M=32)": {**TODAY, "continuations": 32},
    "+ common random numbers": {**TODAY, "common_random_numbers": True},
    "+ pilot allocation": {**TODAY, "allocation": "pilot"},
    "+ per-token residual": {**TODAY, "residual_per_token": True},
    "+ hierarchical intervals": {**TODAY, "uncertainty": "hierarchical"},
    "all three cuts, bootstrap intervals (M=8)": {**ALL, "uncertainty": "bootstrap"},
    "all four, pilot allocation (M=8)": {**ALL, "allocation": "pilot"},  # the default before 2026-11-24 10:10
    "all four (M=1)": {**ALL, "continuations": 1},
    "all four (M=2, top_k=1)": {**ALL, "continuations": 2, "top_k": 1},
    "all four (M=2)": {**ALL, "continuations": 2},
    "all four (M=4)": {**ALL, "continuations": 4},
    "all four (M=8), the default": ALL,
    "all four (M=16)": {**ALL, "continuations": 16},
    "all four + coverage 0.9 (M=8)": {**ALL, "coverage": 0.9},  # promote tokens until the residual holds <= 10%
    # allocation across nodes: a share of every node's budget pooled over the shard, spent in 2 rounds by priority
    "all four + node rounds (M=8)": {**ALL, "node_rounds": 2, "node_share": 0.25},
    "all four + node rounds, share 0.5 (M=8)": {**ALL, "node_rounds": 2, "node_share": 0.5},
}
QUICK = ("before (M=8)", "all four (M=8), the default")


def run(quick: bool = False, threads: int = 2, variants: dict | None = None) -> dict:
    C.add_paths()
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from longworld import LongOracle, make_long_world

    variants = variants or ({k: VARIANTS[k] for k in QUICK} if quick else VARIANTS)
    seeds = [0, 1] if quick else [0, 1, 2]
    tmp = Path(tempfile.mkdtemp(prefix="gradalign-bench-prec-"))
    per: dict[str, list[dict]] = {v: [] for v in variants}
    runner = None
    try:
        root = make_long_world(tmp / "world")
        oracle = LongOracle(root, L)
        runner = _Runner(root, oracle)
        for seed in seeds:
            for name, over in variants.items():
                t, tokens = runner.run(seed, **over)
                s = _score(t, oracle)
                s["tokens"] = tokens
                per[name].append(s)
                print(f"[precision bench] seed={seed} {name}: err={s['err']:.3f} corr={s['corr']:.2f} "
                      f"cov={s['coverage']:.2f} resolved={s['resolved']:.2f} wrong={s['wrong']:.2f} "
                      f"tokens/node={tokens / s['nodes']:.0f} z=({s['z_mean']:.2f},{s['z_var']:.2f})", flush=True)
    finally:
        if runner is not None:
            runner.close()
        shutil.rmtree(tmp, ignore_errors=True)
    rows, summary = [], {}
    base = variants and next(iter(variants))
    e0 = statistics.mean(x["err"] for x in per[base])
    for name, xs in per.items():
        import numpy as np

        errs = np.array([e for x in xs for e in x["errs"]])
        tok = sum(x["tokens"] for x in xs) / sum(x["nodes"] for x in xs)
        m = {k: statistics.mean(x[k] for x in xs) for k in ("err", "corr", "coverage", "resolved", "wrong", "z_mean", "z_var",
                                                           "resid_mass", "zero", "defined", "err_defined")}
        se = float(np.abs(errs).std() / math.sqrt(len(errs)))
        summary[name] = {**m, "tokens_per_node": tok, "ratio": m["err"] / e0}
        rows.append([name, f"{m['err']:.3f} ± {se:.3f}", f"{m['err'] / e0:.2f}", f"{m['zero']:.3f}", f"{m['defined']:.2f}",
                     f"{m['err_defined']:.3f}",
                     f"{m['corr']:.2f}",
                     f"{m['coverage']:.2f}",
                     f"{m['resolved']:.2f}", f"{m['wrong']:.2f}", f"{m['z_mean']:+.2f} / {m['z_var']:.2f}", f"{tok:,.0f}",
                     sum(x["nodes"] for x in xs)])
    md = [
        "## Per-node precision vs exact truth at a long horizon (issue 11)",
        "",
        f"World: bench/longworld.py (bigram transformers student + teachers `guide`, `noisy`; horizon {L}; success = a `y`, "
        "or no `x` and an even number of `a`; exact S by dynamic programming). Pipeline: logspace selector, top_k = 2, "
        f"{ROLLOUTS} rollouts, residual bucket on; seeds {seeds}; every alignment row (node x 2 configs x 4 losses) scored. "
        "`err` ± its standard error over rows (every row whose exact cosine is defined; an undefined estimate counts as 0, "
        "`defined` = the share that had one, `err where defined` = err over those only); `ratio` = err / err(first row); `answer 0` = mean |exact cos| over the same rows, "
        "the error of an estimator that always answers 0 (a floor: below it, err rewards shrinking to 0, not information; "
        "`corr` measures information); `coverage` of the 95% [cos_low, cos_high] over the rows that have one; "
        "`resolved` share of rows and `wrong` sign among them; `S z` = mean / variance of (S_hat - S)/sd over candidates "
        "(unbiased: ~0 / ~1); `tokens/node` = continuation tokens generated (counted) per branched node.",
        "",
        C.md_table(["variant", "mean abs(cos - exact)", "ratio", "answer 0", "defined", "err where defined", "corr", "coverage", "resolved", "wrong",
                    "S z",
                    "tokens/node",
                    "nodes"], rows),
    ]
    headline = "; ".join(f"{k}: err {v['err']:.3f} ({v['ratio']:.2f}x) cov {v['coverage']:.2f}" for k, v in summary.items())
    return {"name": "precision", "headline": headline, "summary": summary, "markdown": "\n".join(md)}


if __name__ == "__main__":
    C.cli(run, "per-node cosine precision vs exact truth at a long horizon")
