"""The Ray Data adapter: the reference's bytes in order over epochs, in both styles, with one and
two map tasks; a failing element fails the iteration instead of being skipped; a loader's
execution ends on close and Ray's processes end with the process that started them (at exit
or killed); Ray starts before the measure; the tuned sweep stays within the cores."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from support import ROOT
from support.adapters import (
    assert_epochs_equal_reference,
    smoke_context,
    smoke_first_batch_digest,
    written_before_the_measure,
)
from support.process import pid_alive

from datarax_bench.adapters import get_adapter
from datarax_bench.measures import support
from datarax_bench.workload.catalog import load_catalog
from datarax_bench.workload.data import Dataset, materialize

pytest.importorskip("ray.data")


def _context(scenario, variant, workers=1, prefetch=2, seed=0, dataset=None):
    parallelism = {"workers": workers, "threads": 2, "prefetch": prefetch}
    return smoke_context(scenario, variant, parallelism, seed, dataset=dataset)


def _ray_processes() -> set[int]:
    """This process's Ray: its children (GCS, raylet) and theirs (Ray's workers)."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _loader_threads(before: set[threading.Thread]) -> set[str]:
    return {t.name for t in set(threading.enumerate()) - before if t.is_alive()}


@pytest.mark.parametrize(
    ("scenario", "variant"),
    [("TAB-1", "small"), ("NLP-2", "small"), ("CV-1", "small"), ("NLP-1", "small")],
)
@pytest.mark.parametrize("style", ["plain", "tuned"])
@pytest.mark.parametrize("workers", [1, 2])
def test_pipeline_equals_reference_over_two_epochs(scenario, variant, style, workers):
    ctx = _context(scenario, variant, workers=workers)
    adapter = get_adapter("raydata").styled(style)
    assert support(adapter, ctx.workload) is None
    loader = adapter.open(ctx)
    try:
        assert_epochs_equal_reference(loader, ctx, [0, 1])
        assert loader.parallelism["workers"] == workers
        assert loader.parallelism["compute"] == f"TaskPoolStrategy(size={workers})"
        assert loader.parallelism["preserve_order"] is True
    finally:
        loader.close()


def test_tuned_style_maps_batches_and_reads_slices_where_nothing_is_left_per_element():
    # TAB-1: every step is batchable and every field dense: map_batches reads batch slices.
    ctx = _context("TAB-1", "small", workers=2)
    tuned = get_adapter("raydata").styled("tuned").open(ctx)
    plain = get_adapter("raydata").open(ctx)
    try:
        assert tuned.sliced and tuned.parallelism["read"] == "batch slices"
        assert [s["op"] for s in tuned.per_batch] == [s["op"] for s in ctx.workload.transforms]
        assert tuned.parallelism["map"] == f"map_batches(batch_size={ctx.workload.batch_size})"
        assert not plain.sliced and plain.parallelism["map"] == "map (per row)"
    finally:
        tuned.close()
        plain.close()
    # CV-1: the crop stays per element, so every step does (`tuned_split`).
    ctx = _context("CV-1", "small")
    tuned = get_adapter("raydata").styled("tuned").open(ctx)
    try:
        assert not tuned.sliced and tuned.per_batch == []
        assert tuned.parallelism["read"] == "elements"
    finally:
        tuned.close()


def test_epochs_requested_out_of_order_and_an_abandoned_epoch():
    ctx = _context("PC-1", "d1", workers=2)
    loader = get_adapter("raydata").open(ctx)
    try:
        next(iter(loader.epoch(0)))  # abandoned half-way
        assert_epochs_equal_reference(loader, ctx, [2, 1])
    finally:
        loader.close()


def _corrupt_jpeg_dataset(dataset: Dataset, index: int) -> Dataset:
    """The CV-3 data in memory with element `index`'s JPEG file overwritten by zeros."""
    values, offsets = dataset.ragged["image"]
    values = np.array(values)
    values[offsets[index] : offsets[index + 1]] = 0
    return dataclasses.replace(dataset, ragged={"image": (values, np.array(offsets))})


@pytest.mark.parametrize("style", ["plain", "tuned"])
def test_a_failing_element_fails_the_iteration_instead_of_being_skipped(style):
    # An unreadable JPEG file: Pillow raises in a Ray task; Ray Data must not drop the row.
    w = load_catalog().get("CV-3").resolve("small", "tiny")
    broken = _corrupt_jpeg_dataset(materialize(w, 0), 5)
    ctx = _context("CV-3", "small", workers=2, dataset=broken)
    loader = get_adapter("raydata").styled(style).open(ctx)
    try:
        with pytest.raises(Exception, match="cannot identify image file|UnidentifiedImageError"):
            list(loader.epoch(0))
    finally:
        loader.close()


