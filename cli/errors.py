"""The CLI's one error path.

Owns: `GuardedGroup`, the Typer group every command runs under. A `GradalignError` raised anywhere
below a command (library or CLI checks) becomes one line ``error: <message>`` on stderr and exit
code 2; Ctrl-C becomes one line (the library's `RunInterrupted` says which shards were kept) and
exit code 130; nothing else is caught, so a bug still shows its traceback. Commands never print
errors themselves: they raise `GradalignError` (or let the library raise it).
"""

from __future__ import annotations

import click
import typer
from typer.core import TyperGroup

from gradalign.errors import GradalignError


class GuardedGroup(TyperGroup):
    """A Typer group that maps `GradalignError` to one stderr line and exit code 2, Ctrl-C to one
    line and exit code 130."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GradalignError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt as e:
            typer.echo(str(e) or "interrupted", err=True)
            raise typer.Exit(code=130) from None
