"""PyTorch DataLoader: a map-style `Dataset`, batching and worker processes inside the DataLoader.

Configured as PyTorch's documentation recommends for training input: `num_workers` worker
processes (spawn start method: forking a process that imported JAX is unsafe), persistent workers,
`prefetch_factor` batches per worker, pinned memory on GPU machines, `drop_last=True`.

Every transform runs per element in torch ops inside `Dataset.__getitem__` (in the workers). Random
parameters are the reference's counter-based draws (`reference.element_key(seed, epoch, index)`,
computed in NumPy an epoch chunk at a time and looked up per element) with the reference's own
conversion functions, in op order, so batches equal the reference's bit for bit; the pixel,
token and table work itself, Gaussian noise included, is done by torch. JPEG files are decoded
by Pillow, as torchvision's `ImageFolder` (the PyTorch ImageNet example's dataset) does by
default, and become tensors. Not `torchvision.io.decode_jpeg`: torchvision 0.28.0's compiled ops
do not load against the CPU-only torch 2.13.0 build (its `_C.so` links `libtorch_cuda`), and one
decoder on every machine keeps the results comparable.

The tuned style applies the workload's trailing batchable steps (`reference.tuned_split`:
value-wise ops, shift_targets, and the random flip, brightness and window) as batch-level tensor
ops in the `collate_fn`, in the workers, after `default_collate` has stacked the elements (flips,
adds and slices on a stacked tensor give the same bytes as per element), as PyTorch's
data-loading docs describe for batch-level work ("Working with collate_fn",
https://pytorch.org/docs/stable/data.html). A random batch step
draws every row's parameter at once with the reference's draw functions from the rows' keys,
which `__getitem__` keeps with the element (`reference.ELEMENT_KEY`) and the `collate_fn` takes
out before `default_collate`, so every row gets the plain pipeline's draws. When nothing is left per
element over dense cached arrays, the sampler yields batch numbers with automatic batching off
(`batch_size=None`: the docs' "Disable automatic batching", for data "cheaper to directly load
batched", e.g. "reading continuous chunks of memory"), and the dataset reads each batch as one
slice of each array (NLP-1: only the windows, `_sliced.sliced_batch`, as nanoGPT's `get_batch`
does from its token memmap). Where steps stay per element (CV-1's crop), the trailing ones stay
per element too: a second pass over the stacked batch in the `collate_fn` measured slower (CV-1
tuned/plain 0.91 before, docs/measurements.md). Workers, persistent workers and pinned memory
the plain style already uses, as its performance tuning guide advises
(https://pytorch.org/tutorials/recipes/recipes/tuning_guide.html); `num_workers` (none
included) and `prefetch_factor` are chosen by measurement (`tuning`).
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from datarax_bench.adapters import register
from datarax_bench.adapters._sliced import sliced_batch
from datarax_bench.adapters.base import (
    Adapter,
    Batch,
    CellContext,
    Loader,
    tensor_to_host,
    worker_prefetch_grid,
)
from datarax_bench.workload import formats, randomness, reference
from datarax_bench.workload.data import Dataset

# torch is imported inside functions only: importing this module (for `list`) must stay light.


class ElementDataset:
    """Map-style dataset: `dataset[(epoch, index)]` is one transformed element (torch tensors).

    The key carries the epoch because persistent workers keep their copy of the dataset across
    epochs; the sampler (in the main process) is the one place that knows the current epoch.
    `records[index]` is the untransformed element as NumPy arrays: the cached arrays (which
    pickle themselves for spawned workers by file name) or, for IO-1's TFDS backend, TFDS's
    `data_source`, the random-access reader TFDS documents for PyTorch.
    """

    def __init__(self, ctx: CellContext, records, transforms=None, keep_key: bool = False):
        self.num_elements = ctx.workload.num_elements
        self.seed = ctx.seed
        steps = ctx.workload.transforms if transforms is None else transforms
        self.transforms = [s for s in steps if s["op"] not in reference.BATCH_OPS]
        self.records = records
        # The element keeps its key for the batch steps that draw after it.
        self.keep_key = keep_key

    def __len__(self) -> int:
        return self.num_elements

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        import torch

        epoch, index = key
        # Reading the element (a copy out of a memory map) is part of the loader's work.
        element = {
            name: torch.from_numpy(value if value.flags.writeable else np.array(value))
            for name, value in self.records[index].items()
        }
        keys = reference.element_key(self.seed, epoch, index)
        for step in self.transforms:
            reference.apply_step(step, element, TORCH_OPS, keys)
        if self.keep_key:
            element[reference.ELEMENT_KEY] = keys
        return element


@dataclass
class SlicedBatch:
    """A batch read as slices of each field (`SlicedDataset`): the stacked fields, the rows' keys
    where batch steps draw, and how many batch steps the read already applied (a random window
    read as windows, `_sliced.sliced_batch`)."""

    fields: dict[str, Any]
    keys: randomness.BatchKeys | None
    done: int = 0


class SlicedDataset(ElementDataset):
    """Nothing to do per element over dense cached arrays: the DataLoader's sampler yields batch
    numbers, with automatic batching off (`batch_size=None`, PyTorch's documented way to read
    "in bulk" when a dataset is cheaper to read a batch at a time), and `dataset[(epoch, b)]` is
    batch `b` read as one slice (or the windows) of each array: the bytes of stacking its
    elements, read once instead of once per element."""

    def __init__(self, ctx: CellContext, records, steps, batch_size: int):
        super().__init__(ctx, records, [], False)
        self.steps = steps
        self.batch_size = batch_size
        self.num_elements = ctx.workload.num_batches

    def __getitem__(self, key: tuple[int, int]) -> SlicedBatch:
        import torch

        epoch, b = key
        indices = np.arange(b * self.batch_size, (b + 1) * self.batch_size)
        rows, keys, done = sliced_batch(self.records, indices, self.seed, epoch, self.steps)
        fields = {name: torch.from_numpy(value) for name, value in rows.items()}
        return SlicedBatch(fields, keys, done)


def _records(ctx: CellContext):
    """The untransformed elements the DataLoader's dataset reads, and what that reads."""
    if ctx.workload.options.get("backend") == "tfds":
        source, info = formats.tfds_data_source(ctx.source)
        return formats.DecodedRecords(source, formats.TfdsElement(ctx.workload.fields)), info
    return ctx.dataset, formats.npy_source_info(ctx.dataset)


