"""Writing files and directories so that a reader never sees half of one.

Every file the package writes for the user goes through `atomic_file` (or `write_text_atomic`,
built on it): a temporary sibling, fsynced, then renamed. Directories built in place (the data
cache, IO-1's files) go through `atomic_directory`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path


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


@contextlib.contextmanager
def atomic_file(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside `path` for the block to fill; renamed onto `path` when the block
    ends without an error (inside `all_or_nothing`, when that block ends), removed otherwise.

    The file is fsynced before the rename and gets the permissions of any file the user
    creates (the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, user_file_mode())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        pending = _pending.get()
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((tmp, path))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """`text` into `path` through `atomic_file`: never a half-written file."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_directory(target: Path, is_complete: Callable[[Path], bool]) -> Iterator[Path]:
    """A temporary sibling directory for the block to fill, renamed to `target` at the end.

    A reader never sees half a directory, and two processes building the same target at once
    both end with one complete copy (the loser's rename fails onto the winner's complete one).
    A `target` that exists but is not complete (tampered with) is replaced.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists() and not is_complete(target):
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def temporary_directory(prefix: str) -> Iterator[Path]:
    """A fresh empty directory under the system's temporary directory, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
