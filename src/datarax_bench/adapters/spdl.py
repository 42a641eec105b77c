"""SPDL (Meta's Scalable and Performant Data Loading): a `spdl.pipeline.PipelineBuilder` pipeline.

The pipeline is the one SPDL's documentation builds for training input ("Building and Running
Pipeline", https://facebookresearch.github.io/spdl/latest/getting_started/intro.html; "Best
Practices", https://facebookresearch.github.io/spdl/main/best_practice.html; the builder's API,
https://facebookresearch.github.io/spdl/latest/generated/spdl.pipeline.PipelineBuilder.html):
`add_source` of what to load (here the element numbers), `pipe(load, concurrency=threads)` run
in the pipeline's thread pool, `aggregate(batch_size)`, `pipe(batchify)`, `add_sink(prefetch)`,
`build(num_threads=threads)`. SPDL has no dataset class ("Paradigm Shift",
https://facebookresearch.github.io/spdl/main/migration/paradigm_shift.html: "there is no
equivalent of Dataset class"): loading is a function of the user's, here one that reads the
element from the cached arrays (memory-mapped, or in RAM for IO-1's `memory` backend and IO-2's
eager loading) and transforms it with the reference semantics and the reference's counter-based
draws (`reference.element_key(seed, epoch, index)`), so batches equal the reference's bit for
bit; `reference.collate` stacks them (NLP-2's padding included).

Order: a `pipe` stage hands its results on in completion order unless `output_order="input"`
(SPDL's default is "completion"), so the element stage asks for the input order, which keeps the
reference's batches at any concurrency. Failures: SPDL's pipeline drops an item whose function
raised and goes on (its default `max_failures=-1`), which would shift every later batch; the
pipeline is built with `max_failures=0`, so the first failure stops it and is raised to the
consumer.

One pipeline spans all epochs: its source yields (epoch, element) for the whole batches of
each epoch, epoch after epoch from the first one asked for, so the event loop, source and pool
threads start once per loader; an epoch asked for out of turn rebuilds it there. `close` stops
the pipeline (`Pipeline.stop`), which joins its threads.

The tuned style follows the same "Best Practices" page ("instead create a batch Tensor
directly") and the "Optimization Guide"
(https://facebookresearch.github.io/spdl/latest/optimization_guide/index.html: per-stage
concurrency set by measuring): the workload's trailing batchable steps
(`reference.tuned_split`: value-wise ops, shift_targets, the random flip, brightness and
window) run once per batch on the stacked batch in the batch stage, where nothing else is left
per element, drawing for every row from
the rows' keys (kept with each element as `reference.ELEMENT_KEY`), so the same bytes; that
stage then runs with the element stage's concurrency, in input order; the threads and the
sink's prefetch are chosen by measurement (`tuning_grid`). Where nothing is left to do per
element over dense cached arrays (TAB-1, NLP-1), the batches are known in advance, and the same
page's advice for a "pre-determined set of images that should go together into a same batch" is
to load them as a batch: the source yields batch numbers and one stage reads each batch as one
slice of each array (NLP-1: only its windows, `_sliced.sliced_batch`, as the NumPy, Grain and
PyTorch tuned styles read them), then runs the batch steps, with no per-element stage and no
`aggregate`.

Not supported: IO-1's array_record, tfrecord, tfds and parquet backends (SPDL has no reader for
them: `spdl.io` reads audio, video and images, WAV, NumPy `.npy`/`.npz` buffers and tar
archives), and PR-1 (SPDL's pipeline has no iterator-state API to checkpoint).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from datarax_bench.adapters import register
from datarax_bench.adapters._sliced import sliced_batch
from datarax_bench.adapters.base import Adapter, Batch, CellContext, Loader
from datarax_bench.workload import formats, randomness, reference

# spdl is imported inside functions only: `list` imports every adapter.

# How long `close()` waits for the pipeline's threads to end.
_SHUTDOWN_TIMEOUT_S = 10.0


class EpochElements:
    """The pipeline's source: (epoch, element index) for the whole batches of each epoch, epoch
    after epoch from `first_epoch` on."""

    def __init__(self, per_epoch: int, first_epoch: int):
        self.per_epoch = per_epoch
        self.first_epoch = first_epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.first_epoch
        while True:
            for index in range(self.per_epoch):
                yield epoch, index
            epoch += 1


class EpochBatches:
    """The tuned batch read's source: (epoch, batch number), epoch after epoch from
    `first_epoch` on."""

    def __init__(self, num_batches: int, first_epoch: int):
        self.num_batches = num_batches
        self.first_epoch = first_epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.first_epoch
        while True:
            for batch in range(self.num_batches):
                yield epoch, batch
            epoch += 1


class LoadElement:
    """The element stage: (epoch, index) -> the element read from the cache, transformed."""

    def __init__(self, dataset, transforms: list[dict], seed: int, keep_key: bool):
        self.dataset = dataset
        self.transforms = transforms
        self.seed = seed
        self.keep_key = keep_key

    def __call__(self, item: tuple[int, int]) -> reference.Element:
        epoch, index = item
        key = reference.element_key(self.seed, epoch, index)
        out = reference.apply_element(self.transforms, self.dataset.element(index), key)
        if self.keep_key:
            out[reference.ELEMENT_KEY] = key
        return out


class LoadBatch:
    """The tuned batch read: (epoch, batch number) -> the batch as slices (windows) of the cached
    arrays, then the batch steps with every row's draws from the rows' keys."""

    def __init__(self, dataset, steps: list[dict], seed: int, batch_size: int):
        self.dataset = dataset
        self.steps = steps
        self.seed = seed
        self.batch_size = batch_size

    def __call__(self, item: tuple[int, int]) -> reference.Element:
        epoch, b = item
        indices = np.arange(b * self.batch_size, (b + 1) * self.batch_size)
        batch, keys, done = sliced_batch(self.dataset, indices, self.seed, epoch, self.steps)
        return reference.apply_batch_steps(self.steps[done:], batch, reference.REFERENCE_OPS, keys)


class SpdlLoader(Loader):
    def __init__(self, ctx: CellContext, batch_ops: frozenset[str] = frozenset()):
        w = ctx.workload
        self.batch_size = w.batch_size
        self.num_batches = w.num_batches
        # SPDL runs sync functions in its thread pool: at least one thread.
        self.threads = max(1, int(ctx.parallelism.get("threads", 1)))
        # A sink of 0 is unbounded in SPDL: at least one batch.
        self.prefetch = max(1, int(ctx.parallelism.get("prefetch", 2)))
        per_element, per_batch = reference.tuned_split(w.transforms, batch_ops)
        self.load = LoadElement(
            ctx.dataset, per_element, ctx.seed, reference.draws_per_row(per_batch)
        )
        self.batchify = reference.CollateWithBatchSteps(w.transforms, per_batch)
        # The batch stage carries the batch steps in the tuned style: as many tasks as threads.
        self.batch_concurrency = self.threads if per_batch else 1
        # Nothing per element over dense arrays: batches read as slices, no element stage.
        self.read_batch = None
        if per_batch and not per_element and not ctx.dataset.ragged:
            self.read_batch = LoadBatch(ctx.dataset, per_batch, ctx.seed, self.batch_size)
        self.source_info = formats.npy_source_info(ctx.dataset)
        self.parallelism = {
            "threads": self.threads,
            "element_concurrency": None if self.read_batch else self.threads,
            "batch_concurrency": self.batch_concurrency,
            "prefetch": self.prefetch,
            "output_order": "input",
            "read": "batch slices" if self.read_batch else "elements",
            "workers": 0,
            "rng": f"reference {randomness.SCHEME} draws (numpy)",
        }
        self._threads_before = set(threading.enumerate())
        self._pipeline = None
        self._position = 0  # global batch number the pipeline yields next

    def _build(self, first_epoch: int):
        from spdl.pipeline import PipelineBuilder

        builder = PipelineBuilder()
        if self.read_batch is not None:
            builder.add_source(EpochBatches(self.num_batches, first_epoch)).pipe(
                self.read_batch,
                concurrency=self.batch_concurrency,
                output_order="input",
                name="load_batch",
            )
        else:
            builder.add_source(EpochElements(self.num_batches * self.batch_size, first_epoch)).pipe(
                self.load, concurrency=self.threads, output_order="input", name="load"
            )
            builder.aggregate(self.batch_size, drop_last=True).pipe(
                self.batchify,
                concurrency=self.batch_concurrency,
                output_order="input",
                name="batchify",
            )
        # Any failure stops the pipeline and reaches the consumer: never a skipped element.
        return builder.add_sink(self.prefetch).build(num_threads=self.threads, max_failures=0)

    def _start(self, epoch: int) -> None:
        self._stop()
        self._pipeline = self._build(epoch)
        self._pipeline.start()
        self._position = epoch * self.num_batches

    def epoch(self, epoch: int) -> Iterator[Batch]:
        start = epoch * self.num_batches
        if self._pipeline is None or self._position != start:
            self._start(epoch)
        for _ in range(self.num_batches):
            batch = self._pipeline.get_item()
            self._position += 1
            yield batch

    def _stop(self) -> None:
        if self._pipeline is not None:
            pipeline, self._pipeline = self._pipeline, None
            pipeline.stop(timeout=_SHUTDOWN_TIMEOUT_S)

    def close(self) -> None:
        self._stop()
        # `stop` joins the event loop and shuts the pool down; SPDL joins its source thread only
        # when it is not inside the source's `next`: wait for any of its threads still ending,
        # so that nothing the loader started outlives it.
        for thread in set(threading.enumerate()) - self._threads_before:
            if thread.name.startswith("spdl_"):
                thread.join(_SHUTDOWN_TIMEOUT_S)


@register
class Spdl(Adapter):
    id = "spdl"
    display_name = "SPDL"
    distributions = ("spdl", "spdl_core", "spdl_io")
    ops = reference.ALL_OPS - reference.DECODE_OPS
    op_reasons = {
        "decode_jpeg": "SPDL decodes images with FFmpeg (spdl.io.load_image, demux_image), and "
        "its libspdl needs FFmpeg's shared libraries (libavutil.so.58 to .61), which this "
        "install lacks; its other decoder, decode_image_nvjpeg, needs an NVIDIA GPU",
    }
    styles = frozenset({"plain", "tuned"})
    batch_ops = reference.BATCHABLE_OPS
    # Its load function reads each element from the cached arrays as it goes: memory-mapped
    # files stream from disk, arrays loaded into RAM are the eager source.
    measures = frozenset({"throughput", "streaming"})
    measure_reasons = {
        "checkpoint": "SPDL's Pipeline has no iterator-state API (nothing to save and restore "
        "mid-epoch), so PR-1 cannot use a native one",
    }
    backends = frozenset({"memory", "npy_mmap"})
    backend_reasons = {
        backend: f"SPDL has no reader for the {backend} backend: spdl.io reads audio, video and "
        "images, WAV, NumPy .npy/.npz buffers and tar archives, and the pipeline only runs the "
        "user's functions"
        for backend in ("array_record", "tfrecord", "tfds", "parquet")
    }

    def open(self, ctx: CellContext) -> Loader:
        return SpdlLoader(ctx, self.batched_ops())

    def tuning_grid(self, ctx: CellContext, cores: int) -> list[dict[str, Any]]:
        # One thread or one per core, a short or a long sink.
        cores = max(1, cores)
        return [{"threads": t, "prefetch": p} for t in sorted({1, cores}) for p in (2, 8)]
