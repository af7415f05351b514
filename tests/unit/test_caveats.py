"""gradalign.analysis.run_caveats: which warnings a run gets, decided in one place."""

from __future__ import annotations

import math

import pandas as pd

from gradalign.analysis import CAVEAT_KINDS, run_caveats
from gradalign.tables import Tables


def _tables(n_q: int, correct, truncated=None, cos=None, selection=None) -> Tables:
    qids = [f"q{i}" for i in range(n_q) for _ in range(2)]
    r = pd.DataFrame({"question_id": qids, "rollout_id": [0, 1] * n_q, "correct": correct,
                      "truncated": truncated if truncated is not None else [False] * len(qids)})
    cos = cos if cos is not None else [0.5] * len(qids)
    a = pd.DataFrame({"question_id": qids, "cos": cos, "reason": ["" if c == c else "zero_ideal" for c in cos]})
    return Tables(r, pd.DataFrame(), pd.DataFrame(), a, {"selection": selection or []})


def test_clean_run_has_no_caveats():
    t = _tables(20, [True, False] * 20)
    assert run_caveats(t) == ()


def test_each_caveat_fires_with_its_counts():
    n = 5
    correct = [True, True, False, False] + [True, False] * (n - 2)  # q0 all right, q1 all wrong
    truncated = [False] * (2 * n)
    truncated[3] = True
    cos = [math.nan] * 6 + [0.1] * (2 * n - 6)  # 6 of 10 undefined
    sel = [{"nodes": 1, "asked": 4}, {"nodes": 4, "asked": 4}]
    cs = {c.kind: c for c in run_caveats(_tables(n, correct, truncated, cos, sel))}
    assert tuple(cs) == CAVEAT_KINDS  # every kind, in the documented order
    assert (cs["few_questions"].count, cs["few_questions"].total) == (5, 20)
    assert (cs["solve_rate_extreme"].count, cs["solve_rate_extreme"].total) == (2, 5)
    assert "1 all wrong, 1 all right" in cs["solve_rate_extreme"].message
    assert (cs["undefined_rows"].count, cs["undefined_rows"].total) == (6, 10)
    assert "zero_ideal 6" in cs["undefined_rows"].message
    assert (cs["truncated_rollouts"].count, cs["truncated_rollouts"].total) == (1, 10)
    assert (cs["budget_short"].count, cs["budget_short"].total) == (1, 2) and "5 of 8 nodes" in cs["budget_short"].message


def test_half_undefined_is_not_most():
    cos = [math.nan, 0.2] * 20
    assert "undefined_rows" not in {c.kind for c in run_caveats(_tables(20, [True, False] * 20, cos=cos))}


def test_combined_runs_read_every_manifest():
    t = _tables(20, [True, False] * 20)
    t = Tables(t.rollouts, t.tokens, t.nodes, t.alignment,
               {"runs": [{"selection": [{"nodes": 2, "asked": 2}]}, {"selection": [{"nodes": 0, "asked": 3}]}]})
    (c,) = run_caveats(t)
    assert c.kind == "budget_short" and (c.count, c.total) == (1, 2)
