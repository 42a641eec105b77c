"""One cell measured in several worker processes, its windows pooled.

Windows of one process are seconds apart and share everything a process decides once: where its
arrays landed in memory, which cores its threads settled on, its loader's start-up state. On a
virtual machine those make one process's windows agree with each other more than with the next
process's (docs/measurements.md has the measurements), so the spread of one process's windows
understates how much a rerun moves. With `measurement.processes: N` the supervisor runs the
cell's worker N times and pools the windows, each labelled with its process, so that statistics
and comparisons can see the spread between processes. A matrix runs them in rounds (the first
process of every cell, then the second, ...) so that they also sample the machine's drift over
the run; one cell alone runs them one after another.

Only measures registered as `pooled` take part: their timed numbers are the windows. The first
process also measures the tuning sweep (the later ones measure its choice, `tuned_choice`), the
feed and the special metrics; the cold starts are shared out among the processes. Other measures
run in one process that measures the repetitions of all of them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from datarax_bench import measures
from datarax_bench.measures.harness import DEFAULT_COLD_STARTS, summarize_repetitions
from datarax_bench.stats import group_by_process, process_median_interval
from datarax_bench.workload.catalog import Profile

#: The profile's repetition counts, per process of a pooled measure.
REPETITION_COUNTS = ("repetitions", "min_repetitions", "max_repetitions")
#: What later processes must measure identically for their windows to be pooled.
SAME_IN_EVERY_PROCESS = ("parallelism", "pipeline", "workload", "settings")


def count(profile: Profile, measure: str) -> int:
    """How many worker processes measure a cell of `measure` under `profile`."""
    return int(profile.measurement.get("processes", 1)) if _pooled(measure) else 1


def _pooled(measure: str) -> bool:
    entry = measures.table().get(measure)
    return entry is not None and entry.pooled


def worker_profile(
    profile: Profile, measure: str, index: int, tuned_choice: dict[str, Any] | None = None
) -> Profile:
    """The profile as process `index` (from 0) of a `measure` cell measures it.

    Pooled: the cold starts shared out among the processes (each starts at least its windows'
    loader), the feed in the first only, and a later process measures the first's
    `tuned_choice` (of a tuned cell) without a sweep. Not pooled: one process measures the
    repetitions of all of them, so that every cell of a profile has the same number of
    repetitions.
    """
    total = int(profile.measurement.get("processes", 1))
    if total == 1:
        return profile
    m = profile.measurement
    if not _pooled(measure):
        scaled = {k: m[k] * total for k in REPETITION_COUNTS if k in m}
        return replace(profile, measurement={**m, **scaled})
    cold_starts = m.get("cold_starts", DEFAULT_COLD_STARTS)
    measurement = {**m, "cold_starts": max(1, -(-cold_starts // total))}
    later = {"feed": None, "tuned_choice": tuned_choice} if index > 0 else {}
    return replace(profile, measurement=measurement, **later)


def tuned_choice(first: dict[str, Any]) -> dict[str, Any] | None:
    """What the first process's result says its tuned cell chose (None: nothing was tuned)."""
    tuning = first.get("tuning") or {}
    return tuning.get("chosen") if tuning.get("grid") else None


def between_process_cv(groups: list[np.ndarray]) -> float:
    """Coefficient of variation of the processes' median throughputs (two processes or more)."""
    medians = np.array([np.median(g) for g in groups])
    return float(medians.std(ddof=1) / medians.mean())


def pool(
    results: list[dict[str, Any]], total: int | None = None, target: float | None = None
) -> dict[str, Any]:
    """One cell's result from its processes' results (in order), of `total` processes meant
    (default: as many as there are results), under the profile's precision `target` (if any).

    One process: its result unchanged. A process that did not end `ok` ends the cell with its
    result (the reason says which process); results after it are ignored. Otherwise the first
    process's result with every process's windows and loader starts, each labelled with its
    process, and the statistics over all of them; timestamps span the processes. The attempts
    of every process taken are kept, in order.
    """
    total = total or len(results)
    if total == 1:
        return results[0]
    ended = ended_at(results)
    taken = results if ended is None else results[: ended + 1]
    pooled = (
        _process_ended(taken[-1], ended, total)
        if ended is not None
        else _pool(taken, total, target)
    )
    attempts = [a for r in taken for a in r.get("attempts") or []]
    if attempts:
        pooled["attempts"] = attempts
    return pooled


def ended_at(results: Sequence[dict[str, Any]]) -> int | None:
    """The index of the first process that did not end `ok` (it ends the cell), else None."""
    return next((i for i, r in enumerate(results) if r["status"] != "ok"), None)


def _pool(results: list[dict[str, Any]], total: int, target: float | None) -> dict[str, Any]:
    first = results[0]
    for index, result in enumerate(results[1:], 1):
        for key in SAME_IN_EVERY_PROCESS:
            if result.get(key) != first.get(key):
                failed = copy.deepcopy(result)
                failed["status"] = "failed"
                failed["reason"] = (
                    f"process {index + 1} of {total} measured with another {key} than process 1 "
                    f"({first.get(key)!r} -> {result.get(key)!r}); its windows cannot be pooled"
                )[:500]
                for drop in ("repetitions", "statistics", "cold_starts", "special", "feed"):
                    failed.pop(drop, None)
                return failed
    pooled = copy.deepcopy(first)
    repetitions, starts = [], []
    for index, result in enumerate(results):
        for rep in result["repetitions"]:
            repetitions.append({**rep, "index": len(repetitions), "process": index})
        for start in result.get("cold_starts") or []:
            starts.append({**start, "index": len(starts), "process": index})
    pooled["repetitions"] = repetitions
    if "cold_starts" in first:
        pooled["cold_starts"] = starts
    statistics = summarize_repetitions(repetitions, starts if "cold_starts" in first else None)
    # The interval of the median and its precision over the processes, which vary more than
    # one process's windows (a bootstrap over the windows would be too narrow).
    groups = group_by_process([r["elements_per_s"] for r in repetitions], repetitions)
    low, high = process_median_interval(groups)
    throughput = statistics["elements_per_s"]
    throughput["ci95_low"], throughput["ci95_high"] = low, high
    statistics["precision"] = (high - low) / 2 / throughput["median"]
    each = [r["statistics"].get("stopped") for r in results]
    stopped = _stopped(statistics["precision"], target, total, [s for s in each if s])
    if stopped:
        statistics["stopped"] = stopped
    statistics["processes"] = total
    statistics["between_process_cv"] = between_process_cv(groups)
    pooled["statistics"] = statistics
    pooled["timestamps"] = {
        "started": first["timestamps"]["started"],
        "finished": results[-1]["timestamps"]["finished"],
        "duration_s": sum(r["timestamps"]["duration_s"] for r in results),
    }
    return pooled


def _stopped(precision: float, target: float | None, total: int, each: list[str]) -> str | None:
    """Why the pooled cell stopped: each process stops its windows on its own interval, which is
    narrower than the pooled one over processes, so only the pooled interval says whether the
    cell met the profile's target."""
    reasons = ", ".join(dict.fromkeys(each))
    if target is None or not each:  # no target, or windows the target does not steer
        return reasons or None
    if precision <= target:
        return f"precision reached across {total} processes (each: {reasons})"
    return (
        f"precision not reached across {total} processes: {precision:.1%} > {target:.1%} "
        f"(each: {reasons})"
    )


def _process_ended(result: dict[str, Any], index: int, total: int) -> dict[str, Any]:
    ended = copy.deepcopy(result)
    ended["reason"] = f"process {index + 1} of {total}: {result['reason']}"[:500]
    return ended
