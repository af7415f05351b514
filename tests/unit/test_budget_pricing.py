"""Budget pricing with actual candidate counts and the true continuation cap (gradalign.selectors:
`continuation_tokens`, `branch_cost`, `query_cost` with `max_new_tokens`, `fit_to_budget`, `budget_note`)."""

from __future__ import annotations

import pytest

from gradalign.selectors import (
    Budget,
    Cost,
    NodeChoice,
    SelectionPlan,
    ValueObs,
    branch_cost,
    budget_note,
    continuation_tokens,
    fit_to_budget,
    make_selector,
    query_cost,
)


def test_continuation_cap_is_max_new_tokens_minus_head():
    # a branch continuation's head is y_<t plus the candidate: at most L - t - 1 new tokens
    assert continuation_tokens(10, 3, 64) == 60
    assert continuation_tokens(10, 63, 64) == 1  # at least one token
    # a value query's head is y_<t: at most L - t
    assert continuation_tokens(10, 3, 64, branch=False) == 61
    # without L, the rest of the rollout (unchanged legacy pricing)
    assert continuation_tokens(10, 3) == 7
    assert branch_cost(10, 3, 5, 64) == Cost(300, 5)
    assert query_cost(10, 3, 4, 64) == Cost(244, 4)
    assert query_cost(10, 10, 4, 64) == Cost(0, 0)  # the outcome pseudo-node stays free


def test_static_plan_at_one_slot_then_fitted_to_actual_counts():
    # 40 continuations, M = 8: planning at the worst case (12 slots = 96 per node) keeps no node at
    # all; planned at one slot the rule keeps the 5 latest positions, and with their actual
    # candidate counts (2 + residual = 3 slots = 24) one node fits, the latest.
    T, M, L = 30, 8, 64
    budget = Budget(max_continuations=40)
    worst = make_selector("logspace", None, n_tokens=T, budget=budget, branch_continuations=12 * M,
                          nodes_per_window=1, max_new_tokens=L).plan()
    assert worst.nodes == () and worst.short
    plan = make_selector("logspace", None, n_tokens=T, budget=budget, branch_continuations=M,
                         nodes_per_window=1, max_new_tokens=L).plan()
    assert len(plan.nodes) == 5 and plan.asked == len(plan.nodes) + plan.dropped
    actual = {c.position: branch_cost(T, c.position, 3 * M, L) for c in plan.nodes}
    fitted = fit_to_budget(plan, budget, actual, rank_order=False)
    assert fitted.positions == (T - 1,)
    assert fitted.spent_continuations == 24 and fitted.spent_tokens == 24 * (L - (T - 1) - 1)
    assert fitted.dropped == plan.dropped + 4 and fitted.asked == plan.asked and fitted.short
    # two slots per node (candidates agree, no residual): 16 each, two nodes fit
    two = fit_to_budget(plan, budget, {c.position: branch_cost(T, c.position, 2 * M, L) for c in plan.nodes},
                        rank_order=False)
    assert two.positions == (T - 2, T - 1) and two.spent_continuations == 32


def test_fit_keeps_query_spend_and_rank_order():
    nodes = (NodeChoice(2, "a"), NodeChoice(9, "b"), NodeChoice(5, "c"))  # rank order, best first
    plan = SelectionPlan(nodes, 0, 0, dropped=1, asked=3, query_tokens=50, query_continuations=10)
    costs = {2: Cost(30, 5), 9: Cost(10, 5), 5: Cost(20, 5)}
    fitted = fit_to_budget(plan, Budget(max_tokens=90), costs, rank_order=True)
    # queries spent 50; rank order admits 2 (80), then 9 does not fit (90 would, 80+10 = 90 fits)
    assert fitted.positions == (2, 9)
    assert fitted.spent_tokens == 90 and fitted.spent_continuations == 20 and fitted.dropped == 2
    latest_first = fit_to_budget(plan, Budget(max_tokens=90), costs, rank_order=False)
    assert latest_first.positions == (9, 5)  # plan order kept, admission latest-first


def test_refine_prices_queries_at_the_cap():
    T, L = 20, 40
    sel = make_selector("refine", None, n_tokens=T, budget=Budget(), branch_continuations=4, value_continuations=2,
                        refine_nodes=2, max_new_tokens=L)
    while qs := sel.pending():
        sel.observe({t: ValueObs(int(t > 10), 1) for t in qs})
    plan = sel.plan()
    expect = sum(2 * (L - q.position) for q in plan.queries if q.position < T)
    assert plan.query_tokens == expect
    assert plan.spent_tokens == expect + sum(4 * (L - n.position - 1) for n in plan.nodes)
    assert plan.asked == 2 and not plan.short


def test_budget_note_words_the_shortfall():
    full = SelectionPlan((NodeChoice(1, "x"),), 0, 0, 0, asked=1)
    short = SelectionPlan((NodeChoice(1, "x"),), 0, 0, 3, asked=4)
    assert budget_note([full, full], Budget(max_continuations=40)) == ""
    note = budget_note([full, short], Budget(max_continuations=40))
    assert note == "budget 40 continuations kept fewer nodes than asked in 1 of 2 rollouts (2 of 5 nodes kept)"


def test_entropy_selector_ranks_by_student_entropy_and_admits_in_rank_order():
    from gradalign.config import parse_selector
    from gradalign.selectors import entropy_choices

    h = [0.1, 0.9, 0.2, 0.9, 0.05, 0.7]  # ties: later first
    assert [c.position for c in entropy_choices(h, 3)] == [3, 1, 5]
    plan = make_selector("entropy", None, n_tokens=6, budget=Budget(), branch_continuations=2, refine_nodes=3,
                         scores=h).plan()
    assert plan.positions == (3, 1, 5) and plan.asked == 3 and not plan.short  # rank order, like refine
    # a budget admits the highest-entropy nodes first, whatever their cost: 2 continuations each, room for 2
    tight = make_selector("entropy", None, n_tokens=6, budget=Budget(max_continuations=4), branch_continuations=2,
                          refine_nodes=3, scores=h).plan()
    assert tight.positions == (3, 1) and tight.dropped == 1 and tight.short
    assert str(parse_selector("entropy")) == "entropy"
    with pytest.raises(ValueError, match="one score per position"):
        make_selector("entropy", None, n_tokens=6, budget=Budget(), branch_continuations=2)