class EpochSampler:
    """Yields `(epoch, index)` keys in order; `set_epoch` before each pass."""

    def __init__(self, num_elements: int):
        self.num_elements = num_elements
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, i) for i in range(self.num_elements))

    def __len__(self) -> int:
        return self.num_elements


# --- element ops in torch ------------------------------------------------------------------


def _float(x):
    import torch

    return x.to(torch.float32)


def _decode_jpeg(x, p, key):
    # Pillow, as torchvision's ImageFolder loads images by default (`default_loader`:
    # `Image.open(...).convert("RGB")`, https://pytorch.org/vision/stable/generated/
    # torchvision.datasets.ImageFolder.html), then a tensor of its pixels (np.array: a copy
    # torch may own; Pillow's array view is read-only).
    import torch

    return torch.from_numpy(np.array(reference.decode_jpeg_pillow(x.numpy().data)))


def _random_resized_crop(x, p, key):
    import torch.nn.functional as F

    top, left, h, w = reference.resized_crop_box(p, key, x.shape)
    crop = _float(x[top : top + h, left : left + w]).permute(2, 0, 1).unsqueeze(0)
    out = F.interpolate(
        crop, size=tuple(p["size"]), mode="bilinear", align_corners=False, antialias=False
    )
    return out[0].permute(1, 2, 0).contiguous()


def _random_horizontal_flip(x, p, key):
    import torch

    return torch.flip(x, dims=(1,)) if reference.draw(p, key, x.shape) else x


