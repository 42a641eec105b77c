"""Ray Data: a `ray.data.range` of element indices, a per-element `map`, `iter_batches`.

The cell starts its own local Ray (`ray.init(address="local")`: never a cluster found on the
machine) and stops it (`ray.shutdown`) when its process ends. The plain pipeline is the one Ray
Data's guides build for training input: a dataset, a per-row transform with `Dataset.map`
("Transforming rows", https://docs.ray.io/en/latest/data/transforming-data.html), then
`Dataset.iter_batches(batch_size=B, batch_format="numpy", drop_last=True, prefetch_batches=...)`
("Iterating over batches", https://docs.ray.io/en/latest/data/iterating-over-data.html). The
dataset is `ray.data.range(N)`, whose `id` column is the element index (N the whole batches of
an epoch), read in one block per batch (`override_num_blocks`, "Tuning output blocks for read",
https://docs.ray.io/en/latest/data/performance-tips.html), so that the map's tasks work through
the epoch batch by batch; the map function reads element `id` from the cached arrays (memory-mapped,
or in RAM for IO-1's `memory` backend and IO-2's eager loading; shipped once per loader through
Ray's object store, `ray.put`) and transforms it with the reference semantics and the reference's
counter-based draws (`reference.element_key(seed, epoch, id)`), so batches equal the reference's
bit for bit. One dataset, and one execution, per epoch: the epoch is part of the map function.

Order: Ray Data does not keep the order of blocks unless asked ("preserve_order: Set this to
preserve the ordering between blocks processed by operators. Off by default.",
https://docs.ray.io/en/latest/data/api/doc/ray.data.ExecutionOptions.html); the adapter sets
`DataContext.get_current().execution_options.preserve_order = True`
("Execution Configurations", https://docs.ray.io/en/latest/data/execution-configurations.html),
which keeps the reference's batches at any concurrency. Fields: Ray keeps arrays in Arrow
blocks (its tensor extension types) and gives them back as NumPy arrays of their dtype and
shape; NLP-2's tokens, ragged after the per-element steps, come back as one array per row, and
the reference's dynamic padding (`pad_batch`) is then applied to each batch as it arrives from
`iter_batches`, with the reference's own function. Failures: a map function that raises fails
its task, and Ray Data fails the execution on the first errored block (its default,
`DataContext.max_errored_blocks = 0`), so the error reaches the consumer and no element is
skipped.

Parallelism: Ray Data runs a function's map as Ray tasks; the profile's `workers` caps how many
run at once (`compute=ray.data.TaskPoolStrategy(size=workers)`, at least one: Ray Data has no
in-process mode) and `prefetch` is `iter_batches`' `prefetch_batches`. Ray is started with
`num_cpus` the usable cores (`os.sched_getaffinity`), no GPU (the harness delivers batches to
the device), no dashboard, no usage statistics (`RAY_USAGE_STATS_ENABLED=0`), a modest object
store (at most 1 GiB, half the free /dev/shm) in a temporary directory removed at shutdown, and
workers' logs kept off the driver. `ray.init` takes seconds and starts Ray's processes (GCS,
raylet, workers): it is done once per process, in `prepare` (before anything is timed) or at the
first loader's open, and every later loader of the process reuses it; `close` ends the loader's
execution (closing its iterator shuts Ray Data's streaming executor down, ray-project/ray#62949;
Ray 2.60 leaves an abandoned iteration's block-prefetcher thread parked, so `close` stops that
too), and Ray itself stops at process exit (an `atexit` hook, before Ray's own), which in a
benchmark is the end of the cell. A killed cell leaves none either (tested): GCS and raylet end
with the process that started them, Ray's workers (sessions of their own, out of reach of the
runner's process-group kill) once they find their raylet gone, within 30 s here.

The tuned style follows the "Performance Tips" page (https://docs.ray.io/en/latest/data/
performance-tips.html: "If your transformation is vectorized ... use map_batches() rather than
map()"): one `map_batches(batch_size=B)` over the same one-block-per-batch range, whose function
gets a batch's indices. Where nothing is left per element over dense cached arrays (TAB-1,
NLP-1: `reference.tuned_split`), it reads the batch as one slice of each array (NLP-1: only its
windows, `_sliced.sliced_batch`, as the other tuned styles do) and applies the batchable steps
once to the stacked batch, drawing for every row from the rows' keys, so the same bytes; where a
step stays per element (CV-1's crop) every step does, and the function transforms the batch's
elements one by one and stacks them as the reference does (NLP-2's padding included: each call
is exactly one batch, which the function checks). The task count and `prefetch_batches` are
chosen by measurement (`tuning_grid`).

JPEG files (CV-3) are decoded with Pillow, the decoder Ray Data's own image reader uses
("read_images() uses PIL", https://docs.ray.io/en/latest/data/working-with-images.html), inside
the map function: the reference's `decode_jpeg`.

IO-1's TFRecord file is read with Ray Data's own reader, `ray.data.read_tfrecords`
(https://docs.ray.io/en/latest/data/api/doc/ray.data.read_tfrecords.html: one row per
tf.train.Example, each bytes feature a binary column), the map decoding each field's raw bytes
(`np.frombuffer`) before the transforms. Its rows carry no element index, so a workload that
draws cannot be read from it (`ops_support` says so; IO-1 draws nothing). read_tfrecords parses
with TensorFlow inside Ray's workers, which are started without an accelerator
(`CUDA_VISIBLE_DEVICES=""` in Ray's runtime environment): the harness delivers to the device
from the driver.

IO-1's Parquet files are read with `ray.data.read_parquet`
(https://docs.ray.io/en/latest/data/api/doc/ray.data.read_parquet.html), Ray Data's primary
on-disk format: one row per element, each field a binary column of its raw C-order bytes (the
tensor encoding that page documents for `tensor_column_schema`), decoded with `np.frombuffer` in
the map as for TFRecord. The rows carry their element index (the `index` column), by which the
map keys each element's draws as the reference does, so a workload that draws can be read from
them too. Ray Data 2.60 packs a Parquet dataset's row groups into read blocks of up to
`DataContext.target_max_block_size` (128 MiB), whatever `override_num_blocks` or the number of
files: IO-1's file (48 MiB) is read as one block, so its map runs as one task at a time.

Not supported: IO-1's array_record backend (Ray Data has no ArrayRecord reader) and tfds (Ray
Data reads TFDS only through `ray.data.from_tf` of a tf.data pipeline, which "isn't
parallelized" and "loads the entire dataset into the local node's memory": tf.data's pipeline
copied, not a Ray Data reader), and PR-1 (Ray Data's iterators have no state API to save and
restore a position mid-epoch).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from datarax_bench.adapters import register
from datarax_bench.adapters._sliced import sliced_batch
from datarax_bench.adapters.base import Adapter, Batch, CellContext, Loader
from datarax_bench.workload import formats, randomness, reference

# ray is imported inside functions only: `list` imports every adapter.

#: The object store's size: at most this, and at most half the free space of /dev/shm (CI
#: machines may have a small one), at least Ray's minimum (75 MiB).
_OBJECT_STORE_MAX_BYTES = 1 << 30
_OBJECT_STORE_MIN_BYTES = 80 << 20

# How long `close` waits for a stopped prefetcher thread to end.
_SHUTDOWN_TIMEOUT_S = 10.0

_SESSION_LOCK = threading.Lock()
#: This process's Ray, where this module started it: pid, temporary directory, start time.
_SESSION: dict[str, Any] = {}
#: Whether `stop_ray` is registered to run at exit (once per process).
_HOOKED: list[bool] = []


def _object_store_bytes() -> int:
    try:
        stat = os.statvfs("/dev/shm")
        free = stat.f_bavail * stat.f_frsize
    except OSError:
        free = 0
    return max(_OBJECT_STORE_MIN_BYTES, min(_OBJECT_STORE_MAX_BYTES, free // 2))


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def ray_session() -> dict[str, Any]:
    """This process's local Ray, started here on first use and reused after: what it cost."""
    import ray

    with _SESSION_LOCK:
        if _SESSION.get("pid") == os.getpid() and ray.is_initialized():
            return dict(_SESSION)
        if ray.is_initialized():
            raise RuntimeError(
                "Ray is already initialized in this process by something other than the Ray "
                "Data adapter; the cell must start its own local Ray"
            )
        # No usage statistics (the machine may be offline): read by ray.init.
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        temp_dir = tempfile.mkdtemp(prefix="ray-")
        started = time.perf_counter()
        try:
            ray.init(
                address="local",
                num_cpus=usable_cores(),
                num_gpus=0,
                include_dashboard=False,
                object_store_memory=_object_store_bytes(),
                log_to_driver=False,
                logging_level=logging.WARNING,
                # Ray's workers never use an accelerator (the harness delivers to the device
                # from this process); TensorFlow, which read_tfrecords imports there, must not
                # take one either.
                runtime_env={"env_vars": {"CUDA_VISIBLE_DEVICES": ""}},
                _temp_dir=temp_dir,
            )
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        _configure_data()
        _SESSION.clear()
        _SESSION.update(
            pid=os.getpid(),
            temp_dir=temp_dir,
            init_s=time.perf_counter() - started,
            num_cpus=usable_cores(),
        )
        if not _HOOKED:
            # Registered after ray.init's own hook, so it runs first; a forked child does nothing.
            atexit.register(stop_ray)
            _HOOKED.append(True)
        return dict(_SESSION)


