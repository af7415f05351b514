"""Packaging: pyproject.toml lists every sub-package, so a wheel install carries the whole library."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"gradalign", "gradalign.cli"} | {
        "gradalign." + p.parent.relative_to(ROOT / "gradalign").as_posix().replace("/", ".")
        for p in (ROOT / "gradalign").rglob("__init__.py") if p.parent != ROOT / "gradalign"
    }
    assert listed == found
