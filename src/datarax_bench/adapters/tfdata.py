"""tf.data: `map(num_parallel_calls=AUTOTUNE)` -> `batch(drop_remainder=True)` -> `prefetch(AUTOTUNE)`.

Configured as the tf.data performance guide recommends: parallel, autotuned per-element map,
batching after the map, autotuned prefetch at the end, default (deterministic) ordering.

Every transform is a TF op applied per element. Random parameters are the reference's
counter-based draws (`datarax_bench.workload.randomness`) computed in TF ops (`_tensorflow.CounterDraws`):
Threefry-2x32-20 in uint32 `tf.bitwise` ops keyed by (seed, epoch) at counter (element index,
step << 24 | draw), with the step numbered as `reference.apply_step` numbers it (compiled by
XLA; the words of a walk's fixed-count draws in one pass per element), then the same
integer-first conversions, so random cells deliver the reference's bytes, independent of thread
scheduling. JPEG files are decoded by TensorFlow's own `tf.io.decode_jpeg`, with the accurate
integer IDCT the other decoders use (`dct_method="INTEGER_ACCURATE"`). The bilinear resize is
the reference's arithmetic in TF ops, and Grappler's arithmetic optimizer is off
(`import_tensorflow`): it reassociates float adds.

TensorFlow is imported inside `open()` only, and is kept off accelerators: JAX owns them.

The tuned style follows the guide's "Vectorizing mapping" section
(https://www.tensorflow.org/guide/data_performance#vectorizing_mapping): the workload's trailing
batchable steps (`reference.tuned_split`: value-wise ops but log1p, shift_targets, and the
random flip, brightness and window) are mapped once over each batch, after `batch`, instead of
once per element before it, where nothing else is left per element (with CV-1's crop every step
stays in the per-element map, at the swept parallelism). With nothing left per element over the cached arrays (TAB-1,
NLP-1) no element is a record at all: a dataset of batch numbers, one map per batch that makes
its indices, gathers the rows (`tf.gather` from the arrays as tensors) and applies the batch
steps; batching 1,024 scalar positions per batch through `batch` measured about 100 times slower.
A random batch step draws every row's parameter at once from the rows' (epoch, index), which
each element carries into the batch (`reference.ELEMENT_KEY`, dropped by the batch map), with
the step's number in the plain walk: the same TF ops on a batched tensor, the same draws, so
the same bytes. Its parallelism is chosen by measurement (`tuning`): AUTOTUNE against fixed
`num_parallel_calls` for the maps and a fixed `prefetch` buffer (the guide's "Parallelizing data
transformation" and "Prefetching"); TensorFlow's public API does not say what AUTOTUNE settled
on, so the result records what was asked for. The guide's `deterministic=False` is left out: it
changes the order of elements, so the bytes.

Checkpoints are tf.data's own: `tf.train.Checkpoint(iterator=...)` written to files (the
iterator's position and whatever its map and prefetch buffers hold at that moment).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datarax_bench.adapters import register
from datarax_bench.adapters._tensorflow import (
    CounterDraws,
    ElementKey,
    arithmetic_optimization,
    import_tensorflow,
    visible_gpus,
)
from datarax_bench.adapters.base import (
    Adapter,
    Batch,
    CellContext,
    Loader,
    package_version,
    tensor_to_host,
)
from datarax_bench.workload import formats, randomness, reference

_LENGTH_PREFIX = "__length__"


class _Ops:
    """The catalog ops as TF functions of (tensor, step, key); `key` is the step's
    `_tensorflow.StepKey`, from which the reference's counter-based draws are computed."""

    def __init__(self, tf):
        self.tf = tf
        self.draws = CounterDraws(tf)

    def draw(self, step, key, element_shape):
        """The parameter of a `reference.RANDOM_DRAWS` op: one element's, or each row's of a
        batch (`reference.draw`), from the first word of the step's one draw."""
        y = self.draws.first_words(key, 1)[..., 0]
        op = step["op"]
        if op == "random_horizontal_flip":
            return self.draws.bernoulli(y, step["p"])
        if op == "random_brightness":
            return self.draws.symmetric(y, step["max_delta"])
        if op == "random_window":
            return self.draws.below(y, element_shape[0] - step["length"] + 1)
        raise ValueError(f"{op!r} draws no per-element parameter")

    def decode_jpeg(self, x, p, key):
        # TensorFlow's own decoder on the file's bytes as a tf.string, RGB out, with the
        # accurate integer IDCT that libjpeg (and Pillow) use by default:
        # https://www.tensorflow.org/api_docs/python/tf/io/decode_jpeg. Its default
        # (dct_method "", the fast integer IDCT here) is less work and less accurate: up to 5
        # levels off Pillow's pixels (docs/scenarios.md, "Decoded JPEG files").
        return self.tf.io.decode_jpeg(x, channels=3, dct_method="INTEGER_ACCURATE")

    def random_resized_crop(self, x, p, key):
        if x.shape[0] is None or x.shape[1] is None:
            # A decoded image's size is known only when it is decoded.
            shape = self.tf.shape(x, out_type=self.tf.int64)
            height, width = shape[0], shape[1]
        else:
            height, width = int(x.shape[0]), int(x.shape[1])
        y = self.draws.first_words(key, randomness.CROP_DRAWS)
        top, left, h, w = self.draws.crop_box(y, height, width, p["scale"], p["ratio"])
        return self.resize_bilinear(x[top : top + h, left : left + w], *p["size"])

    def resize_bilinear(self, image, out_h: int, out_w: int):
        """`reference.resize_bilinear` in TF ops, the same float32 arithmetic in the same order
        (source coordinates, then `a * (1 - w) + b * w` along rows, then along columns).

        Not `tf.image.resize`, whose kernel interpolates as `a + (b - a) * w`: an ulp off the
        reference's value here and there, which normalising a near-mean pixel magnifies into
        thousands of ulps.
        """
        tf = self.tf
        img = tf.cast(image, tf.float32)
        shape = tf.shape(img)

        def axis(n_in, n_out: int):
            scale = tf.cast(tf.cast(n_in, tf.float64) / n_out, tf.float32)
            src = (tf.range(n_out, dtype=tf.float32) + 0.5) * scale - 0.5
            src = tf.clip_by_value(src, 0.0, tf.cast(n_in - 1, tf.float32))
            low = tf.floor(src)
            lo = tf.cast(low, tf.int32)
            return lo, tf.minimum(lo + 1, n_in - 1), src - low

        y0, y1, wy = axis(shape[0], out_h)
        x0, x1, wx = axis(shape[1], out_w)
        wy = wy[:, None, None]
        wx = wx[None, :, None]
        rows = tf.gather(img, y0) * (1.0 - wy) + tf.gather(img, y1) * wy
        return tf.gather(rows, x0, axis=1) * (1.0 - wx) + tf.gather(rows, x1, axis=1) * wx

    def random_horizontal_flip(self, x, p, key):
        tf = self.tf
        flip = self.draw(p, key, x.shape)
        return tf.cond(flip, lambda: tf.reverse(x, axis=[1]), lambda: x)

    def normalize(self, x, p, key):
        tf = self.tf
        mean = tf.constant(p["mean"], tf.float32)
        std = tf.constant(p["std"], tf.float32)
        return (tf.cast(x, tf.float32) - mean) / std

    def random_crop_3d(self, x, p, key):
        d, h, w = p["size"]
        shape = self.tf.shape(x, out_type=self.tf.int64)
        offsets = self.draws.first_words(key, 3)
        z0, y0, x0 = (self.draws.below(offsets[j], shape[j] - p["size"][j] + 1) for j in range(3))
        return x[z0 : z0 + d, y0 : y0 + h, x0 : x0 + w]

    def zscore(self, x, p, key):
        tf = self.tf
        v = tf.cast(x, tf.float32)
        return (v - tf.reduce_mean(v)) / (tf.math.reduce_std(v) + p["epsilon"])

    def random_window(self, x, p, key):
        start = self.draw(p, key, self.tf.shape(x, out_type=self.tf.int64))
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
        return tf.cast(x, tf.float32) + self.draw(p, key, x.shape)

    def clip(self, x, p, key):
        tf = self.tf
        return tf.clip_by_value(tf.cast(x, tf.float32), p["low"], p["high"])

    def gaussian_noise(self, x, p, key):
        tf = self.tf
        shape = tf.shape(x, out_type=tf.int64)
        noise = self.draws.normal_values(key, tf.reduce_prod(shape), p["std"])
        return tf.cast(x, tf.float32) + tf.reshape(noise, shape)

    def cast(self, x, p, key):
        return self.tf.cast(x, p["dtype"])


