"""Benchmark 1: gradalign's rollout and branch stages vs a bare `model.generate` loop (HF).

Workload: exactly what the engine samples for the demo config (data/configs/demo.toml): the
rollout stage's prompts, and the branch stage's prompts / seeds / per-continuation allowances,
captured by running the engine's own stage functions (`_sample_rollouts`, `_select`, `_score`,
`_plan_branches`, `_run_branches`) once on a loaded world.

Variants, timed interleaved in one process (medians over repeats):
  stage      the engine stage itself: `_sample_rollouts` / `_run_branches` (sampling + decoding +
             grading + bookkeeping; the grader's verdict cache is cleared before every repeat)
  sample     `generation.sample` alone on the same prompts, seeds and allowances
  bare       `model.generate(do_sample=True, temperature=1, top_k=0, top_p=1)` over the same
             prompts, same batch size, same batches (sample's sort order), same max_new_tokens per
             batch; no per-row seeds
  ablation   `generation.sample` with its per-row Gumbel processor swapped (in this process only)
             for one batched torch.rand draw: isolates the cost of per-row generators

Tokens are counted identically for every variant: per continuation, tokens until EOS (included) or
its allowance, whichever comes first. Ratio = tokens/s of the variant / tokens/s of bare.
"""

from __future__ import annotations

import time

import _common as C


def _bare_generate(model, prompts, allow, batch_size, eos_id, pad_id):
    """A plain HF sampling loop over the same batches as generation.sample. Returns tokens counted
    until EOS (included) or allowance."""
    import torch
    from transformers import GenerationConfig

    order = sorted((i for i in range(len(prompts)) if allow[i] > 0), key=lambda i: (len(prompts[i]), -allow[i]))
    tokens = 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, width - len(prompts[i]) :] = torch.tensor(list(prompts[i]), dtype=torch.long)
            mask[r, width - len(prompts[i]) :] = 1
        cfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_beams=1,
                               max_new_tokens=max(allow[i] for i in idx), eos_token_id=eos_id, pad_token_id=pad_id)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
        for r, row in enumerate(out[:, width:].tolist()):
            toks = row[: allow[idx[r]]]
            tokens += toks.index(eos_id) + 1 if eos_id in toks else len(toks)
    return tokens


def _count(comps) -> int:
    """Tokens of generation.sample completions, counted as in _bare_generate (EOS included)."""
    return sum(len(c.token_ids) + int(c.ended_with_eos) for c in comps)


class _BatchedGumbel:
    """Ablation only: logits/temperature + Gumbel noise from ONE generator for the whole batch
    (what generation._GumbelPerRow does with one generator per row). Not reproducible per row."""

    def __init__(self, seeds, params, device):
        import torch

        self.params = params
        self.g = torch.Generator().manual_seed(int(seeds[0]) % (2**63) if seeds else 0)

    def __call__(self, input_ids, scores):
        import torch

        from gradalign.generation import truncate_logits

        scores = truncate_logits(scores.float() / self.params.temperature, self.params.top_k, self.params.top_p)
        u = torch.rand(scores.shape, generator=self.g, dtype=torch.float64)
        return scores + (-torch.log(-torch.log(u.clamp_(1e-300, 1.0 - 1e-16)))).to(scores.dtype)


def _processor_cost(batch: int, V: int, steps: int = 200) -> dict:
    """Per-decode-step cost of the per-row Gumbel processor vs HF's own sampling ops on [batch, V]."""
    import torch

    from gradalign.generation import SamplingParams, _GumbelPerRow

    scores = torch.randn(batch, V)
    proc = _GumbelPerRow(list(range(batch)), SamplingParams(), torch.device("cpu"))
    batched = _BatchedGumbel(list(range(batch)), SamplingParams(), None)
    out = {}
    for name, fn in (
        ("per-row Gumbel (gradalign)", lambda: proc(None, scores).argmax(-1)),
        ("batched Gumbel (ablation)", lambda: batched(None, scores).argmax(-1)),
        ("softmax + multinomial (HF do_sample)", lambda: torch.multinomial(torch.softmax(scores, -1), 1)),
    ):
        fn()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        out[name] = (time.perf_counter() - t0) / steps
    return out


