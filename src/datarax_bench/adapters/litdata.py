"""LitData: the cache written once as LitData chunks, read by a `StreamingDataset` in
`StreamingDataLoader` workers.

The pipeline is the one LitData's README (https://github.com/Lightning-AI/litData) recommends for
training input: "Option 2: Optimize for maximum performance" (write the data once in LitData's
chunked binary format, then "replacing the PyTorch Dataset and DataLoader with the
StreamingDataset and StreamingDataLoader"), "Use any data transforms" (subclass
`StreamingDataset` and override `__getitem__` for per-sample transforms), "StreamingDataset &
StreamingDataLoader knobs" (`shuffle`, `drop_last`, "All usual `torch.utils.data.DataLoader`
kwargs": `batch_size`, `num_workers`, `collate_fn`, `multiprocessing_context`) and "Pause, resume
data streaming" (the loader's `state_dict` / `load_state_dict`).

Chunks: written from the cached `.npy` arrays, once per dataset and batch size, atomically
(`files.atomic_directory`) under the dataset's cache directory, then reused, with LitData's
documented chunk writer, `litdata.streaming.writer.BinaryWriter` (the `Cache` / `BinaryWriter`
path of the README's "Merge datasets" section), `chunk_size` = the batch size, `done()` then
`merge()` writing `index.json`. Not `litdata.optimize`: it runs the conversion in spawned worker
processes, empties the machine-wide `$TMPDIR/chunks` and `$TMPDIR/data` folders first
(`DataProcessor._cleanup_cache`: two conversions at once would delete each other's files), and
installs a SIGINT handler that ends the calling process with `os._exit(0)`; the writer it drives
is this one. Sample `i` is a dict of element `i`'s fields, each the cache's array (same dtype,
shape and bytes; LitData's NumPy serializers), plus its index (`__index__`).

Order: LitData splits an epoch's items into one contiguous run per worker
(`_associate_chunks_and_intervals_to_workers`), and the DataLoader takes one batch from each
worker in turn, so with two workers the batches would come as 0, k, 1, k + 1, ... . Its
`Shuffle` class is what "describe[s] how to distribute chunked datasets across processes and
workers"; the adapter's dataset gives LitData a `Shuffle` that deals whole chunks (one batch
each) round-robin, worker `w` reading chunks `w, w + W, ...` as WebDataset's `split_by_worker`
does, which keeps the reference's batch order at any worker count. Only chunks of whole batches
are dealt (drop-remainder); items keep their order inside a chunk (`shuffle=False`).

Each element is transformed in the dataset's `__getitem__`, in the workers, with the reference
semantics and the reference's counter-based draws (`reference.element_key(seed, epoch, index)`,
the index stored with the sample, the epoch LitData's own epoch counter less one) by the
reference's NumPy functions: batches equal the reference's bit for bit. Workers use the spawn
start method (forking a process that imported JAX is unsafe) and persist across epochs
(`persistent_workers`, a DataLoader kwarg the StreamingDataLoader takes): LitData counts each
worker's epoch up at the end of its pass, so the next epoch's draws use the next epoch; an epoch
requested out of turn starts workers anew.

The tuned style moves the workload's trailing batchable steps (`reference.tuned_split`:
value-wise ops, shift_targets, and the random flip, brightness and window) to the
`collate_fn`, once per stacked batch in the workers, where nothing else is left per element,
drawing for every row from the rows' keys (kept with each element as `reference.ELEMENT_KEY`),
so the same bytes; `num_workers` and `prefetch_factor` are chosen by measurement (`tuning`).

No network: the data are a local directory (no cloud resolver, no copy into LitData's chunk
cache: local chunks are memory-mapped in place), and LitData's PyPI version check is off
(`LITDATA_DISABLE_VERSION_CHECK=1`, set before LitData is imported).

PR-1 uses the loader's own state API, as "Pause, resume data streaming" does: `state_dict()`
saved with `torch.save`, `load_state_dict` into a fresh loader, which replays each worker's
position in its chunks and restarts on the worker whose batch came next.

IO-1: of the source backends LitData reads its own (`litdata`: these chunks, `own_source`);
its Parquet reader (`ParquetLoader`) needs polars (`litdata[extras]`), which is not installed,
so IO-1's parquet backend is not read with LitData. Not supported: IO-2 (it always
streams its chunks: no eager loading).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from datarax_bench.adapters import register
from datarax_bench.adapters.base import (
    Adapter,
    Batch,
    CellContext,
    Loader,
    tensor_to_host,
    worker_prefetch_grid,
)
from datarax_bench.adapters.pytorch import join_feeders_at_exit
from datarax_bench.files import atomic_directory
from datarax_bench.workload import formats, randomness, reference
from datarax_bench.workload.catalog import Workload
from datarax_bench.workload.data import Dataset

# litdata (and torch) are imported inside functions only: `list` imports every adapter.

#: Bump when the chunks' layout changes, so that old chunks are never read as new ones.
FORMAT_VERSION = 2
_COMPLETE = formats.COMPLETE
ENCODING = (
    "LitData chunks written by its BinaryWriter, one batch each; per element one item of the "
    "element's NumPy arrays and its index"
)
_INDEX = "__index__"


def _import_litdata():
    """`litdata`, its PyPI version check off (it would query pypi.org when a dataset is made);
    set in the environment so that spawned workers inherit it."""
    os.environ["LITDATA_DISABLE_VERSION_CHECK"] = "1"
    import litdata

    return litdata


def chunk_directory(dataset: Dataset, elements_per_chunk: int) -> Path:
    return (
        Path(dataset.directory)
        / "formats"
        / f"litdata-v{FORMAT_VERSION}"
        / f"{elements_per_chunk}-per-chunk"
    )


def build_chunks(dataset: Dataset, elements_per_chunk: int) -> Path:
    """The dataset as LitData chunks of `elements_per_chunk` consecutive elements, written with
    `BinaryWriter` unless already there (once, atomically); their directory.

    Sample `i` holds element `i` of the cache (`Dataset.element`), field by field, and its
    index under `__index__`."""
    target = chunk_directory(dataset, elements_per_chunk)
    if (target / _COMPLETE).is_file():
        return target
    _import_litdata()
    from litdata.streaming.writer import BinaryWriter

    n = dataset.num_elements
    with atomic_directory(target, lambda d: (d / _COMPLETE).is_file()) as tmp:
        start = time.perf_counter()
        writer = BinaryWriter(str(tmp), chunk_size=elements_per_chunk)
        for index in range(n):
            sample = {_INDEX: np.asarray(index, dtype=np.int64)}
            sample.update({k: np.asarray(v) for k, v in dataset.element(index).items()})
            writer[index] = sample
        writer.done()
        writer.merge()  # one writer: its `0.index.json` becomes the dataset's `index.json`
        complete = {
            "digest": dataset.digest,
            "num_elements": n,
            "elements_per_chunk": elements_per_chunk,
            "chunks": -(-n // elements_per_chunk),
            "build_s": time.perf_counter() - start,
            "versions": {"litdata": metadata.version("litdata")},
            "encoding": ENCODING,
        }
        (tmp / _COMPLETE).write_text(json.dumps(complete, indent=1, sort_keys=True))
    return target


def _batch_stripes(num_batches: int):
    """A LitData `Shuffle` dealing the first `num_batches` chunks (one batch each) round-robin
    over the workers, items in order: the DataLoader, taking one batch from each worker in turn,
    then yields them in order."""
    from litdata.streaming.shuffle import NoShuffle

    class BatchStripes(NoShuffle):
        def get_chunks_and_intervals_per_workers(
            self, distributed_env, num_workers, batch_size, current_epoch
        ):
            intervals = self.cache.get_chunk_intervals()[:num_batches]
            for interval in intervals:
                if interval[2] - interval[1] != batch_size:
                    raise ValueError(
                        f"chunk of {interval[2] - interval[1]} items, not {batch_size}"
                    )
            workers = distributed_env.world_size * max(1, num_workers)
            chunks = [list(range(w, len(intervals), workers)) for w in range(workers)]
            return chunks, [[list(intervals[c]) for c in cs] for cs in chunks]

    return BatchStripes


class ElementTransform:
    """A LitData sample -> the transformed element (picklable for workers)."""

    def __init__(self, fields: list[str], transforms: list[dict], seed: int, keep_key: bool):
        self.fields = fields
        self.transforms = transforms
        self.seed = seed
        self.keep_key = keep_key

    def __call__(self, sample: dict[str, Any], epoch: int) -> reference.Element:
        key = reference.element_key(self.seed, epoch, int(sample[_INDEX]))
        element = {name: np.asarray(sample[name]) for name in self.fields}
        out = reference.apply_element(self.transforms, element, key)
        if self.keep_key:
            out[reference.ELEMENT_KEY] = key
        return out


def _dataset_class():
    """`StreamingDataset` with the reference's transforms in `__getitem__` and the batch
    stripes as its chunk assignment (a class made on first use: litdata is imported lazily;
    spawned workers unpickle it through `_make_dataset`)."""
    global _DATASET_CLASS
    if _DATASET_CLASS is None:
        from litdata import StreamingDataset

        class ReferenceStreamingDataset(StreamingDataset):
            def __init__(self, directory, transform, num_batches, **options):
                super().__init__(directory, **options)
                self.element_transform = transform
                self.num_batches = num_batches

            def _create_shuffler(self, cache):
                return _batch_stripes(self.num_batches)(cache, self.seed, self.drop_last)

            def __getitem__(self, index):
                sample = super().__getitem__(index)
                # LitData counts epochs from 1 (`StreamingDataLoader.__iter__`).
                return self.element_transform(sample, self.current_epoch - 1)

            def __reduce__(self):
                # The shuffler (a class made here) is made again in the worker's `__iter__`.
                return (_rebuild_dataset, ({**self.__dict__, "shuffler": None},))

        _DATASET_CLASS = ReferenceStreamingDataset
    return _DATASET_CLASS


_DATASET_CLASS = None


def _rebuild_dataset(state: dict[str, Any]):
    """Unpickle the dataset in a spawned worker (its class is made by `_dataset_class`)."""
    _import_litdata()
    cls = _dataset_class()
    dataset = cls.__new__(cls)
    dataset.__dict__.update(state)
    return dataset


class LitDataLoader(Loader):
    def __init__(self, ctx: CellContext, batch_ops: frozenset[str] = frozenset()):
        import torch

        _import_litdata()
        w = ctx.workload
        self.batch_size = w.batch_size
        self.num_batches = w.num_batches
        self.workers = int(ctx.parallelism.get("workers", 0))
        self.prefetch = max(1, int(ctx.parallelism.get("prefetch", 2)))
        self.pin = ctx.profile.backend == "gpu" and torch.cuda.is_available()
        per_element, per_batch = reference.tuned_split(w.transforms, batch_ops)
        self.transform = ElementTransform(
            list(w.fields), per_element, ctx.seed, reference.draws_per_row(per_batch)
        )
        self.collate = reference.CollateWithBatchSteps(w.transforms, per_batch)
        # Written by `LitData.prepare` before any timing (here only where a caller skipped it).
        self.directory = build_chunks(ctx.dataset, self.batch_size)
        self.source_info = {
            "reader": "litdata chunks (litdata.StreamingDataset)",
            "paths": [self.directory],
        }
        self._dataloader = self._make_loader()
        workers = self._dataloader.num_workers  # LitData may lower it to fit the memory
        self.parallelism = {
            "workers": workers,
            "prefetch_factor": self.prefetch if workers > 0 else None,
            "multiprocessing_context": "spawn" if workers > 0 else None,
            "persistent_workers": workers > 0,
            "pin_memory": self.pin,
            "elements_per_chunk": self.batch_size,
            "rng": f"reference {randomness.SCHEME} draws (numpy)",
        }
        self._iterator = None  # the StreamingDataLoader's generator for the current epoch
        self._position = 0  # global batch number the iterator yields next
        self._resumed = False  # set by restore_state: the next epoch() continues mid-epoch
        self._started = False  # whether the loader's workers have been started
        self._serves = None  # the epoch its persistent workers serve next, None if unknown

    def _make_loader(self):
        import litdata

        dataset = _dataset_class()(
            str(self.directory), self.transform, self.num_batches, shuffle=False, drop_last=True
        )
        options: dict[str, Any] = {}
        if self.workers > 0:
            options = {
                "persistent_workers": True,
                "prefetch_factor": self.prefetch,
                "multiprocessing_context": "spawn",
                "worker_init_fn": join_feeders_at_exit,
            }
        return litdata.StreamingDataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.workers,
            collate_fn=self.collate,
            pin_memory=self.pin,
            **options,
        )

    def epoch(self, epoch: int) -> Iterator[Batch]:
        start = epoch * self.num_batches
        resumed, self._resumed = self._resumed, False
        if not (resumed and start <= self._position < start + self.num_batches):
            # Persistent workers keep their own copy of the dataset, whose epoch LitData counts
            # up at the end of each pass: they serve the epoch after the one they finished, any
            # other (an epoch abandoned half-way, or out of order) needs workers started anew.
            if self.workers > 0 and self._started and self._serves != epoch:
                self._shutdown()
                self._dataloader = self._make_loader()
                self._started = False
            # `__iter__` counts the epoch up before it starts: LitData's epoch `epoch + 1`.
            self._dataloader.current_epoch = epoch
            self._position = start
        self._serves = None
        self._started = True
        self._iterator = iter(self._dataloader)
        # Each worker holds whole batches only: the DataLoader ends the epoch by itself, after
        # its last batch (and LitData leaves its resumed mode there).
        for batch in self._iterator:
            self._position += 1
            yield batch
        self._iterator = None
        self._serves = epoch + 1

    def save_state(self, directory: Path) -> None:
        import torch

        # LitData's documented form: the loader's state_dict saved with torch.save.
        torch.save(self._dataloader.state_dict(), directory / "dataloader_state.pt")
        (directory / "loader.json").write_text(json.dumps({"position": self._position}))

    def restore_state(self, directory: Path) -> None:
        import torch

        state = torch.load(directory / "dataloader_state.pt", weights_only=False)
        self._dataloader.load_state_dict(state)
        self._position = int(json.loads((directory / "loader.json").read_text())["position"])
        self._resumed = True

    def _shutdown(self) -> None:
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None
        # Persistent workers live as long as the DataLoader's iterator: stop them now rather
        # than whenever garbage collection gets to it, so no worker outlives its loader.
        iterator = getattr(self._dataloader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._dataloader._iterator = None

    def close(self) -> None:
        self._shutdown()


@register
class LitData(Adapter):
    id = "litdata"
    display_name = "LitData"
    aliases = ("lit-data",)
    distributions = ("litdata", "torch")
    ops = reference.ALL_OPS - reference.DECODE_OPS
    op_reasons = {
        "decode_jpeg": "LitData decodes the JPEG images it stores (litdata.Image, Jpeg) with "
        "torchvision.io.decode_jpeg, and torchvision 0.28.0's compiled ops do not load against "
        "the CPU-only torch 2.13.0 build (its _C.so links libtorch_cuda)",
    }
    styles = frozenset({"plain", "tuned"})
    batch_ops = reference.BATCHABLE_OPS
    measures = frozenset({"throughput", "checkpoint"})
    measure_reasons = {
        "streaming": "LitData always streams its chunks from disk: it has no eager, in-memory "
        "source, so IO-2's eager loading cannot be expressed (and reading the chunks in both "
        "loadings would compare nothing)",
    }
    backends = frozenset({"litdata"})
    backend_reasons = {
        **{
            backend: "LitData reads its own optimized chunks (written by optimize or its "
            f"BinaryWriter) and Parquet; it has no reader for the {backend} backend"
            for backend in formats.BACKENDS
            if backend not in ("litdata", "parquet")
        },
        "parquet": "LitData streams Parquet through its ParquetLoader (index_parquet_dataset, "
        "then StreamingDataset), which needs polars (litdata[extras]), not installed here",
    }

    def prepare(self, workload: Workload, dataset: Dataset) -> None:
        # One batch per chunk: the chunks of this batch size, written before any timing.
        build_chunks(dataset, workload.batch_size)

    def own_source(self, workload: Workload, dataset: Dataset) -> formats.SourceFiles:
        root = build_chunks(dataset, workload.batch_size)
        return formats.SourceFiles("litdata", root, json.loads((root / _COMPLETE).read_text()))

    def open(self, ctx: CellContext) -> Loader:
        return LitDataLoader(ctx, self.batched_ops())

    def tuning_grid(self, ctx: CellContext, cores: int) -> list[dict[str, Any]]:
        return worker_prefetch_grid(cores)

    to_host = staticmethod(tensor_to_host)
