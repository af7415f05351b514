"""CLI commands over run configs: `config` (explain every field, or print a config resolved) and
`init` (write a commented config with every key at its default).

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


def init(
    path: Path = typer.Argument(Path("gradalign.toml"), metavar="[PATH]", help="file to write (default gradalign.toml)"),
    force: bool = typer.Option(False, "--force", help="overwrite PATH if it exists"),
) -> None:
    """Write a commented run config: every section and key at its default, with its documentation.

    The comments are the field docs `gradalign config --explain` prints, so they match this version.

    Example: gradalign init my-run.toml && gradalign validate my-run.toml
    """
    import os
    import tempfile

    from gradalign.config import init_config_text

    if path.is_dir():
        raise GradalignError(f"{path}: is a folder; give a file path, e.g. {path / 'gradalign.toml'}")
    if path.exists() and not force:
        raise GradalignError(f"{path}: already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise GradalignError(f"{path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(init_config_text())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    typer.echo(f"wrote {path}: every key at its default; edit [task], [student] and [[teachers]], then `gradalign validate {path}`")


def register(app: typer.Typer) -> None:
    """Add the `config` and `init` commands to `app`."""
    app.command("config")(config)
    app.command("init")(init)
