"""Tests for gradalign.selectors: position rules, budget accounting, and refine's search."""

from __future__ import annotations

import logging
import math

import pytest

from gradalign.selectors import (
    Budget,
    Cost,
    NodeChoice,
    RefineSelector,
    SelectionPlan,
    ValueObs,
    ValueQuery,
    branch_cost,
    logspace_positions,
    logspace_windows,
    make_selector,
    query_cost,
    stride_positions,
)

N = 10_000  # "n large": values given essentially exactly


def step_values(T: int, jumps: dict[int, float], base: float = 0.1):
    """V(t) = base + sum of jumps at positions < t, so V(t+1) - V(t) = jumps.get(t, 0)."""

    def v(t: int) -> float:
        return base + sum(d for p, d in jumps.items() if p < t)

    return v


def run(sel, v, outcome: int | None = None) -> tuple[SelectionPlan, list[tuple[int, ...]]]:
    """Drive a selector the way the engine does; position T gets the outcome with n=1."""
    rounds = []
    while qs := sel.pending():
        rounds.append(qs)
        answers = {}
        for t in qs:
            if t == sel.n_tokens:
                o = outcome if outcome is not None else round(v(t))
                answers[t] = ValueObs(o, 1)
            else:
                answers[t] = ValueObs(round(v(t) * N), N)
        sel.observe(answers)
    return sel.plan(), rounds


def recompute(plan: SelectionPlan, T: int, B: int, vc: int) -> tuple[int, int]:
    """Plan cost straight from the documented cost model (independent of the module)."""
    tokens = sum(B * max(1, T - n.position) for n in plan.nodes)
    conts = B * len(plan.nodes)
    for q in plan.queries:
        if q.position < T:
            tokens += vc * max(1, T - q.position)
            conts += vc
    return tokens, conts


def positions(kind, T, stride=None, npw=2, budget=Budget(), B=3):
    sel = make_selector(kind, stride, n_tokens=T, budget=budget, branch_continuations=B,
                        nodes_per_window=npw)
    return list(sel.plan().positions)


# ----------------------------------------------------------------------------- position rules


def test_every_positions():
    assert positions("every", 5) == [0, 1, 2, 3, 4]
    assert positions("every", 0) == []


@pytest.mark.parametrize(
    "T,s,expected",
    [
        (10, 4, [0, 4, 8, 9]),  # T-1 always added
        (9, 4, [0, 4, 8]),  # T-1 already on the grid
        (3, 8, [0, 2]),
        (5, 1, [0, 1, 2, 3, 4]),
        (1, 3, [0]),
    ],
)
def test_stride_positions(T, s, expected):
    assert positions("stride", T, stride=s) == expected
    assert list(stride_positions(T, s)) == expected
    assert positions(f"stride:{s}", T) == expected


def test_stride_reasons_and_errors():
    plan = make_selector("stride", 4, n_tokens=10, budget=Budget(), branch_continuations=1).plan()
    assert [n.reason for n in plan.nodes] == ["stride:4", "stride:4", "stride:4", "stride:4 (last)"]
    assert all(math.isnan(n.score) for n in plan.nodes)
    with pytest.raises(ValueError):
        make_selector("stride", None, n_tokens=10, budget=Budget(), branch_continuations=1)
    with pytest.raises(ValueError):
        make_selector("stride", 0, n_tokens=10, budget=Budget(), branch_continuations=1)
    with pytest.raises(ValueError):
        make_selector("bogus", None, n_tokens=10, budget=Budget(), branch_continuations=1)


def test_logspace_windows_rule():
    assert logspace_windows(10) == ((9, 10), (8, 9), (6, 8), (2, 6), (0, 2))
    assert logspace_windows(16) == ((15, 16), (14, 15), (12, 14), (8, 12), (0, 8))
    assert logspace_windows(1) == ((0, 1),)
    assert logspace_windows(0) == ()


