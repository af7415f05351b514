"""Benchmark 8: where each node selector puts its nodes on the embedded world, at a fixed budget.

The embedded addition world writes its sum column by column ("8+5+1=14,4+3+1=8"), and every row carries
the reference `solution`. Two kinds of decisive token, both mid-chain, are located exactly from the text
(the world's tokenizer has one token per character):

- first mistake: in an incorrect rollout, the first position where the completion departs from the
  reference solution (a misread operand digit, a wrong column sum, a dropped carry): the token at which
  the student's success collapses, so V(t+1) - V(t) is large there;
- carry decisions: a column that follows one summing to 10 or more must start its carry-in ("+1"), so the
  token right after its second digit is "+" (carry) or "=" (dropped carry). After a column summing to
  exactly 10 this is where `teacher-flawed` is wrong (it drops that carry): its error sites.

The answer line ("#### 8418") at the end only copies digits already written.

The student samples the demo's rollouts once (`task.limit` questions x 2, temperature 1); then, for
each selector under the same per-rollout token budget (priced as the run prices it: actual candidates
x M continuations of at most max_new_tokens - t - 1 tokens, refine's value queries included), the
pipeline's own selection, scoring, candidate building and budget fit run (`select_nodes`,
`score_rollouts`, `plan_branches`, `fit_branches`: everything but the branch continuations), and the
kept nodes are compared with those tokens: incorrect rollouts whose first mistake is branched, carry
decisions branched, the flawed teacher's error sites branched, and the share of nodes on the answer line.

Run alone: `python bench/bench_placement.py [--quick] [--threads 2]` (about 4 min on 2 busy CPU cores).
"""

from __future__ import annotations

import dataclasses
import re
import time

import _common as C

SELECTORS = (("logspace k=1", "logspace", 1), ("logspace k=2", "logspace", 2), ("stride:8", "stride:8", 1),
             ("every", "every", 1), ("refine k=1", "refine", 1), ("entropy", "entropy", 1))


def carry_decisions(text: str) -> tuple[list[int], list[int]]:
    """(positions of every carry decision, those after a column summing to exactly 10: the flawed
    teacher's error sites) in a completion, as character offsets (one token per character)."""
    body = text.split("\n", 1)[0]
    every, tens, off, prev = [], [], 0, None
    for col in body.split(","):
        m = re.fullmatch(r"(\d)\+(\d)(\+1)?=(\d+)", col)
        if m is None:
            break
        if prev is not None and prev >= 10:
            pos = off + 3  # the character after "a+b"
            every.append(pos)
            if prev == 10:
                tens.append(pos)
        prev = int(m.group(4))
        off += len(col) + 1
    return every, tens


def first_mistake(text: str, solution: str) -> int | None:
    """The first character offset where `text` departs from the reference `solution` (None if it does not)."""
    for i, (a, b) in enumerate(zip(text, solution)):
        if a != b:
            return i
    return None if len(text) == len(solution) else min(len(text), len(solution))


def run(quick: bool = False, threads: int = 2) -> dict:
    from gradalign.config import apply_overrides, load_config, parse_overrides
    from gradalign.pipeline import fit_branches, load_resources, plan_branches, sample_rollouts, score_rollouts, select_nodes

    C.setup_threads(threads)
    budget, M, K = 3000, 4, 4
    base = ["task.limit=%d" % (8 if quick else 24), "sampling.rollouts_per_question=2", f"branching.continuations={M}",
            f"branching.budget_tokens={budget}", "branching.value_continuations=4", f"branching.refine_nodes={K}"]
    cfg0 = apply_overrides(load_config(C.DEMO_CONFIG), parse_overrides(base))
    res = load_resources(cfg0)
    try:
        rollouts = sample_rollouts(res, list(res.task.rows))
        tok = res.tokenizer
        texts = [tok.decode(list(r.token_ids)) for r in rollouts]
        assert all(len(t) == len(r.token_ids) for t, r in zip(texts, rollouts)), "one character per token expected"
        carries = [carry_decisions(t) for t in texts]
        mistakes = [None if r.correct else first_mistake(t, str(r.row["solution"])) for t, r in zip(texts, rollouts)]
        answer_at = [t.find("####") if "####" in t else len(t) for t in texts]
        rows, per = [], {}
        for label, kind, k in SELECTORS:
            cfg = apply_overrides(cfg0, parse_overrides([f"branching.selector={kind}", f"branching.nodes_per_window={k}"]))
            r2 = dataclasses.replace(res, cfg=cfg)
            t0 = time.perf_counter()
            plans = select_nodes(r2, rollouts)
            t_sel = time.perf_counter() - t0
            scores = score_rollouts(r2, rollouts, plans)
            plans, _ = fit_branches(r2, rollouts, plans, plan_branches(r2, rollouts, plans, scores.dists))
            hit = hit_ten = n_all = n_ten = nodes = on_answer = wrong = found = 0
            for p, (every, tens), a, mis in zip(plans, carries, answer_at, mistakes):
                pos = set(p.positions)
                nodes += len(pos)
                on_answer += sum(t >= a for t in pos)
                n_all, n_ten = n_all + len(every), n_ten + len(tens)
                hit += len(pos & set(every))
                hit_ten += len(pos & set(tens))
                if mis is not None:
                    wrong += 1
                    found += mis in pos
            spent = sum(p.spent_tokens for p in plans) / len(plans)
            per[label] = {"first_mistake": found / max(1, wrong), "carry": hit / max(1, n_all), "flawed_sites": hit_ten / max(1, n_ten),
                          "nodes": nodes / len(plans), "answer_share": on_answer / max(1, nodes), "spent": spent, "select_s": t_sel}
            x = per[label]
            rows.append([label, f"{x['nodes']:.1f}", f"{x['spent']:,.0f}", f"{100 * x['first_mistake']:.0f}% ({found}/{wrong})",
                         f"{100 * x['carry']:.0f}% ({hit}/{n_all})", f"{100 * x['flawed_sites']:.0f}% ({hit_ten}/{n_ten})",
                         f"{100 * x['answer_share']:.0f}%", f"{t_sel:.1f}"])
    finally:
        res.grader.close()
        res.sampler.close()
    mean_t = sum(len(r.token_ids) for r in rollouts) / len(rollouts)
    correct = sum(r.correct for r in rollouts)
    md = "\n".join([
        f"{len(rollouts)} rollouts of {len(rollouts) // 2} questions ({correct} correct, mean length {mean_t:.1f} tokens), "
        f"budget {budget:,} continuation tokens per rollout, M = {M}, max_new_tokens 64, 4 configs (top_k 2), "
        f"refine/entropy K = {K}, refine value_continuations 4.",
        "",
        C.md_table(["selector", "nodes / rollout", "tokens spent / rollout", "first mistake branched (incorrect rollouts)",
                    "carry decisions branched", "flawed teacher's error sites branched", "nodes on the answer line",
                    "select s"], rows),
    ])
    best = max(per, key=lambda s: per[s]["first_mistake"])
    head = (f"placement at {budget:,} tokens/rollout, first mistake branched: " +
            ", ".join(f"{s} {100 * v['first_mistake']:.0f}%" for s, v in per.items()) + f" (best: {best})")
    return {"name": "placement", "markdown": md, "headline": head, "per_selector": per}


if __name__ == "__main__":
    C.cli(run, "where each selector puts its nodes on the embedded world at a fixed budget")
