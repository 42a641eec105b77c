"""How busy the machine was while a cell measured, and whether it is fit to measure on now.

A timed window's load is read from the kernel's own accounting: the CPU time every CPU spent busy
(`/proc/stat`, through psutil) less the CPU time of the measuring process and all its
descendants (a loader's worker processes included), which leaves what *other* processes used.
Steal (time the hypervisor gave our virtual CPUs to someone else) is reported where the kernel
counts it. The load average and the CPU frequency and governor are read where the system exposes
them; a missing source is recorded as `None`, never guessed.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

#: A cell is `busy` when other processes used more than this share of the machine's CPU time
#: during its timed windows.
BUSY_SHARE = 0.10
#: Below this much timed wall in a cell, the kernel's 10 ms ticks make the share too coarse to
#: call a cell busy or not (the figures are still recorded).
MIN_WALL_S = 2.0
#: Steal above this share of the machine's CPU time makes a machine unfit to measure on.
STEAL_SHARE = 0.02
_CPUFREQ = Path("/sys/devices/system/cpu")
#: `doctor --strict` (and the workflow with `strict_machine`) exits with this on an unfit machine.
UNFIT_EXIT_CODE = 3


def cores_assumed(parallelism: dict[str, int]) -> int:
    """Cores a profile's parallelism keeps busy at once: its worker processes or threads."""
    return max(parallelism.get("workers", 0), parallelism.get("threads", 0), 1)


