"""Result files: building, validating, atomic writing and reading."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import UserError
from .schemas import read_json, validate

SCHEMA_VERSION = 1
STATUSES = ("ok", "unsupported", "failed", "timeout", "not_implemented")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def write_text_atomic(path: Path, text: str) -> None:
    """Temporary file in the target directory, fsync, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, document: Any) -> None:
    """`document` as indented JSON, atomically; NaN and infinities are refused, not written."""
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
