"""WebDataset: POSIX tar shards read by a `wds.DataPipeline`, batched in `WebLoader` workers.

The pipeline is the one WebDataset's documentation recommends for training input: the README of
https://github.com/webdataset/webdataset (the tar format, `wds.DataPipeline` with `decode`,
`map` and `batched`, `wds.WebLoader`), "Splitting Shards across Nodes and Workers"
(https://webdataset.github.io/webdataset/multinode/: data split at the shard level by
`split_by_worker`), and its author's training example (https://github.com/tmbdev/wds-distributed:
"we do the batching inside each worker; this is important for efficiency", `.batched(batch_size,
partial=False)` then `WebLoader(dataset, num_workers=..., batch_size=None)`). Samples are written
once as tar shards by `wds.TarWriter` (each field one `<key>.<field>.npy` member), read back as a
stream of shards split between workers (`wds.split_by_worker`), expanded into samples
(`wds.tarfile_to_samples`), decoded (`wds.decode`), transformed per element (`wds.map`) and
batched in the workers (`wds.batched(batch_size, partial=False)`), then handed to
`wds.WebLoader` (a PyTorch `DataLoader` with `batch_size=None`) with `workers` processes (spawn
start method: forking a process that imported JAX is unsafe) and `prefetch_factor` batches each.

Shards: built from the cached `.npy` arrays, once per dataset and batch size, atomically
(`files.atomic_directory`) under the dataset's cache directory, then reused; member
`<index>.<field>.npy` of sample `index` is `np.save` of element `index` of the cache, byte for
byte; a field of JPEG files (CV-3) is instead a `<index>.<field>.jpg` member holding the file
itself, which WebDataset's own image decoder reads (`wds.decode("rgb8")`: Pillow, HWC uint8 RGB,
the README's decoding of images), the decode step of the walk then taking its pixels as they
are. A shard holds exactly one batch (`batch_size` consecutive elements): WebLoader's
DataLoader takes one batch from each worker in turn, and worker `w` reads shards `w, w + W, ...`
(`split_by_worker`), so one batch per shard is what keeps the reference's batch order at any
worker count. Only the shards of whole batches are read (drop-remainder).

One stream spans all epochs (the shard list repeats epoch after epoch), so worker processes start
once per loader; a sample's epoch travels with its shard, its index is its tar key, so each
element is transformed with the reference semantics and the reference's counter-based draws
(`reference.element_key(seed, epoch, index)`) by the reference's NumPy functions: batches equal
the reference's bit for bit.

The tuned style follows "Batching in workers" / the performance notes of WebDataset's docs:
the workload's trailing batchable steps (`reference.tuned_split`: value-wise ops,
shift_targets, and the random flip, brightness and window) run once on the stacked batch in the
`collation_fn` of `wds.batched`, inside the workers, where nothing else is left per element,
drawing for every row from the rows' keys (kept with each element as `reference.ELEMENT_KEY`),
so the same bytes; `num_workers` and `prefetch_factor` are chosen by measurement (`tuning`).

IO-1: WebDataset reads its own tar shards only, so of the source backends it reads its own
(`webdataset`: these shards, `own_source`). Not supported: IO-2 (it always streams shards from
disk: no eager loading) and PR-1 (no iterator-state API to checkpoint).
"""

from __future__ import annotations

import json
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
    apply_decoded,
    jpeg_fields,
    tensor_to_host,
    worker_prefetch_grid,
)
from datarax_bench.adapters.pytorch import join_feeders_at_exit
from datarax_bench.files import atomic_directory
from datarax_bench.workload import formats, randomness, reference
from datarax_bench.workload.catalog import Workload
from datarax_bench.workload.data import Dataset

# webdataset (and torch) are imported inside functions only: `list` imports every adapter.

#: Bump when the shards' layout changes, so that old shards are never read as new ones.
SHARD_VERSION = 2
_COMPLETE = formats.COMPLETE
_EPOCH = "__epoch__"
ENCODING = (
    "POSIX tar shards written by wds.TarWriter, one batch each; per element one "
    "<key>.<field>.npy member per field (np.save)"
)


def _member(name: str, jpeg) -> str:
    return f"{name}.jpg" if name in jpeg else f"{name}.npy"


def _shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def shard_directory(dataset: Dataset, elements_per_shard: int) -> Path:
    return (
        Path(dataset.directory)
        / "formats"
        / f"webdataset-v{SHARD_VERSION}"
        / f"{elements_per_shard}-per-shard"
    )