def _configure_data() -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    # The reference's batches: blocks in order, whatever finishes first.
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    # The first failing block fails the execution (Ray's default, stated here).
    context.max_errored_blocks = 0
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def stop_ray() -> None:
    """Stop the Ray this module started in this process (its processes, its directory)."""
    ray = sys.modules.get("ray")
    with _SESSION_LOCK:
        if _SESSION.get("pid") != os.getpid():
            return
        try:
            if ray is not None and ray.is_initialized():
                ray.shutdown()
        finally:
            shutil.rmtree(_SESSION["temp_dir"], ignore_errors=True)
            _SESSION.clear()


def ray_running_here() -> bool:
    """Whether this module's Ray is running in this process."""
    ray = sys.modules.get("ray")
    return bool(_SESSION) and ray is not None and ray.is_initialized()


def _dataset_of(dataset):
    import ray

    return ray.get(dataset) if isinstance(dataset, ray.ObjectRef) else dataset


class LoadRow:
    """The plain map: a row {"id": element index} -> the element read and transformed."""

    def __init__(self, transforms: list[dict], seed: int, epoch: int):
        self.transforms = transforms
        self.seed = seed
        self.epoch = epoch

    def __call__(self, row: dict[str, Any], dataset) -> dict[str, Any]:
        index = int(row["id"])
        key = reference.element_key(self.seed, self.epoch, index)
        return reference.apply_element(self.transforms, _dataset_of(dataset).element(index), key)


