"""`analysis.space_comparison` / `ranking_changes` and the report's sentence on synthetic alignment rows."""

from __future__ import annotations

import math

import pandas as pd

from gradalign import analysis as A
from gradalign.analysis.spaces import COLUMNS as SPACE_COLUMNS
from gradalign.report.rows import spaces_sentence


def _rows(params_order):
    rows = []
    for q in range(6):
        for i, (cfg, c, cp) in enumerate(zip(("a", "b", "c"), (0.5, 0.2, -0.1), params_order)):
            for loss in ("reverse_kl", "jsd"):
                rows.append({"question_id": f"q{q}", "config": cfg, "loss": loss, "cos": c + 0.01 * q,
                             "cos_params": cp + 0.01 * q, "correct": q % 2 == 0})
    rows.append({"question_id": "q0", "config": "a", "loss": "jsd", "cos": 0.9, "cos_params": math.nan, "correct": True})
    return pd.DataFrame(rows)


def test_same_ranking():
    comp = A.space_comparison(_rows((0.3, 0.1, 0.0)), n_boot=50)
    assert list(comp.columns) == SPACE_COLUMNS
    r = comp[comp.loss == "jsd"].set_index("config")
    assert r.loc["a", "n"] == 6  # the row without cos_params is left out of both means
    assert abs(r.loc["a", "mean_logit"] - 0.525) < 1e-12 and (r.rank_logit == r.rank_params).all()
    assert not A.ranking_changes(comp, "jsd")
    assert spaces_sentence(comp, "jsd") == "The config ranking (jsd) is the same in logit and parameter space: a > b > c."


def test_changed_ranking():
    comp = A.space_comparison(_rows((0.0, 0.4, 0.1)), n_boot=50)
    assert A.ranking_changes(comp, "reverse_kl")
    assert "CHANGES" in spaces_sentence(comp, "reverse_kl") and "parameters b > c > a" in spaces_sentence(comp, "reverse_kl")
    assert A.has_param_space(_rows((0, 0, 0))) and not A.has_param_space(_rows((0, 0, 0)).assign(cos_params=math.nan))
