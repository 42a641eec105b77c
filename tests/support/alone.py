"""The suite runs in several processes (pytest-xdist, pyproject's addopts). A test marked
`alone` measures time or the machine's load, or looks at every process of the machine: it runs
while no other test does, in any process of the run; the other processes wait at their next
test. Without pytest-xdist (`-n 0`) every test runs alone anyway and nothing here acts."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "alone: measures time or the machine's load, or looks at every process of the machine: "
        "runs while no other test does (the suite runs in several processes)",
    )


def shared_dir(config) -> Path | None:
    """A directory every process of a pytest-xdist run shares (the run's base temporary
    directory, whose `popen-gwN` each worker's is), or None when the suite runs in one."""
    if not hasattr(config, "workerinput"):
        return None
    return Path(config.option.basetemp).parent


class _TurnLock:
    """A reader-writer lock between the processes of one run, on files: a test takes it shared,
    an `alone` test exclusively. The writer first takes the turnstile, which every reader passes
    through before taking its share, so that readers arriving later wait behind it instead of
    starving it."""

    def __init__(self, folder: Path):
        self.turnstile = open(folder / "tests.turnstile", "a+")  # noqa: SIM115 - the process's
        self.room = open(folder / "tests.room", "a+")  # noqa: SIM115 - the process's

    def hold(self, alone: bool):
        fcntl.flock(self.turnstile, fcntl.LOCK_EX)
        if alone:
            fcntl.flock(self.room, fcntl.LOCK_EX)
            return self.turnstile, self.room
        try:
            fcntl.flock(self.room, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self.turnstile, fcntl.LOCK_UN)
        return (self.room,)

    @staticmethod
    def release(held):
        for fh in reversed(held):
            fcntl.flock(fh, fcntl.LOCK_UN)


_TURN_LOCK = pytest.StashKey[_TurnLock]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under pytest-xdist, an `alone` test (with its fixtures' setup and teardown) runs while no
    other worker runs one: the others wait at their next test."""
    folder = shared_dir(item.config)
    if folder is None:
        return (yield)
    if _TURN_LOCK not in item.config.stash:
        item.config.stash[_TURN_LOCK] = _TurnLock(folder)
    lock = item.config.stash[_TURN_LOCK]
    held = lock.hold(alone=item.get_closest_marker("alone") is not None)
    try:
        return (yield)
    finally:
        lock.release(held)