def _record_element(fields: dict[str, tuple], record: dict[str, Any]) -> dict[str, np.ndarray]:
    """A TFRecord or Parquet row (each field's raw C-order bytes, `formats`' encoding) as the
    element (a Parquet row's index column left out)."""
    out = {}
    for name, (shape, dtype) in fields.items():
        values = np.frombuffer(record[name], dtype=dtype)
        out[name] = values if None in shape else values.reshape(shape)
    return out


class LoadRecord:
    """The plain map over IO-1's TFRecord or Parquet file: a row of raw bytes -> the element,
    transformed. A Parquet row carries its element index (`index`), which keys its draws as the
    reference's; a TFRecord row does not: only workloads that draw nothing read it
    (`ops_support`), so its key is never drawn from."""

    def __init__(self, fields: dict[str, tuple], transforms: list[dict], seed: int, epoch: int):
        self.fields = fields
        self.transforms = transforms
        self.seed = seed
        self.epoch = epoch
        self.key = reference.element_key(seed, epoch, 0)

    def key_of(self, row: dict[str, Any]):
        index = row.get(formats.PARQUET_INDEX)
        if index is None:
            return self.key
        return reference.element_key(self.seed, self.epoch, int(index))

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        element = _record_element(self.fields, row)
        return reference.apply_element(self.transforms, element, self.key_of(row))


