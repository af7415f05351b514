"""Benchmark 3: estimator efficiency against exact enumeration, at an equal continuation budget.

World: tests/tiny_world.make_tiny_world (random 1-layer Llama over {<pad>, <s>, </s>, <unk>, a, b},
prompt "ab", success = odd number of "a"), every token a candidate (top_k = V), so every S_k is a
plain Monte Carlo estimate of an exactly enumerable probability. Exact cosines come from
`tiny_world.ExactOracle.rows`, the enumeration the test_exact_enumeration.py tests use (memoised
per prefix, models loaded once), with the horizon raised from 4 to L = 7 new tokens.

Per seed, the same rollouts (the rollout seed does not depend on the selector) are diagnosed with:
  every     all positions, M = M_every continuations per candidate
  logspace  nodes_per_window = 1, M raised so its continuations match every's
  refine    nodes_per_window = 1, value_continuations = 2, refine_nodes = 2; M raised so value
            queries + branch continuations match every's
Each run goes through the engine's own shard pipeline (`engine.process_shard`, the function
`diagnose` runs per shard; its `continuations` is the manifest's count) on one `load_resources`,
re-configured per run with `dataclasses.replace(res, cfg=...)`, so the grader workers start once;
the sampler is wrapped in a counter (`dataclasses.replace(res, sampler=...)`) for the value queries.
M for logspace/refine comes from a pilot at M = 2 (same seed, hence the
same nodes and the same value queries): M = round((C_every - value continuations) / (C_pilot / 2)) with a pilot at M = 2.
Error = mean |cos - exact cos| over the method's alignment rows (node x config x loss, finite
values). Ratio = error(every) / error(selector): > 1 means the selector's nodes are estimated
more precisely for the same number of continuations (it covers fewer nodes: see the coverage column).
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
from pathlib import Path

import _common as C

L = 7
ROLLOUTS = 24


def _config(root: Path, selector: str, M: int, seed: int):
    from gradalign.config import config_from_dict, default_config_dict

    d = default_config_dict()
    d["run"] = {"name": "bench-estimator", "seed": seed}
    d["task"] = {"path": str(root / "task.jsonl"), "prompt": "{question}", "grader": "python:grader_fixtures:odd_a"}
    d["student"] = {"model": str(root / "student")}
    d["sampling"].update({"rollouts_per_question": ROLLOUTS, "max_new_tokens": L, "batch_size": 512})
    d["branching"].update({
        "selector": selector, "continuations": M, "top_k": 6, "max_candidates": 6, "residual": True,
        "nodes_per_window": 1, "value_continuations": 2, "refine_nodes": 2,
    })
    d["teachers"] = [  # the names/contexts `ExactOracle.rows` expects
        {"name": "self-hint", "model": "student", "context": "{hint}"},
        {"name": "other", "model": str(root / "teacher"), "context": ""},
    ]
    return config_from_dict(d)


class _Runner:
    """One `load_resources`; runs the engine's shard pipeline (`engine.process_shard`) for any
    (selector, M, seed) by replacing the resources' config."""

    def __init__(self, root: Path):
        import dataclasses

        from gradalign.pipeline import load_resources

        self.root = root
        loaded = load_resources(_config(root, "every", 2, 0))
        self.counter = C.RecordingSampler(loaded.sampler, keep=False)  # counts every sampled continuation
        self.res = dataclasses.replace(loaded, sampler=self.counter)

    def run(self, selector: str, M: int, seed: int) -> dict:
        import dataclasses

        import pandas as pd

        from gradalign.engine import process_shard

        res = dataclasses.replace(self.res, cfg=_config(self.root, selector, M, seed))
        self.counter.sequences = 0
        shard = process_shard(res, list(res.task.rows))
        branch = shard.continuations
        value = self.counter.sequences - ROLLOUTS - branch  # refine's value queries (0 for the static kinds)
        tables = type("Tables", (), {})()
        tables.rollouts = pd.DataFrame(shard.tables["rollouts"])
        tables.alignment = pd.DataFrame(shard.tables["alignment"])
        return {"branch": branch, "value": value, "total": branch + value, "tables": tables,
                "nodes": sum(s["nodes"] for s in shard.selection)}

    def close(self):
        self.res.grader.close()
        self.res.sampler.close()