def _normalize(x, p, key):
    import torch

    mean = torch.tensor(p["mean"], dtype=torch.float32)
    std = torch.tensor(p["std"], dtype=torch.float32)
    return (_float(x) - mean) / std


def _random_crop_3d(x, p, key):
    d, h, w = p["size"]
    z0, y0, x0 = reference.crop_3d_offsets(p, key, x.shape)
    return x[z0 : z0 + d, y0 : y0 + h, x0 : x0 + w].contiguous()


def _zscore(x, p, key):
    v = _float(x)
    return (v - v.mean()) / (v.std(correction=0) + p["epsilon"])


def _standardize(x, p, key):
    import torch

    return (_float(x) - torch.tensor(p["mean"], dtype=torch.float32)) / torch.tensor(
        p["std"], dtype=torch.float32
    )


def _log1p(x, p, key):
    import torch

    return torch.log1p(torch.clamp_min(_float(x), 0.0))


def _hash_bucket(x, p, key):
    import torch

    h = ((x.to(torch.int64) & reference.MASK32) * reference.HASH_MULTIPLIER) & reference.MASK32
    h = h ^ (h >> 15)
    return torch.remainder(h, p["num_buckets"])


def _multiply(x, p, key):
    import torch

    return _float(x) * torch.tensor(p["factor"], dtype=torch.float32)


def _add(x, p, key):
    import torch

    return _float(x) + torch.tensor(p["value"], dtype=torch.float32)


def _random_brightness(x, p, key):
    import torch

    delta = reference.draw(p, key, x.shape)
    return _float(x) + torch.tensor(delta, dtype=torch.float32)


def _clip(x, p, key):
    return _float(x).clamp(float(np.float32(p["low"])), float(np.float32(p["high"])))


def _gaussian_noise(x, p, key):
    import torch

    return _float(x) + torch.from_numpy(reference.noise(p, key, tuple(x.shape)))


def _cast(x, p, key):
    import torch

    return x.to(getattr(torch, np.dtype(p["dtype"]).name))


# Each reference field op's torch version, found by name (`_<op>` above); the reference's own
# where it is pure slicing, which a torch tensor does the same way (random_window, truncate).
_FIELD_OPS = {op: globals().get(f"_{op}", fn) for op, fn in reference.FIELD_OPS.items()}

_TABLES: dict[tuple[int, int, int], Any] = {}


def _embedding_table(num_rows: int, dim: int, table_seed: int):
    import torch

    key = (num_rows, dim, table_seed)
    if key not in _TABLES:
        _TABLES[key] = torch.from_numpy(
            np.array(reference.embedding_table(num_rows, dim, table_seed))
        )
    return _TABLES[key]


def _embedding_lookup(step: Mapping[str, Any], ids):
    import torch.nn.functional as F

    return F.embedding(ids, _embedding_table(step["num_rows"], step["dim"], step["table_seed"]))


def _mean(outputs: list[Any]):
    outputs = [_float(o) for o in outputs]
    return sum(outputs[1:], outputs[0]) / float(len(outputs))


# --- the random ops on a stacked batch, one draw per row (`reference.apply_batch_step`) ------


def _flip_rows(x, p, flips):
    import torch

    out = x.clone()
    rows = torch.as_tensor(np.flatnonzero(flips))
    out[rows] = torch.flip(x[rows], dims=(2,))
    return out


def _brightness_rows(x, p, deltas):
    import torch

    rows = torch.from_numpy(np.asarray(deltas, dtype=np.float32))
    return _float(x) + rows.reshape(-1, *([1] * (x.dim() - 1)))


def _window_rows(x, p, starts):
    import torch

    columns = torch.as_tensor(starts, dtype=torch.int64)[:, None] + torch.arange(p["length"])
    return x[torch.arange(len(x))[:, None], columns]


TORCH_OPS = reference.LeafOps(
    fields=_FIELD_OPS,
    embedding_lookup=_embedding_lookup,
    mean=_mean,
    batch_fields={
        "random_horizontal_flip": _flip_rows,
        "random_brightness": _brightness_rows,
        "random_window": _window_rows,
    },
)


