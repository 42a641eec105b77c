"""The tuned pipelines in one process, against the harness's own ceiling (a benchmark, not a test)

For each throughput scenario asked for, every adapter's loader in each style is opened with the
parallelism given (default: none, everything in the consuming thread, so loader and delivery
share one core and their costs add up), warmed up, and measured through the harness's own
window (`harness.timed_window`, the delivery of every field with `jax.device_put` included),
trials alternating between loaders. Beside them, the delivery alone of the NumPy reference's
batches: the elements/s that delivery leaves to a loader running in the consuming thread.
Quicker than `bench_styles.py` (no process per cell, no sweep), for comparing pipelines while
changing them; `bench_styles.py` gives the numbers of the real runs.

    python tests/perf/bench_tuned.py [--scenarios NLP-1 TAB-1 CV-1] [--adapters ...]
        [--styles plain tuned] [--trials 5] [--seconds 1.0] [--set workers=0 threads=0 ...]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import subprocess
from datetime import UTC, datetime

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from datarax_bench.adapters import get_adapter  # noqa: E402
from datarax_bench.adapters.base import CellContext  # noqa: E402
from datarax_bench.measures.harness import make_delivery, start_loader, timed_window, untimed  # noqa: E402
from datarax_bench.provenance import cpu_info  # noqa: E402
from datarax_bench.workload import reference  # noqa: E402
from datarax_bench.workload.catalog import load_catalog, load_profile  # noqa: E402
from datarax_bench.workload.data import materialize  # noqa: E402

ADAPTERS = ["numpy", "datarax", "grain", "pytorch", "tfdata"]


def _value(text: str):
    try:
        return int(text)
    except ValueError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci_cpu")
    parser.add_argument("--scenarios", nargs="*", default=["NLP-1", "TAB-1", "CV-1"])
    parser.add_argument("--adapters", nargs="*", default=ADAPTERS)
    parser.add_argument("--styles", nargs="*", default=["plain", "tuned"])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--set", nargs="*", default=["workers=0", "threads=0", "prefetch=2"])
    args = parser.parse_args()
    catalog, profile = load_catalog(), load_profile(args.profile)
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu_info().get('model')}, "
          f"{len(os.sched_getaffinity(0))} usable cores, {platform.node()}, commit {commit}, "
          f"parallelism {overrides}; medians of {args.trials} alternating windows of "
          f"≥{args.seconds} s", flush=True)  # fmt: skip
    for sid in args.scenarios:
        w = catalog.get(sid).resolve("small", profile.size)
        dataset = materialize(w, seed=profile.seed)
        deliver = make_delivery(get_adapter("numpy"))
        reference_batch = reference.reference_batch(dataset, w.transforms, 0, 0, 0, w.batch_size)
        opened = {}
        for adapter_id in args.adapters:
            for style in args.styles:
                adapter = get_adapter(adapter_id).styled(style)
                if adapter.style_support() or adapter.ops_support(w):
                    continue
                ctx = CellContext(
                    w, dataset, profile, profile.seed, parallelism_overrides=dict(overrides)
                )
                started = start_loader(0, adapter, ctx, make_delivery(adapter))
                untimed(started.batches, make_delivery(adapter), 3)
                opened[(adapter_id, style)] = (ctx, started, make_delivery(adapter))
        rates: dict[tuple[str, str], list[float]] = {key: [] for key in opened}
        rates[("delivery", "alone")] = []
        batches = itertools.repeat(reference_batch)
        try:
            for trial in range(args.trials):
                keys = list(rates) if trial % 2 == 0 else list(reversed(rates))
                for key in keys:
                    if key == ("delivery", "alone"):
                        ctx = next(iter(opened.values()))[0]
                        window = timed_window(
                            ctx, batches, deliver, 0, 5, args.seconds, machine_load=False
                        )
                    else:
                        ctx, started, own = opened[key]
                        window = timed_window(
                            ctx, started.batches, own, 0, 5, args.seconds, machine_load=False
                        )
                    rates[key].append(len(window.latencies) * w.batch_size / window.window_s)
        finally:
            for _, started, _ in opened.values():
                started.loader.close()
        ceiling = statistics.median(rates[("delivery", "alone")])
        for (adapter_id, style), values in rates.items():
            median = statistics.median(values)
            print(f"{sid:6s} {adapter_id:9s} {style:6s} {median:12,.0f} elements/s "
                  f"({min(values):,.0f}–{max(values):,.0f})  {median / ceiling:6.1%} of delivery "
                  f"alone", flush=True)  # fmt: skip
        per_batch = w.batch_size / ceiling
        nbytes = sum(np.asarray(v).nbytes for v in reference_batch.values())
        print(f"{sid:6s} delivery: {per_batch * 1e6:.0f} µs per batch of {w.batch_size} "
              f"({len(reference_batch)} fields, {nbytes / 2**10:,.0f} KiB)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