def _error(tables, exact, only=None) -> tuple[float, int, set]:
    """Mean |cos - exact| over alignment rows (optionally only at the (rollout, position) nodes in
    `only`), the row count, and the set of nodes."""
    errs, nodes = [], set()
    for a in tables.alignment.itertuples():
        if only is not None and (a.rollout_id, a.position) not in only:
            continue
        e = exact[(a.rollout_id, a.position, a.config, a.loss)]
        if math.isfinite(e) and math.isfinite(a.cos):
            errs.append(abs(a.cos - e))
            nodes.add((a.rollout_id, a.position))
    return (sum(errs) / len(errs) if errs else math.nan), len(errs), nodes


def run(quick: bool = False, threads: int = 2) -> dict:
    C.add_paths()
    from tiny_world import ExactOracle, make_tiny_world

    seeds = [0, 1] if quick else [0, 1, 2, 3, 4, 5]
    budgets = [4] if quick else [4, 8]  # M of `every`
    tmp = Path(tempfile.mkdtemp(prefix="gradalign-bench-est-"))
    rows = []
    per = {}  # (M_every, selector) -> lists
    lengths: list[int] = []
    runner = None
    try:
        root = make_tiny_world(tmp / "world")
        runner = _Runner(root)
        exact_of = ExactOracle(root, L)
        for M_e in budgets:
            for seed in seeds:
                base = runner.run("every", M_e, seed)
                exact = exact_of.rows(base["tables"])
                lengths += base["tables"].rollouts.n_tokens.tolist()
                results = {"every": (M_e, base)}
                for sel in ("logspace", "refine"):
                    pilot = runner.run(sel, 2, seed)  # same nodes/value queries as any M; branch cost is linear in M
                    M = max(1, round((base["total"] - pilot["value"]) / max(1, pilot["branch"] / 2)))
                    r = runner.run(sel, M, seed)
                    results[sel] = (M, r)
                for sel, (M, r) in results.items():
                    err, n_rows, nodes = _error(r["tables"], exact)
                    n_nodes = len(nodes)
                    # every's error on exactly this selector's nodes: the same nodes at M_every
                    err_same, _, _ = _error(base["tables"], exact, only=nodes)
                    d = per.setdefault((M_e, sel), {"err": [], "err_every_same": [], "total": [], "nodes": [], "M": [], "value": []})
                    d["err"].append(err)
                    d["err_every_same"].append(err_same)
                    d["total"].append(r["total"])
                    d["nodes"].append(n_nodes)
                    d["M"].append(M)
                    d["value"].append(r["value"])
                print(f"[estimator bench] M_every={M_e} seed={seed}: " + ", ".join(
                    f"{s} M={per[(M_e, s)]['M'][-1]} conts={per[(M_e, s)]['total'][-1]} err={per[(M_e, s)]['err'][-1]:.4f}"
                    for s in results), flush=True)
    finally:
        if runner is not None:
            runner.close()
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {}
    for M_e in budgets:
        e_every = statistics.mean(per[(M_e, "every")]["err"])
        n_every = sum(per[(M_e, "every")]["nodes"])
        c_every = sum(per[(M_e, "every")]["total"])
        for sel in ("every", "logspace", "refine"):
            d = per[(M_e, sel)]
            e = statistics.mean(d["err"])
            sd = statistics.stdev(d["err"]) / math.sqrt(len(d["err"])) if len(d["err"]) > 1 else math.nan
            ratio = e_every / e
            ratios = [a / b for a, b in zip(per[(M_e, "every")]["err"], d["err"])]
            e_same = statistics.mean(d["err_every_same"])
            ratio_same = e_same / e
            same = [a / b for a, b in zip(d["err_every_same"], d["err"])]
            rows.append([M_e, sel, f"{min(d['M'])}-{max(d['M'])}" if min(d["M"]) != max(d["M"]) else d["M"][0],
                         sum(d["total"]), f"{sum(d['total']) / c_every:.2f}", sum(d["value"]), sum(d["nodes"]),
                         f"{sum(d['nodes']) / n_every:.2f}", e, sd, ratio, f"{sum(r > 1 for r in ratios)}/{len(ratios)}",
                         e_same, ratio_same, f"{sum(r > 1 for r in same)}/{len(same)}"])
            summary[f"M{M_e}/{sel}"] = ratio
            summary[f"M{M_e}/{sel}/same_nodes"] = ratio_same
    md = [
        "## 3. Estimator efficiency vs exact enumeration (equal continuation budget)",
        "",
        f"Tiny world (tests/tiny_world.py), horizon L = {L} new tokens, {ROLLOUTS} rollouts per seed, seeds {seeds}, "
        "2 teacher configs x 4 losses per node, every token a candidate. `conts` = branch continuations (the "
        "manifest's `continuations`) + refine's value-query continuations, summed over seeds; `vs every` is that "
        "total over every's. Error = mean over seeds of mean |cos - exact| over the method's alignment rows "
        "(± standard error over seeds). Ratio = error(every) / error(selector); `seeds won` = seeds where the "
        "selector's error is lower. Because the selectors branch different positions than every (logspace favours late "
        "positions, where fewer tokens remain), the last three columns compare on the same nodes: every's own error at "
        "exactly the nodes the selector branched (every branches all of them, at M_every), against the selector's.",
        "",
        C.md_table(["M (every)", "selector", "M", "conts", "vs every", "of which value queries", "nodes",
                    "coverage vs every", "mean abs(cos - exact)", "± s.e.", "ratio every/selector", "seeds won",
                    "every's error on these nodes", "ratio on same nodes", "seeds won (same nodes)"], rows),
    ]
    M0 = budgets[0]

    def cov(sel, M_e=M0):
        return sum(per[(M_e, sel)]["nodes"]) / sum(per[(M_e, "every")]["nodes"])

    def mrange(sel, M_e=M0):
        a, b = min(per[(M_e, sel)]["M"]), max(per[(M_e, sel)]["M"])
        return str(a) if a == b else f"{a}-{b}"

    verdict = []
    for M_e in budgets:
        for sel in ("logspace", "refine"):
            r = summary[f"M{M_e}/{sel}"]
            rs = summary[f"M{M_e}/{sel}/same_nodes"]
            verdict.append(f"{sel} at M_every={M_e}: {r:.2f}x over all branched nodes, {rs:.2f}x on the same nodes")
    interp = (
        "Interpretation. At an equal number of continuations, per-node error vs exact enumeration: "
        + "; ".join(verdict) + " "
        f"(ratio > 1: the selector's per-node error is lower). The gain comes from the larger M per node (the "
        f"estimator is the same): the rollouts here are short (mean "
        f"{statistics.mean(lengths):.1f} completion tokens, horizon {L}), so logspace still branches {cov('logspace'):.0%} "
        f"of every's nodes and can only raise M from {M0} to {mrange('logspace')}; refine branches {cov('refine'):.0%} of them "
        f"at M {mrange('refine')} after spending part of the budget on value queries. Per-node error falls slowly with M "
        "(Monte Carlo noise ~1/sqrt(M) plus the shrinkage of the naive cosine toward 0), so a 1.5-2x larger M buys a "
        "modest reduction, and nodes a selector does not branch get no estimate at all. This measures per-node "
        "precision only, not whether refine finds the decisive tokens; the selectors' room grows with rollout length "
        "(O(log T) nodes against T, benchmark 4), which this 6-token world cannot show."
    )
    md += ["", interp]
    parts = [f"M_every={M_e}: logspace {summary[f'M{M_e}/logspace']:.2f} ({summary[f'M{M_e}/logspace/same_nodes']:.2f} on the same nodes), "
             f"refine {summary[f'M{M_e}/refine']:.2f} ({summary[f'M{M_e}/refine/same_nodes']:.2f})" for M_e in budgets]
    headline = "error ratio every/selector at equal continuations (>1 = selector more precise per node): " + "; ".join(parts)
    return {"name": "estimator", "headline": headline, "summary": summary, "markdown": "\n".join(md),
            "per": {f"{k[0]}/{k[1]}": v for k, v in per.items()}, "L": L, "seeds": seeds}


if __name__ == "__main__":
    C.cli(run, "estimator error vs exact enumeration at equal continuation budget")
