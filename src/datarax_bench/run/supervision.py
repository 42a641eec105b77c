"""Keeping measurements alone on the machine and tied to the process that supervises them.

- The bench lock: one measurement at a time per machine, whoever started it (Snakemake, a user's
  `datarax-bench run`, a second workflow). The supervisor takes an exclusive `flock` before it
  starts a worker and hands the open file to the worker, so the lock is held until both are gone.
- The lifeline: a worker dies with its supervisor, however the supervisor dies. The kernel kills
  the worker when its parent dies (`PR_SET_PDEATHSIG`), and a small guard process in the worker's
  process group kills that whole group (the loader's own worker processes too) when the pipe
  from the supervisor reaches end-of-file, which happens when the supervisor is gone.
- The sweep: temporary files of a supervisor that was killed are removed by the next run; their
  names carry the pid of the supervisor that owns them, so files of a live run are kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from datarax_bench import paths
from datarax_bench.errors import UserError

LOCK_ENV = "DATARAX_BENCH_LOCK"
LOCK_TIMEOUT_ENV = "DATARAX_BENCH_LOCK_TIMEOUT_S"
# A lock held this briefly is the previous cell's processes exiting, not another measurement.
_QUIET_WAIT_S = 1.0
_POLL_S = 0.05
_PR_SET_PDEATHSIG = 1


def lock_path() -> Path:
    """`DATARAX_BENCH_LOCK`, else `bench.lock` in the data cache (one per machine and user)."""
    env = os.environ.get(LOCK_ENV)
    return Path(env) if env else paths.cache_dir() / "bench.lock"


def _lock_timeout() -> float | None:
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise UserError(f"{LOCK_TIMEOUT_ENV}={raw!r}: expected a number of seconds >= 0")
    return value


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.contextmanager
def bench_lock(label: str, say=lambda message: print(message, file=sys.stderr, flush=True)):
    """Hold the machine's bench lock; yields its file descriptor for the worker to inherit.

    Waits while another measurement holds it, saying once who holds it; gives up with a
    UserError after `DATARAX_BENCH_LOCK_TIMEOUT_S` seconds when that is set.
    """
    path = lock_path()
    timeout = _lock_timeout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(
            f"bench lock {path}: cannot open it ({exc.strerror}); expected a writable file "
            f"(set {LOCK_ENV} to choose another)"
        ) from None
    try:
        start = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if timeout is not None and waited >= timeout:
                    raise UserError(
                        f"bench lock {path} is held by {_holder(path)}; gave up after "
                        f"{timeout:g} s ({LOCK_TIMEOUT_ENV}); nothing was measured"
                    ) from None
                if not announced and waited >= min(_QUIET_WAIT_S, timeout or _QUIET_WAIT_S):
                    say(f"waiting for the bench lock {path}, held by {_holder(path)}")
                    announced = True
                time.sleep(_POLL_S)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} measuring {label} since {since}\n".encode(), 0)
        yield fd
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # the worker's inherited copy keeps the lock until the worker is gone too


def guard_worker(supervisor_pid: int, lifeline_fd: int) -> None:
    """Called first thing in a worker: tie its life, and its process group's, to the supervisor.

    Exits at once when the supervisor is already gone (it may die before the death signal is set).
    """
    # Linux only; elsewhere the guard below alone ends the worker with its supervisor.
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is not None and prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != supervisor_pid:
        os._exit(1)
    if os.fork() == 0:
        # The guard, a process of its own, so that a worker stuck in native code cannot stall it.
        # Whatever ends its wait (end-of-file, a signal), it takes the whole group with it.
        try:
            while os.read(lifeline_fd, 1):
                pass
        finally:
            os.killpg(os.getpgrp(), signal.SIGKILL)
            os._exit(0)
    os.close(lifeline_fd)


def temp_name(output: Path, pid: int | None = None) -> str:
    """Prefix of a supervisor's temporary files for `output`: `.{name}.{pid}.`"""
    return f".{output.name}.{os.getpid() if pid is None else pid}."


_TEMP = re.compile(r"^\..+\.json\.(\d+)\.[^.]+\.(worker|log)(\..+\.tmp)?$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def sweep_stale_files(directory: Path) -> list[Path]:
    """Remove temporary files under `directory` whose supervisor is dead; returns what went."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.rglob(".*"):
        match = _TEMP.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def signals_exit(signums=(signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """While inside, these signals end the process through SystemExit, so cleanup runs."""

    def leave(signum, frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; the lifeline still covers this case
        return
    previous = {s: signal.signal(s, leave) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
