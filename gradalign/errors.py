"""The one error base: `GradalignError`.

Owns: the base class every user-facing error derives from (a bad config, task, model, grader
spec, run folder or analysis request). Its message is one line that names the field or file and
what to do; the CLI maps any `GradalignError` to that line on stderr and exit code 2, in one place
(`gradalign.cli.errors.GuardedGroup`). Does not own the subclasses: each lives with the concept it guards
(`config.ConfigError`, `tasks.TaskError`, `models.ModelError`, `preflight.PreflightError`,
`graders.GraderSpecError`, `graders.GraderPoolError`, `graders.GraderBroken`, `tables.RunIncomplete`,
`tables.RunFolderError`, `runfolder.ShardSizeError`, `runfolder.OutputError`, `runfolder.RunLocked`,
`analysis.AnalysisError`).

Anything else that escapes the library is a bug, and the CLI lets its traceback through.
"""

from __future__ import annotations


class GradalignError(Exception):
    """A problem the user can fix, described in one line."""
