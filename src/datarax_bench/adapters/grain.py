"""Google Grain: a `MapDataset` pipeline, read by threads and (optionally) worker processes.

The pipeline is Grain's documented shape for index-addressable data: a `MapDataset.source`
repeated over epochs, a per-element map, batching with drop-remainder inside the `MapDataset`
(so every worker process produces whole batches in the reference's order), then
`to_iter_dataset` with `ReadOptions(num_threads=threads)` and `mp_prefetch` with `workers`
processes from the profile.

Each element is transformed with the reference semantics and the reference's counter-based draws
(`reference.element_key(seed, epoch, index)`, looked up per element): numpy functions mapped per
element are Grain's documented way to transform data, so batches equal the reference's bit for
bit. Grain has no image decoder of its own (its package and documentation,
https://google-grain.readthedocs.io/, leave decoding to the user's map), so JPEG files are
decoded in the element map by Pillow, the reference's `decode_jpeg`.

One iterator spans all epochs (global element `k` is index `k % M` of epoch `k // M`, with `M`
the elements of the whole batches of an epoch), so worker processes start once per loader.

The tuned style (Grain's guide: https://google-grain.readthedocs.io/, "Dataset basics" and
"Performance") applies the workload's trailing batchable steps (`reference.tuned_split`:
value-wise ops, shift_targets, and the random flip, brightness and window) to whole batches, in
the `batch_fn` of `MapDataset.batch`, Grain's hook for batch-level work: the same NumPy functions
on stacked arrays, so the same bytes. A random batch step draws for every row at once from the
rows' keys, which the per-element map keeps with the element (`reference.ELEMENT_KEY`) and the
`batch_fn` takes out before stacking, so every row gets the plain pipeline's draws and nothing but
arrays leaves a worker. Its worker processes, reader threads and prefetch buffer are
chosen by measurement (`tuning`), as Grain's performance guide advises tuning them to the machine.
Where steps stay per element (CV-1's crop), the trailing ones stay per element too, in the
element map: a second pass over the stacked batch in the `batch_fn` measured slower (CV-1
tuned/plain 0.77-0.89 before, docs/measurements.md). Grain's `random_map` is not used: its
draws come from a Philox generator Grain seeds per element itself, which no other framework
computes; the counter-based reference draws in a `map_with_index` give every framework's bytes.

With nothing left to do per element over dense cached arrays (TAB-1, NLP-1), the tuned pipeline's
records are the batches themselves: a `MapDataset` over batch numbers reads each batch as one
slice of each array (NLP-1: only the windows, `_sliced.sliced_batch`), the bytes of stacking its
elements, as the NumPy and PyTorch tuned styles read them, instead of one record per element.
Grain's public API has no batched read of a source (`MapDataset.batch` fetches its elements one
record each, through the private `_getitems`), so the batch numbers are the records.

The source is the cached arrays themselves or, for IO-1's file backends, Grain's
`ArrayRecordDataSource` or TFDS's `data_source`. Grain's Parquet reader
(`grain.experimental.ParquetIterDataset`) is a sequential `IterDataset`, not a random-access
source the pipeline above can slice, repeat and index: IO-1's parquet backend is not read.

Checkpoints use Grain's own: the iterator's `get_state()`/`set_state()` as written and read by
`grain.checkpoint.CheckpointHandler` (JSON, worker states included under `mp_prefetch`).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datarax_bench.adapters import register
from datarax_bench.adapters._sliced import sliced_batch
from datarax_bench.adapters.base import Adapter, Batch, CellContext, Loader
from datarax_bench.workload import formats, randomness, reference

# How long `close()` waits for Grain's reader threads and worker processes to end.
_SHUTDOWN_TIMEOUT_S = 10.0


class ElementTransform:
    """Grain `map_with_index` function: (global element number, element) -> transformed element.

    Picklable for worker processes (the source it follows pickles itself: the cached arrays
    travel as their file names, ArrayRecord and TFDS sources as their paths).
    `keep_key`: the element keeps its key (`reference.ELEMENT_KEY`) for the batch steps that
    draw after it.
    """

    def __init__(self, transforms: list[dict], seed: int, per_epoch: int, keep_key: bool = False):
        self.transforms = transforms
        self.seed = seed
        self.per_epoch = per_epoch
        self.keep_key = keep_key

    def __call__(self, position: int, element: reference.Element) -> reference.Element:
        epoch, index = divmod(position, self.per_epoch)
        key = reference.element_key(self.seed, epoch, index)
        out = reference.apply_element(self.transforms, element, key)
        if self.keep_key:
            out[reference.ELEMENT_KEY] = key
        return out


class BatchFunction:
    """Grain `batch_fn`: the elements stacked as the reference does (`reference.collate`), then
    the tuned style's batch steps, drawing with the keys the elements kept."""

    def __init__(self, transforms: list[dict], steps: list[dict]):
        self.transforms = transforms
        self.steps = steps

    def __call__(self, elements: list[reference.Element]) -> reference.Element:
        elements, keys = reference.take_element_keys(list(elements))
        batch = reference.collate(self.transforms, elements)
        return reference.apply_batch_steps(self.steps, batch, reference.REFERENCE_OPS, keys)


