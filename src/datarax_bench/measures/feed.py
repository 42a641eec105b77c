"""Does the loader keep an accelerator fed? A training loop that spends a fixed step time T on
each batch, overlapped with fetching the next batch, and the accelerator utilisation it reaches:
AU = batches x T / wall time, for each T of the profile's `feed.step_ms`.

The loop has one step in flight, as a JAX training loop whose steps dispatch asynchronously and
which waits for the previous step before dispatching the next:

    fetch batch k                      (the loader works while step k-1 runs)
    wait until step k-1 has finished   (a sleep: the emulated accelerator uses no host CPU)
    step k runs for T from max(batch k ready, step k-1 finished), holding batch k

The accelerator is emulated by a host timer on every backend (as MLPerf Storage emulates
accelerators): the measure says whether the loader and the delivery to the device keep up with
a step of T, not how a real step's own use of the host or the device would slow them. The
loop's wall time is computed from the measured fetch times and T; the host sleeps the steps out
in real time, so the loader's own threads and workers get the time they would, but the host
timer's lateness (some 0.1 ms, recorded) is left out: a loop blocked on a real step wakes far
sooner, and at a step of 1 ms that lateness would count against the loader as a tenth of it.

The window runs from the start of its first step to the start of the step after its last, so
the first fetch (overlapped with nothing) is outside it: AU = steps x T / sum of max(fetch, T),
1 for a loader that always has the next batch before the step ends, T / (time to fetch a batch)
for one that never does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from datarax_bench.measures.harness import start_loader, untimed
from datarax_bench.workload.catalog import Catalog, Profile, Workload

#: What stands in for the accelerator's step (recorded in every result).
EMULATION = "host timer"
#: Steps the loop lets run ahead of the batch it fetches.
STEPS_IN_FLIGHT = 1
#: The profile's `feed` keys that have defaults (workflow/schemas/profile.schema.yaml says the same).
DEFAULTS = {"min_seconds": 1.0, "min_batches": 10, "threshold": 0.9}


@dataclass(frozen=True)
class FeedSettings:
    """A profile's `feed`: the step times and how long each one's window lasts."""

    step_ms: tuple[float, ...]
    min_seconds: float
    min_batches: int
    #: AU from which a step time counts as fed.
    threshold: float

    @classmethod
    def of(cls, profile: Profile) -> FeedSettings | None:
        doc = profile.feed
        if doc is None:
            return None
        given = {**DEFAULTS, **doc}
        return cls(
            step_ms=tuple(sorted(float(t) for t in given["step_ms"])),
            min_seconds=float(given["min_seconds"]),
            min_batches=int(given["min_batches"]),
            threshold=float(given["threshold"]),
        )


def settings_for(profile: Profile, workload: Workload) -> FeedSettings | None:
    """The feed settings when this cell gets the feed measurement, else None."""
    if not profile.feeds(workload.scenario, workload.measure):
        return None
    return FeedSettings.of(profile)


def fed_scenarios(profile: Profile, catalog: Catalog, scenarios: Iterable[str]) -> list[str]:
    """Which of `scenarios` (a run's) the profile measures the feed of."""
    return [s for s in scenarios if profile.feeds(s, catalog.get(s).measure)]


# --- the emulated training loop ------------------------------------------------------------


@dataclass
class TrainingWindow:
    """One window of the emulated loop at one step time."""

    step_s: float
    steps: int
    wall_s: float
    #: Per step of the window: from asking for its batch until the batch was on the device.
    fetch_s: list[float]
    #: Per wait: how much later than asked the host timer woke.
    late_s: list[float]

    @property
    def utilisation(self) -> float:
        # At most 1 by construction (each step adds at least T); min() drops rounding.
        return min(1.0, self.steps * self.step_s / self.wall_s)


def training_window(
    fetch: Callable[[], Any],
    step_s: float,
    min_steps: int,
    min_seconds: float,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> TrainingWindow:
    """Run the loop until the window holds at least `min_steps` steps and `min_seconds`.

    Step k starts once its batch is fetched and step k-1 is over; the fetch began when step k-1
    did. So each step after the first adds max(fetch, step) to the loop's wall time, and the
    host sleeps out the rest of the step in real time (its timer's lateness is recorded, not
    counted: a loop blocked on a real step wakes far sooner).
    """
    fetch_s: list[float] = []
    late_s: list[float] = []
    wall = 0.0  # from the start of the first step to the start of the current one
    step = 0  # the step the fetched batch is for
    in_step = None  # the batch the running step holds, as a real step holds its input
    while True:
        requested = clock()
        batch = fetch()
        took = clock() - requested
        fetch_s.append(took)
        if step > 0:
            if took < step_s:  # step k-1 still runs: wait for it
                asleep = clock()
                sleep(step_s - took)
                late_s.append(max(0.0, clock() - asleep - (step_s - took)))
            wall += max(took, step_s)
            if step >= min_steps and wall >= min_seconds:
                # The first fetch, overlapped with nothing, is outside the window.
                return TrainingWindow(step_s, step, wall, fetch_s[1:], late_s)
        in_step = batch  # noqa: F841 - the previous step's batch is released as it ends
        step += 1


def shortest_fed(utilisation: dict[float, float], threshold: float) -> float | None:
    """The shortest step time from which every longer one reaches `threshold`, or None.

    Every longer step must be fed too: one short step that reaches it by chance between two
    that do not is not a step time the loader can be relied on to feed.
    """
    fed = None
    for step_ms in sorted(utilisation, reverse=True):
        if utilisation[step_ms] < threshold:
            break
        fed = step_ms
    return fed


def _median_ms(values: list[float]) -> float | None:
    return float(np.median(values)) * 1000 if values else None


def measure_feed(adapter, ctx, deliver, settings: FeedSettings, progress=None) -> dict[str, Any]:
    """The result's `feed` section: one window per step time, shortest first, on one loader
    warmed up as the throughput windows are."""
    started = start_loader(0, adapter, ctx, deliver)
    try:
        batches = started.batches

        def fetch():
            return deliver(next(batches))

        untimed(batches, deliver, ctx.profile.measurement["warmup_batches"] - 1)
        windows = []
        for step_ms in settings.step_ms:
            w = training_window(fetch, step_ms / 1000, settings.min_batches, settings.min_seconds)
            windows.append(
                {
                    "step_ms": step_ms,
                    "batches": w.steps,
                    "wall_s": w.wall_s,
                    "utilisation": w.utilisation,
                    "fetch_ms_median": _median_ms(w.fetch_s),
                    "fetch_ms_mean": float(np.mean(w.fetch_s)) * 1000,
                    "timer_late_ms_median": _median_ms(w.late_s),
                }
            )
            if progress:
                progress(
                    f"feed {step_ms:g} ms step: utilisation {w.utilisation:.1%} over {w.steps} "
                    f"batches (fetch median {_median_ms(w.fetch_s):.2f} ms)"
                )
    finally:
        started.loader.close()
    fed = shortest_fed({w["step_ms"]: w["utilisation"] for w in windows}, settings.threshold)
    return {
        "emulation": EMULATION,
        "steps_in_flight": STEPS_IN_FLIGHT,
        "threshold": settings.threshold,
        "windows": windows,
        "shortest_fed_step_ms": fed,
    }
