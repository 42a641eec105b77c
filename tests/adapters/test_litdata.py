"""The LitData adapter: chunks written once from the cache, element for element; the reference's
bytes in order with and without StreamingDataLoader workers; workers stop on close; no network."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket

import numpy as np
import pytest
from support.adapters import (
    assert_epochs_equal_reference,
    smoke_context,
    smoke_first_batch_digest,
    written_before_the_measure,
)

from datarax_bench.adapters import get_adapter
from datarax_bench.measures import support
from datarax_bench.measures.harness import batch_digest
from datarax_bench.workload.catalog import load_catalog

pytest.importorskip("litdata")


def _context(scenario, variant, workers=0, seed=0, root=None):
    parallelism = {"workers": workers, "prefetch": 2}
    return smoke_context(scenario, variant, parallelism, seed, root=root)


def test_chunks_hold_the_cache_element_for_element_and_are_built_once(tmp_path):
    from litdata import StreamingDataset

    from datarax_bench.adapters.litdata import _COMPLETE, build_chunks

    ctx = _context("NLP-2", "small", root=tmp_path)  # ragged tokens: one length per element
    directory = build_chunks(ctx.dataset, 4)
    files = sorted(directory.iterdir())
    mtimes = [p.stat().st_mtime_ns for p in files]
    assert build_chunks(ctx.dataset, 4) == directory  # reused, not rebuilt
    assert sorted(directory.iterdir()) == files
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert json.loads((directory / _COMPLETE).read_text())["digest"] == ctx.dataset.digest
    n = ctx.dataset.num_elements
    chunks = json.loads((directory / "index.json").read_text())["chunks"]
    assert [c["chunk_size"] for c in chunks] == [min(4, n - i) for i in range(0, n, 4)]
    stored = StreamingDataset(str(directory))
    assert len(stored) == n
    for index in range(n):
        sample = stored[index]
        assert int(sample["__index__"]) == index
        element = ctx.dataset.element(index)
        assert sorted(sample) == sorted([*element, "__index__"])
        for name, value in element.items():
            got = np.asarray(sample[name])
            assert got.dtype == value.dtype and got.shape == value.shape, (index, name)
            assert got.tobytes() == value.tobytes(), (index, name)


@pytest.mark.parametrize(("scenario", "variant"), [("TAB-1", "small"), ("NLP-2", "small")])
@pytest.mark.parametrize("style", ["plain", "tuned"])
def test_in_process_pipeline_equals_reference_over_two_epochs(scenario, variant, style):
    ctx = _context(scenario, variant)
    adapter = get_adapter("litdata").styled(style)
    assert support(adapter, ctx.workload) is None
    loader = adapter.open(ctx)
    try:
        assert_epochs_equal_reference(loader, ctx, [0, 1], get_adapter("litdata"))
        assert loader.parallelism["workers"] == 0
        assert loader.parallelism["elements_per_chunk"] == ctx.workload.batch_size
    finally:
        loader.close()


def test_epochs_requested_out_of_order_restart_at_the_right_place():
    ctx = _context("PC-1", "d1")
    loader = get_adapter("litdata").open(ctx)
    try:
        next(iter(loader.epoch(0)))  # abandoned half-way
        assert_epochs_equal_reference(loader, ctx, [2, 1], get_adapter("litdata"))
    finally:
        loader.close()


@pytest.mark.slow
@pytest.mark.parametrize("style", ["plain", "tuned"])
def test_workers_keep_the_reference_order_across_epochs_and_stop_on_close(style):
    # Three epochs in turn on the same persistent workers, then one out of turn.
    ctx = _context("CV-1", "small", workers=2)
    loader = get_adapter("litdata").styled(style).open(ctx)
    try:
        assert_epochs_equal_reference(loader, ctx, [0, 1, 2], get_adapter("litdata"))
        assert loader.parallelism["workers"] == 2
        assert loader.parallelism["multiprocessing_context"] == "spawn"
        assert loader.parallelism["persistent_workers"] is True
        workers = multiprocessing.active_children()
        assert len(workers) == 2, "StreamingDataLoader did not keep its two workers"
        next(iter(loader.epoch(3)))  # abandoned half-way: workers started anew after
        assert_epochs_equal_reference(loader, ctx, [1], get_adapter("litdata"))
        assert not set(workers) & set(multiprocessing.active_children())
    finally:
        loader.close()
    assert multiprocessing.active_children() == []


def _digests(batches):
    return [batch_digest({k: np.asarray(v) for k, v in b.items()}) for b in batches]


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "taken"), [(0, 3), (2, 3), (0, None)])
def test_a_restored_loader_goes_on_from_the_saved_batch(workers, taken, tmp_path):
    # `taken` batches of epoch 1 before the save (None: all of them, the state at its end).
    ctx = _context("PR-1", "small", workers=workers)
    adapter = get_adapter("litdata")
    assert support(adapter, load_catalog().get("PR-1").resolve("small", "tiny")) is None
    nb = ctx.workload.num_batches
    taken = nb if taken is None else taken
    loader = adapter.open(ctx)
    try:
        list(loader.epoch(0))
        batches = loader.epoch(1)
        for _ in range(taken):
            next(batches)
        loader.save_state(tmp_path)
        rest = _digests(batches)
    finally:
        loader.close()
    assert len(rest) == nb - taken
    assert (tmp_path / "dataloader_state.pt").stat().st_size > 0
    restored = adapter.open(ctx)
    try:
        restored.restore_state(tmp_path)
        if taken < nb:
            assert _digests(restored.epoch(1)) == rest
        # then the next epoch, whole
        assert_epochs_equal_reference(restored, ctx, [2], get_adapter("litdata"))
    finally:
        restored.close()
    assert multiprocessing.active_children() == []


def test_reading_makes_no_network_connection(monkeypatch):
    # LitData checks PyPI for a newer version when a dataset is made unless told not to.
    def refuse(*args, **kwargs):
        raise AssertionError(f"network connection attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    ctx = _context("TAB-1", "small")
    loader = get_adapter("litdata").open(ctx)
    try:
        assert_epochs_equal_reference(loader, ctx, [0], get_adapter("litdata"))
    finally:
        loader.close()


def test_tuned_sweep_covers_in_process_and_workers_up_to_the_cores():
    ctx = _context("TAB-1", "small")
    grid = get_adapter("litdata").styled("tuned").tuning_grid(ctx, 2)
    assert {"workers": 0, "prefetch": 2} in grid
    assert {p["workers"] for p in grid} == {0, 1, min(2, os.cpu_count() or 1)}
    assert {p["prefetch"] for p in grid if p["workers"]} == {2, 8}
    assert max(p["workers"] for p in get_adapter("litdata").tuning_grid(ctx, 1)) == 1


def test_unsupported_cells_say_why():
    adapter = get_adapter("litdata")
    catalog = load_catalog()
    for scenario, variant in [("IO-1", "memory"), ("IO-1", "npy_mmap"), ("IO-2", "eager")]:
        reason = support(adapter, catalog.get(scenario).resolve(variant, "tiny"))
        assert reason and "LitData" in reason, (scenario, variant, reason)


@pytest.mark.slow
def test_cli_runs_a_litdata_cell_end_to_end(tmp_path, run_smoke_cell):
    out = tmp_path / "tab1-litdata.json"
    proc = run_smoke_cell("TAB-1", "litdata", out, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["status"] == "ok", result["reason"]
    assert result["parallelism"]["workers"] == 1  # the smoke profile's
    want = smoke_first_batch_digest("TAB-1")
    assert result["statistics"]["first_batch_sha256"] == want


def test_the_worker_writes_the_chunks_before_the_measure_starts(tmp_path, monkeypatch):
    # The chunks are LitData's own format, written once: never inside a timed setup.
    from datarax_bench.adapters import litdata

    def complete(dataset, workload):
        return (litdata.chunk_directory(dataset, workload.batch_size) / litdata._COMPLETE).is_file()

    assert written_before_the_measure(monkeypatch, tmp_path, "litdata", complete)
