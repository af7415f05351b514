"""TIP token quadrants (arXiv 2604.14084): student entropy H x teacher-student divergence D.

Owns: `QUADRANTS` / `QUADRANT_NAMES`, `tip_thresholds` (the H and D quantile thresholds, per config
by default), `tip_quadrants` (every token labelled Q1..Q4) and `quadrant_summary` (token shares and
mean alignment per config x loss x quadrant).

Does not own: per-token weights built from quadrants (`weights`, rule `keep-tip`), nor the
divergence columns themselves (`gradalign.engine` writes them to the tokens table).

Conventions: "high" means strictly above the threshold. For `dist_cos` (a similarity) D is
1 - dist_cos. Q1 = high H / high D, Q2 = high H / low D, Q3 = low H / high D, Q4 = low H / low D.
"""

from __future__ import annotations

import math

from gradalign.analysis.schema import (
    DIVERGENCES,
    TOKEN_KEY,
    AnalysisError,
    _at_nodes,
    _check_loss,
    _check_metric,
    _check_quantile,
    _distinct,
    _require,
)

QUADRANTS = ("Q1", "Q2", "Q3", "Q4")
QUADRANT_NAMES = {
    "Q1": "high H / high D",
    "Q2": "high H / low D",
    "Q3": "low H / high D (overconfident and wrong)",
    "Q4": "low H / low D",
}


def _divergence_values(tokens, divergence: str):
    if divergence not in DIVERGENCES:
        raise AnalysisError(f"unknown divergence {divergence!r}; choose from {', '.join(DIVERGENCES)}")
    _require(tokens, [divergence, "student_entropy", "config"], "tokens")
    v = tokens[divergence].astype(float)
    return 1.0 - v if divergence == "dist_cos" else v  # a cosine is a similarity: divergence = 1 - cos


def tip_thresholds(tokens, *, divergence: str = "kl_pq", h_quantile: float = 0.5, d_quantile: float = 0.5,
                   per_config: bool = True):
    """Entropy and divergence thresholds of the TIP quadrants: quantiles of student_entropy and of the
    divergence column (for `dist_cos`, of 1 - dist_cos), within each config (default, since the
    divergence depends on the teacher) or pooled over configs.

    Returns config, measure, h_quantile, d_quantile, entropy_threshold, divergence_threshold.
    """
    import pandas as pd

    _check_quantile(h_quantile, "h_quantile")
    _check_quantile(d_quantile, "d_quantile")
    dv = _divergence_values(tokens, divergence)
    h = tokens["student_entropy"].astype(float)
    configs = sorted(_distinct(tokens["config"]))
    rows = []
    for c in configs:
        mask = (tokens["config"] == c) if per_config else slice(None)
        rows.append({"config": c, "measure": divergence, "h_quantile": h_quantile, "d_quantile": d_quantile,
                     "entropy_threshold": float(h[mask].quantile(h_quantile)),
                     "divergence_threshold": float(dv[mask].quantile(d_quantile))})
    return pd.DataFrame(rows, columns=["config", "measure", "h_quantile", "d_quantile", "entropy_threshold", "divergence_threshold"])


def tip_quadrants(tokens, *, divergence: str = "kl_pq", h_quantile: float = 0.5, d_quantile: float = 0.5,
                  per_config: bool = True):
    """Tokens with their TIP quadrant (arXiv 2604.14084 axes: student entropy H x teacher-student
    divergence D). "High" means strictly above the threshold of `tip_thresholds`.

    Q1 = high H / high D, Q2 = high H / low D, Q3 = low H / high D (overconfident and wrong),
    Q4 = low H / low D. Adds columns divergence (the value used), high_entropy, high_divergence,
    quadrant (a categorical of `QUADRANTS`); the token columns are shared with `tokens`, not copied
    (write to a copy of the result, not to the result, if `tokens` must stay as it is under pandas < 3).
    """
    import numpy as np
    import pandas as pd

    th = tip_thresholds(tokens, divergence=divergence, h_quantile=h_quantile, d_quantile=d_quantile, per_config=per_config)
    out = tokens.copy(deep=False)  # shares the token columns; the columns added below exist in `out` only
    out["divergence"] = _divergence_values(tokens, divergence)
    h, dv = out["student_entropy"].to_numpy(dtype=float), out["divergence"].to_numpy(dtype=float)
    hi_h, hi_d = np.zeros(len(out), dtype=bool), np.zeros(len(out), dtype=bool)
    for x in th.itertuples(index=False):  # one boolean mask per config, not a 10M-row merge
        m = (out["config"] == x.config).to_numpy()
        hi_h[m], hi_d[m] = h[m] > x.entropy_threshold, dv[m] > x.divergence_threshold
    out["high_entropy"], out["high_divergence"] = hi_h, hi_d
    codes = np.select([hi_h & hi_d, hi_h & ~hi_d, ~hi_h & hi_d], [0, 1, 2], 3).astype(np.int8)
    out["quadrant"] = pd.Categorical.from_codes(codes, categories=list(QUADRANTS))  # 1 byte a row, not a string
    return out


