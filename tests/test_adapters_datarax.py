"""The Datarax adapter does the reference's work per element, in JAX, with JAX's randomness.

Deterministic pipelines are compared with the reference directly. For random ones, each batch
is replayed: the test asks every operator for the random parameters of the batch's records
(the draws Datarax makes from its per-record keys), applies the reference's op with exactly
those parameters in NumPy, and compares. The samplers' distributions are compared with the
reference's samplers separately.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from datarax_bench import reference
from datarax_bench.adapters import get_adapter
from datarax_bench.adapters.base import CellContext
from datarax_bench.catalog import load_catalog, load_profile
from datarax_bench.data import materialize
from datarax_bench.harness import batch_digest
from datarax_bench.measures import support

pytest.importorskip("datarax")
jax = pytest.importorskip("jax")
jnp = jax.numpy

F32 = np.float32
RANDOM_CELLS = [("CV-1", "small"), ("CV-2", "small"), ("NLP-1", "small"), ("PC-1", "d5")]


def _context(scenario, variant, seed=0):
    catalog = load_catalog()
    profile = load_profile("smoke", catalog)
    workload = catalog.get(scenario).resolve(variant, "tiny")
    return CellContext(workload, materialize(workload, 0), profile, seed)


@pytest.fixture
def opened():
    loaders = []

    def open_(scenario, variant, seed=0):
        ctx = _context(scenario, variant, seed)
        loader = get_adapter("datarax").open(ctx)
        loaders.append(loader)
        return ctx, loader

    yield open_
    for loader in loaders:
        loader.close()


def _as_numpy(batch):
    return {k: np.asarray(v) for k, v in batch.items()}


# --- replaying a batch with the operators' own draws --------------------------------------


def _replay_random(op_name, step, x, p):
    if op_name == "random_resized_crop":
        top, left, h, w = (int(v) for v in p)
        return reference.resize_bilinear(x[top : top + h, left : left + w], *step["size"])
    if op_name == "random_horizontal_flip":
        return x[:, ::-1] if bool(p) else x
    if op_name == "random_crop_3d":
        (z, y, x0), (d, h, w) = (int(v) for v in p), step["size"]
        return x[z : z + d, y : y + h, x0 : x0 + w]
    if op_name == "random_window":
        return x[int(p) : int(p) + step["length"]]
    if op_name == "random_brightness":
        return x.astype(F32) + F32(p)
    if op_name == "gaussian_noise":
        return x.astype(F32) + np.asarray(p, dtype=F32)
    raise AssertionError(f"no replay for {op_name}")


def _replay_batch(loader, ctx, epoch, batch_index):
    from datarax.core.prng import per_record_keys

    w = ctx.workload
    start = batch_index * w.batch_size
    elements = [ctx.dataset.element(i) for i in range(start, start + w.batch_size)]
    indices = jnp.arange(start, start + w.batch_size, dtype=jnp.int32)
    for op in loader.operators:
        step = op.step
        if not op.stochastic:
            elements = [reference.apply_element([step], e, None) for e in elements]
            continue
        name = step["field"]
        keys = per_record_keys(op._base_key[...], indices)
        shapes = {name: (w.batch_size, *elements[0][name].shape)}
        params = np.asarray(op.generate_random_params(keys, shapes))
        elements = [
            {**e, name: _replay_random(step["op"], step, e[name], p)}
            for e, p in zip(elements, params, strict=True)
        ]
    return reference.collate(w.transforms, elements)


def _assert_close(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name, want in expected.items():
        got = actual[name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        if np.issubdtype(want.dtype, np.floating):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize(("scenario", "variant"), RANDOM_CELLS)
def test_random_pipelines_apply_the_reference_ops_with_their_draws(opened, scenario, variant):
    ctx, loader = opened(scenario, variant)
    assert support(get_adapter("datarax"), ctx.workload) is None
    for epoch in (0, 1):
        # The operators' epoch is what epoch() set; replay while it is current.
        batches = [_as_numpy(b) for b in loader.epoch(epoch)]
        assert len(batches) == ctx.workload.num_batches
        for index in (0, len(batches) - 1):
            _assert_close(batches[index], _replay_batch(loader, ctx, epoch, index))
        # Same fields, shapes and dtypes as the reference (which draws differently).
        ref = reference.reference_batch(
            ctx.dataset, ctx.workload.transforms, ctx.seed, epoch, 0, ctx.workload.batch_size
        )
        assert {k: (v.shape, v.dtype) for k, v in batches[0].items()} == {
            k: (v.shape, v.dtype) for k, v in ref.items()
        }


def test_tab1_equals_the_reference_bit_for_bit(opened):
    ctx, loader = opened("TAB-1", "small")
    for index, batch in enumerate(loader.epoch(0)):
        expected = reference.reference_batch(
            ctx.dataset, ctx.workload.transforms, 0, 0, index, ctx.workload.batch_size
        )
        assert batch_digest(batch) == batch_digest(expected)


def test_tab2_hashes_and_gathers_exactly_and_log1p_within_one_ulp(opened):
    ctx, loader = opened("TAB-2", "small")
    for index, batch in enumerate(loader.epoch(0)):
        got = _as_numpy(batch)
        expected = reference.reference_batch(
            ctx.dataset, ctx.workload.transforms, 0, 0, index, ctx.workload.batch_size
        )
        assert sorted(got) == sorted(expected) == ["dense", "embeddings", "label"]
        np.testing.assert_array_equal(got["embeddings"], expected["embeddings"])
        np.testing.assert_array_equal(got["label"], expected["label"])
        # XLA's float32 log1p and the C library's may differ in the last place.
        np.testing.assert_array_max_ulp(got["dense"], expected["dense"], maxulp=1)


def test_epochs_and_seeds_draw_anew_and_a_seed_repeats(opened):
    _, a = opened("PC-1", "d5", seed=0)
    _, b = opened("PC-1", "d5", seed=0)
    _, c = opened("PC-1", "d5", seed=1)

    def first(loader, epoch):
        return batch_digest(next(iter(loader.epoch(epoch))))

    assert first(a, 0) == first(b, 0)
    assert first(a, 0) != first(a, 1)
    assert first(a, 0) != first(c, 0)
    assert first(a, 1) == first(b, 1)


def test_resized_crop_boxes_follow_the_reference_distribution(opened):
    ctx, loader = opened("CV-1", "small")
    op = loader.operators[0]
    assert op.step["op"] == "random_resized_crop"
    height, width = ctx.workload.fields["image"].shape[:2]
    n = 4000
    keys = jax.random.split(jax.random.key(123), n)
    ours = np.asarray(op.generate_random_params(keys, {"image": (n, height, width, 3)}))
    theirs = np.array(
        [
            reference.sample_resized_crop_box(
                reference.element_rng(0, 0, i), height, width, op.step["scale"], op.step["ratio"]
            )
            for i in range(n)
        ]
    )
    for boxes in (ours, theirs):
        top, left, h, w = boxes.T
        assert (h >= 1).all() and (w >= 1).all()
        assert (top + h <= height).all() and (left + w <= width).all()
    area = [b[:, 2] * b[:, 3] / (height * width) for b in (ours, theirs)]
    aspect = [np.log(b[:, 3] / b[:, 2]) for b in (ours, theirs)]
    assert abs(area[0].mean() - area[1].mean()) < 0.02
    assert abs(aspect[0].mean() - aspect[1].mean()) < 0.03
    assert abs(np.median(area[0]) - np.median(area[1])) < 0.03
    # Per element, not per batch: the draws of one batch differ from each other.
    assert len({tuple(b) for b in ours[:8]}) > 1


def test_flip_and_brightness_draws_are_per_element_and_in_range(opened):
    ctx, loader = opened("PC-1", "d5")
    ops = {op.step["op"]: op for op in loader.operators if op.stochastic}
    n = 4000
    keys = jax.random.split(jax.random.key(7), n)
    shapes = {"image": (n, *ctx.workload.fields["image"].shape)}
    flips = np.asarray(ops["random_horizontal_flip"].generate_random_params(keys, shapes))
    assert abs(flips.mean() - 0.5) < 0.03
    deltas = np.asarray(ops["random_brightness"].generate_random_params(keys, shapes))
    max_delta = ops["random_brightness"].step["max_delta"]
    assert deltas.min() >= -max_delta and deltas.max() <= max_delta
    assert abs(deltas.mean()) < 0.3 and abs(deltas.std() - max_delta / np.sqrt(3)) < 0.2


def test_support_names_what_datarax_cannot_express():
    catalog = load_catalog()
    adapter = get_adapter("datarax")
    nlp2 = catalog.get("NLP-2").resolve("small", "tiny")
    reason = support(adapter, nlp2)
    assert reason and "pad_batch" in reason and "static shapes" in reason
    assert "pad_batch" not in adapter.ops
    for scenario in ("CV-1", "CV-2", "NLP-1", "TAB-1", "TAB-2", "PC-1"):
        workload = catalog.get(scenario).resolve(catalog.get(scenario).default_variants[0], "tiny")
        assert support(adapter, workload) is None, scenario
    assert support(adapter, catalog.get("PC-2").resolve("small", "tiny")) is None


def test_datarax_file_sources_fail_in_its_pipeline_as_the_unsupported_reasons_say(tmp_path):
    """IO-1's npy_mmap and array_record cells are `unsupported` for Datarax because its own
    sources for them cannot feed its Pipeline. These are facts about the installed Datarax: when
    an upgrade fixes them this test fails, and the adapter should read those backends."""
    from importlib import metadata

    import datarax
    from array_record.python.array_record_module import ArrayRecordWriter
    from datarax.sources import ArrayRecordSourceConfig, ArrayRecordSourceModule
    from datarax.sources.streaming_disk_source import (
        StreamingDiskSource,
        StreamingDiskSourceConfig,
    )
    from flax import nnx

    from datarax_bench import formats

    io1 = load_catalog().get("IO-1")
    reasons = {b: support(get_adapter("datarax"), io1.resolve(b, "tiny")) for b in io1.variants}
    assert all(
        f"Datarax {metadata.version('datarax')}" in reasons[b] for b in ("npy_mmap", "array_record")
    )

    np.save(tmp_path / "image.npy", np.zeros((16, 4, 4, 3), np.uint8))
    disk = StreamingDiskSource(
        StreamingDiskSourceConfig(path=str(tmp_path / "image.npy"), feature_key="image")
    )
    assert list(disk.element_spec()) == ["image"]  # one array per source
    pipeline = datarax.Pipeline(source=disk, stages=[], batch_size=4, rngs=nnx.Rngs(0))
    with pytest.raises(AttributeError, match="get_batch"):
        next(iter(pipeline))
    with pytest.raises(Exception, match="UnexpectedTracerError"):
        pipeline.step()
    assert "get_batch" in reasons["npy_mmap"] and "tracer" in reasons["npy_mmap"]

    writer = ArrayRecordWriter(str(tmp_path / "r.array_record"), "group_size:1")
    for i in range(16):
        writer.write(formats.pickle_record({"label": np.int32(i)}))
    writer.close()
    records = ArrayRecordSourceModule(ArrayRecordSourceConfig(), str(tmp_path / "r.array_record"))
    assert isinstance(records[0], bytes)  # raw record bytes
    pipeline = datarax.Pipeline(source=records, stages=[], batch_size=4, rngs=nnx.Rngs(0))
    with pytest.raises(AttributeError, match="get_batch"):
        next(iter(pipeline))
    with pytest.raises(TypeError, match="concrete Python int"):
        pipeline.step()
    records.close()
    assert "get_batch" in reasons["array_record"] and "concrete" in reasons["array_record"]
    assert reasons["memory"] is None and reasons["tfds"] is None


def test_pc2_is_a_datarax_dag_whose_merge_averages_the_branches_draws(opened):
    ctx, loader = opened("PC-2", "small")
    pipeline = loader.pipeline
    # A fan-out from the source into two operator branches, joined by one merge node (the sink).
    heads = sorted(name for name, preds in pipeline._predecessors.items() if not preds)
    assert len(heads) == 2
    assert sorted(pipeline._predecessors[pipeline._sink]) == heads
    assert [pipeline._stage_modules[h].step["op"] for h in heads] == [
        "random_brightness",
        "gaussian_noise",
    ]
    brightness, noise = (pipeline._stage_modules[h] for h in heads)
    from datarax.core.prng import per_record_keys

    w = ctx.workload
    batches = [_as_numpy(b) for b in loader.epoch(0)]
    assert len(batches) == w.num_batches
    index = len(batches) - 1
    start = index * w.batch_size
    indices = jnp.arange(start, start + w.batch_size, dtype=jnp.int32)
    shapes = {"image": (w.batch_size, *w.fields["image"].shape)}
    deltas, noises = (
        np.asarray(op.generate_random_params(per_record_keys(op._base_key[...], indices), shapes))
        for op in (brightness, noise)
    )
    images = np.stack([ctx.dataset.element(i)["image"] for i in range(start, start + w.batch_size)])
    expected = ((images + deltas[:, None, None, None]) + (images + noises)) / F32(2)
    _assert_close(batches[index], {"image": expected.astype(F32)})


@pytest.mark.slow
def test_cli_runs_pc2_on_datarax_with_the_dag_report(run_smoke_cell, tmp_path):
    out = tmp_path / "pc2-datarax.json"
    proc = run_smoke_cell("PC-2", "datarax", out, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["status"] == "ok", result["reason"]
    assert result["special"] == {
        "branches": [2],
        "merge": ["mean"],
        "ops": ["random_brightness", "gaussian_noise", "branch_merge"],
    }


def test_module_import_does_not_import_the_framework():
    code = (
        "import sys, datarax_bench.adapters.datarax, datarax_bench.adapters.grain;"
        "print(sorted(m for m in ('datarax', 'jax', 'flax', 'grain') if m in sys.modules))"
    )
    out = subprocess.run(
        [__import__("sys").executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_cli_runs_a_datarax_cell_end_to_end(tmp_path, run_smoke_cell):
    out = tmp_path / "cv1-datarax.json"
    proc = run_smoke_cell("CV-1", "datarax", out, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["status"] == "ok", result["reason"]
    assert result["parallelism"]["mode"] == "jit"
    # Same seed, same first batch in every repetition.
    assert result["statistics"]["first_batch_consistent"] is True