#: Draws per element of the random ops that draw a fixed number (all but gaussian_noise, whose
#: count is its field's size): their words are computed ahead, all of a walk's at once.
FIXED_DRAWS = {
    "random_resized_crop": randomness.CROP_DRAWS,
    "random_crop_3d": 3,
    **{op: spec.draws for op, spec in reference.RANDOM_DRAWS.items()},
}


def _planned_draws(steps, fields) -> dict[int, int]:
    """{step number: draws} of the walk's `FIXED_DRAWS` steps, numbered by the walk itself
    (`reference.apply_step` over placeholder values)."""
    planned: dict[int, int] = {}

    def leaf(op):
        def record(x, step, key):
            if op in FIXED_DRAWS:
                planned[key.step] = FIXED_DRAWS[op]
            return x

        return record

    ops = reference.LeafOps(
        fields={op: leaf(op) for op in reference.FIELD_OPS},
        embedding_lookup=lambda step, ids: ids,
        mean=lambda outputs: outputs[0],
    )
    element = {name: np.zeros(2) for name in fields}
    keys = randomness.ElementKey(0, 0, 0)
    for step in steps:
        reference.apply_step(step, element, ops, keys)
    return planned


# The catalog's field ops `_Ops` implements (its other methods are what they share).
FIELD_OPS = frozenset(vars(_Ops)) & reference.FIELD_OPS.keys()


