"""Benchmark 1 (vLLM): gradalign's rollout and branch stages on the vLLM backend vs a bare
`LLM.generate` over the same token workload.

Needs vLLM (`bash .ci/vllm-cpu --build-only` builds `.venv-vllm`; `bench/run_all.py` runs this file
with that interpreter when the current one has no vLLM).

Workload: what the pipeline samples for the demo config with `sampling.backend = "vllm"`: the
rollout stage's prompts and the branch stage's prompts / seeds / per-continuation allowances,
captured by running the public pipeline stages (`gradalign.pipeline`: `sample_rollouts`,
`select_nodes`, `score_rollouts`, `plan_branches`, `run_branches`) once on `load_resources(cfg)`,
with the sampler wrapped in a recorder (`dataclasses.replace(res, sampler=...)`). One `LLM` engine
(the `VLLMSampler`'s own) serves every variant, and its prefix cache is reset before every timed
call, so no variant inherits another's cached prefixes.

Variants, timed interleaved (medians over repeats):
  stage    the pipeline stage (`sample_rollouts` / `run_branches`: sampling, decoding, grading,
           bookkeeping; every repeat gets a fresh grader pool, so no verdict is cached from before)
  sample   `VLLMSampler.sample` alone: one request per continuation, each with its own seed
  bare     `LLM.generate` with one unseeded request per sequence (same prompts, same max_tokens)
  bare-n   `LLM.generate` with identical (prompt, allowance) pairs merged into one request with
           `n` = their count: the idiomatic way to ask vLLM for M continuations of a branch prompt
Tokens: per sequence, generated tokens until EOS (included) or its allowance. Ratio = tokens/s of
the variant / tokens/s of bare. Every repeat draws fresh random numbers (seeds shift per repeat).
"""

from __future__ import annotations

import collections
import dataclasses
import time

import _common as C


def _count_outputs(results) -> int:
    return sum(len(o.token_ids) for r in results for o in r.outputs)


def run(quick: bool = False, threads: int = 2) -> dict:
    from vllm import SamplingParams as VSP
    from vllm.inputs import TokensPrompt

    import gradalign
    from gradalign.graders import GraderPool
    from gradalign.pipeline import (
        load_resources,
        plan_branches,
        run_branches,
        sample_rollouts,
        sampling_params,
        score_rollouts,
        select_nodes,
    )

    repeats = 3 if quick else 5
    cfg = gradalign.load_config(C.DEMO_CONFIG)
    cfg = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, backend="vllm"))
    if quick:
        cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, limit=2))
    t0 = time.perf_counter()
    loaded = load_resources(cfg)
    startup_s = time.perf_counter() - t0
    sampler = loaded.sampler  # a gradalign.sampling.vllm.VLLMSampler
    llm = sampler.llm
    params = sampling_params(cfg)
    rows = list(loaded.task.rows)
    recorder = C.RecordingSampler(sampler)
    graders = [loaded.grader]
    try:
        def resources(seed_shift: int):
            """The loaded resources with the recorded sampler, a fresh grader pool (no verdict cached by
            an earlier repeat) and the run seed shifted by `seed_shift`."""
            pool = GraderPool(cfg.task.grader, timeout_s=cfg.task.grader_timeout_s, answer_field=cfg.task.answer_field,
                              answer_delimiter=cfg.task.answer_delimiter)
            graders.append(pool)
            run_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=cfg.run.seed + seed_shift))
            return dataclasses.replace(loaded, cfg=run_cfg, sampler=recorder, grader=pool)

        res = resources(0)
        rollouts = sample_rollouts(res, rows)
        plans = select_nodes(res, rollouts)
        scores = score_rollouts(res, rollouts, plans)
        branches = plan_branches(res, rollouts, plans, scores.dists)
        run_branches(res, branches)
        assert len(recorder.calls) == 2, "expected one sample() call per stage (logspace selector, adaptive M off)"
        roll_w, br_w = recorder.calls
        roll_w = (roll_w[0], roll_w[1], [params.max_new_tokens] * len(roll_w[0]))
        br_w = br_w[:3]

        cur = {"r": 0, "res": res}

        def before(r):
            llm.reset_prefix_cache()
            cur["res"].grader.close()
            cur["res"] = resources(1000 * r)
            cur["r"] = r

        def reseed(seeds):
            return [(s + cur["r"] * 0x9E3779B97F4A7C15) % 2**63 for s in seeds]

        def stage(fn):
            def go():
                recorder.calls.clear()
                fn(cur["res"])
                return C.count_tokens(recorder.calls[-1][3])
            return go

        def sample_only(w):
            return lambda: C.count_tokens(sampler.sample(w[0], reseed(w[1]), w[2]))

        def bare(w):
            def go():
                keep = [i for i, a in enumerate(w[2]) if a > 0]
                reqs = [TokensPrompt(prompt_token_ids=list(w[0][i])) for i in keep]
                sps = [VSP(n=1, temperature=params.temperature, max_tokens=int(w[2][i]), detokenize=False) for i in keep]
                return _count_outputs(llm.generate(reqs, sps, use_tqdm=False))
            return go

        def bare_n(w):
            def go():
                groups = collections.Counter((tuple(w[0][i]), int(w[2][i])) for i in range(len(w[0])) if w[2][i] > 0)
                reqs = [TokensPrompt(prompt_token_ids=list(p)) for p, _ in groups]
                sps = [VSP(n=n, temperature=params.temperature, max_tokens=a, detokenize=False) for (_, a), n in groups.items()]
                return _count_outputs(llm.generate(reqs, sps, use_tqdm=False))
            return go

        results = {}
        for name, w, fn, rep in (
            ("rollout", roll_w, lambda res: sample_rollouts(res, rows), repeats * 2),
            ("branch", br_w, lambda res: run_branches(res, branches), repeats),
        ):
            fns = {"stage": stage(fn), "sample": sample_only(w), "bare": bare(w), "bare-n": bare_n(w)}
            times, res_ = C.interleaved(fns, rep, before=before)
            groups = len({(tuple(p), a) for p, a in zip(w[0], w[2]) if a > 0})
            results[name] = {"n_prompts": len(w[0]), "distinct_prompts": groups, "repeats": rep, "times": times, "tokens": res_}
            print(f"[vllm rollout bench] {name}: " + ", ".join(f"{n} {C.median(t):.3f}s" for n, t in times.items()), flush=True)
    finally:
        for g in graders:
            g.close()
        sampler.close()
    return _report(results, params, threads, quick, startup_s)


