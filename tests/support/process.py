"""Whether a process the tests started (or saw started) still runs."""

from __future__ import annotations

import psutil


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (ended, not yet reaped) or a vanished pid is not."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
