"""tf.data: `map(num_parallel_calls=AUTOTUNE)` -> `batch(drop_remainder=True)` -> `prefetch(AUTOTUNE)`.

Configured as the tf.data performance guide recommends: parallel, autotuned per-element map,
batching after the map, autotuned prefetch at the end, default (deterministic) ordering.

Every transform is a TF op applied per element. Randomness is per element with stateless random
ops keyed by (seed, epoch, index) and the op's position in the pipeline, so results do not depend
on thread scheduling; the draws follow the reference's distributions (TF cannot reproduce NumPy's
generator bit for bit), which the conformance tests check statistically.

TensorFlow is imported inside `open()` only, and is kept off accelerators: JAX owns them.

The tuned style follows the guide's "Vectorizing mapping" section: the workload's trailing
value-wise steps (`reference.split_for_batches`) are mapped once over each batch, after
`batch`, instead of once per element before it (the same TF ops on a batched tensor, so the same
bytes). Its random steps stay per element, where the other tuned styles batch flips, brightness
and windows: each draw here is a stateless op keyed by the element's own key, and drawing for a
whole batch would need a key per row, a different computation that the plain pipeline's bytes do
not guarantee. Its parallelism is chosen by measurement (`tuning`): AUTOTUNE against fixed
`num_parallel_calls` for the maps and a fixed `prefetch` buffer (the guide's "Parallelizing data
transformation" and "Prefetching"); TensorFlow's public API does not say what AUTOTUNE settled
on, so the result records what was asked for. The guide's `deterministic=False` is left out: it
changes the order of elements, so the bytes.

Checkpoints are tf.data's own: `tf.train.Checkpoint(iterator=...)` written to files (the
iterator's position and whatever its map and prefetch buffers hold at that moment).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import formats, randomness, reference
from . import register
from ._tensorflow import import_tensorflow, visible_gpus
from .base import Adapter, Batch, CellContext, Loader, tensor_to_host

_LENGTH_PREFIX = "__length__"


class _Ops:
    """The catalog ops as TF functions of (tensor, step, key); `key` seeds stateless draws."""

    def __init__(self, tf):
        self.tf = tf

    def keys(self, key, n: int):
        return [self.tf.random.experimental.stateless_fold_in(key, j) for j in range(n)]

    def uniform_int(self, key, low, high_exclusive):
        tf = self.tf
        return tf.random.stateless_uniform(
            [], key, minval=low, maxval=high_exclusive, dtype=tf.int32
        )

    def random_resized_crop(self, x, p, key):
        tf = self.tf
        height, width = int(x.shape[0]), int(x.shape[1])
        area = float(height * width)
        k_scale, k_ratio, k_top, k_left = self.keys(key, 4)
        # The reference's 10 rejection-sampling tries, drawn at once; the first valid one wins.
        scale = tf.random.stateless_uniform(
            [10], k_scale, minval=p["scale"][0], maxval=p["scale"][1], dtype=tf.float64
        )
        log_ratio = tf.random.stateless_uniform(
            [10],
            k_ratio,
            minval=math.log(p["ratio"][0]),
            maxval=math.log(p["ratio"][1]),
            dtype=tf.float64,
        )
        target, aspect = area * scale, tf.exp(log_ratio)
        w = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
        h = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
        valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
        f_top, f_left, f_h, f_w = randomness.centre_crop_box(height, width, p["ratio"])
        found = tf.reduce_any(valid)
        h = tf.where(found, h[first], f_h)
        w = tf.where(found, w[first], f_w)
        top = tf.where(found, self.uniform_int(k_top, 0, height - h + 1), f_top)
        left = tf.where(found, self.uniform_int(k_left, 0, width - w + 1), f_left)
        crop = x[top : top + h, left : left + w]
        return tf.image.resize(crop, p["size"], method="bilinear", antialias=False)

    def random_horizontal_flip(self, x, p, key):
        tf = self.tf
        flip = tf.random.stateless_uniform([], key, dtype=tf.float64) < p["p"]
        return tf.cond(flip, lambda: tf.reverse(x, axis=[1]), lambda: x)

    def normalize(self, x, p, key):
        tf = self.tf
        mean = tf.constant(p["mean"], tf.float32)
        std = tf.constant(p["std"], tf.float32)
        return (tf.cast(x, tf.float32) - mean) / std

    def random_crop_3d(self, x, p, key):
        tf = self.tf
        size = [*p["size"], *x.shape[3:]]
        return tf.image.stateless_random_crop(x, size=size, seed=key)

    def zscore(self, x, p, key):
        tf = self.tf
        v = tf.cast(x, tf.float32)
        return (v - tf.reduce_mean(v)) / (tf.math.reduce_std(v) + p["epsilon"])

    def random_window(self, x, p, key):
        start = self.uniform_int(key, 0, self.tf.shape(x)[0] - p["length"] + 1)
        return x[start : start + p["length"]]

    def truncate(self, x, p, key):
        return x[: p["max_length"]]

    def standardize(self, x, p, key):
        tf = self.tf
        return (tf.cast(x, tf.float32) - p["mean"]) / p["std"]

    def log1p(self, x, p, key):
        tf = self.tf
        return tf.math.log1p(tf.maximum(tf.cast(x, tf.float32), 0.0))

    def hash_bucket(self, x, p, key):
        tf = self.tf
        h = tf.bitwise.bitwise_and(tf.cast(x, tf.int64), reference.MASK32)
        h = tf.bitwise.bitwise_and(h * reference.HASH_MULTIPLIER, reference.MASK32)
        h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 15))
        return tf.math.floormod(h, p["num_buckets"])

    def multiply(self, x, p, key):
        return self.tf.cast(x, self.tf.float32) * p["factor"]

    def add(self, x, p, key):
        return self.tf.cast(x, self.tf.float32) + p["value"]

    def random_brightness(self, x, p, key):
        tf = self.tf
        delta = tf.random.stateless_uniform(
            [], key, minval=-p["max_delta"], maxval=p["max_delta"], dtype=tf.float32
        )
        return tf.cast(x, tf.float32) + delta

    def clip(self, x, p, key):
        tf = self.tf
        return tf.clip_by_value(tf.cast(x, tf.float32), p["low"], p["high"])

    def gaussian_noise(self, x, p, key):
        tf = self.tf
        noise = tf.random.stateless_normal(tf.shape(x), key, stddev=p["std"], dtype=tf.float32)
        return tf.cast(x, tf.float32) + noise

    def cast(self, x, p, key):
        return self.tf.cast(x, p["dtype"])


FIELD_OPS = frozenset(
    name for name in vars(_Ops) if not name.startswith("_") and name not in {"keys", "uniform_int"}
)


#: The tuned style's knobs (settings over the profile's parallelism): the maps'
#: `num_parallel_calls` and the final `prefetch` buffer, each AUTOTUNE or a fixed number.
MAP_CALLS, PREFETCH, AUTOTUNE = "tf_map_parallel_calls", "tf_prefetch", "autotune"


def _tf_knob(tf, value):
    return tf.data.AUTOTUNE if value == AUTOTUNE else int(value)


def _knob_name(value):
    return "AUTOTUNE" if value == AUTOTUNE else int(value)


class _StepKeys:
    """One stateless key per step of an element, folded from the element's key in step order."""

    def __init__(self, tf, key):
        self.tf, self.key, self.count = tf, key, 0

    def next(self):
        self.count += 1
        return self.tf.random.experimental.stateless_fold_in(self.key, self.count - 1)