def _report(results, params, threads, quick, startup_s) -> dict:
    import vllm

    variants = ("stage", "sample", "bare", "bare-n")
    labels = {"stage": "gradalign stage (sample + grade)", "sample": "VLLMSampler.sample alone (seeded requests)",
              "bare": "bare LLM.generate, one request per sequence", "bare-n": "bare LLM.generate, n per distinct prompt"}
    rows, summary = [], {}
    for st, r in results.items():
        tps = {n: C.median([k / t for k, t in zip(r["tokens"][n], r["times"][n])]) for n in variants}
        for n in variants:
            paired = [(k / t) / (kb / tb) for k, t, kb, tb in zip(r["tokens"][n], r["times"][n], r["tokens"]["bare"], r["times"]["bare"])]
            rows.append([st, labels[n], r["n_prompts"], int(C.median(r["tokens"][n])), C.median(r["times"][n]),
                         tps[n], tps[n] / tps["bare"], "" if n == "bare" else f"{min(paired):.2f}-{max(paired):.2f}"])
            summary[f"{st}/{n}"] = tps[n] / tps["bare"]
    comb = {}
    for n in variants:
        comb[n] = sum(C.median(r["tokens"][n]) for r in results.values()) / sum(C.median(r["times"][n]) for r in results.values())
    for n in variants:
        rows.append(["rollout+branch", labels[n], sum(r["n_prompts"] for r in results.values()), "", "", comb[n], comb[n] / comb["bare"], ""])
        summary[f"combined/{n}"] = comb[n] / comb["bare"]
    s = summary["combined/stage"]
    verdict = "met" if s >= 0.9 else "MISSED"
    br = results["branch"]
    md = [
        "## 1b. Rollout stage vs raw backend (vLLM `LLM.generate`)",
        "",
        f"vLLM {vllm.__version__} ({'CPU build' if _on_cpu() else 'GPU'}), engine start-up {startup_s:.0f} s (not timed below). "
        f"Workload{' (quick: 2 of the 6 demo questions)' if quick else ''}: the demo config with `sampling.backend = \"vllm\"`: "
        f"{results['rollout']['n_prompts']} rollouts (max_new_tokens {params.max_new_tokens}) and {br['n_prompts']} branch "
        f"continuations over {br['distinct_prompts']} distinct (prompt, allowance) pairs; {threads} torch threads. Medians of "
        f"{results['rollout']['repeats']} (rollout) / {br['repeats']} (branch) interleaved repeats, prefix cache reset before "
        "each call; ratio = tokens/s / bare tokens/s (goal >= 0.9 for the stage).",
        "",
        C.md_table(["stage", "variant", "sequences", "tokens (median)", "time s (median)", "tokens/s (median)",
                    "ratio vs bare", "same-repeat ratio (min-max)"], rows),
        "",
        f"Interpretation. On vLLM, gradalign's rollout+branch stage runs at {s:.2f}x the tokens/s of a bare `LLM.generate` "
        f"over the same sequences (goal >= 0.9: {verdict}); `VLLMSampler.sample` alone {summary['combined/sample']:.2f}x. "
        f"Asking for `n` continuations per distinct prompt instead of one request per continuation runs at "
        f"{summary['combined/bare-n']:.2f}x: vLLM fans `n` out into child requests that share the prompt's cached "
        "prefix, which is what separate requests get from prefix caching too, so gradalign keeps one request per "
        "continuation and with it one seed per continuation (reproducible regardless of batching).",
    ]
    headline = f"vLLM rollout+branch stage {s:.2f}x bare LLM.generate (sampler alone {summary['combined/sample']:.2f}x; n-per-prompt bare {summary['combined/bare-n']:.2f}x)"
    return {"name": "rollout_vllm", "headline": headline, "summary": summary, "markdown": "\n".join(md), "raw": results,
            "startup_s": startup_s}


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


if __name__ == "__main__":
    C.cli(run, "gradalign rollout/branch stages on vLLM vs bare LLM.generate")