class LoadRecords(LoadRecord):
    """The tuned map_batches over IO-1's TFRecord or Parquet file: a batch of rows -> the batch,
    the batchable steps applied once to the stacked batch (with every row's key, where they
    draw)."""

    def __init__(self, fields, transforms, per_element, per_batch, seed: int, epoch: int):
        super().__init__(fields, per_element, seed, epoch)
        self.collate = reference.CollateWithBatchSteps(transforms, per_batch)
        self.keep_key = reference.draws_per_row(per_batch)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(self.fields)
        if formats.PARQUET_INDEX in batch:
            names.append(formats.PARQUET_INDEX)
        elements = []
        for values in zip(*(batch[name] for name in names), strict=True):
            row = dict(zip(names, values, strict=True))
            key = self.key_of(row)
            element = reference.apply_element(
                self.transforms, _record_element(self.fields, row), key
            )
            if self.keep_key:
                element[reference.ELEMENT_KEY] = key
            elements.append(element)
        return self.collate(elements)


class LoadBatch:
    """The tuned map_batches: a batch {"id": its element indices} -> the batch.

    Nothing per element over dense arrays: the batch read as slices (or windows) of the cached
    arrays, then the batch steps, every row's draws from its key. Otherwise each element read
    and transformed, the elements stacked as the reference stacks them (padding included), then
    the batch steps, if any, with the keys the elements kept.
    """

    def __init__(
        self,
        transforms: list[dict],
        per_element: list[dict],
        per_batch: list[dict],
        seed: int,
        epoch: int,
        batch_size: int,
        sliced: bool,
    ):
        self.transforms = transforms
        self.per_element = per_element
        self.per_batch = per_batch
        self.seed = seed
        self.epoch = epoch
        self.batch_size = batch_size
        self.sliced = sliced
        self.keep_key = reference.draws_per_row(per_batch)
        self.pads = any(s["op"] in reference.BATCH_OPS for s in transforms)

    def __call__(self, batch: dict[str, np.ndarray], dataset) -> dict[str, np.ndarray]:
        dataset = _dataset_of(dataset)
        indices = np.asarray(batch["id"], dtype=np.int64)
        if self.sliced:
            rows, keys, done = sliced_batch(dataset, indices, self.seed, self.epoch, self.per_batch)
            return reference.apply_batch_steps(
                self.per_batch[done:], rows, reference.REFERENCE_OPS, keys
            )
        if self.pads:
            # Padding depends on which elements share a batch: one call must be one batch.
            first = int(indices[0])
            whole = len(indices) == self.batch_size and first % self.batch_size == 0
            if not whole or not np.array_equal(indices, np.arange(first, first + len(indices))):
                raise RuntimeError(
                    f"map_batches was given elements {indices.tolist()}, not one whole batch"
                )
        elements = []
        for index in indices.tolist():
            key = reference.element_key(self.seed, self.epoch, index)
            element = reference.apply_element(self.per_element, dataset.element(index), key)
            if self.keep_key:
                element[reference.ELEMENT_KEY] = key
            elements.append(element)
        return reference.CollateWithBatchSteps(self.transforms, self.per_batch)(elements)


#: IO-1's file backends Ray Data reads with a reader of its own (`ray.data.<reader>`).
_READERS = {"tfrecord": "read_tfrecords", "parquet": "read_parquet"}


