"""CLI command over run configs: `config` (explain every field, or print a config resolved).

Owns: its option parsing and exit codes; `register(app)` adds it to the Typer app. Does not own the
field docs or the TOML writer (both `gradalign.config`). Imports nothing heavy at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from gradalign.errors import GradalignError


def config(
    config_path: Optional[Path] = typer.Argument(None, metavar="CONFIG", help="TOML run config to print resolved: every default filled in"),
    explain: bool = typer.Option(False, "--explain", help="document every config field: dotted name, type, default, meaning"),
    fmt: str = typer.Option("text", "--format", help="with --explain: text | markdown (the README's Config reference)"),
    set_: List[str] = typer.Option([], "--set", help="with CONFIG: override a field first, e.g. --set branching.continuations=16"),
) -> None:
    """Explain every run-config field (--explain), or print CONFIG resolved as TOML.

    With CONFIG: validate it, apply any --set, and print it with every default filled in.

    Example: gradalign config --explain --format markdown
    """
    from gradalign.config import EXPLAIN_FORMATS, apply_overrides, explain_config, load_config, parse_overrides

    if fmt not in EXPLAIN_FORMATS:
        raise GradalignError(f"unknown --format {fmt!r}; choose {' or '.join(EXPLAIN_FORMATS)}")
    if explain:
        if config_path is not None or set_:
            raise GradalignError("--explain takes no CONFIG or --set; run `gradalign config CONFIG.toml` to resolve one")
        typer.echo(explain_config(fmt), nl=False)
        return
    if config_path is None:
        raise GradalignError("give a CONFIG.toml to print resolved, or --explain to document every field")
    if fmt != "text":
        raise GradalignError("--format applies to --explain only")
    cfg = load_config(config_path)
    if set_:
        cfg = apply_overrides(cfg, parse_overrides(set_))
    typer.echo(cfg.to_toml(), nl=False)


def register(app: typer.Typer) -> None:
    """Add the `config` command to `app`."""
    app.command("config")(config)