def quadrant_summary(quadrant_tokens, alignment, *, metric: str = "cos", loss: str | None = None, n_boot: int = 1000,
                     ci: float = 0.95, seed: int = 0):
    """Share of tokens and mean alignment per config x loss x TIP quadrant, with intervals.

    `quadrant_tokens` comes from `tip_quadrants`. Alignment is only known at branched nodes, so the
    mean joins alignment rows (of `loss`, or every loss) to the token row of the same node and config.
    Returns config, loss, quadrant, n_tokens, share_tokens (within the config), mean_entropy,
    mean_divergence, n_nodes, mean_alignment, then the intervals: ci_low, ci_high (of
    mean_alignment) and share_low, share_high (of share_tokens), both percentile intervals of a
    cluster bootstrap that resamples questions (`stats.cluster_bootstrap`; the share as a ratio of
    the drawn questions' token counts).
    """
    import numpy as np
    import pandas as pd

    from gradalign.analysis.stats import cluster_bootstrap

    _check_metric(alignment, metric)
    _require(quadrant_tokens, [*TOKEN_KEY, "quadrant", "divergence"], "quadrant tokens")
    a = alignment if loss is None else alignment[alignment["loss"] == _check_loss(alignment, loss)]
    qt = quadrant_tokens
    tok = qt.groupby(["config", "quadrant"]).agg(n_tokens=("quadrant", "size"), mean_entropy=("student_entropy", "mean"),
                                                mean_divergence=("divergence", "mean"))
    total = qt.groupby("config").size()
    j = a.merge(_at_nodes(qt, a)[[*TOKEN_KEY, "quadrant"]].drop_duplicates(TOKEN_KEY), on=TOKEN_KEY,
                how="inner").dropna(subset=[metric])
    j["quadrant"] = j["quadrant"].astype(str)
    al = j.groupby(["config", "loss", "quadrant"])[metric].agg(["count", "mean"])
    cib = cluster_bootstrap(j, metric, ["config", "loss", "quadrant"], n_boot=n_boot, ci=ci, seed=seed)
    cib = cib.set_index(["config", "loss", "quadrant"]) if len(cib) else None
    # share of tokens per quadrant: token counts per (question, config, quadrant), questions resampled
    cnt = qt.groupby(["config", "question_id", "quadrant"]).size().unstack("quadrant", fill_value=0)
    cnt = cnt.reindex(columns=list(QUADRANTS), fill_value=0)
    share_iv: dict[tuple[str, str], tuple[float, float]] = {}
    rng = np.random.default_rng(seed)
    for config, g in cnt.groupby(level="config"):
        c = g.to_numpy(dtype=float)  # questions x 4
        W = rng.multinomial(len(c), np.full(len(c), 1.0 / len(c)), size=n_boot).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (W @ c) / (W @ c.sum(1))[:, None]
        lo, hi = np.nanquantile(boot, [(1 - ci) / 2, 1 - (1 - ci) / 2], axis=0)
        share_iv.update({(config, qd): (float(lo[k]), float(hi[k])) for k, qd in enumerate(QUADRANTS)})
    rows = []
    for config in sorted(_distinct(qt["config"])):
        for ls in sorted(set(a["loss"])):
            for qd in QUADRANTS:
                n_tok = int(tok["n_tokens"].get((config, qd), 0))
                rows.append({
                    "config": config, "loss": ls, "quadrant": qd, "n_tokens": n_tok,
                    "share_tokens": n_tok / int(total.get(config, 0)) if total.get(config, 0) else math.nan,
                    "mean_entropy": float(tok["mean_entropy"].get((config, qd), math.nan)),
                    "mean_divergence": float(tok["mean_divergence"].get((config, qd), math.nan)),
                    "n_nodes": int(al["count"].get((config, ls, qd), 0)),
                    "mean_alignment": float(al["mean"].get((config, ls, qd), math.nan)),
                    "ci_low": float(cib["ci_low"].get((config, ls, qd), math.nan)) if cib is not None else math.nan,
                    "ci_high": float(cib["ci_high"].get((config, ls, qd), math.nan)) if cib is not None else math.nan,
                    "share_low": share_iv.get((config, qd), (math.nan, math.nan))[0],
                    "share_high": share_iv.get((config, qd), (math.nan, math.nan))[1],
                })
    return pd.DataFrame(rows, columns=["config", "loss", "quadrant", "n_tokens", "share_tokens", "mean_entropy",
                                       "mean_divergence", "n_nodes", "mean_alignment", "ci_low", "ci_high", "share_low",
                                       "share_high"])
