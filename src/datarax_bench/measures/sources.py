"""IO-1: the same records read from memory and from each native on-disk format.

The backend's files are built once (`formats.prepare`, or a loader's own format by its adapter's
`prepare`; outside every repetition; the build time is reported on its own). Each repetition then starts like IO-2's: the OS page cache is dropped
where this process may, and for the `memory` backend the cached arrays are read into RAM first
(that load is timed apart). The loader reads the backend with its framework's own reader and
says what it read; the result reports throughput, time to first batch, and the on-disk size of
exactly those files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datarax_bench.adapters.base import Adapter
from datarax_bench.measures import register
from datarax_bench.measures.harness import MeasureBody, cold_start_repetitions
from datarax_bench.workload import formats
from datarax_bench.workload.catalog import Workload

#: The record encoding of the backends that read the `.npy` cache.
NPY_ENCODING = "NumPy .npy files, one per field, elements along the first axis (C order)"


def _files(source: formats.SourceFiles, source_info: dict[str, Any] | None) -> dict[str, int]:
    """{path relative to the backend's root: bytes on disk} of every file the loader read."""
    if not source_info or not source_info.get("paths"):
        raise RuntimeError("the loader did not report what it read (source_info)")
    return {
        str(path.resolve().relative_to(source.root.resolve())): path.stat().st_size
        for path in formats.files_read([Path(p) for p in source_info["paths"]])
    }


def backend_support(adapter: Adapter, workload: Workload) -> str | None:
    """The adapter reads the variant's backend with its framework's own reader, or why not."""
    backend = workload.options["backend"]
    if backend in adapter.backends:
        return None
    return adapter.backend_reasons.get(
        backend, f"{adapter.display_name} has no native reader for the {backend!r} backend"
    )


def source_files(adapter: Adapter, workload: Workload, dataset) -> tuple[formats.SourceFiles, bool]:
    """The files of the variant's backend that `adapter` reads, and whether this call built
    them: a loader's own format from its adapter (`own_source`: written by its `prepare` before
    the measure, as for every other scenario), any other backend's from `formats.prepare`."""
    backend = workload.options["backend"]
    if backend in formats.OWN_FORMAT_BACKENDS:
        return adapter.own_source(workload, dataset), False
    built = not formats.is_prepared(dataset, backend)
    return formats.prepare(dataset, backend), built


@register("source_backends", support=backend_support, pooled=True)
def measure_source_backends(adapter, workload, dataset, profile, progress=None) -> MeasureBody:
    backend = workload.options["backend"]
    source, built = source_files(adapter, workload, dataset)
    if progress and built:
        progress(f"built the {backend} files in {source.meta['build_s']:.1f} s")
    reps, loads, page_cache, note = cold_start_repetitions(
        adapter,
        workload,
        dataset,
        profile,
        load_first=backend == "memory",
        label=backend,
        source=source,
        progress=progress,
    )
    source_info = reps[-1].source_info
    files = _files(source, source_info)
    ttfb = [rep.record["time_to_first_batch_s"] for rep in reps]
    special = {
        "backend": backend,
        "reader": source_info["reader"],
        "record_encoding": source.meta.get("encoding", NPY_ENCODING),
        "records": workload.num_elements,
        "files": files,
        "bytes_on_disk": sum(files.values()),
        "page_cache": page_cache,
        "page_cache_note": note,
        "time_to_first_batch_s": ttfb,
        "time_to_first_batch_s_median": float(np.median(ttfb)),
        # The memory backend reads the cache into RAM before its first batch; no other has to.
        "load_s": loads or None,
        "load_s_median": float(np.median(loads)) if loads else None,
        # Writing the files is a one-time conversion, never part of a repetition.
        "build_s": source.meta.get("build_s"),
        "built_in_this_cell": built,
    }
    return MeasureBody(reps, special)