def usable_cores() -> int:
    """CPUs this process may run on (affinity and cpusets), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _tree_cpu_s(root: psutil.Process) -> float:
    """CPU seconds of `root` and its live descendants, including the descendants they reaped."""
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds summed over every CPU since boot."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    steal = getattr(t, "steal", 0.0)
    total = sum(t)
    # guest time is already counted in user (Linux); psutil's fields add it again.
    total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    return total - idle - steal, steal


def cpu_frequency() -> dict[str, Any]:
    """Current and maximum frequency (MHz, mean over CPUs) and the scaling governors in use."""
    governors = set()
    for path in _CPUFREQ.glob("cpu[0-9]*/cpufreq/scaling_governor"):
        try:
            governors.add(path.read_text().strip())
        except OSError:
            pass
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, FileNotFoundError):
        freq = None
    current = round(freq.current, 1) if freq and freq.current else None
    maximum = round(freq.max, 1) if freq and freq.max else None
    return {
        "current_mhz": current,
        "max_mhz": maximum,
        "governor": ",".join(sorted(governors)) or None,
    }


def _loadavg_1m() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


@dataclass(frozen=True)
class _Mark:
    wall: float
    busy_s: float
    steal_s: float
    own_s: float


class WindowLoad:
    """Accounting for one timed window: `start()` before it, `stop()` after it.

    `root` is the cell's measuring process (default: this one); its descendants count as its own.
    """

    def __init__(self, root: psutil.Process | None = None):
        self._root = root or psutil.Process()
        self._cpus = psutil.cpu_count() or 1
        self._start: _Mark | None = None

    def _mark(self) -> _Mark:
        busy, steal = _machine_cpu_s()
        return _Mark(time.perf_counter(), busy, steal, _tree_cpu_s(self._root))

    def start(self) -> WindowLoad:
        self._start = self._mark()
        return self

    def stop(self) -> dict[str, Any]:
        if self._start is None:
            raise RuntimeError("WindowLoad.stop() before start()")
        end, start = self._mark(), self._start
        wall = max(end.wall - start.wall, 1e-9)
        capacity = wall * self._cpus
        own = max(end.own_s - start.own_s, 0.0)
        # The kernel's per-CPU counters tick at USER_HZ and a process's at its own ticks: on a
        # short window the difference can be a tick or two either way, never a negative load.
        foreign = max(end.busy_s - start.busy_s - own, 0.0)
        steal = max(end.steal_s - start.steal_s, 0.0)
        freq = cpu_frequency()
        return {
            "wall_s": round(wall, 6),
            "cpus": self._cpus,
            "own_cpu_s": round(own, 4),
            "own_busy_cores": round(own / wall, 3),
            "foreign_cpu_s": round(foreign, 4),
            "foreign_share": round(min(foreign / capacity, 1.0), 4),
            "steal_share": round(min(steal / capacity, 1.0), 4),
            "loadavg_1m": _loadavg_1m(),
            "cpu_mhz": freq["current_mhz"],
            "governor": freq["governor"],
        }


def summarize(windows: list[dict[str, Any]], busy_share: float = BUSY_SHARE) -> dict[str, Any]:
    """A cell's load over its windows: others' share of the machine, weighted by window length,
    and the `busy` verdict (None when the windows are too short to tell)."""
    windows = [w for w in windows if w]
    if not windows:
        return {"foreign_share": None, "steal_share": None, "busy": None}
    capacity = sum(w["wall_s"] * w["cpus"] for w in windows)
    # A window's foreign CPU seconds can exceed its capacity by the counters' tick skew (its
    # share is clamped, its seconds are not): a share is at most 1.
    foreign = min(sum(w["foreign_cpu_s"] for w in windows) / capacity, 1.0)
    steal = min(sum(w["steal_share"] * w["wall_s"] * w["cpus"] for w in windows) / capacity, 1.0)
    return {
        "foreign_share": round(foreign, 4),
        "foreign_share_max": max(w["foreign_share"] for w in windows),
        "steal_share": round(steal, 4),
        "busy_share_threshold": busy_share,
        "busy": foreign > busy_share if sum(w["wall_s"] for w in windows) >= MIN_WALL_S else None,
    }


def preflight(seconds: float = 3.0, parallelism: int | None = None) -> dict[str, Any]:
    """Watch the machine for `seconds` while doing nothing, and say what makes it a poor place
    to measure right now. Returns the figures and a list of warnings (empty when fit)."""
    probe = WindowLoad().start()
    time.sleep(seconds)
    load = probe.stop()
    freq = cpu_frequency()
    cores = usable_cores()
    warnings = []
    if load["foreign_share"] > BUSY_SHARE:
        warnings.append(
            f"other processes used {load['foreign_share']:.0%} of the machine's CPU over "
            f"{seconds:g} s (more than {BUSY_SHARE:.0%}); numbers measured now will be noisy"
        )
    if load["steal_share"] > STEAL_SHARE:
        warnings.append(
            f"the hypervisor stole {load['steal_share']:.1%} of the CPU time over {seconds:g} s; "
            "a shared virtual machine gives noisy numbers"
        )
    if freq["governor"] and set(freq["governor"].split(",")) - {"performance"}:
        warnings.append(
            f"CPU frequency governor is {freq['governor']!r}, not 'performance': the clock "
            "changes with load, so short windows measure the governor too"
        )
    if parallelism and cores < parallelism:
        warnings.append(
            f"{cores} usable cores, fewer than the profile's parallelism of {parallelism}: "
            "the loaders' workers will share cores"
        )
    return {"seconds": seconds, "usable_cores": cores, **load, "warnings": warnings}


def check_before_measuring(cores: int, strict: bool, seconds: float = 3.0) -> list[str]:
    """The workflow's pre-flight: warn about an unfit machine; with `strict`, refuse to start
    (SystemExit with `UNFIT_EXIT_CODE`) before anything is measured."""
    report = preflight(seconds, cores)
    for warning in report["warnings"]:
        print(f"pre-flight: warning: {warning}", file=sys.stderr, flush=True)
    if strict and report["warnings"]:
        print(
            "pre-flight: strict_machine is set and this machine is a poor place to measure right "
            "now (warnings above); nothing was started",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(UNFIT_EXIT_CODE)
    return report["warnings"]