def batch_collate(steps: list[dict[str, Any]], elements: list[dict[str, Any]]):
    """Stack elements, then apply the batchable `steps` to the batch (the tuned style), drawing
    with the keys the elements kept.

    In a worker, the fields the steps made go into shared memory allocated there
    (`_shared_in_worker`), as `default_collate` does: tensors of the worker's heap are moved
    only as the feeder thread pickles them, which widens the window in which a worker's exit
    cuts that thread off (see `join_feeders_at_exit`).
    """
    from torch.utils.data import default_collate

    if isinstance(elements, SlicedBatch):
        batch, keys = dict(elements.fields), elements.keys
        steps = steps[elements.done :]
    else:
        elements, keys = reference.take_element_keys(elements)
        batch = default_collate(elements)
    return _shared_in_worker(reference.apply_batch_steps(steps, batch, TORCH_OPS, keys))


def _shared_in_worker(batch: dict[str, Any]) -> dict[str, Any]:
    """In a worker: every tensor of `batch` made after `default_collate` moved into shared
    memory allocated here, as `default_collate` does with the batches it stacks."""
    import torch
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return batch
    for name, value in batch.items():
        if isinstance(value, torch.Tensor) and not value.is_shared():
            storage = value._typed_storage()._new_shared(value.numel(), device=value.device)
            batch[name] = value.new(storage).resize_(value.shape).copy_(value)
    return batch


