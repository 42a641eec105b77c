"""The ceiling the harness sets: what delivering a batch costs, loader aside (a benchmark, not a test)

Every measured batch ends the same way for every adapter: the batch `jax.device_put` onto the
profile's device in one call and blocked on (`harness.make_delivery`; "per field" times the former
contract, one put per field, beside it). This times that delivery alone, on
batches of the reference's bytes for each throughput scenario of a profile, and the reference's
draws for the batch (`randomness.rows_words` at the chunk cache, and a fresh Threefry pass), so
the elements/s no loader can pass on this machine is known. Trials alternate between scenarios;
we report medians.

    python tests/perf/bench_delivery.py [--profile ci_cpu] [--trials 9] [--batches 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from datetime import UTC, datetime

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from datarax_bench.adapters import get_adapter  # noqa: E402
from datarax_bench.measures.harness import make_delivery  # noqa: E402
from datarax_bench.provenance import cpu_info  # noqa: E402
from datarax_bench.workload import randomness, reference  # noqa: E402
from datarax_bench.workload.catalog import load_catalog, load_profile  # noqa: E402
from datarax_bench.workload.data import materialize  # noqa: E402


def _per_batch_s(fn, batches: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        fn()
    return (time.perf_counter() - start) / batches


def _per_field_delivery():
    """The delivery as it was before one put carried the whole batch: a put per field, the
    same target and blocking; timed beside it in the same trials."""
    import jax

    target = jax.devices()[0]

    def deliver(batch):
        out = {name: jax.device_put(value, target) for name, value in batch.items()}
        jax.block_until_ready(out)
        return out

    return deliver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci_cpu")
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    catalog, profile = load_catalog(), load_profile(args.profile)
    deliver = make_delivery(get_adapter("numpy"))
    per_field = _per_field_delivery()
    cases = {}
    for sid, variant in profile.cells(catalog):
        w = catalog.get(sid).resolve(variant, profile.size)
        if w.measure != "throughput":
            continue
        batch = reference.reference_batch(
            materialize(w, seed=0), w.transforms, 0, 0, 0, w.batch_size
        )
        indices = np.arange(w.batch_size)
        cases[f"{sid}/{variant}"] = {
            "batch_size": w.batch_size,
            "bytes": sum(v.nbytes for v in batch.values()),
            "deliver": lambda b=batch: deliver(b),
            "deliver, per field": lambda b=batch: per_field(b),
            "draws, cached": lambda i=indices: randomness.rows_words(0, 0, i, 0, 1),
            "draws, fresh": lambda i=indices: randomness.batch_words(0, 0, i, 0, 1),
        }
    timings = {
        case: {what: [] for what in fns if what not in ("batch_size", "bytes")}
        for case, fns in cases.items()
    }
    for trial in range(args.trials):
        order = list(cases) if trial % 2 == 0 else list(reversed(cases))
        for case in order:
            for what in timings[case]:
                timings[case][what].append(_per_batch_s(cases[case][what], args.batches))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu_info().get('model')}, {os.cpu_count()} cores, "
          f"{platform.node()}, commit {commit}; medians of {args.trials} trials of {args.batches} batches")  # fmt: skip
    for case, whats in timings.items():
        size = cases[case]["batch_size"]
        for what, values in whats.items():
            per_batch = statistics.median(values)
            print(f"{case:14s} {what:18s} {per_batch * 1e6:9.1f} µs/batch  "
                  f"{size / per_batch:12,.0f} elements/s ceiling  ({cases[case]['bytes'] / 2**10:,.0f} KiB/batch)")  # fmt: skip


if __name__ == "__main__":
    main()
