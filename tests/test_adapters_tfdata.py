"""tf.data adapter: autotuned map/prefetch, per-element stateless randomness, no accelerators."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import adapters_support as support
import numpy as np

from datarax_bench import reference
from datarax_bench.adapters import CellContext, get_adapter
from datarax_bench.data import materialize
from datarax_bench.harness import batch_digest

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
    np.testing.assert_allclose(got["image"], want["image"], rtol=0, atol=1e-4)


def test_hash_bucket_matches_the_reference_on_extreme_ids():
    import tensorflow as tf

    from datarax_bench.adapters.tfdata import _Ops

    ids = np.array([0, 1, 2**31 - 1, 2**32 - 1, 2**32, 3_999_999_999, 2**40 + 12345], np.int64)
    got = _Ops(tf).hash_bucket(tf.constant(ids), {"num_buckets": 97}, None).numpy()
    np.testing.assert_array_equal(got, reference.hash_ids(ids, 97))