@pytest.mark.parametrize(
    "T,k,expected",
    [
        (10, 2, [0, 1, 3, 5, 6, 7, 8, 9]),
        (16, 2, [2, 6, 9, 11, 12, 13, 14, 15]),
        (16, 1, [4, 10, 13, 14, 15]),
        (3, 2, [0, 1, 2]),
        (1, 2, [0]),
        (100, 2, [9, 27, 44, 60, 72, 80, 86, 90, 93, 95, 96, 97, 98, 99]),
    ],
)
def test_logspace_positions(T, k, expected):
    assert positions("logspace", T, npw=k) == expected
    assert list(logspace_positions(T, k)) == expected


def test_logspace_reasons_name_windows():
    plan = make_selector("logspace", None, n_tokens=16, budget=Budget(),
                         branch_continuations=1).plan()
    reasons = {n.position: n.reason for n in plan.nodes}
    assert reasons[9] == reasons[11] == "logspace window [8,12)"
    assert reasons[15] == "logspace window [15,16)"


def test_logspace_dense_at_end():
    T = 1024
    pos = positions("logspace", T, npw=2)
    assert {T - 1, T - 2, T - 3, T - 4} <= set(pos)
    assert len([t for t in pos if t >= T - 64]) > 2 * len([t for t in pos if t < T // 2])
    gaps = [b - a for a, b in zip(pos, pos[1:])]
    # gaps never grow towards the end (up to the centring rounding of one token)
    assert all(g2 <= g1 + 1 for g1, g2 in zip(gaps, gaps[1:]))
    assert len(pos) <= 2 * (math.log2(T) + 1)


# ----------------------------------------------------------------------------- budgets


def planted(T):
    return step_values(T, {T // 3: 0.5, (2 * T) // 3: -0.3})


BUDGETS = [
    Budget(),
    Budget(max_tokens=40),
    Budget(max_tokens=500),
    Budget(max_continuations=10),
    Budget(max_tokens=3000, max_continuations=60),
    Budget(max_tokens=1),
]


@pytest.mark.parametrize("kind", ["every", "stride", "logspace", "refine"])
@pytest.mark.parametrize("T", [1, 7, 64, 300])
@pytest.mark.parametrize("budget", BUDGETS, ids=str)
def test_budget_respected_and_accounting_matches(kind, T, budget):
    B, vc = 3, 2
    sel = make_selector(kind, 5, n_tokens=T, budget=budget, branch_continuations=B,
                        value_continuations=vc)
    plan, _ = run(sel, planted(T), outcome=0)
    tokens, conts = recompute(plan, T, B, vc)
    assert (plan.spent_tokens, plan.spent_continuations) == (tokens, conts)
    if budget.max_tokens:
        assert plan.spent_tokens <= budget.max_tokens
    if budget.max_continuations:
        assert plan.spent_continuations <= budget.max_continuations
    ps = plan.positions
    assert len(set(ps)) == len(ps) and all(0 <= t < T for t in ps)
    if kind != "refine":
        full = positions(kind, T, stride=5)
        assert len(ps) + plan.dropped == len(full)
        assert set(ps) <= set(full)
        assert plan.queries == ()


@pytest.mark.parametrize("kind", ["every", "stride", "logspace"])
def test_static_budget_keeps_latest_positions(kind, caplog):
    T, B = 64, 2
    full = positions(kind, T, stride=4)
    keep = full[-5:]
    budget = Budget(max_tokens=sum(B * (T - t) for t in keep))
    with caplog.at_level(logging.INFO, logger="gradalign.selectors"):
        plan = make_selector(kind, 4, n_tokens=T, budget=budget, branch_continuations=B).plan()
    assert list(plan.positions) == keep
    assert plan.dropped == len(full) - 5
    assert plan.spent_tokens == budget.max_tokens
    assert "dropped" in caplog.text


def test_logspace_drops_earliest_windows_first():
    T, B = 256, 1
    full = positions("logspace", T)
    plan = make_selector("logspace", None, n_tokens=T, budget=Budget(max_tokens=T),
                         branch_continuations=B).plan()
    assert plan.dropped > 0
    assert min(plan.positions) > max(set(full) - set(plan.positions))


def test_budget_fits():
    b = Budget(max_tokens=10, max_continuations=3)
    assert b.fits(5, 1, 5, 2)
    assert not b.fits(5, 1, 6, 0)
    assert not b.fits(0, 2, 0, 2)
    assert Budget().fits(10**9, 10**9, 10**9, 10**9)
    with pytest.raises(ValueError):
        Budget(max_tokens=-1)


def test_cost_model():
    assert branch_cost(10, 3, 5) == Cost(tokens=35, continuations=5)
    assert branch_cost(10, 9, 5) == Cost(5, 5)
    assert query_cost(10, 0, 4) == Cost(40, 4)
    assert query_cost(10, 10, 4) == Cost(0, 0)  # the outcome pseudo-node is free


def _cost(kind, T, npw=2):
    return make_selector(kind, None, n_tokens=T, budget=Budget(), branch_continuations=4,
                         nodes_per_window=npw).plan().spent_tokens


def test_logspace_cost_linear_every_quadratic():
    r_log = _cost("logspace", 512) / _cost("logspace", 256)
    r_every = _cost("every", 512) / _cost("every", 256)
    assert 1.5 < r_log < 2.6
    assert 3.8 < r_every < 4.2
    assert _cost("logspace", 1024) / _cost("logspace", 128) < 10  # ~8 for linear, 64 quadratic


# ----------------------------------------------------------------------------- refine


def test_refine_protocol():
    T = 20
    sel = make_selector("refine", None, n_tokens=T, budget=Budget(), branch_continuations=2)
    first = sel.pending()
    assert first == sel.pending()  # idempotent until observed
    assert first[-1] == T and 0 in first
    assert set(first[:-1]) == set(logspace_positions(T, 2)) | {0}
    with pytest.raises(RuntimeError):
        sel.plan()
    with pytest.raises(ValueError):
        sel.observe({0: ValueObs(1, 2)})  # missing positions
    with pytest.raises(TypeError):
        sel.observe({t: (1, 2) for t in first})
    with pytest.raises(ValueError):
        ValueObs(3, 2)
    for kind in ("every", "stride", "logspace"):
        s = make_selector(kind, 3, n_tokens=T, budget=Budget(), branch_continuations=2)
        assert s.pending() == ()
        with pytest.raises(ValueError):
            s.observe({0: ValueObs(0, 1)})


def test_refine_finds_planted_decisive_token():
    T = 100
    v = lambda t: 0.1 if t <= 37 else 0.9  # noqa: E731
    sel = make_selector("refine", None, n_tokens=T, budget=Budget(), branch_continuations=4)
    plan, rounds = run(sel, v, outcome=1)
    assert plan.nodes[0].position == 37
    assert plan.nodes[0].score == pytest.approx(0.8)
    assert plan.nodes[0].reason == "refine |dV|=0.80 (V 0.10->0.90)"
    assert len(plan.nodes) == 4
    assert all(isinstance(n, NodeChoice) for n in plan.nodes)
    # bisection, not exhaustive search
    asked = [t for r in rounds for t in r]
    assert len(asked) < 25 and len(rounds) <= 8
    assert {37, 38} <= {q.position for q in plan.queries}
    outcome = [q for q in plan.queries if q.position == T]
    assert outcome == [ValueQuery(T, 1, 1)]
    assert plan.dropped == 0


def test_refine_ranks_larger_jump_first():
    T = 100
    v = step_values(T, {20: 0.3, 61: 0.5}, base=0.1)
    sel = make_selector("refine", None, n_tokens=T, budget=Budget(), branch_continuations=4)
    plan, _ = run(sel, v, outcome=1)
    assert list(plan.positions[:2]) == [61, 20]
    assert plan.nodes[0].score == pytest.approx(0.5)
    assert plan.nodes[1].score == pytest.approx(0.3)


def test_refine_finds_downward_jump():
    T = 64
    v = step_values(T, {50: -0.7}, base=0.8)
    sel = make_selector("refine", None, n_tokens=T, budget=Budget(), branch_continuations=4)
    plan, _ = run(sel, v, outcome=0)
    assert plan.nodes[0].position == 50
    assert plan.nodes[0].score == pytest.approx(0.7)


def test_refine_tight_budget():
    T, B, vc = 100, 4, 4
    v = lambda t: 0.1 if t <= 37 else 0.9  # noqa: E731
    unlimited, _ = run(make_selector("refine", None, n_tokens=T, budget=Budget(),
                                     branch_continuations=B, value_continuations=vc), v, 1)
    budget = Budget(max_tokens=unlimited.spent_tokens // 3)
    sel = make_selector("refine", None, n_tokens=T, budget=budget, branch_continuations=B,
                        value_continuations=vc)
    plan, _ = run(sel, v, outcome=1)
    assert plan.spent_tokens <= budget.max_tokens
    assert plan.spent_tokens == recompute(plan, T, B, vc)[0]
    assert plan.dropped > 0  # earliest anchors (0 at least) had to go
    assert 0 not in {q.position for q in plan.queries}
    assert len(plan.nodes) == 4  # the reserve keeps room for the final branching


@pytest.mark.parametrize("max_tokens", [2, 9, 30, 100, 400, 1500, 5000])
def test_refine_reserve_always_leaves_room_for_final_nodes(max_tokens):
    T, B, vc = 80, 3, 2
    sel = make_selector("refine", None, n_tokens=T, budget=Budget(max_tokens=max_tokens),
                        branch_continuations=B, value_continuations=vc, refine_nodes=3)
    plan, _ = run(sel, planted(T), outcome=1)
    assert plan.spent_tokens <= max_tokens
    asked = [q for q in plan.queries if q.position < T]
    if asked:
        evaluated = len(plan.queries)
        assert len(plan.nodes) == min(3, evaluated - 1)
    else:
        assert plan.nodes == () and plan.queries == ()


def test_refine_falls_back_to_interval_rate():
    # value queries barely afforded: no bisection, so big unresolved intervals must compete
    T = 100
    v = lambda t: 0.2 if t <= 37 else 1.0  # noqa: E731  (flat end: V(99) = outcome)
    sel = RefineSelector(n_tokens=T, budget=Budget(), branch_continuations=1, refine_nodes=2,
                         min_abs_dv=1.0)  # min_abs_dv=1 disables bisection entirely
    plan, rounds = run(sel, v, outcome=1)
    assert len(rounds) == 1
    assert plan.nodes[0].position == 27  # interval [27,44] holds the jump: rate 0.8/17
    assert plan.nodes[0].score == pytest.approx(0.8 / 17)
    assert plan.nodes[0].reason.startswith("refine interval [27,44]")
    assert plan.nodes[1].position == 99  # zero-rate tie: adjacent pair first, then later


def test_selectors_deterministic_and_lockstep():
    T = 120
    v = planted(T)
    sels = [make_selector(k, 7, n_tokens=T, budget=Budget(max_tokens=4000),
                          branch_continuations=2)
            for k in ("every", "stride", "logspace", "refine")]
    sels.append(make_selector("refine", None, n_tokens=T, budget=Budget(), branch_continuations=2))
    # lockstep: one batch per round across all selectors
    while batches := [(s, s.pending()) for s in sels if s.pending()]:
        for s, qs in batches:
            s.observe({t: ValueObs(0, 1) if t == T else ValueObs(round(v(t) * N), N) for t in qs})
    plans = [s.plan() for s in sels]
    again = [run(make_selector(k, 7, n_tokens=T, budget=Budget(max_tokens=4000),
                               branch_continuations=2), v, 0)[0]
             for k in ("every", "stride", "logspace", "refine")]
    again.append(run(make_selector("refine", None, n_tokens=T, budget=Budget(),
                                   branch_continuations=2), v, 0)[0])
    assert plans == again
    assert plans[-1].nodes[0].position == T // 3


# ----------------------------------------------------------------------------- the stop node (branching.eos_node)


def stop_positions(kind, T, stride=None, npw=2, budget=Budget(), B=3, **kw):
    sel = make_selector(kind, stride, n_tokens=T, budget=budget, branch_continuations=B, nodes_per_window=npw,
                        stop_node=True, **kw)
    return sel, list(sel.plan().positions)


def test_stop_node_is_a_position_of_every_stride_and_logspace():
    assert stop_positions("every", 5)[1] == [0, 1, 2, 3, 4, 5]
    assert stop_positions("every", 0)[1] == [0]  # an empty completion: the stop at the prompt
    sel, pos = stop_positions("stride", 10, stride=3)
    assert pos == [0, 3, 6, 9, 10]  # the last token (T-1) stays, the stop (T) joins
    assert [n.reason for n in sel.plan().nodes][-1] == "stride:3 (stop)"
    assert stop_positions("stride", 8, stride=3)[1] == [0, 3, 6, 7, 8]
    for T, k in ((1, 2), (7, 1), (20, 2), (100, 3)):
        sel, pos = stop_positions("logspace", T, npw=k)
        assert pos == list(logspace_positions(T + 1, k))  # the windows count back from the stop
        assert T in pos and T - 1 in pos  # window 0 is the stop, window 1 the last token
        assert sel.plan().nodes[-1].reason == f"logspace window [{T},{T + 1})"
    assert positions("every", 5) == [0, 1, 2, 3, 4]  # off: unchanged


def test_stop_node_is_priced_at_its_cap_and_admitted_first():
    L, B = 12, 4
    # a budget that fits exactly one node: the latest, the stop, whose continuations may write L - T - 1 tokens
    sel, pos = stop_positions("logspace", 6, B=B, budget=Budget(max_tokens=B * (L - 6 - 1)), max_new_tokens=L)
    assert pos == [6]
    assert sel.plan().spent_tokens == branch_cost(6, 6, B, L).tokens == B * (L - 7)
    sel, pos = stop_positions("every", 11, B=B, budget=Budget(max_continuations=B), max_new_tokens=L)
    assert pos == [11] and sel.plan().spent_tokens == B  # cap 0 left: priced at the 1-token floor


def test_stop_node_entropy_needs_a_score_there():
    with pytest.raises(ValueError, match=r"one score per position \(4\)"):
        make_selector("entropy", None, n_tokens=3, budget=Budget(), branch_continuations=1, refine_nodes=2,
                      scores=[0.1, 0.2, 0.3], stop_node=True)
    sel = make_selector("entropy", None, n_tokens=3, budget=Budget(), branch_continuations=1, refine_nodes=2,
                        scores=[0.1, 0.9, 0.3, 1.2], stop_node=True)
    assert sel.plan().positions == (3, 1)  # a hesitant stop ranks like any hesitant token


def test_refine_with_the_stop_node_queries_t_and_ranks_a_decisive_stop():
    T, L, vc = 40, 64, 4
    # the student was at V = 0.3 before choosing to stop; stopping there was a success
    v = step_values(T + 1, {T: 0.7}, base=0.3)
    sel = make_selector("refine", None, n_tokens=T, budget=Budget(), branch_continuations=2, value_continuations=vc,
                        max_new_tokens=L, stop_node=True)
    first = sel.pending()
    assert first[-1] == T + 1 and T in first  # the pseudo-node moved past the stop, which is queried
    rounds = []
    qs = first
    while qs:
        rounds.append(qs)
        sel.observe({t: ValueObs(1, 1) if t == T + 1 else ValueObs(round(v(t) * N), N) for t in qs})
        qs = sel.pending()
    plan = sel.plan()
    assert plan.nodes[0].position == T and plan.nodes[0].score == pytest.approx(0.7)
    assert plan.asked == 4
    # the query at T costs vc continuations of L - T tokens; the outcome at T + 1 costs nothing
    q = {x.position for x in plan.queries}
    assert T in q and T + 1 in q
    assert query_cost(T, T, vc, L, n_positions=T + 1) == Cost(vc * (L - T), vc)
    assert query_cost(T, T + 1, vc, L, n_positions=T + 1) == Cost(0, 0)
    assert query_cost(T, T, vc, L) == Cost(0, 0)  # without the stop node T is the free pseudo-node
    expected = sum(query_cost(T, p, vc, L, n_positions=T + 1).tokens for p in q)
    assert plan.query_tokens == expected