class SlicedBatches:
    """Grain `map_with_index` over batch numbers (the tuned style with nothing to do per element
    over dense cached arrays): batch `k` read as one slice of each array, the bytes of stacking
    its elements, then the batch steps, drawing with the rows' keys. Picklable for workers."""

    def __init__(self, dataset, batch_size: int, num_batches: int, seed: int, steps: list[dict]):
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.steps = steps

    def __call__(self, position: int, _batch_number: int) -> reference.Element:
        epoch, b = divmod(position, self.num_batches)
        indices = np.arange(b * self.batch_size, (b + 1) * self.batch_size)
        batch, keys, done = sliced_batch(self.dataset, indices, self.seed, epoch, self.steps)
        return reference.apply_batch_steps(self.steps[done:], batch, reference.REFERENCE_OPS, keys)


def _records(ctx: CellContext):
    """The elements as a Grain `MapDataset` read from the cell's source, and what was read.

    The cached arrays (in memory or memory-mapped) are a random-access source as they are; IO-1's
    file backends use Grain's own `ArrayRecordDataSource` (records decoded by a map, as Grain's
    ArrayRecord tutorial does) and TFDS's `data_source`, the random-access reader TFDS documents
    for Grain.
    """
    import grain

    backend = ctx.workload.options.get("backend")
    if backend == "array_record":
        paths = ctx.source.array_record_paths()
        source = grain.sources.ArrayRecordDataSource(paths)
        records = grain.MapDataset.source(source).map(formats.unpickle_record)
        return records, {"reader": "grain.sources.ArrayRecordDataSource", "paths": paths}
    if backend == "tfds":
        source, info = formats.tfds_data_source(ctx.source)
        records = grain.MapDataset.source(source).map(formats.TfdsElement(ctx.workload.fields))
        return records, info
    return grain.MapDataset.source(ctx.dataset), formats.npy_source_info(ctx.dataset)


def _reads_the_cache(ctx: CellContext) -> bool:
    """Whether the loader reads the cached arrays (not an IO-1 file backend) and every field is
    dense, so that a batch is one slice of each array."""
    backend = ctx.workload.options.get("backend")
    return backend in (None, "memory", "npy_mmap") and not ctx.dataset.ragged


