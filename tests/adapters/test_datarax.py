"""The Datarax adapter does the reference's work per element, in JAX, with the reference's draws.

Its draws are the reference's counter-based ones (`datarax_bench.workload.randomness`), computed inside the
compiled pipeline with JAX's threefry primitive and integer-first conversions in uint32/float32
(`_datarax_ops`): the primitive is checked against Threefry's known answers and NumPy's, the
conversions against NumPy's over many counters, under `jax.jit` as the pipeline runs them, and the
operators' parameters and batches against the reference's.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from datarax_bench.adapters import get_adapter
from datarax_bench.adapters.base import CellContext
from datarax_bench.measures import support
from datarax_bench.measures.harness import batch_digest
from datarax_bench.workload import randomness, reference
from datarax_bench.workload.catalog import load_catalog, load_profile
from datarax_bench.workload.data import materialize

pytest.importorskip("datarax")
jax = pytest.importorskip("jax")
jnp = jax.numpy
ops = pytest.importorskip("datarax_bench.adapters._datarax_ops")

F32 = np.float32
U32 = np.uint32
RANDOM_CELLS = [("CV-1", "small"), ("CV-2", "small"), ("NLP-1", "small"), ("PC-1", "d5")]
# Counters for the conversions: a spread of words with both ends of the range.
WORDS = np.concatenate(
    [
        np.array([0, 1, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF], U32),
        np.random.default_rng(5).integers(0, 2**32, 200_000, dtype=np.uint64).astype(U32),
    ]
)


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


# --- the draws: JAX's threefry and the conversions, against NumPy's ---------------------------


def test_threefry_gives_the_known_answers_and_numpys_words():
    # Random123's known-answer vectors for Threefry-2x32-20: (key, counter) -> words.
    known = [
        ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ]
    threefry = jax.jit(ops.threefry2x32)
    for key, counter, words in known:
        got = threefry(*(U32(v) for v in (*key, *counter)))
        assert tuple(int(y) for y in got) == words
    rng = np.random.default_rng(11)
    count0, count1 = rng.integers(0, 2**32, (2, 100_000), dtype=np.uint64).astype(U32)
    for key in [(0, 0), (0x9E3779B9, 0x243F6A88), (0xFFFFFFFF, 7)]:
        got = threefry(U32(key[0]), U32(key[1]), count0, count1)
        want = randomness.threefry2x32(*key, count0, count1)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(g), w)


def test_batch_words_are_the_references():
    indices = np.arange(0, 5000, 7)
    for seed, epoch, step, draws in [
        (0, 0, 0, 1),
        (3, 2, 5, randomness.CROP_DRAWS),
        (2**32 + 9, 1, 255, 3),
    ]:

        def words(seed, epoch, indices, step=step, draws=draws):
            return ops.BatchKey(seed, epoch, indices, step).words(draws)

        got = jax.jit(words)(U32(seed & randomness.MASK32), U32(epoch), indices.astype(U32))
        np.testing.assert_array_equal(
            np.asarray(got), randomness.batch_words(seed, epoch, indices, step, draws)
        )


def test_integer_draws_are_numpys_multiply_high():
    below = jax.jit(ops.below)
    bounds = [1, 2, 3, 255, 0xFFFF, 0x10000, 0x10001, 1_000_003, 2**24, 2**31 + 1, 0xFFFFFFFF]
    for n in bounds:
        np.testing.assert_array_equal(np.asarray(below(WORDS, U32(n))), randomness.below(WORDS, n))
    # A bound per word, as the crop box's placement draws.
    ns = np.random.default_rng(2).integers(1, 2**32, WORDS.size, dtype=np.uint64)
    np.testing.assert_array_equal(
        np.asarray(below(WORDS, ns.astype(U32))), randomness.below(WORDS, ns)
    )


def test_bernoulli_and_symmetric_draws_are_numpys():
    for p in (0.0, 0.1, 0.5, 1 / 3, 1.0):
        got = jax.jit(lambda y, p=p: ops.bernoulli(y, p))(WORDS)
        np.testing.assert_array_equal(np.asarray(got), randomness.bernoulli(WORDS, p))
    # Powers of two (the catalog's) and other bounds, whose products no add may fuse with.
    for bound in (8.0, 16.0, 0.3, 255.0):
        got = jax.jit(lambda y, b=bound: ops.symmetric(y, b))(WORDS)
        np.testing.assert_array_equal(np.asarray(got), randomness.symmetric(WORDS, bound))
        shifted = jax.jit(lambda y, b=bound: jnp.float32(100.5) + ops.symmetric(y, b))(WORDS)
        np.testing.assert_array_equal(
            np.asarray(shifted), F32(100.5) + randomness.symmetric(WORDS, bound)
        )


@pytest.mark.parametrize(
    ("height", "width", "scale", "ratio"),
    [
        (96, 96, (0.08, 1.0), (0.75, 1.3333333)),
        (20, 31, (0.08, 1.0), (0.75, 1.3333333)),
        (256, 256, (0.5, 0.9), (0.5, 2.0)),
        # Boxes that rarely fit: the centre-crop fallback on both sides of the ratio range.
        (40, 10, (0.9, 1.0), (3.0, 4.0)),
        (10, 40, (0.9, 1.0), (0.2, 0.25)),
    ],
)
def test_crop_boxes_are_numpys(height, width, scale, ratio):
    rng = np.random.default_rng(height * 1000 + width)
    words = rng.integers(0, 2**32, (20_000, randomness.CROP_DRAWS, 2), dtype=np.uint64).astype(U32)
    got = jax.jit(lambda w: ops.crop_boxes(w, height, width, scale, ratio))(words)
    want = randomness.crop_boxes(words, height, width, scale, ratio)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_normal_values_are_numpys():
    indices = np.arange(0, 300, 3)
    for size, std in [(1, 4.0), (7, 4.0), (1200, 0.5), (31, 3.3)]:

        def values(indices, size=size, std=std):
            key = ops.BatchKey(U32(4), U32(2), indices, 3)
            return jnp.float32(1.5) + ops.normal_values(key, size, std)

        got = jax.jit(values)(indices.astype(U32))
        want = [
            F32(1.5) + randomness.normal_values(randomness.StepKey(4, 2, int(i), 3), size, std)
            for i in indices
        ]
        np.testing.assert_array_equal(np.asarray(got), np.stack(want))


def test_resize_is_the_references_bilinear_resize_bit_for_bit():
    rng = np.random.default_rng(8)
    height, width, size = 96, 80, (64, 48)
    images = rng.integers(0, 256, (64, height, width, 3), dtype=np.uint8)
    boxes = []
    for _ in images:
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        boxes.append((rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w))
    boxes = np.asarray(boxes, np.int32)
    step = {"size": list(size)}
    got = jax.jit(jax.vmap(lambda x, b: ops.resized_crop_apply(step, x, b)))(images, boxes)
    want = [
        reference.resize_bilinear(x[t : t + h, left : left + w], *size)
        for x, (t, left, h, w) in zip(images, boxes, strict=True)
    ]
    np.testing.assert_array_equal(np.asarray(got), np.stack(want))


def test_divisions_are_numpys_and_zscore_within_two_ulp():
    rng = np.random.default_rng(9)
    images = rng.uniform(0, 255, (16, 24, 24, 3)).astype(F32)
    step = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
    got = jax.jit(jax.vmap(lambda x: ops.normalize_apply(step, x, None)))(images)
    want = (images - np.asarray(step["mean"], F32)) / np.asarray(step["std"], F32)
    np.testing.assert_array_equal(np.asarray(got), want)
    # A count that is no power of two: the mean is NumPy's, only the sums' order differs.
    volumes = rng.normal(40, 300, (2, 24, 32, 32, 1)).astype(np.int16)
    got = jax.jit(jax.vmap(lambda v: ops.zscore_apply({"epsilon": 1e-6}, v, None)))(volumes)
    want = [reference.FIELD_OPS["zscore"](v, {"epsilon": 1e-6}, None) for v in volumes]
    np.testing.assert_array_max_ulp(np.asarray(got), np.stack(want), maxulp=2)


# --- the operators draw the reference's parameters for their records ---------------------------


def _walk_keys(ctx, epoch, indices, walk_step):
    return [randomness.StepKey(ctx.seed, epoch, int(i), walk_step) for i in indices]


@pytest.mark.parametrize(("scenario", "variant"), RANDOM_CELLS)
def test_random_pipelines_deliver_the_reference_batches(opened, scenario, variant):
    ctx, loader = opened(scenario, variant)
    assert support(get_adapter("datarax"), ctx.workload) is None
    assert loader.parallelism["rng"] == f"reference {randomness.SCHEME} draws (JAX threefry)"
    w = ctx.workload
    for epoch in (0, 1):
        batches = [_as_numpy(b) for b in loader.epoch(epoch)]
        assert len(batches) == w.num_batches
        for index in (0, len(batches) - 1):
            want = reference.reference_batch(
                ctx.dataset, w.transforms, ctx.seed, epoch, index, w.batch_size
            )
            assert sorted(batches[index]) == sorted(want)
            for name, value in want.items():
                got = batches[index][name]
                assert got.shape == value.shape and got.dtype == value.dtype, name
                if name == "volume":  # zscore: XLA's reductions sum in another order
                    np.testing.assert_array_max_ulp(got, value, maxulp=4)
                else:
                    np.testing.assert_array_equal(got, value, err_msg=name)


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


def test_operators_draw_the_reference_parameters_of_their_records(opened):
    ctx, loader = opened("CV-1", "small", seed=3)
    list(loader.epoch(2))  # sets the operators' epoch
    crop = loader.operators[0]
    assert crop.step["op"] == "random_resized_crop" and crop.walk_step == 0
    shape = ctx.workload.fields["image"].shape
    indices = np.arange(0, 4000, 3)
    boxes = np.asarray(crop.generate_random_params(indices, {"image": (len(indices), *shape)}))
    want = [
        reference.resized_crop_box(crop.step, key, shape) for key in _walk_keys(ctx, 2, indices, 0)
    ]
    np.testing.assert_array_equal(boxes, np.asarray(want))
    # Per element, not per batch: the draws of one batch differ from each other.
    assert len({tuple(b) for b in boxes[:8]}) > 1

    ctx, loader = opened("PC-1", "d5", seed=5)
    list(loader.epoch(1))
    shapes = {"image": (len(indices), *ctx.workload.fields["image"].shape)}
    for op in loader.operators:
        if op.step["op"] in reference.RANDOM_DRAWS:
            got = np.asarray(op.generate_random_params(indices, shapes))
            want = [
                reference.draw(op.step, key, shapes["image"][1:])
                for key in _walk_keys(ctx, 1, indices, op.walk_step)
            ]
            np.testing.assert_array_equal(got, np.asarray(want), err_msg=op.step["op"])
    # The chain's steps are numbered in walk order.
    assert [op.walk_step for op in loader.operators] == list(range(len(loader.operators)))


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

    from datarax_bench.workload import formats

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
    # The walk's numbers: the merge takes step 0, its branches the steps after it.
    assert (brightness.walk_step, noise.walk_step) == (1, 2)

    w = ctx.workload
    batches = [_as_numpy(b) for b in loader.epoch(0)]
    assert len(batches) == w.num_batches
    index = len(batches) - 1
    start = index * w.batch_size
    indices = np.arange(start, start + w.batch_size)
    shapes = {"image": (w.batch_size, *w.fields["image"].shape)}
    deltas, noises = (
        np.asarray(op.generate_random_params(indices, shapes)) for op in (brightness, noise)
    )
    images = np.stack([ctx.dataset.element(i)["image"] for i in indices])
    expected = ((images + deltas[:, None, None, None]) + (images + noises)) / F32(2)
    np.testing.assert_array_equal(batches[index]["image"], expected)
    want = reference.reference_batch(ctx.dataset, w.transforms, ctx.seed, 0, index, w.batch_size)
    assert batch_digest(batches[index]) == batch_digest(want)


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