class RayLoader(Loader):
    def __init__(self, ctx: CellContext, tuned: bool, batch_ops: frozenset[str] = frozenset()):
        session = ray_session()
        import ray

        w = ctx.workload
        self.transforms = [dict(s) for s in w.transforms]
        self.seed = ctx.seed
        self.batch_size = w.batch_size
        self.num_batches = w.num_batches
        self.tuned = tuned
        # Ray Data runs map functions as Ray tasks, never in the driver: at least one.
        self.tasks = max(1, int(ctx.parallelism.get("workers", 1)))
        self.prefetch = max(0, int(ctx.parallelism.get("prefetch", 2)))
        per_element, per_batch = reference.tuned_split(w.transforms, batch_ops)
        self.per_element, self.per_batch = per_element, per_batch
        self.sliced = bool(tuned and per_batch and not per_element and not ctx.dataset.ragged)
        # NLP-2's dynamic padding, applied to each batch the plain pipeline delivers.
        self.pads = {s["field"]: s for s in w.transforms if s["op"] in reference.BATCH_OPS}
        # The cached arrays (memory maps travel as file names, arrays in RAM as they are),
        # in the object store once for every task of every epoch.
        self.dataset_ref = ray.put(ctx.dataset)
        self.source_info = formats.npy_source_info(ctx.dataset)
        # IO-1's TFRecord and Parquet files: read with Ray Data's own readers instead of the
        # cached arrays.
        self.records: list[str] | None = None
        self.reader = _READERS.get(w.options.get("backend"))
        if self.reader is not None:
            self.records = getattr(ctx.source, f"{w.options['backend']}_paths")()
            self.fields = {n: (tuple(f.shape), np.dtype(f.dtype)) for n, f in w.fields.items()}
            self.source_info = {"reader": f"ray.data.{self.reader}", "paths": self.records}
            self.sliced = False
        self.parallelism = {
            "map": f"map_batches(batch_size={self.batch_size})" if tuned else "map (per row)",
            "read": "batch slices" if self.sliced else "elements",
            "compute": f"TaskPoolStrategy(size={self.tasks})",
            "workers": self.tasks,
            "prefetch_batches": self.prefetch,
            "blocks_per_epoch": self.num_batches,
            "preserve_order": True,
            "ray_num_cpus": session["num_cpus"],
            "ray_version": ray.__version__,
            "rng": f"reference {randomness.SCHEME} draws (numpy)",
        }
        self._iterator = None
        self._prefetchers: list[threading.Thread] = []

    def _dataset(self, epoch: int):
        import ray.data

        _configure_data()
        rows = ray.data.range(
            self.num_batches * self.batch_size, override_num_blocks=self.num_batches
        )
        compute = ray.data.TaskPoolStrategy(size=self.tasks)
        if self.records is not None:
            records = getattr(ray.data, self.reader)(self.records)
            if not self.tuned:
                load = LoadRecord(self.fields, self.transforms, self.seed, epoch)
                return records.map(load, compute=compute)
            load = LoadRecords(
                self.fields, self.transforms, self.per_element, self.per_batch, self.seed, epoch
            )
            return records.map_batches(
                load, batch_size=self.batch_size, batch_format="numpy", compute=compute
            )
        kwargs = {"dataset": self.dataset_ref}
        if not self.tuned:
            load = LoadRow(self.transforms, self.seed, epoch)
            return rows.map(load, fn_kwargs=kwargs, compute=compute)
        load = LoadBatch(
            self.transforms,
            self.per_element,
            self.per_batch,
            self.seed,
            epoch,
            self.batch_size,
            self.sliced,
        )
        return rows.map_batches(
            load,
            batch_size=self.batch_size,
            batch_format="numpy",
            fn_kwargs=kwargs,
            compute=compute,
        )

    def _finish(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.tuned or not self.pads:
            return batch
        out = {k: v for k, v in batch.items() if k not in self.pads}
        for name, step in self.pads.items():
            out[name], out[step["mask"]] = reference.pad_batch(
                [np.asarray(seq) for seq in batch[name]], step["multiple"], step["pad_value"]
            )
        return out

    def epoch(self, epoch: int) -> Iterator[Batch]:
        self._end_iteration()
        batches = self._dataset(epoch).iter_batches(
            batch_size=self.batch_size,
            batch_format="numpy",
            drop_last=True,
            prefetch_batches=self.prefetch,
        )
        self._iterator = iterator = iter(batches)
        before = set(threading.enumerate())
        count = 0
        for batch in iterator:
            if not count:
                # The iteration's block prefetcher thread, started for its first batch.
                self._prefetchers = [
                    t for t in set(threading.enumerate()) - before if t.name == "Prefetcher"
                ]
            yield self._finish(batch)
            count += 1
        if count != self.num_batches:
            raise RuntimeError(f"Ray Data delivered {count} batches, not {self.num_batches}")

    def _end_iteration(self) -> None:
        iterator, self._iterator = self._iterator, None
        close = getattr(iterator, "close", None)
        if close is not None:
            # Closing the generator shuts Ray Data's streaming executor down (its tasks, its
            # threads) at once.
            close()
        # Ray Data 2.60 stops an iteration's block prefetcher (a parked daemon thread) only when
        # the iteration ends, not when it is abandoned: the thread holds the prefetcher, so it
        # is never collected either. Stop the one this iteration started.
        prefetchers, self._prefetchers = self._prefetchers, []
        for thread in prefetchers:
            owner = getattr(getattr(thread, "_target", None), "__self__", None)
            stop = getattr(owner, "stop", None)
            if callable(stop):
                stop()
                thread.join(_SHUTDOWN_TIMEOUT_S)

    def close(self) -> None:
        # The epoch's execution (Ray Data's streaming executor and its tasks) ends with its
        # iterator; Ray itself stays up for the process's next loader and stops at its exit.
        self._end_iteration()
        # The arrays shipped to the object store (all of them, for data held in RAM) go too.
        self.dataset_ref = None


@register
class RayData(Adapter):
    id = "raydata"
    display_name = "Ray Data"
    aliases = ("ray", "ray-data", "ray.data")
    distributions = ("ray", "pyarrow", "pillow")
    ops = reference.ALL_OPS
    styles = frozenset({"plain", "tuned"})
    batch_ops = reference.BATCHABLE_OPS
    # The map tasks read each element from the cached arrays as they go: memory-mapped files
    # stream from disk, arrays loaded into RAM are the eager source.
    measures = frozenset({"throughput", "streaming"})
    measure_reasons = {
        "checkpoint": "Ray Data's iterators (Dataset.iter_batches, DataIterator) have no state "
        "API to save and restore a position mid-epoch, so PR-1 cannot use a native one",
    }
    backends = frozenset({"memory", "npy_mmap", "tfrecord", "parquet"})
    backend_reasons = {
        "array_record": "Ray Data has no ArrayRecord reader",
        "tfds": "Ray Data reads TFDS only through ray.data.from_tf of a tf.data pipeline, which "
        '"isn\'t parallelized" and "loads the entire dataset into the local node\'s memory" '
        "(its API page): tf.data's pipeline copied, not a Ray Data reader",
        # Ray Data has read_webdataset, but these two are other loaders' own formats.
        "webdataset": "the webdataset backend is the WebDataset adapter's own format (its tar "
        "shards), which IO-1 reads with that loader only, not with Ray Data",
        "litdata": "the litdata backend is the LitData adapter's own format (its chunks), which "
        "IO-1 reads with that loader only, not with Ray Data",
    }

    def ops_support(self, workload) -> str | None:
        if workload.options.get("backend") == "tfrecord" and reference.RANDOM_OPS & set(
            workload.ops()
        ):
            return (
                "Ray Data's read_tfrecords yields records without their index in the file, by "
                "which the reference keys each element's random draws"
            )
        return super().ops_support(workload)

    def prepare(self, workload, dataset) -> None:
        # Ray's start (seconds, several processes) before anything is timed; its loaders reuse it.
        # The worker logs what `prepare` cost: not the parallelism, which must be the same in
        # every process of a cell for their windows to be pooled.
        ray_session()

    def open(self, ctx: CellContext) -> Loader:
        return RayLoader(ctx, self.style == "tuned", self.batched_ops())

    def jpeg_decoder(self) -> str:
        return f"PIL.Image.open, as ray.data.read_images decodes ({reference.jpeg_library()})"

    def tuning_grid(self, ctx: CellContext, cores: int) -> list[dict[str, Any]]:
        # One task or one per core, a short or a long prefetch.
        cores = max(1, cores)
        return [{"workers": t, "prefetch": p} for t in sorted({1, cores}) for p in (2, 8)]