def _ensure_absl_flags_parsed() -> None:
    # mp_prefetch reads absl flags; outside an absl app nobody parses them, and reading an
    # unparsed flag raises UnparsedFlagAccessError. Defaults are what we want.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class GrainLoader(Loader):
    def __init__(self, ctx: CellContext, batch_ops: frozenset[str] = frozenset()):
        import grain

        self._grain = grain
        w = ctx.workload
        self.batch_size = w.batch_size
        self.num_batches = w.num_batches
        per_epoch = self.num_batches * self.batch_size
        threads = int(ctx.parallelism.get("threads", 0))
        workers = int(ctx.parallelism.get("workers", 0))
        prefetch = int(ctx.parallelism.get("prefetch", 0))
        self._read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
        self._mp_options = grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=max(1, prefetch)
        )
        records, self.source_info = _records(ctx)
        per_element, per_batch = reference.tuned_split(w.transforms, batch_ops)
        keep_key = reference.draws_per_row(per_batch)
        if batch_ops and not per_element and _reads_the_cache(ctx):
            # Grain reads a record per element; with nothing to do per element, a source whose
            # records are the batches reads each as one slice (Grain's MapDataset over batch
            # numbers; its threads, workers and prefetch as in every other pipeline).
            self._batches = (
                grain.MapDataset.range(self.num_batches)
                .repeat(None)
                .map_with_index(
                    SlicedBatches(
                        ctx.dataset, self.batch_size, self.num_batches, ctx.seed, per_batch
                    )
                )
            )
        else:
            self._batches = (
                records[:per_epoch]
                .repeat(None)
                .map_with_index(ElementTransform(per_element, ctx.seed, per_epoch, keep_key))
                .batch(
                    self.batch_size,
                    drop_remainder=True,
                    batch_fn=BatchFunction(w.transforms, per_batch),
                )
            )
        self.parallelism = {
            "threads": threads,
            "workers": workers,
            "prefetch": prefetch,
            "mode": "mp_prefetch" if workers > 0 else "threads",
            "per_worker_buffer_size": max(1, prefetch) if workers > 0 else 0,
            "rng": f"reference {randomness.SCHEME} draws (numpy)",
        }
        if workers > 0:
            _ensure_absl_flags_parsed()
        self._threads_before = set(threading.enumerate())
        self._iterator = None
        self._position = 0  # global batch number the iterator yields next
        self._iterator_start = 0  # global batch number the iterator began at
        self._resumed = False  # set by restore_state: the next epoch() continues mid-epoch
        self._start(0)

    def _start(self, batch_position: int) -> None:
        self._stop()
        ds = self._batches[batch_position:].to_iter_dataset(self._read_options)
        if self._mp_options.num_workers > 0:
            ds = ds.mp_prefetch(self._mp_options)
        self._iterator = iter(ds)
        self._position = self._iterator_start = batch_position

    def epoch(self, epoch: int) -> Iterator[Batch]:
        start = epoch * self.num_batches
        resumed, self._resumed = self._resumed, False
        if resumed and start <= self._position < start + self.num_batches:
            start = self._position
        elif self._iterator is None or self._position != start:
            self._start(start)
        for _ in range(epoch * self.num_batches + self.num_batches - start):
            batch = next(self._iterator)
            self._position += 1
            yield batch

    def save_state(self, directory: Path) -> None:
        from etils import epath
        from grain.checkpoint import CheckpointHandler

        CheckpointHandler().save(epath.Path(directory), item=self._iterator)
        # Where the iterator began (it is built over the batches from there on).
        (directory / "loader.json").write_text(
            json.dumps({"iterator_start": self._iterator_start, "position": self._position})
        )

    def restore_state(self, directory: Path) -> None:
        from etils import epath
        from grain.checkpoint import CheckpointHandler

        loader = json.loads((directory / "loader.json").read_text())
        if self._iterator is None or self._iterator_start != loader["iterator_start"]:
            self._start(int(loader["iterator_start"]))
        CheckpointHandler().restore(epath.Path(directory), item=self._iterator)
        self._position = int(loader["position"])
        self._resumed = True

    def _stop(self) -> None:
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    def close(self) -> None:
        with _prompt_worker_shutdown():
            self._stop()
        if self._mp_options.num_workers > 0:
            _stop_shared_memory_release_pool()
        # Grain shuts its thread pools down without waiting and stops worker processes
        # asynchronously; wait, so that nothing the loader started outlives it.
        deadline = time.monotonic() + _SHUTDOWN_TIMEOUT_S
        for thread in set(threading.enumerate()) - self._threads_before:
            thread.join(max(0.0, deadline - time.monotonic()))
        for child in multiprocessing.active_children():
            child.join(max(0.0, deadline - time.monotonic()))