def run(quick: bool = False, threads: int = 2) -> dict:
    import gradalign
    from gradalign import engine, generation

    import dataclasses

    repeats = 3 if quick else 5
    cfg = gradalign.load_config(C.DEMO_CONFIG)
    if quick:  # 2 of the demo's 6 questions: about a third of the workload
        cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, limit=2))
    world = engine._load_world(cfg)
    try:
        rows = list(world.task.rows)
        tok = world.tokenizer
        eos, pad = tok.eos_token_id, tok.pad_token_id
        params = engine._params(cfg)

        # capture the workloads and count the tokens each stage call generates
        calls: list[tuple] = []
        real_sample = world.sampler.sample

        def recording(prompts, seeds, max_new=None):
            comps = real_sample(prompts, seeds, max_new)
            calls.append((list(prompts), list(seeds), None if max_new is None else list(max_new), comps))
            return comps

        world.sampler.sample = recording
        grade_s = [0.0]
        real_grade = engine._grade

        def timed_grade(w, items):
            t0 = time.perf_counter()
            try:
                return real_grade(w, items)
            finally:
                grade_s[0] += time.perf_counter() - t0

        engine._grade = timed_grade

        rollouts = engine._sample_rollouts(world, rows)
        plans = engine._select(world, rollouts)
        assert len(calls) == 1, "demo selector is expected to sample nothing (logspace)"
        dists = engine._score(world, rollouts, plans, [], {})
        branches = engine._plan_branches(world, rollouts, plans, dists)
        n0 = len(calls)
        engine._run_branches(world, branches)
        assert len(calls) == n0 + 1, "expected one batched sample() call in the branch stage (adaptive M off)"
        roll_w = calls[0]
        br_w = calls[1]
        roll_allow = [params.max_new_tokens] * len(roll_w[0])
        calls.clear()

        def stage(fn):
            def go():
                calls.clear()
                grade_s[0] = 0.0
                fn()
                return _count(calls[-1][3]), grade_s[0]
            return go

        def sample_only(w, allow):
            return lambda: (_count(generation.sample(world.student, w[0], w[1], params, eos_id=eos, pad_id=pad, max_new=w[2])), 0.0)

        def ablation(w):
            def go():
                real = generation._GumbelPerRow
                generation._GumbelPerRow = _BatchedGumbel
                try:
                    return _count(generation.sample(world.student, w[0], w[1], params, eos_id=eos, pad_id=pad, max_new=w[2])), 0.0
                finally:
                    generation._GumbelPerRow = real
            return go

        def bare(w, allow):
            return lambda: (_bare_generate(world.student, w[0], allow, params.batch_size, eos, pad), 0.0)

        def clear_cache():
            world.grader._cache.clear()  # every repeat grades from scratch, as a fresh run does

        results = {}
        for stage_name, w, allow, stage_fn, rep in (
            ("rollout", roll_w, roll_allow, lambda: engine._sample_rollouts(world, rows), repeats * 3),
            ("branch", br_w, br_w[2], lambda: engine._run_branches(world, branches), repeats),
        ):
            fns = {
                "stage": stage(stage_fn),
                "sample": sample_only(w, allow),
                "ablation": ablation(w),
                "bare": bare(w, allow),
            }
            times, res = C.interleaved(fns, rep, before=clear_cache)
            results[stage_name] = {
                "n_prompts": len(w[0]),
                "repeats": rep,
                "times": times,
                "tokens": {n: [r[0] for r in res[n]] for n in fns},
                "grade_s": [r[1] for r in res["stage"]],
            }
            print(f"[rollout bench] {stage_name}: " + ", ".join(f"{n} {C.median(t):.3f}s" for n, t in times.items()), flush=True)
    finally:
        engine._grade = real_grade
        world.grader.close()

    V = world.student.get_output_embeddings().weight.shape[0]
    proc = _processor_cost(params.batch_size, V)
    return _report(results, proc, params, V, threads, quick)


