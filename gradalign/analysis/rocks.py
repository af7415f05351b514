"""Rock tokens (arXiv 2605.09253): token types the teacher keeps disliking, and the OPD norm they carry.

Owns: `token_loss` (l_t = student_logprob - teacher_logprob = log p(y_t) - log q(y_t), per config
because q is), `opd_norm_estimate` / `opd_norm_check` (the sampled-token OPD gradient norm estimated
from the tokens table, and its ratio to the exact norm at branched nodes), `rock_tokens` (ranked
rock-token candidates per config) and `rock_summary` (what share of tokens, KL and norm they carry).

Does not own: freezing rock tokens in training weights (`weights`, rule `freeze-rocks`).

Shapes: `rock_tokens` returns one row per (config, token type) kept: config, rank, token_id,
token_text, freq, mean_loss, score; `rock_summary` one row per config.
"""

from __future__ import annotations

import math

from gradalign.analysis.schema import TOKEN_KEY, AnalysisError, _at_nodes, _check_metric, _distinct, _require, default_loss


def token_loss(tokens):
    """Per-token loss l_t = log p(y_t) - log q(y_t) = student_logprob - teacher_logprob."""
    _require(tokens, ["student_logprob", "teacher_logprob"], "tokens")
    return tokens["student_logprob"].astype(float) - tokens["teacher_logprob"].astype(float)


def opd_norm_estimate(tokens):
    """Estimated norm of the sampled-token OPD gradient |l_t| * ||onehot(y) - p|| from the tokens table.

    Exactly, ||onehot(y) - p||^2 = (1 - p_y)^2 + sum_{j != y} p_j^2, but the tokens table has only
    p_y and H(p). Since the collision probability sum_j p_j^2 >= exp(-H) (Renyi-2 entropy <= Shannon
    entropy), we use sum_{j != y} p_j^2 ~= clip(exp(-H) - p_y^2, 0, (1 - p_y)^2): a lower bound on
    the true norm, exact when p is uniform on its support, and never off by more than a factor
    sqrt(2) (the true norm lies in [(1 - p_y), sqrt(2) (1 - p_y)] times |l_t|). At branched nodes
    the exact value is alignment.norm_distill of the sampled_token loss (see `opd_norm_check`).
    """
    import numpy as np

    _require(tokens, ["student_logprob", "student_entropy"], "tokens")
    py = np.exp(tokens["student_logprob"].astype(float).to_numpy())
    rest = np.clip(np.exp(-tokens["student_entropy"].astype(float).to_numpy()) - py * py, 0.0, (1.0 - py) ** 2)
    return np.abs(token_loss(tokens).to_numpy()) * np.sqrt((1.0 - py) ** 2 + rest)


def opd_norm_check(tokens, alignment):
    """Ratio of `opd_norm_estimate` to the exact sampled_token norm_distill at branched nodes.

    Returns config, n, median_ratio, min_ratio, max_ratio (empty if the run has no sampled_token loss).
    """
    import numpy as np
    import pandas as pd

    a = alignment[(alignment["loss"] == "sampled_token") & (alignment["norm_distill"] > 0)]
    cols = ["config", "n", "median_ratio", "min_ratio", "max_ratio"]
    if a.empty:
        return pd.DataFrame(columns=cols)
    t = _at_nodes(tokens, a)
    t = t[TOKEN_KEY].assign(norm_est=opd_norm_estimate(t))
    j = a.merge(t, on=TOKEN_KEY, how="inner")
    j["ratio"] = j["norm_est"] / j["norm_distill"]
    g = j.groupby("config")["ratio"]
    out = pd.DataFrame({"n": g.size(), "median_ratio": g.median(), "min_ratio": g.min(), "max_ratio": g.max()}).reset_index()
    return out[cols].replace([np.inf, -np.inf], np.nan)


