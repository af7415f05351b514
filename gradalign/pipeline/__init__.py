"""The diagnosis pipeline, one stage per module, typed records between stages.

    question rows
      -> rollouts.sample_rollouts      Rollout            (student samples, graded)
      -> selection.select_nodes        SelectionPlan      (nodes within the budget; refine's value queries)
      -> scoring.score_rollouts        Scores             (per-token rows; full p and q at the nodes)
      -> branching.plan_branches       Branch             (candidates K, residual first tokens)
      -> selection.fit_branches        SelectionPlan      (the budget re-priced with each node's actual candidates)
      -> branching.run_branches        BranchOutcomes     (M graded continuations per candidate; adaptive rounds)
         (rounds.run_rounds instead with branching.node_rounds: the first round, then rounds from a pool shared by the shard's nodes)
      -> alignment.align               Alignment          (S, V, g*, d per config x loss, cosines: node and alignment rows)
    -> engine.diagnose writes the tables (`gradalign.tables`) per shard, and the manifest last.

Every continuation (rollout, value query, branch) is sampled and graded by one function,
`rollouts.continue_and_grade`, so "a continuation cut by max_new_tokens is a failure" is decided in
one place. `resources.load_resources` loads what every stage needs (models, sampler, grader) once.
Stages return records; none fills a list handed in.
"""

from gradalign.pipeline.alignment import Alignment, align
from gradalign.pipeline.branching import Branch, BranchOutcomes, plan_branches, run_branches
from gradalign.pipeline.resources import Resources, Teacher, load_resources, sampling_params
from gradalign.pipeline.rollouts import Continuation, Outcome, Rollout, continue_and_grade, sample_rollouts
from gradalign.pipeline.scoring import NodeDists, Scores, score_rollouts
from gradalign.pipeline.selection import fit_branches, mark_branched, select_nodes

__all__ = [
    "Alignment", "Branch", "BranchOutcomes", "Continuation", "NodeDists", "Outcome", "Resources", "Rollout", "Scores",
    "Teacher", "align", "continue_and_grade", "fit_branches", "mark_branched", "load_resources", "plan_branches", "run_branches", "sample_rollouts",
    "sampling_params", "score_rollouts", "select_nodes",
]