def build_shards(dataset: Dataset, elements_per_shard: int, jpeg_names=()) -> list[str]:
    """The dataset as tar shards of `elements_per_shard` consecutive elements, written with
    `wds.TarWriter` unless already there (once, atomically); their paths in order.

    Sample `i` has key `%09d` and one member `<key>.<field>.npy` per field: `np.save` of element
    `i` of the cache (`Dataset.element`), so decoding gives its bytes back exactly; a field of
    JPEG files is a `<key>.<field>.jpg` member holding the file itself, WebDataset's own way to
    hold images."""
    target = shard_directory(dataset, elements_per_shard)
    n = dataset.num_elements
    jpeg = set(jpeg_names)
    count = -(-n // elements_per_shard)
    if not (target / _COMPLETE).is_file():
        import webdataset as wds

        with atomic_directory(target, lambda d: (d / _COMPLETE).is_file()) as tmp:
            start = time.perf_counter()
            for shard in range(count):
                with wds.TarWriter(str(tmp / _shard_name(shard))) as sink:
                    for index in range(
                        shard * elements_per_shard, min(n, (shard + 1) * elements_per_shard)
                    ):
                        element = dataset.element(index)
                        sample = {"__key__": f"{index:09d}"}
                        sample.update(
                            {
                                _member(name, jpeg): bytes(value)
                                if name in jpeg
                                else np.asarray(value)
                                for name, value in element.items()
                            }
                        )
                        sink.write(sample)
            complete = {
                "digest": dataset.digest,
                "num_elements": n,
                "elements_per_shard": elements_per_shard,
                "shards": count,
                "build_s": time.perf_counter() - start,
                "versions": {"webdataset": metadata.version("webdataset")},
                "encoding": ENCODING,
            }
            (tmp / _COMPLETE).write_text(json.dumps(complete, indent=1, sort_keys=True))
    return [str(target / _shard_name(s)) for s in range(count)]


class EpochShards:
    """The pipeline's source (a stage `wds.DataPipeline` calls with no input): `dict(url=...)`
    for the shards of whole batches, epoch after epoch from `first_epoch` on, each with its
    epoch (`__epoch__`)."""

    def __init__(self, urls: list[str], first_epoch: int):
        self.urls = urls
        self.first_epoch = first_epoch

    def __call__(self) -> Iterator[dict[str, Any]]:
        epoch = self.first_epoch
        while True:
            for url in self.urls:
                yield {"url": url, _EPOCH: epoch}
            epoch += 1


def tarfile_to_samples_with_epoch(shards):
    """`wds.tarfile_to_samples` shard by shard, each sample keeping its shard's epoch."""
    import webdataset as wds

    expand = wds.tarfile_to_samples()
    for shard in shards:
        for sample in expand(iter([{"url": shard["url"]}])):
            sample[_EPOCH] = shard[_EPOCH]
            yield sample


class ElementTransform:
    """`wds.map` function: a decoded sample -> the transformed element (picklable for workers)."""

    def __init__(
        self,
        fields: list[str],
        transforms: list[dict],
        seed: int,
        keep_key: bool,
        jpeg: frozenset[str] = frozenset(),
    ):
        self.fields = fields
        self.jpeg = jpeg
        self.transforms = transforms
        self.seed = seed
        self.keep_key = keep_key

    def __call__(self, sample: dict[str, Any]) -> reference.Element:
        index = int(sample["__key__"])
        key = reference.element_key(self.seed, int(sample[_EPOCH]), index)
        element = {name: sample[_member(name, self.jpeg)] for name in self.fields}
        # `wds.decode("rgb8")` has decoded the .jpg members: the walk takes their pixels.
        out = apply_decoded(self.transforms, element, key)
        if self.keep_key:
            out[reference.ELEMENT_KEY] = key
        return out


class Collate(reference.CollateWithBatchSteps):
    """`collation_fn` of `wds.batched`: the reference's stacking and the tuned style's batch
    steps, of the elements without the `__key__` that `wds.map` puts back into each."""

    def __call__(self, elements: list[reference.Element]) -> reference.Element:
        return super().__call__([{k: v for k, v in e.items() if k != "__key__"} for e in elements])


class WebDatasetLoader(Loader):
    def __init__(self, ctx: CellContext, batch_ops: frozenset[str] = frozenset()):
        import torch

        w = ctx.workload
        self.batch_size = w.batch_size
        self.num_batches = w.num_batches
        self.workers = int(ctx.parallelism.get("workers", 0))
        self.prefetch = max(1, int(ctx.parallelism.get("prefetch", 2)))
        self.pin = ctx.profile.backend == "gpu" and torch.cuda.is_available()
        per_element, per_batch = reference.tuned_split(w.transforms, batch_ops)
        self.jpeg = frozenset(jpeg_fields(w.fields))
        self.transform = ElementTransform(
            list(w.fields), per_element, ctx.seed, reference.draws_per_row(per_batch), self.jpeg
        )
        self.collate = Collate(w.transforms, per_batch)
        # Written by `WebDataset.prepare` before any timing (here only where a caller skipped it).
        urls = build_shards(ctx.dataset, self.batch_size, self.jpeg)
        self.urls = urls[: self.num_batches]  # the shards of whole batches
        self.source_info = {
            "reader": "webdataset tar shards (wds.tarfile_to_samples)",
            "paths": list(self.urls),
        }
        self.parallelism = {
            "workers": self.workers,
            "prefetch_factor": self.prefetch if self.workers > 0 else None,
            "multiprocessing_context": "spawn" if self.workers > 0 else None,
            "pin_memory": self.pin,
            "elements_per_shard": self.batch_size,
            "rng": f"reference {randomness.SCHEME} draws (numpy)",
        }
        self._dataloader = None
        self._iterator = None
        self._position = 0  # global batch number the iterator yields next

    def _pipeline(self, first_epoch: int):
        import webdataset as wds

        return wds.DataPipeline(
            EpochShards(self.urls, first_epoch),
            wds.split_by_worker,
            tarfile_to_samples_with_epoch,
            # "rgb8": WebDataset's image decoder (Pillow) for the .jpg members, HWC uint8 RGB.
            wds.decode("rgb8") if self.jpeg else wds.decode(),
            wds.map(self.transform),
            wds.batched(self.batch_size, collation_fn=self.collate, partial=False),
        )

    def _start(self, epoch: int) -> None:
        import webdataset as wds

        self._stop()
        options: dict[str, Any] = {}
        if self.workers > 0:
            options = {
                "prefetch_factor": self.prefetch,
                "multiprocessing_context": "spawn",
                "worker_init_fn": join_feeders_at_exit,
            }
        loader = wds.WebLoader(
            self._pipeline(epoch),
            batch_size=None,
            shuffle=False,
            num_workers=self.workers,
            pin_memory=self.pin,
            **options,
        )
        self._dataloader = loader.pipeline[0]
        self._iterator = iter(loader)
        self._position = epoch * self.num_batches

    def epoch(self, epoch: int) -> Iterator[Batch]:
        start = epoch * self.num_batches
        if self._iterator is None or self._position != start:
            self._start(epoch)
        for _ in range(self.num_batches):
            batch = next(self._iterator)
            self._position += 1
            yield batch

    def _stop(self) -> None:
        if self._dataloader is not None:
            iterator = getattr(self._dataloader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            self._dataloader._iterator = None
        # The WebLoader's generator holds the DataLoader's iterator: shut it down with it.
        if self._iterator is not None:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()
        self._dataloader = None
        self._iterator = None

    def close(self) -> None:
        self._stop()


@register
class WebDataset(Adapter):
    id = "webdataset"
    display_name = "WebDataset"
    aliases = ("wds",)
    distributions = ("webdataset", "torch")
    ops = reference.ALL_OPS
    styles = frozenset({"plain", "tuned"})
    batch_ops = reference.BATCHABLE_OPS
    measures = frozenset({"throughput"})
    measure_reasons = {
        "streaming": "WebDataset always streams its tar shards from disk: it has no eager, "
        "in-memory source, so IO-2's eager loading cannot be expressed (and reading the shards "
        "in both loadings would compare nothing)",
        "checkpoint": "WebDataset has no iterator-state API (its pipelines and WebLoader have no "
        "state to save and restore mid-epoch), so PR-1 cannot use a native one",
    }
    backends = frozenset({"webdataset"})
    backend_reasons = {
        backend: "WebDataset reads POSIX tar shards only (its own format); it has no reader for "
        f"the {backend} backend"
        for backend in formats.BACKENDS
        if backend != "webdataset"
    }

    def prepare(self, workload: Workload, dataset: Dataset) -> None:
        # One batch per shard: the shards of this batch size, written before any timing.
        build_shards(dataset, workload.batch_size, jpeg_fields(workload.fields))

    def jpeg_decoder(self) -> str:
        return f"webdataset decode('rgb8'): PIL.Image.open ({reference.jpeg_library()})"

    def own_source(self, workload: Workload, dataset: Dataset) -> formats.SourceFiles:
        build_shards(dataset, workload.batch_size)
        root = shard_directory(dataset, workload.batch_size)
        return formats.SourceFiles("webdataset", root, json.loads((root / _COMPLETE).read_text()))

    def open(self, ctx: CellContext) -> Loader:
        return WebDatasetLoader(ctx, self.batched_ops())

    def tuning_grid(self, ctx: CellContext, cores: int) -> list[dict[str, Any]]:
        return worker_prefetch_grid(cores)

    to_host = staticmethod(tensor_to_host)
