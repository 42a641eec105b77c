"""Plugins: adapters and measures from outside the package.

An installed distribution declares its modules under the entry point groups
`datarax_bench.adapters` and `datarax_bench.measures` (in its pyproject.toml:
`[project.entry-points."datarax_bench.adapters"] name = "module"`); importing the module
registers what it defines. Modules that are not installed (test doubles) are named in
`DATARAX_BENCH_PLUGINS` (comma-separated) instead.
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata

from datarax_bench.errors import UserError

PLUGINS_VARIABLE = "DATARAX_BENCH_PLUGINS"


def load_entry_points(group: str) -> None:
    """Import every module installed under the entry point group `group`."""
    for entry in metadata.entry_points(group=group):
        try:
            entry.load()
        except ImportError as exc:
            raise UserError(
                f"entry point {entry.name!r} ({group}): cannot import {entry.value!r} ({exc})"
            ) from None


def load_named_modules() -> None:
    """Import the modules named in DATARAX_BENCH_PLUGINS."""
    for module in filter(None, os.environ.get(PLUGINS_VARIABLE, "").split(",")):
        try:
            importlib.import_module(module.strip())
        except ImportError as exc:
            raise UserError(f"{PLUGINS_VARIABLE}: cannot import {module!r} ({exc})") from None
