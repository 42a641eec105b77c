"""PR-1: checkpoint save/restore of the pipeline state, through each framework's own state API.

Per repetition, after the usual throughput repetition: loader A delivers k batches, saves its
state (timed) into an empty directory in the framework's own serialized form (the files'
total size is the state size), then delivers its next batch: the uninterrupted run's. A fresh
loader B restores the state (timed) and delivers its next batch. The resume is exact when the
two batches' digests are equal; an inexact resume is a finding recorded in the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from datarax_bench.adapters.base import Adapter, CellContext
from datarax_bench.files import temporary_directory
from datarax_bench.measures import register
from datarax_bench.measures.harness import (
    MeasureBody,
    Repetition,
    batch_digest,
    cell_context,
    first_device,
    make_delivery,
    repeat,
    stream,
)
from datarax_bench.workload.catalog import Workload


def _directory_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def checkpoint_after(workload: Workload) -> int:
    """k, validated: the state is saved inside an epoch, where resuming is not trivial."""
    k = int(workload.options["checkpoint_after"])
    per_epoch = workload.num_batches
    if k < 1 or k % per_epoch == 0:
        raise ValueError(
            f"checkpoint_after={k} must be a positive number of batches that is not a multiple "
            f"of the {per_epoch} batches per epoch: at an epoch boundary there is no mid-epoch "
            "state to resume"
        )
    return k


def checkpoint_experiment(
    adapter: Adapter, ctx: CellContext, deliver: Callable, k: int, directory: Path
) -> dict[str, Any]:
    """One save/restore round trip; `directory` must be empty and is left holding the state."""
    clock = time.perf_counter
    uninterrupted = adapter.open(ctx)
    try:
        batches = stream(uninterrupted)
        for _ in range(k):
            deliver(next(batches))
        start = clock()
        uninterrupted.save_state(directory)
        save_s = clock() - start
        expected = batch_digest(deliver(next(batches)))
    finally:
        uninterrupted.close()
    state_bytes = _directory_bytes(directory)

    resumed = adapter.open(ctx)
    try:
        start = clock()
        resumed.restore_state(directory)
        restore_s = clock() - start
        # Some frameworks restore lazily and pay at the first batch (worker start-up, refill).
        got = batch_digest(deliver(next(iter(resumed.epoch(k // ctx.workload.num_batches)))))
        first_batch_s = clock() - start - restore_s
    finally:
        resumed.close()
    return {
        "save_s": save_s,
        "restore_s": restore_s,
        "first_batch_after_restore_s": first_batch_s,
        "state_bytes": state_bytes,
        "state_files": sorted(str(p.relative_to(directory)) for p in directory.rglob("*")),
        "resume_exact": got == expected,
        "expected_sha256": expected,
        "resumed_sha256": got,
    }


@register("checkpoint")
def measure_checkpoint(adapter, workload, dataset, profile, progress=None) -> MeasureBody:
    """Throughput repetitions, each followed by one checkpoint round trip."""
    k = checkpoint_after(workload)
    device = first_device()
    deliver = make_delivery(adapter, device)
    ctx = cell_context(workload, dataset, profile)
    trips = []

    def round_trip(_: Repetition) -> str:
        with temporary_directory("datarax-bench-checkpoint-") as directory:
            trip = checkpoint_experiment(adapter, ctx, deliver, k, directory)
        trips.append(trip)
        return (
            f"; checkpoint after {k} batches: save {trip['save_s'] * 1e3:.2f} ms, "
            f"restore {trip['restore_s'] * 1e3:.2f} ms, {trip['state_bytes']} bytes, "
            f"resume {'exact' if trip['resume_exact'] else 'NOT exact'}"
        )

    # Every round trip opens loaders of its own; a warm loader idling beside them would share
    # the machine with what they time, so each repetition here has its own loader.
    body = repeat(adapter, ctx, deliver, device, progress, after=round_trip, allow_warm=False)

    def median(key):
        return float(np.median([t[key] for t in trips]))

    special = {
        "checkpoint_after": k,
        "resume_epoch": k // workload.num_batches,
        "resume_batch": k % workload.num_batches,
        "resume_exact": all(t["resume_exact"] for t in trips),
        "save_s_median": median("save_s"),
        "restore_s_median": median("restore_s"),
        "first_batch_after_restore_s_median": median("first_batch_after_restore_s"),
        # The largest state any repetition saved: what a training job must be ready to store.
        "state_bytes": max(t["state_bytes"] for t in trips),
        "state_files": trips[-1]["state_files"],
        "repetitions": [{n: v for n, v in t.items() if n != "state_files"} for t in trips],
    }
    body.special = special
    return body
