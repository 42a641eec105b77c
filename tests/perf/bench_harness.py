"""How much throughput does the measurement harness cost? (a benchmark, not a test)

A trivial in-memory adapter (pre-built batches, no transforms) is measured through the harness
and, side by side in the same process, by a bare loop that requests the same batches and
delivers them the same way (`jax.device_put` of every field, blocked on) with no timing, no
statistics and no memory sampling. Trials alternate between the two; we report medians and the
ratio. The harness must keep at least 99% of the bare loop's throughput.

    python tests/perf/bench_harness.py [--trials 15] [--batches 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from datetime import UTC, datetime

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from datarax_bench.adapters.base import Adapter, CellContext, Loader  # noqa: E402
from datarax_bench.measures.harness import make_delivery, measure_repetition  # noqa: E402
from datarax_bench.provenance import cpu_info  # noqa: E402
from datarax_bench.workload.catalog import load_catalog, load_profile  # noqa: E402

BATCH_SIZE = 1024


class _MemoryLoader(Loader):
    parallelism = {"threads": 1}

    def __init__(self, batches):
        self.batches = batches

    def epoch(self, epoch):
        yield from self.batches


class _MemoryAdapter(Adapter):
    id = "memory"
    display_name = "In-memory (benchmark)"

    def __init__(self, batches):
        self.batches = batches

    def open(self, ctx):
        return _MemoryLoader(self.batches)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--batches", type=int, default=2000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    # A batch of the ci_cpu TAB-1 size: 1024 rows of 128 float32 features and an int label.
    batches = [
        {
            "features": rng.normal(size=(BATCH_SIZE, 128)).astype(np.float32),
            "label": rng.integers(0, 2, size=BATCH_SIZE).astype(np.int32),
        }
        for _ in range(64)
    ]
    adapter = _MemoryAdapter(batches)
    device = jax.devices()[0]
    deliver = make_delivery(adapter, device)

    catalog = load_catalog()
    profile = load_profile("smoke")
    profile = dataclasses.replace(
        profile,
        measurement={
            **profile.measurement,
            "warmup_batches": 1,
            "min_batches": args.batches,
            "min_seconds": 0.0,
        },
    )
    workload = dataclasses.replace(
        catalog.get("TAB-1").resolve("small", "tiny"),
        batch_size=BATCH_SIZE,
        num_elements=BATCH_SIZE * len(batches),
    )
    ctx = CellContext(workload=workload, dataset=None, profile=profile, seed=0)

    def bare() -> float:
        def stream():
            while True:
                yield from batches

        it = stream()
        deliver(next(it))  # the same one-batch warmup the harness gets
        start = time.perf_counter()
        for _ in range(args.batches):
            deliver(next(it))
        return args.batches * BATCH_SIZE / (time.perf_counter() - start)

    def harnessed() -> float:
        return measure_repetition(0, adapter, ctx, deliver, device).record["elements_per_s"]

    bare(), harnessed()  # warm both paths up
    bare_runs, harness_runs, ratios = [], [], []
    for trial in range(args.trials):
        # Alternate which goes first, so that neither always runs on a "warmer" machine.
        if trial % 2:
            h, b = harnessed(), bare()
        else:
            b, h = bare(), harnessed()
        bare_runs.append(b)
        harness_runs.append(h)
        ratios.append(h / b)
    b_med, h_med = statistics.median(bare_runs), statistics.median(harness_runs)
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: {cpu_info()['model']}, {cpu_info()['usable_cores']} cores, {platform.platform()}"
    )
    print(f"jax {jax.__version__} on {device}")
    print(f"trials: {args.trials} x {args.batches} batches of {BATCH_SIZE} elements")
    print(f"bare loop median:  {b_med:12.0f} elements/s")
    print(f"harness median:    {h_med:12.0f} elements/s")
    print(f"ratio of medians:  {h_med / b_med:.4f}")
    print(
        f"median of paired ratios: {statistics.median(ratios):.4f}  (min {min(ratios):.4f}, max {max(ratios):.4f})"
    )

    # The harness's own cost per batch, isolated: the same two loops with a delivery that does
    # nothing, so that only the timing, bookkeeping and sampling remain.
    def noop(batch):
        return batch

    n = 200_000
    quick = dataclasses.replace(profile, measurement={**profile.measurement, "min_batches": n})
    quick_ctx = dataclasses.replace(ctx, profile=quick)

    def bare_noop() -> float:
        def stream():
            while True:
                yield from batches

        it = stream()
        start = time.perf_counter()
        for _ in range(n):
            noop(next(it))
        return (time.perf_counter() - start) / n

    def harness_noop() -> float:
        rep = measure_repetition(0, adapter, quick_ctx, noop, None).record
        return rep["window_s"] / rep["batches"]

    harness_cost = statistics.median(harness_noop() for _ in range(5))
    overhead = harness_cost - statistics.median(bare_noop() for _ in range(5))
    per_batch = BATCH_SIZE / b_med
    print(
        f"harness cost per batch: {overhead * 1e6:.3f} us = "
        f"{overhead / per_batch * 100:.2f}% of a delivered batch ({per_batch * 1e6:.1f} us)"
    )


if __name__ == "__main__":
    main()