class TfDataLoader(Loader):
    def __init__(self, ctx: CellContext, batch_ops: frozenset[str] = frozenset()):
        tf = self.tf = import_tensorflow()
        self.ops = _Ops(tf)
        self.leaf_ops = reference.LeafOps(
            fields={op: getattr(self.ops, op) for op in FIELD_OPS},
            embedding_lookup=lambda step, ids: tf.nn.embedding_lookup(
                tf.constant(
                    reference.embedding_table(step["num_rows"], step["dim"], step["table_seed"])
                ),
                ids,
            ),
            mean=lambda outputs: (
                tf.add_n([tf.cast(o, tf.float32) for o in outputs]) / float(len(outputs))
            ),
            step_key=_StepKeys.next,
        )
        w = ctx.workload
        self.num_batches = w.num_batches
        self.seed = ctx.seed
        per_element, self.batch_steps = reference.split_for_batches(w.transforms, batch_ops)
        self.element_steps = [s for s in per_element if s["op"] not in reference.BATCH_OPS]
        self.pad_steps = [s for s in w.transforms if s["op"] in reference.BATCH_OPS]
        records, self._decode, self.source_info = self._records(ctx)
        per_epoch = w.num_batches * w.batch_size
        # Whole batches only: the elements of the dropped last batch are not even read.
        self.elements = (
            tf.data.Dataset.zip(tf.data.Dataset.range(w.num_elements), records)
            .take(per_epoch)
            .repeat()
        )
        self.per_epoch = per_epoch
        self.batch_size = w.batch_size
        self._iterator = None
        self._next_epoch: int | None = None
        self._built_epoch = 0  # the epoch the stream began at (part of its structure)
        self._next = (0, 0)  # (epoch, batch) of the next batch to yield
        self._resume: tuple[int, int] | None = None
        self.map_calls = _tf_knob(tf, ctx.parallelism.get(MAP_CALLS, AUTOTUNE))
        self.prefetch = _tf_knob(tf, ctx.parallelism.get(PREFETCH, AUTOTUNE))
        self.parallelism = {
            "map_num_parallel_calls": _knob_name(ctx.parallelism.get(MAP_CALLS, AUTOTUNE)),
            "prefetch_buffer_size": _knob_name(ctx.parallelism.get(PREFETCH, AUTOTUNE)),
            "autotune": AUTOTUNE
            in (ctx.parallelism.get(MAP_CALLS, AUTOTUNE), ctx.parallelism.get(PREFETCH, AUTOTUNE)),
            "deterministic": True,
            "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_visible_gpus": visible_gpus(),
        }

    def _records(self, ctx: CellContext):
        """(records, decode, source_info): the elements as a tf.data dataset of what the source
        holds, the per-element decoding (run in the parallel map), and what is read.

        The cached arrays go in with `from_tensor_slices` (which copies them into memory: the
        `memory` backend); IO-1's TFRecord file is read with `TFRecordDataset` and each
        `tf.train.Example` parsed and decoded per element, and the TFDS dataset with TFDS's own
        `as_dataset` (its TFRecord files, decoded by TFDS).
        """
        tf = self.tf
        backend = ctx.workload.options.get("backend")
        if backend == "tfrecord":
            paths = ctx.source.tfrecord_paths()
            info = {
                "reader": "tf.data.TFRecordDataset + tf.io.parse_single_example",
                "paths": paths,
            }
            return tf.data.TFRecordDataset(paths), self._example_decoder(ctx.workload), info
        if backend == "tfds":
            import tensorflow_datasets as tfds

            builder_dir = ctx.source.tfds_builder_dir("tfrecord")
            records = tfds.builder_from_directory(builder_dir).as_dataset(
                split=formats.TFDS_SPLIT, shuffle_files=False
            )
            info = {"reader": "tfds as_dataset (TFRecord files)", "paths": [builder_dir]}
            return records, None, info
        fields: dict[str, Any] = {k: np.asarray(v) for k, v in ctx.dataset.dense.items()}
        for name, (values, offsets) in ctx.dataset.ragged.items():
            fields[name] = tf.RaggedTensor.from_row_splits(np.asarray(values), np.asarray(offsets))
        info = {**formats.npy_source_info(ctx.dataset), "reader": "from_tensor_slices"}
        return tf.data.Dataset.from_tensor_slices(fields), None, info

    def _example_decoder(self, workload):
        """A TFRecord record (a tf.train.Example of raw field bytes) back into the fields."""
        tf = self.tf
        spec = {name: tf.io.FixedLenFeature([], tf.string) for name in workload.fields}
        shapes = {name: f.shape for name, f in workload.fields.items()}
        dtypes = {name: tf.as_dtype(f.dtype) for name, f in workload.fields.items()}

        def decode(record):
            parsed = tf.io.parse_single_example(record, spec)
            return {
                name: tf.reshape(tf.io.decode_raw(parsed[name], dtypes[name]), shapes[name])
                for name in spec
            }

        return decode

    def _transform(self, position, index, element):
        tf = self.tf
        if self._decode is not None:
            element = self._decode(element)
        epoch = position // self.per_epoch
        key = tf.random.experimental.stateless_fold_in(
            tf.stack([tf.constant(self.seed, tf.int64), epoch]), index
        )
        out = dict(element)
        keys = _StepKeys(tf, key)
        for step in self.element_steps:
            reference.apply_step(step, out, self.leaf_ops, keys)
        for step in self.pad_steps:
            out[_LENGTH_PREFIX + step["field"]] = tf.shape(out[step["field"]])[0]
        return out

    def _pad_to_multiple(self, batch):
        tf = self.tf
        out = dict(batch)
        for step in self.pad_steps:
            name, multiple = step["field"], step["multiple"]
            lengths = out.pop(_LENGTH_PREFIX + name)
            tokens = out[name]
            longest = tf.shape(tokens)[1]
            length = tf.maximum(multiple, -(-longest // multiple) * multiple)
            out[name] = tf.pad(
                tokens, [[0, 0], [0, length - longest]], constant_values=step["pad_value"]
            )
            out[step["mask"]] = tf.sequence_mask(lengths, length, dtype=tf.int32)
        return out

    def _build_stream(self, start_epoch: int):
        tf = self.tf
        positions = tf.data.Dataset.counter(start=start_epoch * self.per_epoch)
        ds = tf.data.Dataset.zip(positions, self.elements).map(
            lambda position, pair: self._transform(position, *pair),
            num_parallel_calls=self.map_calls,
        )
        if self.pad_steps:
            values = {
                s["field"]: tf.constant(s["pad_value"], ds.element_spec[s["field"]].dtype)
                for s in self.pad_steps
            }
            ds = ds.padded_batch(
                self.batch_size,
                padding_values={
                    k: values.get(k, tf.constant(0, spec.dtype))
                    for k, spec in ds.element_spec.items()
                },
                drop_remainder=True,
            ).map(self._pad_to_multiple, num_parallel_calls=self.map_calls)
        else:
            ds = ds.batch(self.batch_size, drop_remainder=True)
        if self.batch_steps:
            ds = ds.map(self._batch_transform, num_parallel_calls=self.map_calls)
        return iter(ds.prefetch(self.prefetch))

    def _batch_transform(self, batch):
        out = dict(batch)
        for step in self.batch_steps:
            reference.apply_batch_step(step, out, self.leaf_ops)
        return out

    def epoch(self, epoch: int) -> Iterator[Batch]:
        # One stream across epochs keeps the prefetch buffer warm at epoch boundaries; asking
        # for another epoch than the next one (or after an abandoned epoch) starts a new stream.
        first = 0
        if self._resume is not None and self._resume[0] == epoch:
            first = self._resume[1]  # the iterator restore_state built continues here
        elif self._iterator is None or self._next_epoch != epoch:
            self._iterator = self._build(epoch)
        self._resume = None
        self._next_epoch = None
        for b in range(first, self.num_batches):
            batch = next(self._iterator)
            self._next = (epoch, b + 1)
            yield batch
        self._next_epoch = epoch + 1

    def _build(self, start_epoch: int):
        self._built_epoch = start_epoch
        return self._build_stream(start_epoch)

    def save_state(self, directory: Path) -> None:
        self.tf.train.Checkpoint(iterator=self._iterator).write(str(directory / "iterator"))
        epoch, batch = self._next
        (directory / "loader.json").write_text(
            json.dumps({"built_epoch": self._built_epoch, "epoch": epoch, "batch": batch})
        )

    def restore_state(self, directory: Path) -> None:
        loader = json.loads((directory / "loader.json").read_text())
        # The same pipeline as the saved one (same start), then its saved position and buffers.
        self._iterator = self._build(int(loader["built_epoch"]))
        checkpoint = self.tf.train.Checkpoint(iterator=self._iterator)
        checkpoint.read(str(directory / "iterator")).assert_consumed()
        self._resume = (int(loader["epoch"]), int(loader["batch"]))

    def close(self) -> None:
        self._iterator = None


@register
class TfData(Adapter):
    id = "tfdata"
    display_name = "tf.data"
    aliases = ("tf.data", "tensorflow", "tf")
    distributions = ("tensorflow",)
    measure_reasons = {
        "streaming": "the tf.data adapter builds its pipeline with from_tensor_slices, which loads "
        "every array at setup: it has no lazy path from these files (IO-2 needs one)",
    }
    ops = FIELD_OPS | reference.STRUCTURE_OPS | reference.BATCH_OPS
    styles = frozenset({"plain", "tuned"})
    # TF's log1p kernel rounds a batch's values differently from a short row's (vectorised
    # against scalar code paths, one ulp apart): per element it stays, for the plain bytes.
    batch_ops = reference.VALUEWISE_OPS - {"log1p"}
    measures = Adapter.measures | {"checkpoint"}
    backends = frozenset({"memory", "tfrecord", "tfds"})
    backend_reasons = {
        "npy_mmap": "tf.data has no .npy reader: the tf.data adapter builds from_tensor_slices, "
        "which copies the arrays into memory at setup (the memory variant)",
        "array_record": "tf.data has no ArrayRecord reader (TFDS's as_dataset refuses ArrayRecord "
        "files: it reads TFRecord, the tfds variant)",
    }

    def open(self, ctx: CellContext) -> Loader:
        return TfDataLoader(ctx, self.batched_ops())

    def tuning_grid(self, ctx: CellContext, cores: int) -> list[dict[str, Any]]:
        # AUTOTUNE against fixed values, for the maps and for the prefetch buffer.
        calls = [AUTOTUNE, *sorted({1, cores})]
        return [{MAP_CALLS: c, PREFETCH: p} for c in calls for p in (AUTOTUNE, 2)]

    to_host = staticmethod(tensor_to_host)
