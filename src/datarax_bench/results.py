"""Result files: building, validating, atomic writing and reading."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import UserError
from .schemas import first_non_finite, read_json, validate

SCHEMA_VERSION = 1
STATUSES = ("ok", "unsupported", "failed", "timeout", "not_implemented")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def user_file_mode() -> int:
    """The mode a file the user creates gets (0o666 less the umask), not mkstemp's 0600."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


# Inside `all_or_nothing()`: the (temporary, target) pairs written but not yet renamed.
_pending: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("_pending", default=None)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Files written atomically inside the block appear together when it ends, or not at all.

    Each is written and fsynced to a temporary file first; the renames happen only once every
    file is complete, so an error (a NaN, a full disk) leaves the previous files untouched.
    """
    outer = _pending.get()
    if outer is not None:  # nested: the outermost block renames
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _pending.set(pending)
    try:
        yield
        for tmp, path in pending:
            os.replace(tmp, path)
    finally:
        _pending.reset(token)
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Temporary file in the target directory, fsync, then rename: never a half-written file.

    The file gets the permissions of any file the user creates (the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), user_file_mode())
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        pending = _pending.get()
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((Path(tmp), path))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