def pad_collate(batch_steps: dict[str, Mapping[str, Any]], elements: list[dict[str, Any]]):
    """Stack elements; pad the fields of batch-level `pad_batch` steps (NLP-2's dynamic padding)."""
    import torch
    from torch.utils.data import default_collate

    out = default_collate([{k: v for k, v in e.items() if k not in batch_steps} for e in elements])
    for name, step in batch_steps.items():
        seqs = [e[name] for e in elements]
        lengths = torch.tensor([len(s) for s in seqs])
        multiple = step["multiple"]
        length = max(multiple, -(-int(lengths.max()) // multiple) * multiple)
        tokens = torch.full((len(seqs), length), step["pad_value"], dtype=seqs[0].dtype)
        for row, seq in enumerate(seqs):
            tokens[row, : len(seq)] = seq
        out[name] = tokens
        out[step["mask"]] = (torch.arange(length)[None, :] < lengths[:, None]).to(torch.int32)
    return _shared_in_worker(out)


# How long a worker's exit waits for its result queue's feeder thread; the DataLoader itself
# terminates a worker still alive after this long (`MP_STATUS_CHECK_INTERVAL`).
FEEDER_JOIN_TIMEOUT_S = 5.0


def join_feeders_at_exit(worker_id: int) -> None:
    """`worker_init_fn`: the worker's exit waits for its queue feeder threads to finish.

    A worker closes its result queue without joining the feeder thread (`cancel_join_thread`)
    and exits. The feeder frees each batch after pickling it; if interpreter finalization
    starts while a tensor's deallocation has released the GIL, Python ends the feeder with
    `pthread_exit`, whose unwinding through torch's C++ frames aborts the worker ("terminate
    called without an active exception"; the DataLoader then raises "worker killed by signal:
    Aborted"). atexit handlers run before finalization, so joining there closes that window.
    """
    atexit.register(join_queue_feeders, FEEDER_JOIN_TIMEOUT_S)


def join_queue_feeders(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        # multiprocessing.Queue's feeder thread; it ends once the closed queue is flushed.
        if thread.name == "QueueFeederThread":
            thread.join(max(0.0, deadline - time.monotonic()))


class TorchLoader(Loader):
    def __init__(self, ctx: CellContext, batch_ops: frozenset[str] = frozenset()):
        import torch
        from torch.utils.data import DataLoader

        workers = int(ctx.parallelism.get("workers", 0))
        prefetch = int(ctx.parallelism.get("prefetch", 2))
        pin = ctx.profile.backend == "gpu" and torch.cuda.is_available()
        batch_steps = {s["field"]: s for s in ctx.workload.transforms if s["op"] == "pad_batch"}
        self.sampler = EpochSampler(ctx.workload.num_elements)
        options: dict[str, Any] = {}
        if workers > 0:
            options = {
                "persistent_workers": True,
                "prefetch_factor": max(1, prefetch),
                "multiprocessing_context": "spawn",
                "worker_init_fn": join_feeders_at_exit,
            }
        records, self.source_info = _records(ctx)
        per_element, per_batch = reference.tuned_split(ctx.workload.transforms, batch_ops)
        # A collate_fn only where the workload needs batch-level work: dynamic padding, or the
        # tuned style's batched steps.
        collate = None
        if batch_steps:
            collate = partial(pad_collate, batch_steps)
        elif per_batch:
            collate = partial(batch_collate, per_batch)
        keep_key = reference.draws_per_row(per_batch)
        # One slice per batch where nothing is left per element and every field is dense.
        sliced = per_batch and not per_element and isinstance(records, Dataset)
        sliced = sliced and not records.ragged
        if sliced:
            self.sampler = EpochSampler(ctx.workload.num_batches)  # batch numbers
            dataset = SlicedDataset(ctx, records, per_batch, ctx.workload.batch_size)
            batching: dict[str, Any] = {"batch_size": None}
        else:
            dataset = ElementDataset(ctx, records, per_element, keep_key)
            batching = {"batch_size": ctx.workload.batch_size, "drop_last": True}
        self.loader = DataLoader(
            dataset,
            sampler=self.sampler,
            **batching,
            num_workers=workers,
            pin_memory=pin,
            collate_fn=collate,
            **options,
        )
        self.parallelism = {
            "workers": workers,
            "prefetch_factor": options.get("prefetch_factor"),
            "persistent_workers": bool(options.get("persistent_workers", False)),
            "multiprocessing_context": options.get("multiprocessing_context"),
            "pin_memory": pin,
            "main_process_torch_threads": torch.get_num_threads(),
        }

    def epoch(self, epoch: int) -> Iterator[Batch]:
        self.sampler.set_epoch(epoch)
        yield from self.loader

    def close(self) -> None:
        # Persistent workers live as long as the DataLoader's iterator; stop them now rather
        # than whenever garbage collection gets to it, so no worker outlives its cell.
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None


@register
class PyTorchDataLoader(Adapter):
    id = "pytorch"
    display_name = "PyTorch DataLoader"
    aliases = ("torch", "dataloader", "pytorch-dataloader")
    distributions = ("torch", "pillow")
    ops = frozenset(_FIELD_OPS) | reference.STRUCTURE_OPS | reference.BATCH_OPS
    styles = frozenset({"plain", "tuned"})
    batch_ops = reference.BATCHABLE_OPS
    # The map-style Dataset indexes the cached arrays lazily (workers re-map the files): it streams.
    measures = frozenset({"throughput", "streaming"})
    backends = frozenset({"memory", "npy_mmap", "tfds"})
    backend_reasons = {
        "array_record": "PyTorch has no ArrayRecord reader (TFDS's data_source, its documented "
        "random-access path, is the tfds variant)",
        "tfrecord": "PyTorch has no TFRecord reader (torchdata's TFRecordLoader went with its "
        "DataPipes)",
        "parquet": "PyTorch has no Parquet reader (torchdata's ParquetDataFrameLoader went with "
        "its DataPipes)",
    }
    measure_reasons = {
        "checkpoint": "PyTorch DataLoader has no iterator-state API (no state_dict to save and "
        "restore its position mid-epoch), so PR-1 cannot use a native one",
    }

    def open(self, ctx: CellContext) -> Loader:
        return TorchLoader(ctx, self.batched_ops())

    def jpeg_decoder(self) -> str:
        return f"PIL.Image.open, as torchvision's ImageFolder loads ({reference.jpeg_library()})"

    def tuning_grid(self, ctx: CellContext, cores: int) -> list[dict[str, Any]]:
        return worker_prefetch_grid(cores)

    to_host = staticmethod(tensor_to_host)
