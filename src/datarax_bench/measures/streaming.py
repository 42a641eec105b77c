"""IO-2: streaming vs eager loading of the same on-disk dataset.

Eager loads every array into memory first (its load time reported on its own), then iterates;
streaming iterates over the memory-mapped cache files, reading lazily from disk. Before each
repetition the OS page cache is dropped where this process may do so, so that both start cold;
where it may not, the result says the cache was warm and why.
"""

from __future__ import annotations

import numpy as np

from datarax_bench.measures import register
from datarax_bench.measures.harness import MeasureBody, cold_start_repetitions
from datarax_bench.workload.data import Dataset


def dataset_bytes(dataset: Dataset) -> int:
    """Bytes of the dataset's arrays on disk (what a cold start has to read)."""
    arrays = [*dataset.dense.values(), *(a for pair in dataset.ragged.values() for a in pair)]
    return int(sum(np.asarray(a).nbytes for a in arrays))


@register("streaming")
def measure_streaming(adapter, workload, dataset, profile, progress=None) -> MeasureBody:
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
    ttfb = [rep.record["time_to_first_batch_s"] for rep in reps]
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
    return MeasureBody(reps, special)
