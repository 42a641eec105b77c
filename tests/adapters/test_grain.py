"""The Grain adapter reproduces the reference bit for bit, with threads and worker processes."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import threading

import numpy as np
import pytest
from support.adapters import assert_epochs_equal_reference, smoke_context, smoke_first_batch_digest

from datarax_bench.adapters import get_adapter
from datarax_bench.measures import support
from datarax_bench.measures.harness import batch_digest
from datarax_bench.workload.catalog import load_catalog
from datarax_bench.workload.data import materialize

pytest.importorskip("grain")

THROUGHPUT_CELLS = [
    ("CV-1", "small"),
    ("CV-2", "small"),
    ("NLP-1", "small"),
    ("NLP-2", "small"),
    ("TAB-1", "small"),
    ("TAB-2", "small"),
    ("PC-1", "d5"),
]


def _context(scenario, variant, workers=0, threads=2, seed=0):
    parallelism = {"workers": workers, "threads": threads, "prefetch": 2}
    return smoke_context(scenario, variant, parallelism, seed)


@pytest.mark.parametrize(("scenario", "variant"), THROUGHPUT_CELLS)
def test_threaded_pipeline_equals_reference_over_two_epochs(scenario, variant):
    ctx = _context(scenario, variant)
    adapter = get_adapter("grain")
    assert support(adapter, ctx.workload) is None
    loader = adapter.open(ctx)
    try:
        assert_epochs_equal_reference(loader, ctx, [0, 1])
        assert loader.parallelism["threads"] == 2
        assert loader.parallelism["mode"] == "threads"
    finally:
        loader.close()


def test_epochs_requested_out_of_order_restart_at_the_right_place():
    ctx = _context("PC-1", "d1")
    loader = get_adapter("grain").open(ctx)
    try:
        # Abandon epoch 0 half-way, then ask for epoch 2 and epoch 1.
        next(iter(loader.epoch(0)))
        assert_epochs_equal_reference(loader, ctx, [2, 1])
    finally:
        loader.close()


def test_seed_changes_the_random_batches():
    a = _context("CV-1", "small", seed=0)
    b = _context("CV-1", "small", seed=1)
    loaders = [get_adapter("grain").open(c) for c in (a, b)]
    try:
        first = [batch_digest(next(iter(lo.epoch(0)))) for lo in loaders]
    finally:
        for lo in loaders:
            lo.close()
    assert first[0] != first[1]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_worker_processes_equal_reference_and_stop_on_close(workers):
    threads_before = set(threading.enumerate())
    ctx = _context("NLP-2", "small", workers=workers)
    loader = get_adapter("grain").open(ctx)
    try:
        assert_epochs_equal_reference(loader, ctx, [0, 1])
        assert loader.parallelism["mode"] == "mp_prefetch"
        assert loader.parallelism["workers"] == workers
        assert multiprocessing.active_children(), "mp_prefetch started no worker process"
    finally:
        loader.close()
    assert multiprocessing.active_children() == []
    assert set(threading.enumerate()) - threads_before == set()


@pytest.mark.slow
def test_a_loader_closed_mid_stream_stops_its_workers_within_seconds():
    # Closed while its workers are still producing, as every repetition closes its loader.
    # Grain alone waits up to 25 s per worker that does not end, then kills it.
    import time

    ctx = _context("CV-1", "small", workers=2)
    workload = load_catalog().get("CV-1").resolve("small", "full")  # big enough to be busy
    ctx = dataclasses.replace(ctx, workload=workload, dataset=materialize(workload, 0))
    for _ in range(2):
        loader = get_adapter("grain").open(ctx)
        batches = loader.epoch(0)
        for _ in range(3):
            next(batches)
        start = time.monotonic()
        loader.close()
        assert time.monotonic() - start < 8.0
        assert multiprocessing.active_children() == []


@pytest.mark.slow
def test_cli_runs_a_grain_cell_end_to_end(tmp_path, run_smoke_cell):
    out = tmp_path / "cv1-grain.json"
    proc = run_smoke_cell("CV-1", "grain", out, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["status"] == "ok", result["reason"]
    assert result["parallelism"]["mode"] == "mp_prefetch"  # the smoke profile has 1 worker
    assert result["parallelism"]["workers"] == 1
    # The delivered first batch is the reference's first batch.
    want = smoke_first_batch_digest("CV-1")
    assert result["statistics"]["first_batch_sha256"] == want
    assert result["statistics"]["first_batch_consistent"] is True


@pytest.mark.slow
def test_worker_processes_read_arrays_held_in_memory_not_the_cache_files():
    ctx = _context("TAB-1", "small", workers=1)
    features = np.asarray(ctx.dataset.dense["features"]) * 3.0 + 1.0  # not what is on disk
    ctx.dataset = dataclasses.replace(
        ctx.dataset, dense={**ctx.dataset.dense, "features": features}
    )
    loader = get_adapter("grain").open(ctx)
    try:
        assert_epochs_equal_reference(loader, ctx, [0])
    finally:
        loader.close()
