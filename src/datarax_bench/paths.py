"""Where the project's files are: config, schemas, the data cache."""

from __future__ import annotations

import os
from pathlib import Path

from datarax_bench.errors import UserError

_PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """The checkout that holds `config/scenarios.yaml`.

    `DATARAX_BENCH_ROOT` wins; otherwise the checkout this package was installed from (editable
    installs, the way the README installs), then the working directory and its parents.
    """
    env = os.environ.get("DATARAX_BENCH_ROOT")
    if env:
        root = Path(env).resolve()
        if not (root / "config" / "scenarios.yaml").is_file():
            raise UserError(
                f"DATARAX_BENCH_ROOT={env}: no config/scenarios.yaml there; "
                "expected the datarax-bench checkout"
            )
        return root
    candidates = [_PACKAGE_DIR.parents[1], *[Path.cwd(), *Path.cwd().parents]]
    for candidate in candidates:
        if (candidate / "config" / "scenarios.yaml").is_file():
            return candidate
    raise UserError(
        "cannot find config/scenarios.yaml; run from the datarax-bench checkout "
        "or set DATARAX_BENCH_ROOT"
    )


def catalog_path() -> Path:
    return project_root() / "config" / "scenarios.yaml"


def profiles_dir() -> Path:
    return project_root() / "config" / "profiles"


def schema_path(name: str) -> Path:
    return project_root() / "workflow" / "schemas" / f"{name}.schema.yaml"


def cache_dir() -> Path:
    """The synthetic-data cache; `DATARAX_BENCH_CACHE` overrides `~/.cache/datarax-bench`."""
    env = os.environ.get("DATARAX_BENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "datarax-bench"
