"""Result files: building, validating, atomic writing and reading."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import all_or_nothing, user_file_mode, write_text_atomic
from .schemas import first_non_finite, read_json, validate

SCHEMA_VERSION = 1
__all__ = ["all_or_nothing", "user_file_mode", "write_text_atomic"]  # re-exported for callers

STATUSES = ("ok", "unsupported", "failed", "timeout", "not_implemented")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def write_json_atomic(path: Path, document: Any) -> None:
    """`document` as indented JSON, atomically; NaN and infinities are refused, not written."""
    found = first_non_finite(document)
    if found:
        raise ValueError(f"{path}: {found[0]} is {found[1]}; JSON results hold finite numbers only")
    write_text_atomic(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Validate first: an invalid result is a bug and must never reach disk."""
    validate(result, "result", f"result for {Path(path)}")
    write_json_atomic(path, result)


def load_result(path: Path) -> dict[str, Any]:
    """Read and validate one result file; a bad file is a UserError naming it."""
    path = Path(path)
    document = read_json(path)
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a JSON object with a benchmark result")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"{path}: schema_version {document.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    validate(document, "result", path)
    return document


def cell_path(root: Path, scenario: str, variant: str, adapter: str) -> Path:
    """The layout shared by the CLI's --output-dir and the workflow: raw/S/V/A.json."""
    return Path(root) / "raw" / scenario / variant / f"{adapter}.json"
