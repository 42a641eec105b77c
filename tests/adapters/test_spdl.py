"""The SPDL adapter: the reference's bytes in order over epochs, in both styles, with one and two
threads; a failing element stops the pipeline instead of being skipped; its threads stop on
close; the tuned sweep stays within the cores."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
from support.adapters import assert_epochs_equal_reference, smoke_context, smoke_first_batch_digest

from datarax_bench.adapters import get_adapter
from datarax_bench.measures import support
from datarax_bench.workload.catalog import load_catalog

pytest.importorskip("spdl.pipeline")


def _context(scenario, variant, threads=1, prefetch=2, seed=0):
    parallelism = {"workers": 0, "threads": threads, "prefetch": prefetch}
    return smoke_context(scenario, variant, parallelism, seed)


def _spdl_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("spdl_")}


@pytest.mark.parametrize(
    ("scenario", "variant"),
    [("TAB-1", "small"), ("NLP-2", "small"), ("CV-1", "small"), ("NLP-1", "small")],
)
@pytest.mark.parametrize("style", ["plain", "tuned"])
@pytest.mark.parametrize("threads", [1, 2])
def test_pipeline_equals_reference_over_two_epochs(scenario, variant, style, threads):
    ctx = _context(scenario, variant, threads=threads)
    adapter = get_adapter("spdl").styled(style)
    assert support(adapter, ctx.workload) is None
    before = _spdl_threads()
    loader = adapter.open(ctx)
    try:
        assert_epochs_equal_reference(loader, ctx, [0, 1])
        assert loader.parallelism["threads"] == threads
        assert loader.parallelism["output_order"] == "input"
        # The event loop, the source and one pool thread per thread, all SPDL's.
        started = {t.name for t in _spdl_threads() - before}
        assert {"spdl_event_loop_thread", "spdl_sync_source"} <= started
        assert len([n for n in started if n.startswith("spdl_worker_thread")]) == threads
    finally:
        loader.close()
    assert _spdl_threads() - before == set()


def test_tuned_style_keeps_every_step_per_element_where_one_stays_there():
    # CV-1: the crop stays per element, so the flip and normalize do too (`tuned_split`):
    # the tuned pipeline is the plain one with its own threads.
    ctx = _context("CV-1", "small", threads=2)
    plain = get_adapter("spdl").open(ctx)
    tuned = get_adapter("spdl").styled("tuned").open(ctx)
    try:
        assert plain.batchify.steps == [] and plain.read_batch is None
        assert plain.parallelism["batch_concurrency"] == 1
        ops = ["random_resized_crop", "random_horizontal_flip", "normalize"]
        assert [s["op"] for s in tuned.load.transforms] == ops
        assert not tuned.load.keep_key
        assert tuned.batchify.steps == [] and tuned.read_batch is None
        assert tuned.parallelism["batch_concurrency"] == 1
    finally:
        plain.close()
        tuned.close()


def test_tuned_style_reads_whole_batches_where_nothing_is_left_per_element():
    # TAB-1: every step is batchable and every field dense: one stage reads batch slices.
    ctx = _context("TAB-1", "small", threads=2)
    tuned = get_adapter("spdl").styled("tuned").open(ctx)
    try:
        assert tuned.read_batch is not None
        assert [s["op"] for s in tuned.read_batch.steps] == [
            s["op"] for s in ctx.workload.transforms
        ]
        assert tuned.parallelism["read"] == "batch slices"
        assert_epochs_equal_reference(tuned, ctx, [0, 1])
    finally:
        tuned.close()
    # NLP-2's tokens are ragged: its elements are read one by one, in both styles.
    ctx = _context("NLP-2", "small")
    tuned = get_adapter("spdl").styled("tuned").open(ctx)
    try:
        assert tuned.read_batch is None and tuned.parallelism["read"] == "elements"
    finally:
        tuned.close()


def test_epochs_requested_out_of_order_restart_at_the_right_place():
    ctx = _context("PC-1", "d1", threads=2)
    loader = get_adapter("spdl").open(ctx)
    try:
        next(iter(loader.epoch(0)))  # abandoned half-way
        assert_epochs_equal_reference(loader, ctx, [2, 1])
    finally:
        loader.close()
    assert _spdl_threads() == set()


def test_a_failing_element_stops_the_pipeline_instead_of_being_skipped():
    # SPDL skips an item whose function raised unless told otherwise: that would shift batches.
    from datarax_bench.adapters.spdl import LoadElement

    class FailsOnElement5(LoadElement):
        def __call__(self, item):
            if item[1] == 5:
                raise ValueError("element 5 is unreadable")
            return super().__call__(item)

    ctx = _context("TAB-1", "small", threads=2)
    loader = get_adapter("spdl").open(ctx)
    old = loader.load
    loader.load = FailsOnElement5(old.dataset, old.transforms, old.seed, old.keep_key)
    try:
        with pytest.raises(Exception, match="pipeline stages failed"):
            list(loader.epoch(0))
    finally:
        loader.close()
    assert _spdl_threads() == set()


def test_close_stops_a_pipeline_left_mid_epoch():
    ctx = _context("CV-1", "small", threads=2, prefetch=8)
    loader = get_adapter("spdl").open(ctx)
    batches = loader.epoch(0)
    next(batches)
    assert _spdl_threads(), "the pipeline started no thread"
    loader.close()
    assert _spdl_threads() == set()


def test_tuned_sweep_stays_within_the_cores():
    ctx = _context("TAB-1", "small")
    adapter = get_adapter("spdl").styled("tuned")
    for cores in (1, 2, 4):
        grid = adapter.tuning_grid(ctx, cores)
        assert {p["threads"] for p in grid} == {1, cores}
        assert {p["prefetch"] for p in grid} == {2, 8}
        assert all(set(p) == {"threads", "prefetch"} for p in grid)
    ctx = dataclasses.replace(ctx, parallelism_overrides=grid[-1])
    loader = adapter.open(ctx)
    try:
        assert loader.parallelism["threads"] == 4 and loader.parallelism["prefetch"] == 8
    finally:
        loader.close()


def test_memory_and_memory_mapped_sources_give_the_same_bytes():
    ctx = _context("CV-1", "small", threads=2)
    in_memory = dataclasses.replace(ctx, dataset=ctx.dataset.load_into_memory())
    for c, reader in [(ctx, "memory maps"), (in_memory, "arrays in memory")]:
        loader = get_adapter("spdl").open(c)
        try:
            assert reader in loader.source_info["reader"]
            assert_epochs_equal_reference(loader, c, [0])
        finally:
            loader.close()


def test_unsupported_cells_say_why():
    adapter = get_adapter("spdl")
    catalog = load_catalog()
    cells = [("IO-1", "array_record"), ("IO-1", "tfrecord"), ("IO-1", "tfds"), ("PR-1", "small")]
    for scenario, variant in cells:
        reason = support(adapter, catalog.get(scenario).resolve(variant, "tiny"))
        assert reason and "SPDL" in reason, (scenario, variant, reason)
    for scenario, variant in [
        ("IO-1", "memory"),
        ("IO-1", "npy_mmap"),
        ("IO-2", "eager"),
        ("IO-2", "streaming"),
    ]:
        assert support(adapter, catalog.get(scenario).resolve(variant, "tiny")) is None


@pytest.mark.slow
def test_cli_runs_an_spdl_cell_end_to_end(tmp_path, run_smoke_cell):
    out = tmp_path / "tab1-spdl.json"
    proc = run_smoke_cell("TAB-1", "spdl", out, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["status"] == "ok", result["reason"]
    assert result["parallelism"]["threads"] == 2  # the smoke profile's
    want = smoke_first_batch_digest("TAB-1")
    assert result["statistics"]["first_batch_sha256"] == want
