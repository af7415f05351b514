"""Benchmark 2: teacher/student scoring (`scoring.score`, keep_full=True) vs a bare batched forward
+ log_softmax over the same sequences.

Workload: every `score` call the engine's `_score` stage makes for the demo config (the student and
each of the four teacher configs over groups of up to 16 rollouts, teacher prefixes included),
captured by running `_score` once. Variants, interleaved, medians over repeats:
  score   `scoring.score(model, reqs, temperature, pad_id, keep_full=True)` for every captured call
  bare    per captured call: right-pad the same sequences, one `model(input_ids, attention_mask)`
          forward, `log_softmax(logits.float() / temperature, -1)` over the whole padded batch
  fwd     only the forward `score` runs (left padding, logits_to_keep), without its reductions
  stage   the whole `_score` stage (score calls + per-token KL/JSD/cosine + token-table rows), for
          context: what the engine spends around the scoring itself
Ratio = bare time / score time (1.0 = scoring costs what a bare forward costs; goal >= 0.8).
"""

from __future__ import annotations

import _common as C


def _bare(model, reqs, temperature, pad_id):
    import torch

    seqs = [list(r.prefix) + list(r.completion) for r in reqs]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits
        return torch.log_softmax(logits.float() / temperature, dim=-1)


def _forward_like_score(model, reqs, pad_id):
    """Only the forward that `score` runs (left padding, position ids, logits_to_keep = T+1),
    without its per-row float64 log_softmax / entropy / gather / copies: splits score's time."""
    import torch

    seqs = [list(r.prefix) + list(r.completion) for r in reqs]
    width = max(len(s) for s in seqs)
    tmax = max(len(r.completion) for r in reqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=tmax + 1).logits


def run(quick: bool = False, threads: int = 2) -> dict:
    import gradalign
    from gradalign import engine, scoring

    repeats = 7 if quick else 15
    cfg = gradalign.load_config(C.DEMO_CONFIG)
    world = engine._load_world(cfg)
    try:
        rollouts = engine._sample_rollouts(world, list(world.task.rows))
        plans = engine._select(world, rollouts)
        calls = []
        real = scoring.score

        def recording(model, reqs, **kw):
            calls.append((model, list(reqs), kw))
            return real(model, reqs, **kw)

        scoring.score = recording
        try:
            engine._score(world, rollouts, plans, {}, {})
        finally:
            scoring.score = real
        assert all(kw.get("keep_full") for _, _, kw in calls)

        def do_score():
            for model, reqs, kw in calls:
                scoring.score(model, reqs, **kw)

        def do_bare():
            for model, reqs, kw in calls:
                _bare(model, reqs, kw.get("temperature", 1.0), kw.get("pad_id", 0))

        def do_fwd():
            for model, reqs, kw in calls:
                _forward_like_score(model, reqs, kw.get("pad_id", 0))

        def do_stage():
            engine._score(world, rollouts, plans, {}, {})

        times, _ = C.interleaved({"score": do_score, "bare": do_bare, "fwd": do_fwd, "stage": do_stage}, repeats)
        print("[scoring bench] " + ", ".join(f"{n} {C.median(t) * 1e3:.1f} ms" for n, t in times.items()), flush=True)
    finally:
        world.grader.close()

    n_seq = sum(len(r) for _, r, _ in calls)
    n_tok = sum(len(q.prefix) + len(q.completion) for _, r, _ in calls for q in r)
    n_comp = sum(len(q.completion) for _, r, _ in calls for q in r)
    med = {n: C.median(t) for n, t in times.items()}
    ratio = med["bare"] / med["score"]
    rows = [
        ["bare forward + log_softmax", C.median(times["bare"]) * 1e3, n_tok / med["bare"], 1.0],
        ["scoring.score (keep_full=True)", med["score"] * 1e3, n_tok / med["score"], ratio],
        ["score's forward alone (no reductions)", med["fwd"] * 1e3, n_tok / med["fwd"], med["bare"] / med["fwd"]],
        ["whole _score stage (context)", med["stage"] * 1e3, n_tok / med["stage"], med["bare"] / med["stage"]],
    ]
    md = [
        "## 2. Teacher scoring vs a bare batched forward",
        "",
        f"Workload: the demo's `_score` stage: {len(calls)} `score` calls (student + 4 teacher configs per group "
        f"of up to 16 rollouts), {n_seq} sequences, {n_tok:,} tokens ({n_comp:,} completion positions scored). "
        f"Medians of {repeats} interleaved repeats, {threads} torch threads. Ratio = bare time / variant time (goal >= 0.8).",
        "",
        C.md_table(["variant", "time ms (median)", "tokens/s", "ratio (bare / variant)"], rows),
    ]
    red = med["score"] - med["fwd"]
    interp = (
        f"Interpretation. `scoring.score` runs at {ratio:.2f}x a bare forward + log_softmax over the same sequences, "
        f"which {'meets' if ratio >= 0.8 else 'MISSES'} the >= 0.8 goal. Its forward alone is {med['bare'] / med['fwd']:.2f}x "
        f"the bare one (left padding with logits_to_keep computes logits only for the completion positions); the gap is "
        f"the per-sequence reductions after it ({red * 1e3:.0f} ms of {med['score'] * 1e3:.0f} ms: a float64 log_softmax per row, "
        f"entropy, gather and CPU copies of the [T, V] matrix that keep_full returns). The whole `_score` stage adds "
        f"{(med['stage'] - med['score']) * 1e3:.0f} ms on top (per-token KL/JSD/cosine in float64 and one Python dict per token "
        f"x config for the tokens table), so the stage as a whole runs at {med['bare'] / med['stage']:.2f}x bare."
    )
    md += ["", interp]
    headline = f"scoring.score {ratio:.2f}x bare forward+log_softmax (whole _score stage {med['bare'] / med['stage']:.2f}x)"
    return {"name": "scoring", "headline": headline, "summary": {"score": ratio, "stage": med["bare"] / med["stage"]},
            "markdown": "\n".join(md), "times": times, "n_calls": len(calls), "n_seq": n_seq, "n_tok": n_tok}


if __name__ == "__main__":
    C.cli(run, "gradalign scoring vs bare forward + log_softmax")
