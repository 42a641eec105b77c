"""IO-2: streaming vs eager loading of the same on-disk dataset.

Eager loads every array into memory first (its load time reported on its own), then iterates;
streaming iterates over the memory-mapped cache files, reading lazily from disk. Before each
repetition the OS page cache is dropped where this process may do so, so that both start cold;
where it may not, the result says the cache was warm and why.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from .adapters.base import Adapter, CellContext
from .catalog import Profile, Workload
from .data import Dataset
from .harness import loader_reports, make_delivery, measure_repetition, summarize_repetitions

#: Writing 3 here drops the page cache (Linux, root only).
DROP_CACHES = "/proc/sys/vm/drop_caches"


def drop_page_cache(path: str = DROP_CACHES) -> tuple[bool, str]:
    """(dropped, note). Never raises: a machine that forbids it is measured warm, and says so."""
    try:
        os.sync()
        with open(path, "w") as fh:
            fh.write("3\n")
    except OSError as exc:
        return False, f"page cache could not be dropped ({exc.strerror or exc}): runs start warm"
    return True, "page cache dropped before each repetition: runs start cold"


def dataset_bytes(dataset: Dataset) -> int:
    """Bytes of the dataset's arrays on disk (what a cold start has to read)."""
    arrays = [*dataset.dense.values(), *(a for pair in dataset.ragged.values() for a in pair)]
    return int(sum(np.asarray(a).nbytes for a in arrays))


def cold_start_repetitions(
    adapter: Adapter,
    workload: Workload,
    dataset: Dataset,
    profile: Profile,
    *,
    load_first: bool,
    label: str,
    source=None,
    progress=None,
) -> tuple[list[dict[str, Any]], list[float], str, str]:
    """The profile's repetitions, each after dropping the page cache where permitted and, with
    `load_first`, after reading the dataset into memory (timed on its own).

    Returns (repetitions, load times, "cold" or "warm", the page-cache note). Shared by IO-2
    and IO-1 (`backends.py`), whose `source` is the backend's files.
    """
    import jax

    device = jax.devices()[0]
    deliver = make_delivery(adapter, device)
    reps, loads, states = [], [], []
    note = ""
    for r in range(profile.measurement["repetitions"]):
        dropped, note = drop_page_cache()
        states.append("cold" if dropped else "warm")
        records, load_s = dataset, None
        if load_first:
            start = time.perf_counter()
            records = dataset.load_into_memory()
            load_s = time.perf_counter() - start
            loads.append(load_s)
        ctx = CellContext(
            workload=workload, dataset=records, profile=profile, seed=profile.seed, source=source
        )
        reps.append(measure_repetition(r, adapter, ctx, deliver, device))
        del records, ctx
        if progress:
            extra = f", load {load_s:.3f} s" if load_s is not None else ""
            progress(
                f"{label} repetition {r + 1}: {reps[-1]['elements_per_s']:.1f} elements/s, "
                f"first batch {reps[-1]['time_to_first_batch_s']:.3f} s{extra} ({states[-1]})"
            )
    return reps, loads, "cold" if all(s == "cold" for s in states) else "warm", note


def measure_streaming(
    adapter: Adapter, workload: Workload, dataset: Dataset, profile: Profile, progress=None
) -> dict[str, Any]:
    loading = workload.options["loading"]
    reps, loads, page_cache, note = cold_start_repetitions(
        adapter,
        workload,
        dataset,
        profile,
        load_first=loading == "eager",
        label=loading,
        progress=progress,
    )
    parallelism = loader_reports(reps)["parallelism"]
    ttfb = [rep["time_to_first_batch_s"] for rep in reps]
    special = {
        "loading": loading,
        "page_cache": page_cache,
        "page_cache_note": note,
        "dataset_bytes": dataset_bytes(dataset),
        "time_to_first_batch_s": ttfb,
        # Eager pays the load before its first batch; streaming has none to pay.
        "load_s": loads or None,
        "load_s_median": float(np.median(loads)) if loads else None,
        "time_to_first_batch_including_load_s_median": float(
            np.median([t + (loads[i] if loads else 0.0) for i, t in enumerate(ttfb)])
        ),
    }
    return {
        "repetitions": reps,
        "statistics": summarize_repetitions(reps),
        "parallelism": parallelism,
        "special": special,
    }
