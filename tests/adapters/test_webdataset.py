"""The WebDataset adapter: tar shards built once from the cache, element for element; the
reference's bytes in order with and without WebLoader workers; workers stop on close."""

from __future__ import annotations

import io
import json
import multiprocessing
import tarfile
from pathlib import Path

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
from datarax_bench.workload.catalog import load_catalog

pytest.importorskip("webdataset")


def _context(scenario, variant, workers=0, seed=0, root=None):
    parallelism = {"workers": workers, "prefetch": 2}
    return smoke_context(scenario, variant, parallelism, seed, root=root)


def test_shards_hold_the_cache_element_for_element_and_are_built_once(tmp_path):
    from datarax_bench.adapters.webdataset import build_shards

    ctx = _context("NLP-2", "small", root=tmp_path)  # ragged tokens: one length per element
    paths = build_shards(ctx.dataset, 4)
    assert len(paths) == -(-ctx.dataset.num_elements // 4)
    mtimes = [p.stat().st_mtime_ns for p in map(Path, paths)]
    assert build_shards(ctx.dataset, 4) == paths  # reused, not rebuilt
    assert [p.stat().st_mtime_ns for p in map(Path, paths)] == mtimes
    index = 0
    for path in paths:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            keys = sorted({m.name.split(".")[0] for m in members})
            for key in keys:
                assert int(key) == index
                for name, value in ctx.dataset.element(index).items():
                    data = tar.extractfile(f"{key}.{name}.npy").read()
                    got = np.load(io.BytesIO(data))
                    assert got.dtype == value.dtype and got.tobytes() == value.tobytes()
                index += 1
    assert index == ctx.dataset.num_elements


def test_jpeg_files_are_jpg_members_holding_the_files_themselves(tmp_path):
    """WebDataset's own way to hold images: each JPEG file a `.jpg` member, byte for byte,
    which its `decode("rgb8")` decodes; the other fields stay `.npy` members."""
    from datarax_bench.adapters.base import jpeg_fields
    from datarax_bench.adapters.webdataset import build_shards

    ctx = _context("CV-3", "imagenet", root=tmp_path)
    paths = build_shards(ctx.dataset, 8, jpeg_fields(ctx.workload.fields))
    with tarfile.open(paths[1]) as tar:
        assert sorted(m.name for m in tar.getmembers())[:2] == [
            "000000008.image.jpg",
            "000000008.label.npy",
        ]
        for index in range(8, 16):
            data = tar.extractfile(f"{index:09d}.image.jpg").read()
            assert data == ctx.dataset.element(index)["image"].tobytes()


@pytest.mark.parametrize(("scenario", "variant"), [("TAB-1", "small"), ("NLP-2", "small")])
@pytest.mark.parametrize("style", ["plain", "tuned"])
def test_in_process_pipeline_equals_reference_over_two_epochs(scenario, variant, style):
    ctx = _context(scenario, variant)
    adapter = get_adapter("webdataset").styled(style)
    assert support(adapter, ctx.workload) is None
    loader = adapter.open(ctx)
    try:
        assert_epochs_equal_reference(loader, ctx, [0, 1], get_adapter("webdataset"))
        assert loader.parallelism["workers"] == 0
        assert loader.parallelism["elements_per_shard"] == ctx.workload.batch_size
    finally:
        loader.close()


def test_epochs_requested_out_of_order_restart_at_the_right_place():
    ctx = _context("PC-1", "d1")
    loader = get_adapter("webdataset").open(ctx)
    try:
        next(iter(loader.epoch(0)))  # abandoned half-way
        assert_epochs_equal_reference(loader, ctx, [2, 1], get_adapter("webdataset"))
    finally:
        loader.close()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_webloader_workers_keep_the_reference_order_and_stop_on_close(workers):
    ctx = _context("CV-1", "small", workers=workers)
    loader = get_adapter("webdataset").styled("tuned").open(ctx)
    try:
        assert_epochs_equal_reference(loader, ctx, [0, 1], get_adapter("webdataset"))
        assert loader.parallelism["workers"] == workers
        assert loader.parallelism["multiprocessing_context"] == "spawn"
        assert multiprocessing.active_children(), "WebLoader started no worker process"
    finally:
        loader.close()
    assert multiprocessing.active_children() == []


def test_tuned_sweep_covers_in_process_and_workers_up_to_the_cores():
    ctx = _context("TAB-1", "small")
    grid = get_adapter("webdataset").styled("tuned").tuning_grid(ctx, 2)
    assert {"workers": 0, "prefetch": 2} in grid
    assert {p["workers"] for p in grid} == {0, 1, 2}
    assert {p["prefetch"] for p in grid if p["workers"]} == {2, 8}


def test_unsupported_cells_say_why():
    adapter = get_adapter("webdataset")
    catalog = load_catalog()
    for scenario, variant in [("IO-1", "memory"), ("IO-2", "eager"), ("PR-1", "small")]:
        reason = support(adapter, catalog.get(scenario).resolve(variant, "tiny"))
        assert reason and "WebDataset" in reason, (scenario, reason)


@pytest.mark.slow
def test_cli_runs_a_webdataset_cell_end_to_end(tmp_path, run_smoke_cell):
    out = tmp_path / "tab1-webdataset.json"
    proc = run_smoke_cell("TAB-1", "webdataset", out, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["status"] == "ok", result["reason"]
    assert result["parallelism"]["workers"] == 1  # the smoke profile's
    want = smoke_first_batch_digest("TAB-1")
    assert result["statistics"]["first_batch_sha256"] == want


def test_the_worker_writes_the_shards_before_the_measure_starts(tmp_path, monkeypatch):
    # The shards are WebDataset's own format, written once: never inside a timed setup.
    from datarax_bench.adapters import webdataset

    def complete(dataset, workload):
        return (
            webdataset.shard_directory(dataset, workload.batch_size) / webdataset._COMPLETE
        ).is_file()

    assert written_before_the_measure(monkeypatch, tmp_path, "webdataset", complete)
