"""Benchmark 2: teacher/student scoring (`scoring.score`) vs a bare batched forward + log_softmax over
the same sequences.

Workload: every `score` call the pipeline's scoring stage (`gradalign.pipeline.score_rollouts`)
makes for the demo config (the student and each of the four teacher configs over groups of up to 16
rollouts, teacher prefixes included). `_score_calls` rebuilds those calls from public functions
(`scoring.ScoreRequest`, `tasks.render`, `tasks.encode_prefix`) the way the stage builds them, and
the benchmark checks that they are the stage's own: the stage and the rebuilt calls run once on
models wrapped in `_ForwardLog` (handed in through `dataclasses.replace(res, student=..., teachers=...)`)
and must feed the models identical forward inputs, in the same order.
Variants, interleaved, medians over repeats:
  score   `scoring.score(model, reqs, temperature, pad_id, vocab_size)` for every captured call: the
          forward to final rows, then float32 LM-head chunks reduced to log p(y_t) and entropy, and
          float64 node rows (keep_full=False: what a caller gets; the [T, V] matrix only in tests)
  bare    per captured call: right-pad the same sequences, one `model(input_ids, attention_mask)`
          forward, `log_softmax(logits.float() / temperature, -1)` over the whole padded batch
  fwd     the forward with the logits `score` needs (left padding, logits_to_keep), no reductions
  stage   the whole `score_rollouts` stage (`forward_rows` per model, `pair_stats` per teacher:
          both models' chunks with KL both ways, JSD and cosine, node rows, token-table columns),
          for context: what the pipeline spends around the scoring itself
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
    """The forward with the logits `score` needs (left padding, position ids, logits_to_keep = T+1),
    without its chunked log_softmax / entropy / gather / node rows: splits score's time."""
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


class _ForwardLog:
    """A model whose forward inputs are logged (name, input_ids, attention_mask) in the shared `log`;
    every other attribute is the model's own. Used once, to check `_score_calls` against the stage."""

    def __init__(self, model, name: str, log: list):
        self.model, self.name, self.log = model, name, log

    def __call__(self, *a, **k):
        self.log.append((self.name, k["input_ids"].cpu().clone(), k["attention_mask"].cpu().clone()))
        return self.model(*a, **k)

    def __getattr__(self, attr):
        return getattr(self.model, attr)


