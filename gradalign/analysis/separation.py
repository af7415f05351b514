"""Whether two configs differ, judged on the same questions, and where they differ.

Owns: `paired_difference` (mean alignment of config/loss A minus B with a cluster-bootstrap interval
that resamples questions once for both, over the questions where both have a defined value: the
paired test a ranking needs, since two marginal intervals can overlap while every question favours
one side, and can separate while the questions disagree), the `Separation` record, `tie_partner`
(the config whose difference with the best one is smallest while not separated) and
`disagreement_nodes` (the nodes where two configs' alignments differ most, with the token in its
context and each teacher's probability of it) and `teacher_disagreements` (over every token, branched
or not, where the two teachers' probabilities of the student's token differ most).

Does not own: the bootstrap of one group (`stats.cluster_bootstrap`), rankings (`ranking`) or any
wording (`gradalign.report.headlines`).

Means are pooled over nodes like `rank_configs` (sum over the drawn questions' nodes / their count),
so the difference's point estimate is the difference of the two ranking means restricted to shared
questions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradalign.analysis.schema import AnalysisError, _check_metric, _require


@dataclass(frozen=True)
class Separation:
    """mean(A) - mean(B) over shared questions with its paired interval; `separated` when it excludes 0."""

    a: tuple[str, str]  # (config, loss)
    b: tuple[str, str]
    diff: float
    low: float
    high: float
    n_questions: int  # questions where both have a defined value
    n_a: int  # nodes behind A's mean (shared questions)
    n_b: int

    @property
    def separated(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


def paired_difference(alignment, a: tuple[str, str], b: tuple[str, str], *, metric: str = "cos", n_boot: int = 2000,
                      ci: float = 0.95, seed: int = 0) -> Separation:
    """A minus B (each a (config, loss)) with a percentile interval from resampling shared questions.

    Each replicate draws the shared questions with replacement once and recomputes both pooled means
    on that draw, so question-to-question variation common to both cancels."""
    import numpy as np
    import pandas as pd

    _require(alignment, ["config", "loss", "question_id"], "alignment")
    _check_metric(alignment, metric)
    if not 0 < ci < 1:
        raise AnalysisError(f"ci must lie strictly between 0 and 1, got {ci}")
    d = alignment.dropna(subset=[metric])
    parts = []
    for cfg, loss in (a, b):
        x = d[(d["config"] == cfg) & (d["loss"] == loss)]
        parts.append(x.groupby("question_id")[metric].agg(["sum", "count"]))
    shared = parts[0].index.intersection(parts[1].index)
    if not len(shared):
        return Separation(a, b, math.nan, math.nan, math.nan, 0, 0, 0)
    sa, ca = (parts[0].loc[shared, k].to_numpy(float) for k in ("sum", "count"))
    sb, cb = (parts[1].loc[shared, k].to_numpy(float) for k in ("sum", "count"))
    diff = sa.sum() / ca.sum() - sb.sum() / cb.sum()
    Q = len(shared)
    W = np.random.default_rng(seed).multinomial(Q, np.full(Q, 1.0 / Q), size=n_boot).astype(float)
    boot = (W @ sa) / (W @ ca) - (W @ sb) / (W @ cb)
    lo, hi = np.quantile(boot, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    del pd
    return Separation(a, b, float(diff), float(lo), float(hi), Q, int(ca.sum()), int(cb.sum()))


def tie_partner(alignment, ranking, loss: str, *, metric: str = "cos", n_boot: int = 2000, ci: float = 0.95,
                seed: int = 0) -> Separation | None:
    """For `loss`, the best config (by `ranking`, from `rank_configs`) against the config whose paired
    difference with it is smallest in size while not separated; None when every other config is
    separated from the best, or there is only one."""
    r = ranking[ranking["loss"] == loss]
    if len(r) < 2:
        return None
    best = r.iloc[0].config
    seps = [paired_difference(alignment, (best, loss), (c, loss), metric=metric, n_boot=n_boot, ci=ci, seed=seed)
            for c in r.config.iloc[1:]]
    ties = [s for s in seps if s.n_questions and not s.separated]
    return min(ties, key=lambda s: abs(s.diff)) if ties else None


def _contexts(tokens, config: str, keys, context_chars: int) -> dict:
    """(question_id, rollout_id, position) -> the completion text before that position (last chars)."""
    near = (tokens["config"] == config).to_numpy() & tokens["rollout_id"].isin(keys["rollout_id"]).to_numpy()
    t = tokens.loc[near, ["question_id", "rollout_id", "position", "token_text"]].merge(keys, on=["question_id", "rollout_id"])
    out = {}
    for (qid, rid), g in t.sort_values(["question_id", "rollout_id", "position"]).groupby(["question_id", "rollout_id"]):
        toks, pos = g["token_text"].astype(str).tolist(), g["position"].tolist()
        out.update({(qid, rid, pp): "".join(toks[:i])[-context_chars:] for i, pp in enumerate(pos)})
    return out


def teacher_disagreements(tokens, a: str, b: str, *, top: int = 10, min_log_ratio: float = 2.0, context_chars: int = 24):
    """Tokens (every position, branched or not) where configs `a` and `b` give the student's token the
    most different probability: |log q_a(y_t) - log q_b(y_t)| > `min_log_ratio`, largest first, at
    most `top`: question_id, rollout_id, position, token_text, context, q_a, q_b, branched."""
    import numpy as np
    import pandas as pd

    key = ["question_id", "rollout_id", "position"]
    _require(tokens, [*key, "config", "token_text", "teacher_logprob", "branched"], "tokens")
    cols = [*key, "token_text", "context", "q_a", "q_b", "branched"]
    x = tokens.loc[(tokens["config"] == a).to_numpy(), [*key, "token_text", "teacher_logprob", "branched"]]
    y = tokens.loc[(tokens["config"] == b).to_numpy(), [*key, "teacher_logprob"]]
    j = x.merge(y, on=key, suffixes=("_a", "_b"))
    if j.empty:
        return pd.DataFrame(columns=cols)
    j["lr"] = (j["teacher_logprob_a"] - j["teacher_logprob_b"]).abs()
    j = j[j["lr"] > min_log_ratio].sort_values(["lr", *key], ascending=[False, True, True, True], kind="stable").head(top)
    j["q_a"], j["q_b"] = np.exp(j["teacher_logprob_a"]), np.exp(j["teacher_logprob_b"])
    ctx = _contexts(tokens, a, j[["question_id", "rollout_id"]].drop_duplicates(), context_chars)
    j["context"] = [ctx.get((r.question_id, r.rollout_id, r.position), "") for r in j.itertuples()]
    return j[cols].reset_index(drop=True)


def disagreement_nodes(alignment, tokens, a: str, b: str, loss: str, *, metric: str = "cos", min_gap: float = 0.25,
                       context_chars: int = 24):
    """Nodes where configs `a` and `b` (same `loss`) differ in alignment by more than `min_gap`, largest
    gap first: question_id, rollout_id, position, token_text, context (the completion text before
    the token, last `context_chars` characters), metric_a, metric_b, gap (= metric_a - metric_b),
    q_a, q_b (each teacher's probability of the sampled token at the node)."""
    import numpy as np
    import pandas as pd

    key = ["question_id", "rollout_id", "position"]
    _require(alignment, [*key, "config", "loss", "token_text"], "alignment")
    _require(tokens, [*key, "config", "token_text", "teacher_logprob"], "tokens")
    x = alignment[(alignment["loss"] == loss) & alignment["config"].isin([a, b])]
    p = x.pivot_table(index=[*key, "token_text"], columns="config", values=metric, aggfunc="first")
    cols = [*key, "token_text", "context", "metric_a", "metric_b", "gap", "q_a", "q_b"]
    if a not in p.columns or b not in p.columns:
        return pd.DataFrame(columns=cols)
    p = p.dropna(subset=[a, b]).reset_index().rename(columns={a: "metric_a", b: "metric_b"})
    p["gap"] = p["metric_a"] - p["metric_b"]
    p = p[p["gap"].abs() > min_gap].copy()
    if p.empty:
        return pd.DataFrame(columns=cols)
    p = p.reindex(p["gap"].abs().sort_values(ascending=False, kind="stable").index)
    rollouts = p[["question_id", "rollout_id"]].drop_duplicates()
    near = tokens["config"].isin([a, b]).to_numpy() & tokens["rollout_id"].isin(rollouts["rollout_id"]).to_numpy()
    t = tokens.loc[near, [*key, "config", "token_text", "teacher_logprob"]].merge(rollouts, on=["question_id", "rollout_id"])
    q = t.pivot_table(index=key, columns="config", values="teacher_logprob", aggfunc="first")
    p = p.merge(np.exp(q[[a, b]]).rename(columns={a: "q_a", b: "q_b"}).reset_index(), on=key, how="left")
    text = t[t["config"] == a].sort_values(key)
    ctx = {}
    for (qid, rid), g in text.groupby(["question_id", "rollout_id"]):
        toks, pos = g["token_text"].astype(str).tolist(), g["position"].tolist()
        ctx.update({(qid, rid, pp): "".join(toks[:i])[-context_chars:] for i, pp in enumerate(pos)})
    p["context"] = [ctx.get((r.question_id, r.rollout_id, r.position), "") for r in p.itertuples()]
    return p[cols].reset_index(drop=True)
