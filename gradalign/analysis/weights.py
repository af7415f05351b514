"""Per-token loss weights for an OPD trainer, from rules over this run's tables.

Owns: `WeightRule`, `RULE_KINDS`, `RULE_HELP`, `parse_rule` (the `--rule` text syntax) and
`token_weights` (one float32 weight per rollout token of one config; rules multiply).

Does not own: the quantities the rules test (TIP quadrants: `tip`; rock tokens: `rocks`; alignment
signs: the alignment table), nor writing the weights file (`gradalign.cli`).

Output shape: question_id, rollout_id, position, weight, one row per rollout token of `config`,
sorted by (question_id, rollout_id, position); `out.attrs["gradalign_weights"]` records the
parameters a trainer needs to apply the same rules to fresh rollouts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from gradalign.analysis.rocks import rock_tokens
from gradalign.analysis.schema import NODE_KEY, AnalysisError, _check_loss, _check_metric, _distinct
from gradalign.analysis.tip import QUADRANTS, tip_quadrants, tip_thresholds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightRule:
    """One per-token weighting rule for `token_weights` (rules multiply).

    kind: `zero-negative` (weight 0 at branched nodes whose alignment is < 0; others keep 1),
    `keep-tip` (weight 1 on tokens in `quadrants`, 0 elsewhere), `freeze-rocks` (weight 0 on
    occurrences of rock-token types).
    """

    kind: str
    quadrants: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.kind}:{','.join(self.quadrants)}" if self.quadrants else self.kind


RULE_KINDS = ("zero-negative", "keep-tip", "freeze-rocks")
RULE_HELP = (
    "zero-negative (weight 0 at branched nodes where alignment < 0), "
    "keep-tip:Q3 or keep-tip:Q1,Q3 (keep only tokens of those TIP quadrants), "
    "freeze-rocks (weight 0 on rock-token types)"
)


def parse_rule(text: str) -> WeightRule:
    """Parse a weighting rule: `zero-negative`, `keep-tip:Q3` (or `keep-tip:Q1,Q3`), `freeze-rocks`."""
    kind, _, arg = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in RULE_KINDS:
        raise AnalysisError(f"unknown rule {text!r}; rules: {RULE_HELP}")
    if kind == "keep-tip":
        qs = tuple(q.strip().upper() for q in arg.split(",") if q.strip())
        bad = [q for q in qs if q not in QUADRANTS]
        if not qs or bad:
            raise AnalysisError(f"rule {text!r}: keep-tip needs quadrants from {', '.join(QUADRANTS)}, e.g. keep-tip:Q3")
        return WeightRule(kind, qs)
    if arg:
        raise AnalysisError(f"rule {text!r}: {kind} takes no argument")
    return WeightRule(kind)


def token_weights(tokens, alignment, *, config: str, rules: Sequence[WeightRule | str], loss: str | None = None,
                  metric: str = "cos", divergence: str = "kl_pq", h_quantile: float = 0.5, d_quantile: float = 0.5,
                  min_freq: int = 2, drop_top: int = 5, top_n: int = 20):
    """Per-token loss weights for one config: question_id, rollout_id, position, weight (float32).

    One row per rollout token of the run (position = index into the completion's token ids, as in
    the tokens table; a run with `branching.eos_node` also weighs each finished rollout's EOS, at
    position n_tokens). Every weight starts at 1 and each rule multiplies it by 0 or 1:
    `zero-negative` zeroes branched nodes whose `metric` for `loss` is < 0 (unbranched tokens and
    undefined cosines keep 1); `keep-tip:Qs` keeps only tokens in those TIP quadrants (thresholds as
    in `tip_quadrants`); `freeze-rocks` zeroes occurrences of the config's rock-token types
    (`rock_tokens` with min_freq, drop_top, top_n). `out.attrs["gradalign_weights"]` records what a
    trainer needs to apply the same rules to fresh rollouts: the rock token ids, the TIP thresholds.
    """
    import numpy as np

    parsed = [parse_rule(r) if isinstance(r, str) else r for r in rules]
    if not parsed:
        raise AnalysisError(f"give at least one rule: {RULE_HELP}")
    configs = sorted(_distinct(tokens["config"]))
    if config not in configs:
        raise AnalysisError(f"unknown config {config!r}; this run has {', '.join(configs)}")
    t = tokens[tokens["config"] == config].sort_values(["question_id", "rollout_id", "position"], kind="stable").reset_index(drop=True)
    w = np.ones(len(t), dtype=np.float32)
    params: dict = {"config": config, "rules": [str(r) for r in parsed]}
    for rule in parsed:
        if rule.kind == "zero-negative":
            _check_metric(alignment, metric)
            ls = _check_loss(alignment, loss)
            a = alignment[(alignment["config"] == config) & (alignment["loss"] == ls)]
            neg = set(map(tuple, a.loc[a[metric] < 0, NODE_KEY].itertuples(index=False, name=None)))
            params.update(loss=ls, metric=metric)
            w *= np.array([k not in neg for k in t[NODE_KEY].itertuples(index=False, name=None)], dtype=np.float32)
        elif rule.kind == "keep-tip":
            q = tip_quadrants(t, divergence=divergence, h_quantile=h_quantile, d_quantile=d_quantile)
            th = tip_thresholds(t, divergence=divergence, h_quantile=h_quantile, d_quantile=d_quantile).iloc[0]
            params["tip"] = {"divergence": divergence, "entropy_threshold": float(th.entropy_threshold),
                             "divergence_threshold": float(th.divergence_threshold), "quadrants": list(rule.quadrants)}
            w *= q["quadrant"].isin(rule.quadrants).to_numpy().astype(np.float32)
        elif rule.kind == "freeze-rocks":
            rocks = rock_tokens(t, min_freq=min_freq, drop_top=drop_top, top_n=top_n)
            params["rock_token_ids"] = [int(x) for x in rocks["token_id"]]
            w *= (~t["token_id"].isin(set(rocks["token_id"]))).to_numpy().astype(np.float32)
    out = t[["question_id", "rollout_id", "position"]].copy()
    out["weight"] = w
    out.attrs["gradalign_weights"] = params
    log.info("token_weights %s %s: %d tokens, %.1f%% kept", config, ",".join(map(str, parsed)), len(out),
             100.0 * float(w.mean()) if len(w) else 0.0)
    return out