#: The tuned style's knobs (settings over the profile's parallelism): the maps'
#: `num_parallel_calls` and the final `prefetch` buffer, each AUTOTUNE or a fixed number.
MAP_CALLS, PREFETCH, AUTOTUNE = "tf_map_parallel_calls", "tf_prefetch", "autotune"


def _tf_knob(tf, value):
    return tf.data.AUTOTUNE if value == AUTOTUNE else int(value)


def _knob_name(value):
    return "AUTOTUNE" if value == AUTOTUNE else int(value)


def _rows(values, batch):
    """Per-row values shaped to broadcast against `batch`'s rows."""
    return values[(...,) + (None,) * (batch.shape.rank - 1)]


class _BatchOps:
    """The batch versions of the random ops (`reference.BATCH_FIELD_OPS`): (batch, step, one
    parameter per row) -> batch, in TF ops."""

    def __init__(self, tf):
        self.tf = tf

    def random_horizontal_flip(self, x, p, flips):
        return self.tf.where(_rows(flips, x), self.tf.reverse(x, axis=[2]), x)

    def random_brightness(self, x, p, deltas):
        tf = self.tf
        return tf.cast(x, tf.float32) + _rows(deltas, x)

    def random_window(self, x, p, starts):
        tf = self.tf
        columns = starts[:, None] + tf.range(p["length"], dtype=tf.int64)
        return tf.gather(x, columns, batch_dims=1)


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
            step_key=ElementKey.next_step,
            batch_fields={op: getattr(_BatchOps(tf), op) for op in reference.RANDOM_DRAWS},
        )
        w = ctx.workload
        self.num_batches = w.num_batches
        self.seed = ctx.seed
        per_element, self.batch_steps = reference.tuned_split(w.transforms, batch_ops)
        self.element_steps = [s for s in per_element if s["op"] not in reference.BATCH_OPS]
        self.pad_steps = [s for s in w.transforms if s["op"] in reference.BATCH_OPS]
        # The batch steps' numbers in the plain walk start after the per-element steps'.
        self.first_batch_step = reference.walk_length(self.element_steps)
        # Each element keeps its (epoch, index) for the batch steps that draw after it.
        self.keep_key = reference.draws_per_row(self.batch_steps)
        self.element_draws = _planned_draws(self.element_steps, w.fields)
        self.batch_draws = {
            self.first_batch_step + j: FIXED_DRAWS[s["op"]]
            for j, s in enumerate(self.batch_steps)
            if s["op"] in reference.RANDOM_DRAWS
        }
        records, self._decode, self.source_info = self._records(ctx)
        # The cached arrays as tensors, for the tuned style's batches of indices gathered at
        # once (nothing to do per element, dense fields, the memory backend): None otherwise.
        self._tables = None
        backend = w.options.get("backend")
        if self.batch_steps and not self.element_steps and not self.pad_steps:
            if backend in (None, "memory") and not ctx.dataset.ragged:
                self._tables = {k: tf.constant(np.asarray(v)) for k, v in ctx.dataset.dense.items()}
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
            "tf_arithmetic_optimization": arithmetic_optimization(),
            "rng": f"reference {randomness.SCHEME} draws (TF ops)",
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
            if ctx.workload.fields[name].generator["kind"] == "jpeg":
                # Each file's bytes as a tf.string, what tf.io.decode_jpeg reads (as it reads
                # tf.io.read_file's).
                ends = np.asarray(offsets).tolist()
                fields[name] = tf.constant(
                    [values[a:b].tobytes() for a, b in zip(ends[:-1], ends[1:], strict=True)]
                )
                continue
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
        out = dict(element)
        keys = ElementKey(tf, self.seed, epoch, index)
        self.ops.draws.plan(keys, self.element_draws)
        for step in self.element_steps:
            reference.apply_step(step, out, self.leaf_ops, keys)
        for step in self.pad_steps:
            out[_LENGTH_PREFIX + step["field"]] = tf.shape(out[step["field"]])[0]
        if self.keep_key:
            out[reference.ELEMENT_KEY] = tf.stack([epoch, index])
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
        if self._tables is not None:
            # The guide's "Vectorizing mapping" taken to the read: a dataset of batch numbers,
            # one map per batch that makes its elements' indices, gathers its rows from the
            # arrays (`tf.gather`) and applies the batch steps; no per-element record at all.
            # (`counter().batch(n)` of the elements' positions measured 100 times slower here
            # than the batch numbers' counter: it batches one scalar element at a time.)
            return iter(
                tf.data.Dataset.counter(start=start_epoch * self.num_batches)
                .map(self._gathered, num_parallel_calls=self.map_calls)
                .prefetch(self.prefetch)
            )
        positions = tf.data.Dataset.counter(start=start_epoch * self.per_epoch)
        ds = tf.data.Dataset.zip(positions, self.elements)
        if not self.element_steps and not self.pad_steps and self._decode is None:
            # Nothing to do per element: batch the records as they are, then one map over the
            # batch (the guide's "Vectorizing mapping"), the rows' keys from their positions.
            ds = ds.batch(self.batch_size, drop_remainder=True).map(
                lambda positions, pair: self._batch_transform(self._keyed(positions, *pair)),
                num_parallel_calls=self.map_calls,
            )
            return iter(ds.prefetch(self.prefetch))
        ds = ds.map(
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

    def _gathered(self, number):
        """Global batch `number`, its rows gathered from the arrays, transformed."""
        tf = self.tf
        positions = number * self.batch_size + tf.range(self.batch_size, dtype=tf.int64)
        indices = positions % self.per_epoch
        batch = {name: self.tf.gather(table, indices) for name, table in self._tables.items()}
        return self._batch_transform(self._keyed(positions, indices, batch))

    def _keyed(self, positions, indices, batch):
        """A batch of records as they are, with the rows' (epoch, index) where batch steps draw."""
        if not self.keep_key:
            return batch
        epochs = positions // self.per_epoch
        return {**batch, reference.ELEMENT_KEY: self.tf.stack([epochs, indices], axis=1)}

    def _batch_transform(self, batch):
        """The tuned style's batch steps; a random one draws every row's parameter at once from
        the rows' keys (`reference.apply_batch_step`), which the batch then drops."""
        tf = self.tf
        out = dict(batch)
        rows = out.pop(reference.ELEMENT_KEY, None)
        keys = None
        if rows is not None:
            keys = ElementKey(tf, self.seed, rows[:, 0], rows[:, 1], self.first_batch_step)
            self.ops.draws.plan(keys, self.batch_draws)
        for step in self.batch_steps:
            key = keys.next_step() if keys is not None else None
            op = step["op"]
            if op in reference.RANDOM_DRAWS:
                values = out[step["field"]]
                params = self.ops.draw(step, key, tf.shape(values, out_type=tf.int64)[1:])
                out[step["field"]] = self.leaf_ops.batch_fields[op](values, step, params)
            else:
                reference.apply_batch_step(step, out, self.leaf_ops, None)
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
    batch_ops = reference.BATCHABLE_OPS - {"log1p"}
    measures = Adapter.measures | {"checkpoint"}
    backends = frozenset({"memory", "tfrecord", "tfds"})
    backend_reasons = {
        "npy_mmap": "tf.data has no .npy reader: the tf.data adapter builds from_tensor_slices, "
        "which copies the arrays into memory at setup (the memory variant)",
        "array_record": "tf.data has no ArrayRecord reader (TFDS's as_dataset refuses ArrayRecord "
        "files: it reads TFRecord, the tfds variant)",
        "parquet": "tf.data has no Parquet reader (TensorFlow I/O's IODataset.from_parquet is "
        "another package, not installed here)",
    }

    def jpeg_decoder(self) -> str:
        return (
            f"tf.io.decode_jpeg, dct_method INTEGER_ACCURATE "
            f"(TensorFlow {package_version('tensorflow')})"
        )

    def open(self, ctx: CellContext) -> Loader:
        return TfDataLoader(ctx, self.batched_ops())

    def tuning_grid(self, ctx: CellContext, cores: int) -> list[dict[str, Any]]:
        # AUTOTUNE against fixed values, for the maps and for the prefetch buffer.
        calls = [AUTOTUNE, *sorted({1, cores})]
        return [{MAP_CALLS: c, PREFETCH: p} for c in calls for p in (AUTOTUNE, 2)]

    to_host = staticmethod(tensor_to_host)
