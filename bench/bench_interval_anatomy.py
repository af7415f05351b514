"""Benchmark: why the cosine's 95% interval misses on the long-horizon world, piece by piece.

The cosine is ``u / ||g*||`` with ``u = <g*, d> / ||d||``. This run takes the default pipeline on
bench/longworld.py (the same rollouts, nodes and replicates as bench_precision.py's default row),
keeps every row's replicates (a wrapper around `gradalign.precision.cosine_precision`, which the
alignment stage calls once per row with a defined cosine) and scores, against the exact values:

  u coverage     share of rows whose 95% replicate interval of u holds the exact u (`resolved` is
                 a sign test on u, so this is its calibration); u z: mean / variance of
                 (u_hat - u) / sd_replicates
  norm coverage  the same for ||g*||
  cos coverage   the same for the cosine (the shipped [cos_low, cos_high])
  alternatives   intervals that re-centre each replicate's squared norm, ||g_b||^2 - k * noise
                 (noise = mean_b ||g_b - g_hat||^2, floored at u_b^2 so |cos| <= 1): k = 1 removes
                 the posterior draw's own inflation, k = 2 centres on the unbiased ||g*||^2; with
                 their mean width and the share of intervals wider than 1.9 (nearly [-1, 1])

Run: `python bench/bench_interval_anatomy.py [--quick] --threads 1`.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import _common as C


def _quantiles(x):
    import torch

    return [float(v) for v in torch.quantile(x, torch.tensor([0.025, 0.975], dtype=x.dtype))]


def _row_pieces(cap, S_exact):
    """One row's replicate intervals and exact values: dict of u, norm and cos pieces."""
    from gradalign import gradients as G

    f, S, reps, a, dn, p, d = cap
    g = G.ideal_gradient(p, S_exact)
    u_true, n_true = float(g @ d) / float(d.norm()), float(g.norm())
    V = (S * f.w).sum()
    diff = S - V
    rdiff = reps - (reps * f.w).sum(-1, keepdim=True)
    u = (rdiff * a).sum(-1) / dn
    n2 = (rdiff ** 2 * f.w2).sum(-1)
    noise = float(((rdiff - diff) ** 2 * f.w2).sum(-1).mean())
    sd = float(u.std())
    out = {"u": (_quantiles(u), u_true), "norm": (_quantiles(n2.sqrt()), n_true),
           "u_z": (float((diff * a).sum() / dn) - u_true) / sd if sd > 0 else math.nan}  # no spread: no z
    for k in (0, 1, 2):
        den = (n2 - k * noise).maximum(u ** 2).sqrt().clamp_min(1e-300)
        out[f"cos k={k}"] = (_quantiles((u / den).clamp(-1, 1)), u_true / n_true if n_true > 0 else math.nan)
    return out


def run(quick: bool = False, threads: int = 2) -> dict:
    C.add_paths()
    import sys

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_precision import ALL, L, _Runner
    from longworld import LongOracle, make_long_world

    from gradalign import precision as P

    seeds = [0] if quick else [0, 1, 2]
    captured, last = [], {}
    orig_cp, orig_dir = P.cosine_precision, P.Folded.direction

    def direction(self, p, ids, d):
        last.update(p=p, d=d)
        return orig_dir(self, p, ids, d)

    def cosine_precision(f, S, reps, a, d_norm, *rest):
        captured.append((f, S, reps, a, d_norm, last["p"], last["d"]))
        return orig_cp(f, S, reps, a, d_norm, *rest)

    P.cosine_precision, P.Folded.direction = cosine_precision, direction
    tmp = Path(tempfile.mkdtemp(prefix="gradalign-bench-anatomy-"))
    pieces, runner = [], None
    try:
        root = make_long_world(tmp / "world")
        oracle = LongOracle(root, L)
        runner = _Runner(root, oracle)
        for seed in seeds:
            captured.clear()
            t, _ = runner.run(seed, **ALL)
            ex = oracle.rows(t["rollouts"], t["alignment"], sorted(set(t["alignment"].loss)))
            defined = int(np.isfinite(t["alignment"].cos.to_numpy(float)).sum())
            if len(captured) != defined:  # e.g. node_rounds also calls cosine_precision: rows would shift
                raise AssertionError(f"captured {len(captured)} interval calls for {defined} rows with a cosine")
            rows = iter(captured)
            for r in t["alignment"].itertuples():
                if not math.isfinite(r.cos):
                    continue  # cosine_precision is called only for rows with a defined cosine
                cap = next(rows)
                if math.isfinite(ex["cos"][(r.rollout_id, r.position, r.config, r.loss)]):
                    pieces.append(_row_pieces(cap, ex["S"][(r.rollout_id, r.position)]))
    finally:
        P.cosine_precision, P.Folded.direction = orig_cp, orig_dir
        if runner is not None:
            runner.close()
        shutil.rmtree(tmp, ignore_errors=True)

    def cover(key):
        hit = [lo <= x <= hi for (lo, hi), x in (pc[key] for pc in pieces) if math.isfinite(x)]
        width = [hi - lo for (lo, hi), _ in (pc[key] for pc in pieces)]
        return float(np.mean(hit)), float(np.mean(width)), float(np.mean(np.array(width) > 1.9))

    z = np.array([pc["u_z"] for pc in pieces])
    z = z[np.isfinite(z)]
    table = []
    for key, name in (("u", "u = <g*, d>/||d|| (what `resolved` tests)"), ("norm", "||g*||"),
                      ("cos k=0", "cos, shipped interval"), ("cos k=1", "cos, replicate norms minus their noise"),
                      ("cos k=2", "cos, replicate norms centred on the unbiased ||g*||^2")):
        c, w, vac = cover(key)
        table.append([name, f"{c:.3f}", f"{w:.3f}", f"{vac:.2f}" if key.startswith("cos") else ""])
    summary = {r[0]: {"coverage": float(r[1]), "width": float(r[2])} for r in table}
    md = [
        "## Anatomy of the cosine interval on the long-horizon world (issue 11)",
        "",
        f"Default pipeline (bench_precision.py's default row), seeds {seeds}, {len(pieces)} rows with a defined cosine and "
        f"interval. u z-scores over rows: mean {z.mean():+.2f}, variance {z.var():.2f}.",
        "",
        C.md_table(["piece", "95% coverage", "mean width", "share wider than 1.9"], table),
    ]
    headline = "; ".join(f"{r[0].split(' (')[0]}: cov {r[1]}" for r in table)
    return {"name": "interval_anatomy", "headline": headline, "summary": summary, "markdown": "\n".join(md)}


if __name__ == "__main__":
    C.cli(run, "why the cosine interval misses on the long-horizon world")