def test_close_ends_an_execution_left_mid_epoch():
    from datarax_bench.adapters.raydata import ray_session

    ray_session()  # Ray's own threads exist before the baseline
    before = set(threading.enumerate())
    ctx = _context("CV-1", "small", workers=2, prefetch=8)
    loader = get_adapter("raydata").open(ctx)
    batches = loader.epoch(0)
    next(batches)
    assert _loader_threads(before), "the execution started no thread"
    loader.close()
    deadline = time.monotonic() + 10
    while _loader_threads(before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _loader_threads(before) == set()


def test_ray_is_started_once_per_process_and_reused():
    from datarax_bench.adapters import raydata

    first = raydata.ray_session()
    ctx = _context("TAB-1", "small")
    loaders = [get_adapter("raydata").open(ctx) for _ in range(2)]
    try:
        assert raydata.ray_session() == first
        assert all(
            loader.parallelism["ray_num_cpus"] == len(os.sched_getaffinity(0)) for loader in loaders
        )
    finally:
        for loader in loaders:
            loader.close()
    assert raydata.ray_running_here()


def test_a_new_ray_reports_the_same_parallelism():
    """Each process of a cell starts its own Ray; what the loader reports as its parallelism
    is the same whatever that start cost, or the processes' windows could not be pooled."""
    from datarax_bench.adapters import raydata

    ctx = _context("TAB-1", "small")
    reported = []
    for _ in range(2):
        raydata.stop_ray()
        loader = get_adapter("raydata").open(ctx)
        reported.append(loader.parallelism)
        loader.close()
    assert reported[0] == reported[1]


_CHILD = """
import json, sys
from datarax_bench.adapters import get_adapter
from datarax_bench.adapters.base import CellContext
from datarax_bench.workload.catalog import load_catalog, load_profile
from datarax_bench.workload.data import materialize
import psutil

catalog = load_catalog()
w = catalog.get("TAB-1").resolve("small", "tiny")
ctx = CellContext(w, materialize(w, 0), load_profile("smoke", catalog), 0)
loader = get_adapter("raydata").open(ctx)
batches = loader.epoch(0)
next(batches)
from datarax_bench.adapters.raydata import ray_session

pids = [p.pid for p in psutil.Process().children(recursive=True)]
print(json.dumps({"pids": pids, "temp_dir": ray_session()["temp_dir"]}), flush=True)
if sys.argv[1] == "exit":
    loader.close()
else:
    sys.stdin.read()  # killed while it waits
"""


@pytest.mark.parametrize("how", ["exit", "killed"])
def test_no_ray_process_outlives_the_process_that_started_it(how):
    """The cell's process ends (normally, or killed with its group as the runner's timeout
    does): every Ray process it started ends with it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CHILD), how],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=ROOT,
    )
    try:
        started = json.loads(proc.stdout.readline())
        pids, temp_dir = started["pids"], Path(started["temp_dir"])
        assert pids, "Ray started no process"
        if how == "killed":
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # GCS and raylet end with their process; Ray's workers (sessions of their own) once they
    # find their raylet gone: within 30 s here, for a worker still starting when it went.
    deadline = time.monotonic() + 60
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if pid_alive(p)], "a Ray process outlived its cell"
    if how == "exit":
        assert proc.returncode == 0
        assert not temp_dir.exists(), "Ray's directory outlived its process"
    else:
        shutil.rmtree(temp_dir, ignore_errors=True)  # a killed process removes nothing


def test_ray_starts_before_the_measure(tmp_path, monkeypatch):
    # `prepare` starts Ray: its seconds are never inside a timed setup.
    from datarax_bench.adapters import raydata

    def started(dataset, workload):
        return raydata.ray_running_here()

    assert written_before_the_measure(monkeypatch, tmp_path, "raydata", started)


def test_tuned_sweep_stays_within_the_cores():
    ctx = _context("TAB-1", "small")
    adapter = get_adapter("raydata").styled("tuned")
    for cores in (1, 2, 4):
        grid = adapter.tuning_grid(ctx, cores)
        assert {p["workers"] for p in grid} == {1, cores}
        assert {p["prefetch"] for p in grid} == {2, 8}
        assert all(set(p) == {"workers", "prefetch"} for p in grid)
    cores = len(os.sched_getaffinity(0))
    point = adapter.tuning_grid(ctx, cores)[-1]
    loader = adapter.open(dataclasses.replace(ctx, parallelism_overrides=point))
    try:
        assert loader.parallelism["workers"] == cores
        assert loader.parallelism["prefetch_batches"] == 8
        assert loader.parallelism["ray_num_cpus"] == cores
    finally:
        loader.close()


def test_memory_and_memory_mapped_sources_give_the_same_bytes():
    ctx = _context("CV-1", "small", workers=2)
    in_memory = dataclasses.replace(ctx, dataset=ctx.dataset.load_into_memory())
    for c, reader in [(ctx, "memory maps"), (in_memory, "arrays in memory")]:
        loader = get_adapter("raydata").open(c)
        try:
            assert reader in loader.source_info["reader"]
            assert_epochs_equal_reference(loader, c, [0])
        finally:
            loader.close()


def test_results_name_ray_and_the_jpeg_decoder():
    import PIL
    import ray

    from datarax_bench.run.cell import result_provenance

    adapter = get_adapter("raydata")
    provenance = result_provenance(load_catalog().get("CV-3").resolve("small", "tiny"), adapter)
    assert provenance["packages"]["ray"] == ray.__version__
    assert provenance["packages"]["pillow"] == PIL.__version__
    assert provenance["jpeg"]["decoder"].startswith("PIL.Image.open, as ray.data.read_images")


def test_unsupported_cells_say_why():
    adapter = get_adapter("raydata")
    catalog = load_catalog()
    cells = [("IO-1", "array_record"), ("IO-1", "tfds"), ("PR-1", "small")]
    for scenario, variant in cells:
        reason = support(adapter, catalog.get(scenario).resolve(variant, "tiny"))
        assert reason and "Ray Data" in reason, (scenario, variant, reason)
    for scenario, variant in [
        ("IO-1", "memory"),
        ("IO-1", "npy_mmap"),
        ("IO-1", "tfrecord"),
        ("IO-1", "parquet"),
        ("IO-2", "eager"),
        ("IO-2", "streaming"),
        ("CV-3", "small"),
        ("NLP-2", "small"),
    ]:
        assert support(adapter, catalog.get(scenario).resolve(variant, "tiny")) is None


def _reads_its_own_file_as_the_reference(style: str, backend: str, reader: str):
    """IO-1's `backend` file read by Ray Data's `reader` delivers the reference's epochs; the
    adapter, the workload and the cell's context, for more."""
    from datarax_bench.measures.sources import source_files

    adapter = get_adapter("raydata").styled(style)
    w = load_catalog().get("IO-1").resolve(backend, "tiny")
    source, _ = source_files(adapter, w, materialize(w, 0))
    ctx = dataclasses.replace(_context("IO-1", backend, workers=2), source=source)
    loader = adapter.open(ctx)
    try:
        paths = getattr(source, f"{backend}_paths")()
        assert loader.source_info == {"reader": f"ray.data.{reader}", "paths": paths}
        assert_epochs_equal_reference(loader, ctx, [0, 1])
    finally:
        loader.close()
    return adapter, w, ctx


@pytest.mark.parametrize("style", ["plain", "tuned"])
def test_the_tfrecord_backend_is_read_with_ray_datas_reader(style):
    adapter, w, _ = _reads_its_own_file_as_the_reference(style, "tfrecord", "read_tfrecords")
    # Its rows carry no element index: a workload that draws cannot be read from it.
    flip = {"op": "random_horizontal_flip", "field": "image", "p": 0.5}
    drawing = dataclasses.replace(w, transforms=(*w.transforms, flip))
    assert "without their index" in support(adapter, drawing)


@pytest.mark.parametrize("style", ["plain", "tuned"])
def test_the_parquet_backend_is_read_with_ray_datas_reader_and_keys_draws_by_its_index(style):
    adapter, w, ctx = _reads_its_own_file_as_the_reference(style, "parquet", "read_parquet")
    # Its rows carry their element index: a workload that draws reads it, with the reference's
    # draws (a flip of every other image, differing by epoch).
    flip = {"op": "random_horizontal_flip", "field": "image", "p": 0.5}
    drawing = dataclasses.replace(w, transforms=(*w.transforms, flip))
    assert support(adapter, drawing) is None
    ctx = dataclasses.replace(ctx, workload=drawing)
    loader = adapter.open(ctx)
    try:
        assert_epochs_equal_reference(loader, ctx, [0, 1])
    finally:
        loader.close()


@pytest.mark.slow
@pytest.mark.alone  # looks at every raylet of the machine
def test_cli_runs_a_ray_data_cell_end_to_end(tmp_path, run_smoke_cell):
    out = tmp_path / "tab1-raydata.json"
    rays_before = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"}
    proc = run_smoke_cell("TAB-1", "raydata", out, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["status"] == "ok", result["reason"]
    assert result["parallelism"]["workers"] == 1  # the smoke profile's
    assert result["provenance"]["packages"]["ray"]
    want = smoke_first_batch_digest("TAB-1")
    assert result["statistics"]["first_batch_sha256"] == want
    rays_after = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"}
    assert rays_after <= rays_before, "the cell's raylet outlived it"