def rock_tokens(tokens, *, min_freq: int = 2, drop_top: int = 5, top_n: int = 20):
    """Rock-token candidates per config, ranked as in the Rock Tokens paper (arXiv 2605.09253).

    A token type is a token_id. Per config: frequency = occurrences in the student's rollouts,
    mean_loss = mean l_t over them, score = mean_loss x frequency (= summed loss). The `drop_top`
    most frequent types are dropped first (ties broken by token_id), then types with frequency
    below `min_freq` and types whose mean loss is not positive (the teacher already likes them at
    least as much as the student: not high-loss); the rest are ranked by score (descending) and the
    first `top_n` kept. The paper's extra filter (occurrences that stay high-loss before and after
    training) needs a trained checkpoint and is not applied. Returns config, rank, token_id,
    token_text, freq, mean_loss, score.
    """
    import pandas as pd

    if min_freq < 1 or drop_top < 0 or top_n < 1:
        raise AnalysisError(f"need min_freq >= 1, drop_top >= 0, top_n >= 1 (got {min_freq}, {drop_top}, {top_n})")
    _require(tokens, ["config", "token_id", "token_text"], "tokens")
    t = tokens[["config", "token_id", "token_text"]].assign(loss=token_loss(tokens))
    cols = ["config", "rank", "token_id", "token_text", "freq", "mean_loss", "score"]
    parts = []
    for config, g in t.groupby("config", sort=True):
        s = g.groupby("token_id").agg(token_text=("token_text", "first"), freq=("loss", "size"), mean_loss=("loss", "mean"))
        s = s.reset_index().sort_values(["freq", "token_id"], ascending=[False, True], kind="stable")
        s = s.iloc[drop_top:]
        s = s[(s["freq"] >= min_freq) & (s["mean_loss"] > 0)].copy()
        s["score"] = s["mean_loss"] * s["freq"]
        s = s.sort_values(["score", "token_id"], ascending=[False, True], kind="stable").head(top_n)
        s.insert(0, "rank", range(1, len(s) + 1))
        s.insert(0, "config", config)
        parts.append(s)
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def rock_summary(tokens, alignment, rocks, *, metric: str = "cos", loss: str | None = "sampled_token", n_boot: int = 500,
                 ci: float = 0.95, seed: int = 0):
    """What rock-token types (from `rock_tokens`) account for, per config.

    Columns: config, n_types, share_tokens (of all tokens), share_kl (of the summed exact per-token
    KL(p||q) of the tokens table: the corpus-level KL of the paper), share_norm_est (of the summed estimated sampled-token OPD norm over all tokens, see
    `opd_norm_estimate`), share_norm_branched (of the summed exact alignment.norm_distill of `loss`
    at branched nodes only), loss, n_nodes_rock, mean_alignment_rock, mean_alignment_other, then
    n_tokens (the config's tokens), n_nodes (its branched nodes of `loss`) and, for each share,
    `<share>_low` / `<share>_high`: its percentile interval from resampling questions
    (`stats.ratio_interval`, `n_boot` replicates, seeded).
    `loss` None or absent from the run falls back to `default_loss`.
    """
    import numpy as np
    import pandas as pd

    from gradalign.analysis.stats import ratio_interval

    _check_metric(alignment, metric)
    if loss is None or loss not in set(alignment["loss"]):
        loss = default_loss(alignment)
    rock_keys = set(zip(rocks["config"], rocks["token_id"]))
    t = tokens[[*TOKEN_KEY, "kl_pq"]]
    rock = np.zeros(len(t), dtype=bool)
    for c, ids in rocks.groupby("config", observed=True)["token_id"]:
        rock |= (tokens["config"] == c).to_numpy() & tokens["token_id"].isin(ids.unique()).to_numpy()
    t = t.assign(rock=rock, norm_est=opd_norm_estimate(tokens))
    a = alignment[alignment["loss"] == loss]
    a = a.merge(_at_nodes(t, a)[[*TOKEN_KEY, "rock"]], on=TOKEN_KEY, how="left")
    a["rock"] = a["rock"].fillna(False).astype(bool)
    rows = []
    for config in sorted(_distinct(tokens["config"])):
        tc, ac = t[t["config"] == config], a[a["config"] == config]
        r, ar = tc["rock"], ac["rock"]

        def share(num, den):
            return float(num) / float(den) if den else math.nan

        am = ac.dropna(subset=[metric])
        rows.append({
            "config": config, "n_types": int(sum(1 for c, _ in rock_keys if c == config)),
            "share_tokens": share(r.sum(), len(tc)),
            "share_kl": share(tc.loc[r, "kl_pq"].sum(), tc["kl_pq"].sum()),
            "share_norm_est": share(tc.loc[r, "norm_est"].sum(), tc["norm_est"].sum()),
            "share_norm_branched": share(ac.loc[ar, "norm_distill"].sum(), ac["norm_distill"].sum()),
            "loss": loss, "n_nodes_rock": int(ar.sum()),
            "mean_alignment_rock": float(am.loc[am["rock"], metric].mean()) if am["rock"].any() else math.nan,
            "mean_alignment_other": float(am.loc[~am["rock"], metric].mean()) if (~am["rock"]).any() else math.nan,
            "n_tokens": len(tc), "n_nodes": len(ac),
        })
        kw = dict(n_boot=n_boot, ci=ci, seed=seed)
        for name, num, den, q in (("share_tokens", r.astype(float), pd.Series(1.0, index=tc.index), tc["question_id"]),
                                  ("share_kl", tc["kl_pq"].where(r, 0.0), tc["kl_pq"], tc["question_id"]),
                                  ("share_norm_est", tc["norm_est"].where(r, 0.0), tc["norm_est"], tc["question_id"]),
                                  ("share_norm_branched", ac["norm_distill"].where(ar, 0.0), ac["norm_distill"],
                                   ac["question_id"])):
            rows[-1][f"{name}_low"], rows[-1][f"{name}_high"] = ratio_interval(num, den, q, **kw)
    return pd.DataFrame(rows)