def _tps(r, n):
    return C.median([k / t for k, t in zip(r["tokens"][n], r["times"][n])])


def _report(results, proc, params, V, threads, quick) -> dict:
    labels = {"stage": "gradalign stage (sample + grade)", "sample": "generation.sample alone",
              "ablation": "sample, batched Gumbel (ablation)", "bare": "bare model.generate"}
    rows = []
    summary = {}
    for st, r in results.items():
        bare_tps = _tps(r, "bare")
        for n in ("stage", "sample", "ablation", "bare"):
            tps = _tps(r, n)
            rows.append([st, labels[n], r["n_prompts"], int(C.median(r["tokens"][n])), C.median(r["times"][n]),
                         tps, tps / bare_tps])
            summary[f"{st}/{n}"] = tps / bare_tps
    # rollout + branch combined: total tokens / total time of medians
    comb = {}
    for n in ("stage", "sample", "ablation", "bare"):
        tok = sum(C.median(r["tokens"][n]) for r in results.values())
        t = sum(C.median(r["times"][n]) for r in results.values())
        comb[n] = tok / t
    for n in ("stage", "sample", "ablation", "bare"):
        rows.append(["rollout+branch", labels[n], sum(r["n_prompts"] for r in results.values()), "", "", comb[n], comb[n] / comb["bare"]])
        summary[f"combined/{n}"] = comb[n] / comb["bare"]
    br = results["branch"]
    grade = C.median(br["grade_s"])
    stage_t, samp_t, bare_t, abl_t = (C.median(br["times"][n]) for n in ("stage", "sample", "bare", "ablation"))
    per_row, batched, hf = proc["per-row Gumbel (gradalign)"], proc["batched Gumbel (ablation)"], proc["softmax + multinomial (HF do_sample)"]
    md = [
        "## 1. Rollout stage vs raw backend (HF `model.generate`)",
        "",
        f"Workload{' (quick: 2 of the 6 demo questions)' if quick else ''}: the demo config's rollout stage ({results['rollout']['n_prompts']} rollouts, max_new_tokens "
        f"{params.max_new_tokens}) and branch stage ({br['n_prompts']} continuations with their own allowances), "
        f"batch size {params.batch_size}, {threads} torch threads. Medians of {results['rollout']['repeats']} (rollout) / "
        f"{br['repeats']} (branch) interleaved repeats; ratio = tokens/s / bare tokens/s (goal >= 0.9 for the stage).",
        "",
        C.md_table(["stage", "variant", "sequences", "tokens (median)", "time s (median)", "tokens/s", "ratio vs bare"], rows),
        "",
        f"Where the branch stage's time goes (medians): stage {stage_t:.2f} s = sampling {samp_t:.2f} s "
        f"+ grading {grade:.2f} s + decoding text and bookkeeping {max(0.0, stage_t - samp_t - grade):.2f} s; bare generate {bare_t:.2f} s; "
        f"sampling with a batched Gumbel draw {abl_t:.2f} s.",
        "",
        f"Per decode step on a [{params.batch_size}, {V}] logit batch: per-row Gumbel processor {per_row * 1e3:.2f} ms, "
        f"batched Gumbel {batched * 1e3:.2f} ms, HF softmax + multinomial {hf * 1e3:.2f} ms.",
    ]
    headline = (f"rollout+branch stage {summary['combined/stage']:.2f}x bare generate "
                f"(sampling alone {summary['combined/sample']:.2f}x; branch stage {summary['branch/stage']:.2f}x)")
    return {"name": "rollout", "headline": headline, "summary": summary, "markdown": "\n".join(md),
            "raw": results, "processor_step_s": proc,
            "branch_split_s": {"stage": stage_t, "sample": samp_t, "grade": grade, "bare": bare_t, "ablation": abl_t}}


if __name__ == "__main__":
    C.cli(run, "gradalign rollout/branch stages vs bare HF generate")
