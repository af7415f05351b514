"""Per-question winners: which config aligns best on each question, and how often each wins.

Owns: `question_winners` (a question x config table of mean alignment with the winner and its
margin), `winner_shares` (share of questions won per config and loss) and `single_winner` (the
config that wins every question, if any).

Does not own: pooled rankings with intervals (`ranking`).

Shapes: `question_winners` returns one row per (loss, question_id) and one column per config (wide);
`winner_shares` is long: one row per (loss, config).
"""

from __future__ import annotations

import math

from gradalign.analysis.schema import _check_loss, _check_metric


def question_winners(alignment, *, metric: str = "cos", loss: str | None = None):
    """Mean alignment per question and config, and which config aligns best on each question.

    With `loss` given only that loss is used, otherwise every loss present. Returns a DataFrame
    with columns loss, question_id, one column per config (mean `metric`), winner (config with the
    highest mean; ties go to the config that sorts first) and margin (best minus second best).
    Questions where no config has a defined mean get winner None.
    """
    import numpy as np

    _check_metric(alignment, metric)
    a = alignment.dropna(subset=[metric])
    if loss is not None:
        _check_loss(alignment, loss)
        a = a[a["loss"] == loss]
    configs = sorted(set(alignment["config"]))
    m = a.groupby(["loss", "question_id", "config"])[metric].mean().unstack("config")
    m = m.reindex(columns=configs)
    vals = m.to_numpy(dtype=float)
    winner, margin = [], []
    for row in vals:
        ok = np.isfinite(row)
        if not ok.any():
            winner.append(None)
            margin.append(np.nan)
            continue
        order = sorted((i for i in range(len(row)) if ok[i]), key=lambda i: (-row[i], configs[i]))
        winner.append(configs[order[0]])
        margin.append(row[order[0]] - row[order[1]] if len(order) > 1 else np.nan)
    out = m.reset_index()
    out.columns.name = None
    out["winner"] = winner
    out["margin"] = margin
    return out


def winner_shares(winners):
    """Share of questions each config wins, per loss (from `question_winners`).

    Returns loss, config, wins, questions, share, share_low, share_high (the Wilson 95% interval of
    wins / questions); every config appears (0 wins included), best first within a loss.
    """
    import pandas as pd

    from gradalign.estimates import wilson_interval

    configs = [c for c in winners.columns if c not in ("loss", "question_id", "winner", "margin")]
    rows = []
    for loss, g in winners.groupby("loss", sort=True):
        g = g[g["winner"].notna()]
        n = len(g)
        counts = g["winner"].value_counts()
        for c in configs:
            w = int(counts.get(c, 0))
            iv = wilson_interval(w, n) if n else None
            rows.append({"loss": loss, "config": c, "wins": w, "questions": n, "share": w / n if n else math.nan,
                         "share_low": iv.low if iv else math.nan, "share_high": iv.high if iv else math.nan})
    out = pd.DataFrame(rows, columns=["loss", "config", "wins", "questions", "share", "share_low", "share_high"])
    return out.sort_values(["loss", "wins", "config"], ascending=[True, False, True], kind="stable").reset_index(drop=True)


def single_winner(shares, loss: str) -> str | None:
    """The config that wins every question for `loss`, or None when no single config wins everywhere."""
    s = shares[(shares["loss"] == loss) & (shares["questions"] > 0)]
    top = s[s["share"] >= 1.0]
    return str(top.iloc[0]["config"]) if len(top) else None