def _score_calls(res, rollouts, plans) -> list[tuple]:
    """(model, requests, keyword arguments) of every `scoring.score` call `score_rollouts(res,
    rollouts, plans)` makes, in its order: per group of rollouts (its group size rule), the student
    over prompt + completion with the plan's nodes, then each teacher over its rendered context +
    prompt + completion."""
    from gradalign.scoring import ScoreRequest
    from gradalign.tasks import encode_prefix, prefix_options, render

    cfg, tok = res.cfg, res.tokenizer
    kw = {"temperature": cfg.sampling.temperature, "pad_id": tok.pad_token_id, "keep_full": False, "vocab_size": len(tok)}
    V = res.student.get_output_embeddings().weight.shape[0]
    t_max = max((len(r.token_ids) for r in rollouts), default=1)
    group = max(1, min(16, (512 << 20) // (8 * max(t_max, 1) * V)))
    calls = []
    for g0 in range(0, len(rollouts), group):
        idx = list(range(g0, min(g0 + group, len(rollouts))))
        calls.append((res.student, [ScoreRequest(rollouts[i].prompt_ids, rollouts[i].token_ids, plans[i].positions) for i in idx], kw))
        for teacher in res.teachers:
            treq = []
            for i in idx:
                r = rollouts[i]
                ctx = render(teacher.context, r.row, what=f"context of teacher {teacher.name!r}", row_id=r.question_id)
                treq.append(ScoreRequest(encode_prefix(tok, ctx, r.prompt_text, **prefix_options(cfg.task)), r.token_ids, plans[i].positions))
            calls.append((teacher.model, treq, kw))
    return calls


def _check_calls(res, rollouts, plans, calls) -> None:
    """Assert that the rebuilt calls feed the models exactly the forward inputs, in the same order,
    that `score_rollouts` does (both run once on `_ForwardLog`-wrapped models)."""
    import dataclasses

    import torch

    from gradalign import scoring
    from gradalign.pipeline import score_rollouts

    def wrapped(log):
        w = {id(res.student): _ForwardLog(res.student, "student", log)}
        for t in res.teachers:
            w.setdefault(id(t.model), _ForwardLog(t.model, t.model_ref, log))
        return w

    stage_log: list = []
    w = wrapped(stage_log)
    logged = dataclasses.replace(res, student=w[id(res.student)],
                                 teachers=tuple(dataclasses.replace(t, model=w[id(t.model)]) for t in res.teachers))
    score_rollouts(logged, rollouts, plans)
    calls_log: list = []
    w = wrapped(calls_log)
    for model, reqs, kw in calls:
        scoring.score(w[id(model)], reqs, **kw)

    def same(a, b) -> bool:
        return a.shape == b.shape and bool(torch.equal(a, b))

    assert len(stage_log) == len(calls_log) and all(
        a[0] == b[0] and same(a[1], b[1]) and same(a[2], b[2]) for a, b in zip(stage_log, calls_log)
    ), "the rebuilt score calls differ from score_rollouts' own: update _score_calls"


def run(quick: bool = False, threads: int = 2) -> dict:
    import gradalign
    from gradalign import scoring
    from gradalign.pipeline import load_resources, sample_rollouts, score_rollouts, select_nodes

    repeats = 7 if quick else 15
    cfg = gradalign.load_config(C.DEMO_CONFIG)
    res = load_resources(cfg)
    try:
        rollouts = sample_rollouts(res, list(res.task.rows))
        plans = select_nodes(res, rollouts)
        calls = _score_calls(res, rollouts, plans)
        _check_calls(res, rollouts, plans, calls)

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
            score_rollouts(res, rollouts, plans)

        times, _ = C.interleaved({"score": do_score, "bare": do_bare, "fwd": do_fwd, "stage": do_stage}, repeats)
        print("[scoring bench] " + ", ".join(f"{n} {C.median(t) * 1e3:.1f} ms" for n, t in times.items()), flush=True)
    finally:
        res.grader.close()
        res.sampler.close()

    n_seq = sum(len(r) for _, r, _ in calls)
    n_tok = sum(len(q.prefix) + len(q.completion) for _, r, _ in calls for q in r)
    n_comp = sum(len(q.completion) for _, r, _ in calls for q in r)
    med = {n: C.median(t) for n, t in times.items()}
    ratio = med["bare"] / med["score"]
    rows = [
        ["bare forward + log_softmax", C.median(times["bare"]) * 1e3, n_tok / med["bare"], 1.0],
        ["scoring.score", med["score"] * 1e3, n_tok / med["score"], ratio],
        ["score's forward alone (no reductions)", med["fwd"] * 1e3, n_tok / med["fwd"], med["bare"] / med["fwd"]],
        ["whole score_rollouts stage (context)", med["stage"] * 1e3, n_tok / med["stage"], med["bare"] / med["stage"]],
    ]
    md = [
        "## 2. Teacher scoring vs a bare batched forward",
        "",
        f"Workload: the demo's scoring stage (`score_rollouts`): {len(calls)} `score` calls (student + 4 teacher configs per group "
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
        f"what it does after the forward ({red * 1e3:.0f} ms of {med['score'] * 1e3:.0f} ms: the LM head applied in float32 "
        f"chunks along T, each reduced to log p(y_t) and entropy, and float64 log-probs at the node rows). The whole "
        f"`score_rollouts` stage adds {(med['stage'] - med['score']) * 1e3:.0f} ms on top (per teacher both models' chunks "
        f"again for KL both ways, JSD and the distribution cosine, and the tokens table's column lists, one entry per "
        f"token x config), so the stage as a whole runs at {med['bare'] / med['stage']:.2f}x bare."
    )
    md += ["", interp]
    headline = f"scoring.score {ratio:.2f}x bare forward+log_softmax (whole score_rollouts stage {med['bare'] / med['stage']:.2f}x)"
    return {"name": "scoring", "headline": headline, "summary": {"score": ratio, "stage": med["bare"] / med["stage"]},
            "markdown": "\n".join(md), "times": times, "n_calls": len(calls), "n_seq": n_seq, "n_tok": n_tok}


if __name__ == "__main__":
    C.cli(run, "gradalign scoring vs bare forward + log_softmax")
