"""What does reading one element cost from each IO-1 file backend? (a benchmark, not a test)

The readers the adapters use, without any loader around them, each reading every element of
IO-1's full-size dataset once per trial: a `.npy` memory map (the element copied out), Grain's
`ArrayRecordDataSource` plus the pickle decode, and TFDS's `data_source` over its ArrayRecord
copy (the Grain and PyTorch path). Trials alternate between the readers; we report the median
microseconds per element. It explains the per-element part of IO-1's throughput differences.

    python tests/perf/bench_backends.py [--trials 7]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import UTC, datetime

import numpy as np

from datarax_bench.provenance import cpu_info
from datarax_bench.workload import formats
from datarax_bench.workload.catalog import load_catalog
from datarax_bench.workload.data import materialize


def _readers(dataset, workload):
    import grain

    mapped = dataset.dense
    array_record = grain.sources.ArrayRecordDataSource(
        formats.prepare(dataset, "array_record").array_record_paths()
    )
    tfds_source, _ = formats.tfds_data_source(formats.prepare(dataset, "tfds"))
    decode = formats.TfdsElement(workload.fields)
    return {
        "npy memory map (element copied out)": lambda i: {
            k: np.array(v[i]) for k, v in mapped.items()
        },
        "ArrayRecordDataSource + unpickle": lambda i: formats.unpickle_record(array_record[i]),
        "tfds.data_source (ArrayRecord)": lambda i: decode(tfds_source[i]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=7)
    args = parser.parse_args()

    workload = load_catalog().get("IO-1").resolve("memory", "full")
    dataset = materialize(workload, 0)
    readers = _readers(dataset, workload)
    n = len(dataset)
    for read in readers.values():  # open files, fill the page cache
        for i in range(n):
            read(i)
    times: dict[str, list[float]] = {name: [] for name in readers}
    for trial in range(args.trials):
        order = list(readers) if trial % 2 == 0 else list(reversed(readers))
        for name in order:
            read = readers[name]
            start = time.perf_counter()
            for i in range(n):
                read(i)
            times[name].append((time.perf_counter() - start) / n * 1e6)

    cpu = cpu_info()
    print(
        f"{datetime.now(UTC):%Y-%m-%d}, {cpu.get('model')} ({cpu.get('logical_cores')} cores), "
        f"Python {platform.python_version()}; IO-1 full: {n} elements of "
        f"{sum(int(np.prod(f.shape)) * np.dtype(f.dtype).itemsize for f in workload.fields.values())}"
        f" bytes, {args.trials} alternating trials"
    )
    print("| reader | µs per element (median) | min | max |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        print(
            f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |"
        )


if __name__ == "__main__":
    main()
