"""Analysis of run tables: pure functions over pandas DataFrames (notebooks and the CLI share them).

Owns: every number a report or a decision rests on, computed from the tables exactly as
`gradalign.load` returns them. Import from here (`from gradalign.analysis import rank_configs`);
the modules below are the implementation, one concept each:

- `schema`: `AnalysisError`, the column and key conventions (`METRICS`, `DIVERGENCES`, `NODE_KEY`,
  `TOKEN_KEY`), `LOSS_PREFERENCE` / `default_loss`, the shared argument checks.
- `stats`: `Interval`, `cluster_bootstrap`, `bootstrap_ci`, `spearman` (no knowledge of the tables).
- `ranking`: `summary_table`, `rank_configs` (config x loss means, intervals, split by verdict).
- `winners`: `question_winners`, `winner_shares`, `single_winner` (per-question comparisons).
- `position`: `node_delta_v`, `relative_position`, `alignment_by_position`, `decisive_nodes`,
  `alignment_at_decisive` (alignment along the rollout and at decisive nodes).
- `correlations`: `join_tokens`, `divergence_correlations` (divergence vs alignment, Spearman).
- `tip`: `QUADRANTS`, `QUADRANT_NAMES`, `tip_thresholds`, `tip_quadrants`, `quadrant_summary`.
- `rocks`: `token_loss`, `opd_norm_estimate`, `opd_norm_check`, `rock_tokens`, `rock_summary`.
- `weights`: `WeightRule`, `RULE_KINDS`, `RULE_HELP`, `parse_rule`, `token_weights`.
- `combine`: `combine_runs` (several runs' tables as one).
- `separation`: `Separation`, `paired_difference`, `tie_partner`, `disagreement_nodes`,
  `teacher_disagreements` (whether two configs differ, judged on the same questions, and where).
- `caveats`: `Caveat`, `CAVEAT_KINDS`, `run_caveats` (the warnings the CLI summary and the report show).
- `spaces`: `has_param_space`, `space_comparison`, `ranking_changes` (logit vs parameter space).
- `splithalf`: `split_half_alignment` (the split-half noise-corrected mean cosine per group).
- `precision`: `resolved_counts` (how many nodes' cosine signs are determined, per config).

Does not own: reading or writing files (`gradalign.tables` reads, `gradalign.report` and the CLI
write), plotting or any rendering, and computing the tables themselves (`gradalign.engine`).

Conventions used throughout:
- `metric` is an alignment column (`cos` or `cos_candidates`); rows where it is NaN
  (an undefined cosine, see the `reason` column) are dropped before averaging.
- A "mean alignment" is the mean over branched-node rows (nodes pooled across questions); its
  interval comes from resampling whole questions with replacement (cluster bootstrap, percentile
  interval, seeded `numpy.random.Generator`), because nodes of one question are not independent.
- l_t = student_logprob - teacher_logprob = log p(y_t) - log q(y_t) (the sampled reverse-KL term of
  the Rock Tokens paper); it is per config because q is.
"""

from __future__ import annotations

from gradalign.analysis.caveats import CAVEAT_KINDS, Caveat, run_caveats
from gradalign.analysis.combine import combine_runs
from gradalign.analysis.correlations import divergence_correlations, join_tokens
from gradalign.analysis.position import (
    alignment_at_decisive,
    alignment_by_position,
    decisive_nodes,
    node_delta_v,
    relative_position,
)
from gradalign.analysis.precision import resolved_counts
from gradalign.analysis.ranking import rank_configs, summary_table
from gradalign.analysis.rocks import opd_norm_check, opd_norm_estimate, rock_summary, rock_tokens, token_loss
from gradalign.analysis.schema import (
    DIVERGENCES,
    LOSS_PREFERENCE,
    METRICS,
    NODE_KEY,
    TOKEN_KEY,
    AnalysisError,
    default_loss,
)
from gradalign.analysis.schema import _check_loss as _check_loss  # private, re-exported: gradalign.report uses it
from gradalign.analysis.schema import _check_metric as _check_metric  # private, re-exported: gradalign.report uses it
from gradalign.analysis.schema import _distinct as _distinct  # private, re-exported: gradalign.report uses it
from gradalign.analysis.separation import (
    Separation,
    disagreement_nodes,
    paired_difference,
    teacher_disagreements,
    tie_partner,
)
from gradalign.analysis.spaces import has_param_space, ranking_changes, space_comparison
from gradalign.analysis.splithalf import split_half_alignment
from gradalign.analysis.stats import Interval, bootstrap_ci, cluster_bootstrap, spearman
from gradalign.analysis.tip import QUADRANT_NAMES, QUADRANTS, quadrant_summary, tip_quadrants, tip_thresholds
from gradalign.analysis.weights import RULE_HELP, RULE_KINDS, WeightRule, parse_rule, token_weights
from gradalign.analysis.winners import question_winners, single_winner, winner_shares

__all__ = [
    "CAVEAT_KINDS", "Caveat", "run_caveats", "Separation", "disagreement_nodes", "paired_difference", "teacher_disagreements",
    "tie_partner",
    "DIVERGENCES", "LOSS_PREFERENCE", "METRICS", "NODE_KEY", "QUADRANTS", "QUADRANT_NAMES", "RULE_HELP", "RULE_KINDS",
    "TOKEN_KEY", "AnalysisError", "Interval", "WeightRule", "alignment_at_decisive", "alignment_by_position",
    "bootstrap_ci", "cluster_bootstrap", "combine_runs", "decisive_nodes", "default_loss", "divergence_correlations",
    "join_tokens", "node_delta_v", "opd_norm_check", "opd_norm_estimate", "parse_rule", "quadrant_summary",
    "question_winners", "rank_configs", "relative_position", "resolved_counts", "rock_summary", "rock_tokens",
    "single_winner", "split_half_alignment",
    "spearman", "summary_table", "tip_quadrants", "tip_thresholds", "token_loss", "token_weights", "winner_shares",
]
__all__ += ["has_param_space", "ranking_changes", "space_comparison"]
