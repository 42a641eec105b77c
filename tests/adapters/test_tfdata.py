"""tf.data adapter: autotuned map/prefetch, the reference's counter-based draws in TF ops, no
accelerators."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from support import adapters as support

from datarax_bench.adapters import CellContext, get_adapter
from datarax_bench.measures.harness import batch_digest
from datarax_bench.workload import randomness, reference
from datarax_bench.workload.data import materialize

ADAPTER = get_adapter("tfdata")


def test_importing_the_adapter_does_not_import_tensorflow():
    code = "import sys, datarax_bench.adapters.tfdata; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tensorflow_sees_no_gpu_and_the_pipeline_is_autotuned():
    import tensorflow as tf

    w = support.workload("CV-1", "small")
    loader = ADAPTER.open(CellContext(w, materialize(w, 0), support.profile(), seed=0))
    try:
        batch = next(iter(loader.epoch(0)))
    finally:
        loader.close()
    assert tf.config.get_visible_devices("GPU") == []
    assert loader.parallelism["map_num_parallel_calls"] == "AUTOTUNE"
    assert loader.parallelism["prefetch_buffer_size"] == "AUTOTUNE"
    assert loader.parallelism["deterministic"] is True
    assert loader.parallelism["tf_visible_gpus"] == 0
    assert loader.parallelism["tf_arithmetic_optimization"] is False
    assert loader.parallelism["rng"] == f"reference {randomness.SCHEME} draws (TF ops)"
    assert isinstance(batch["image"], tf.Tensor)


def test_to_host_turns_an_eager_tensor_into_numpy():
    import tensorflow as tf

    value = ADAPTER.to_host(tf.constant([[1.5, 2.0]], tf.float32))
    assert isinstance(value, np.ndarray) and value.dtype == np.float32 and value.shape == (1, 2)


def _batches(w, dataset, seed, epochs):
    return [
        [batch_digest(b) for b in epoch]
        for epoch in support.run_loader(ADAPTER, w, dataset, seed, epochs)
    ]


def test_an_abandoned_epoch_does_not_shift_the_next_one():
    w = support.workload("CV-1", "small")
    dataset = materialize(w, 0)
    fresh = _batches(w, dataset, 0, (1,))[0]
    loader = ADAPTER.open(CellContext(w, dataset, support.profile(), seed=0))
    try:
        next(iter(loader.epoch(0)))  # like the harness leaving a window mid-epoch
        resumed = [
            batch_digest({k: ADAPTER.to_host(v) for k, v in b.items()}) for b in loader.epoch(1)
        ]
        after = [
            batch_digest({k: ADAPTER.to_host(v) for k, v in b.items()}) for b in loader.epoch(2)
        ]
    finally:
        loader.close()
    assert resumed == fresh
    assert after == _batches(w, dataset, 0, (2,))[0]


def test_resized_crop_fallback_is_the_reference_centre_crop():
    """Scales above 1 make every try fail: the box is deterministic, so TF must equal NumPy."""
    w = support.workload("CV-1", "small")
    steps = tuple(
        {**s, "scale": [2.0, 3.0], "ratio": [1.5, 2.0]} if s["op"] == "random_resized_crop" else s
        for s in w.transforms
        if s["op"] != "random_horizontal_flip"
    )
    w = dataclasses.replace(w, transforms=steps)
    dataset = materialize(w, 0)
    got = support.run_loader(ADAPTER, w, dataset, 0, (0,))[0][0]
    want = reference.reference_batch(dataset, w.transforms, 0, 0, 0, w.batch_size)
    np.testing.assert_array_equal(got["image"], want["image"])


def test_hash_bucket_matches_the_reference_on_extreme_ids():
    import tensorflow as tf

    from datarax_bench.adapters.tfdata import _Ops

    ids = np.array([0, 1, 2**31 - 1, 2**32 - 1, 2**32, 3_999_999_999, 2**40 + 12345], np.int64)
    got = _Ops(tf).hash_bucket(tf.constant(ids), {"num_buckets": 97}, None).numpy()
    np.testing.assert_array_equal(got, reference.hash_ids(ids, 97))


# --- the reference's counter-based draws in TF ops (`_tensorflow.CounterDraws`) ---------------


def _draws():
    from datarax_bench.adapters._tensorflow import CounterDraws, import_tensorflow

    tf = import_tensorflow()
    return tf, CounterDraws(tf)


def _in_graph(tf, fn, *args):
    """`fn` run as a graph function, as tf.data runs a map (Grappler rewrites graphs only)."""
    return tf.function(fn)(*args)


@pytest.mark.parametrize(
    "key,counter,words",
    [
        ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ],
)
def test_threefry_in_tf_ops_gives_the_random123_known_answers(key, counter, words):
    tf, draws = _draws()
    args = [tf.constant(v, tf.uint32) for v in (*key, *counter)]
    got = _in_graph(tf, draws.threefry2x32, *args)
    assert tuple(int(y) for y in got) == words


def test_threefry_in_tf_ops_equals_the_reference_over_many_counters():
    tf, draws = _draws()
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2**32, size=(2, 200_000), dtype=np.uint64).astype(np.uint32)
    for key in [(0, 0), (12345, 7), (0xFFFFFFFF, 3), tuple(rng.integers(0, 2**32, 2))]:
        k0, k1 = (tf.constant(int(k), tf.uint32) for k in key)
        got = _in_graph(tf, draws.threefry2x32, k0, k1, *map(tf.constant, counters))
        want = randomness.threefry2x32(*key, *counters)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g.numpy(), w)


def _step_key(tf, seed, epoch, index, step):
    from datarax_bench.adapters._tensorflow import ElementKey

    epoch, index = tf.constant(epoch, tf.int64), tf.constant(index, tf.int64)
    return ElementKey(tf, seed, epoch, index, step).next_step()


def test_a_step_keys_words_are_the_references_for_an_element_and_for_a_batch():
    tf, draws = _draws()
    indices = np.arange(1000, 1040)
    want = randomness.batch_words(2**33 + 5, 3, indices, 7, 5)
    for row in (0, 17):
        key = randomness.StepKey(2**33 + 5, 3, int(indices[row]), 7)
        np.testing.assert_array_equal(want[row], randomness.element_words(key, 5))
        y0, y1 = _in_graph(
            tf, lambda i: draws.words(_step_key(tf, 2**33 + 5, 3, i, 7), 5), int(indices[row])
        )
        np.testing.assert_array_equal(np.stack([y0, y1], -1), want[row])
    y0, y1 = _in_graph(tf, lambda: draws.words(_step_key(tf, 2**33 + 5, 3, indices, 7), 5))
    np.testing.assert_array_equal(np.stack([y0, y1], -1), want)


def test_the_conversions_in_tf_ops_are_the_references():
    tf, draws = _draws()
    y = randomness.batch_words(1, 0, np.arange(100_000), 0, 1)[:, 0, 0]
    ty = tf.constant(y)
    for p in (0.0, 0.3, 0.5, 1.0):
        got = _in_graph(tf, draws.bernoulli, ty, p)
        np.testing.assert_array_equal(got.numpy(), randomness.bernoulli(y, p))
    for bound in (8.0, 16.0, 0.3, 1e-3):
        got = _in_graph(tf, draws.symmetric, ty, bound)
        np.testing.assert_array_equal(got.numpy(), randomness.symmetric(y, bound))
    for n in (1, 2, 3, 1000, 2**24 + 1, 2**31 - 1):
        got = _in_graph(tf, draws.below, ty, tf.constant(n, tf.int64))
        np.testing.assert_array_equal(got.numpy(), randomness.below(y, n).astype(np.int64))


@pytest.mark.parametrize(
    "height,width,scale,ratio",
    [
        (20, 20, (0.08, 1.0), (3 / 4, 4 / 3)),
        (32, 48, (0.08, 1.0), (3 / 4, 4 / 3)),
        (224, 300, (0.5, 1.0), (0.2, 5.0)),
        (20, 20, (2.0, 3.0), (1.5, 2.0)),  # no try fits: the centre crop
    ],
)
def test_crop_boxes_in_tf_ops_are_the_references(height, width, scale, ratio):
    tf, draws = _draws()
    words = randomness.batch_words(3, 1, np.arange(4000), 2, randomness.CROP_DRAWS)
    want = randomness.crop_boxes(words, height, width, scale, ratio)
    first = tf.constant(words[..., 0])
    got = _in_graph(tf, draws.crop_box, first, height, width, scale, ratio)
    np.testing.assert_array_equal(np.stack([t.numpy() for t in got], -1), want)
    for row in (0, 9):
        one = _in_graph(tf, draws.crop_box, first[row], height, width, scale, ratio)
        np.testing.assert_array_equal([int(t) for t in one], want[row])


@pytest.mark.parametrize("size", [1, 2, 3 * 8 * 8, 3 * 8 * 8 + 1, 50_001])
def test_normal_values_in_tf_ops_are_the_references(size):
    tf, draws = _draws()
    key = randomness.StepKey(9, 4, 123_456, 2)
    got = _in_graph(tf, lambda: draws.normal_values(_step_key(tf, 9, 4, 123_456, 2), size, 4.0))
    np.testing.assert_array_equal(got.numpy(), randomness.normal_values(key, size, 4.0))


@pytest.mark.parametrize("crop,size", [((7, 11), (16, 16)), ((31, 20), (24, 24)), ((5, 5), (5, 5))])
def test_the_bilinear_resize_in_tf_ops_is_the_references(crop, size):
    from datarax_bench.adapters.tfdata import _Ops

    tf, _ = _draws()
    image = np.random.default_rng(1).integers(0, 256, size=(*crop, 3), dtype=np.uint8)
    got = _in_graph(tf, lambda x: _Ops(tf).resize_bilinear(x, *size), tf.constant(image))
    np.testing.assert_array_equal(got.numpy(), reference.resize_bilinear(image, *size))


@pytest.mark.parametrize(
    "sid,variant,planned",
    [
        ("CV-1", "small", {0: randomness.CROP_DRAWS, 1: 1}),
        ("CV-2", "small", {0: 3}),
        # branch_merge takes step 0 before its branches; the noise's count is its field's size.
        ("PC-2", "small", {1: 1}),
        ("PC-1", "d10", {2: 1, 4: 1, 7: 1, 9: 1}),
    ],
)
def test_a_walks_fixed_draws_are_computed_ahead_under_the_walks_step_numbers(sid, variant, planned):
    from datarax_bench.adapters.tfdata import _planned_draws

    w = support.workload(sid, variant)
    assert _planned_draws(w.transforms, w.fields) == planned


def test_planned_words_are_the_words_of_their_steps():
    tf, draws = _draws()
    from datarax_bench.adapters._tensorflow import ElementKey

    # Step 1 is not planned: its words are computed on their own.
    counts = (randomness.CROP_DRAWS, 4, 1, 3)

    def walk(index):
        keys = ElementKey(tf, 11, tf.constant(2, tf.int64), index)
        draws.plan(keys, {0: randomness.CROP_DRAWS, 2: 1, 3: 3})
        return [draws.words(keys.next_step(), n) for n in counts]

    for index in (tf.constant(5, tf.int64), tf.constant([5, 6, 2**32 + 7], tf.int64)):
        got = _in_graph(tf, walk, index)
        indices = np.atleast_1d(index.numpy())
        for step, ((y0, y1), n) in enumerate(zip(got, counts, strict=True)):
            want = randomness.batch_words(11, 2, indices, step, n)
            np.testing.assert_array_equal(np.stack([y0, y1], -1).reshape(want.shape), want)


def test_jpeg_files_decode_to_pillows_pixels_with_the_accurate_idct_only():
    """tf.io.decode_jpeg with the accurate integer IDCT gives the reference's (Pillow's) pixels
    exactly; its default, a faster and coarser IDCT, differs by more than the conformance
    bound, which is why the adapter asks for the accurate one."""
    import tensorflow as tf

    w = support.workload("CV-3", "imagenet")
    ds = materialize(w, 0)
    worst = 0
    for i in range(w.num_elements):
        file = ds.element(i)["image"]
        want = reference.FIELD_OPS["decode_jpeg"](file, {}, None)
        accurate = tf.io.decode_jpeg(file.tobytes(), channels=3, dct_method="INTEGER_ACCURATE")
        np.testing.assert_array_equal(accurate.numpy(), want)
        default = tf.io.decode_jpeg(file.tobytes(), channels=3).numpy()
        worst = max(worst, int(np.abs(default.astype(int) - want).max()))
    assert worst > support.DECODE_MAX_DIFF