#: How long closing waits for a Grain worker process to end before killing it.
_WORKER_EXIT_S = 1.0


@contextlib.contextmanager
def _prompt_worker_shutdown():
    """Kill a worker that has not ended `_WORKER_EXIT_S` after it was told to stop.

    Grain 0.2 joins each worker process for up to 25 s when an iterator closes, then kills it.
    A worker stopped mid-stream often cannot end on its own (it is still handing batches to a
    queue nobody reads), so every close of a loader with workers could take 25 s per worker:
    outside any timed window, but minutes of a run spent waiting. A worker that ends, ends
    within a second here; one that would be killed is killed sooner.
    """
    try:
        from grain._src.python.dataset.transformations import process_prefetch
    except ImportError:  # a Grain without this module has its own shutdown
        yield
        return
    saved = getattr(process_prefetch, "_PROCESS_KILL_TIMEOUT_S", None)
    if saved is None:
        yield
        return
    process_prefetch._PROCESS_KILL_TIMEOUT_S = min(saved, _WORKER_EXIT_S)
    try:
        yield
    finally:
        process_prefetch._PROCESS_KILL_TIMEOUT_S = saved


def _stop_shared_memory_release_pool() -> None:
    """Drain and stop the thread pool Grain starts to unlink worker batches' shared memory.

    Grain keeps it in a class attribute for the life of the process and creates it again
    when the next multiprocess iterator needs it; draining it here also unlinks the shared
    memory of batches that were in flight when the iterator closed.
    """
    try:
        from grain._src.python.ipc.shared_memory_array import SharedMemoryArray
    except ImportError:  # a Grain without this helper has nothing to stop
        return
    pool = SharedMemoryArray._del_thread_pool
    if pool is None:
        return
    pool.close()
    pool.join()  # completion callbacks still use the semaphore: clear it only afterwards
    with SharedMemoryArray._lock:
        SharedMemoryArray._del_thread_pool = None
        SharedMemoryArray._outstanding_del_requests = None


@register
class Grain(Adapter):
    id = "grain"
    display_name = "Google Grain"
    aliases = ("google-grain", "grain-python")
    distributions = ("grain", "numpy")
    ops = reference.ALL_OPS
    styles = frozenset({"plain", "tuned"})
    batch_ops = reference.BATCHABLE_OPS
    # Its data source indexes the cached arrays lazily (workers re-map the files): it streams.
    measures = frozenset({"throughput", "streaming", "checkpoint"})
    backends = frozenset({"memory", "npy_mmap", "array_record", "tfds"})
    backend_reasons = {
        "tfrecord": "Google Grain has no TFRecord reader for these records: its only one, "
        "grain.experimental.TFRecordIterDataset, yields raw record bytes sequentially, and the "
        "records are tf.train.Example protos, which Grain cannot parse without TensorFlow",
        "parquet": "Google Grain's only Parquet reader, grain.experimental.ParquetIterDataset, is "
        "a sequential IterDataset: it cannot be the random-access MapDataset source (sliced, "
        "repeated, indexed per element) this adapter's pipeline and checkpoints are built on",
    }

    def open(self, ctx: CellContext) -> Loader:
        return GrainLoader(ctx, self.batched_ops())

    def tuning_grid(self, ctx: CellContext, cores: int) -> list[dict[str, Any]]:
        # Worker processes or none, one reader thread or one per core, a short or a long buffer.
        return [
            {"workers": w, "threads": t, "prefetch": p}
            for w in sorted({0, cores})
            for t in sorted({1, cores})
            for p in (2, 8)
        ]
