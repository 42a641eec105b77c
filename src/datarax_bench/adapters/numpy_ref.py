"""The NumPy reference adapter: no loader framework, the zero-framework floor.

Slices elements from the cached arrays, applies every catalog transform with the reference
semantics (`datarax_bench.workload.reference`) and stacks batches, in the consuming thread. Its whole
state is its position (epoch, next batch): every batch is a pure function of seed, epoch and
batch index. JPEG files are decoded by Pillow (the reference's `decode_jpeg`: libjpeg-turbo, its
accurate integer IDCT), https://pillow.readthedocs.io/en/stable/handbook/image-file-formats.html.

The tuned style is NumPy's own advice for speed, vectorise (https://numpy.org/doc/stable/user/
whatisnumpy.html, "Why is NumPy fast?"), where nothing is left per element and every field is
dense: the batch is read as one slice of each cached array (NLP-1: only its windows, through a
strided window view, `_sliced.sliced_batch`, as nanoGPT's `get_batch` reads a token memmap), and
the workload's batchable steps (`reference.tuned_split`: value-wise ops, shift_targets,
and the random flip, brightness and window, every row's draws at once from the rows' keys) run
once on the batch. Where steps stay per element (CV-1's crop), the trailing ones stay per element
too: each runs on an element while it is in the cache, which measured faster than a second walk
over the stacked batch (tuned/plain 0.75-0.87 on CV-1 before, docs/measurements.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datarax_bench.adapters import register
from datarax_bench.adapters._sliced import sliced_batch
from datarax_bench.adapters.base import Adapter, Batch, CellContext, Loader
from datarax_bench.workload import formats, reference


class NumpyLoader(Loader):
    def __init__(self, ctx: CellContext, batched: bool = False):
        self.ctx = ctx
        self.parallelism = {"threads": 1, "workers": 0, "prefetch": 0}
        self.source_info = formats.npy_source_info(ctx.dataset)
        self._next = (0, 0)  # (epoch, batch) of the next batch to yield
        self._resume: tuple[int, int] | None = None
        self._batch = reference.reference_batch
        _, self._steps = reference.tuned_split(
            ctx.workload.transforms, reference.BATCHABLE_OPS if batched else frozenset()
        )
        if self._steps and not ctx.dataset.ragged:
            self._batch = self._sliced_batch

    def _sliced_batch(self, dataset, transforms, seed, epoch, b, batch_size):
        """The batch as slices (windows) of the cached arrays, then the batch steps."""
        indices = np.arange(b * batch_size, (b + 1) * batch_size)
        batch, keys, done = sliced_batch(dataset, indices, seed, epoch, self._steps)
        return reference.apply_batch_steps(self._steps[done:], batch, reference.REFERENCE_OPS, keys)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        w = self.ctx.workload
        first = 0
        if self._resume is not None and self._resume[0] == epoch:
            first = self._resume[1]
        self._resume = None
        for b in range(first, w.num_batches):
            batch = self._batch(
                self.ctx.dataset, w.transforms, self.ctx.seed, epoch, b, w.batch_size
            )
            self._next = (epoch, b + 1)
            yield batch

    def save_state(self, directory: Path) -> None:
        epoch, batch = self._next
        (directory / "position.json").write_text(json.dumps({"epoch": epoch, "batch": batch}))

    def restore_state(self, directory: Path) -> None:
        state = json.loads((directory / "position.json").read_text())
        self._resume = (int(state["epoch"]), int(state["batch"]))


@register
class NumpyReference(Adapter):
    id = "numpy"
    display_name = "NumPy reference"
    aliases = ("reference", "numpy-reference")
    distributions = ("numpy",)
    ops = reference.ALL_OPS
    styles = frozenset({"plain", "tuned"})
    batch_ops = reference.BATCHABLE_OPS
    # Reads each element from the cached arrays as it goes: memory-mapped files stream from disk.
    measures = frozenset({"throughput", "streaming", "checkpoint"})
    # The zero-framework floor reads the .npy cache, from RAM or memory-mapped, and nothing else.
    backends = frozenset({"memory", "npy_mmap"})
    backend_reasons = {
        b: f"The NumPy reference reads only the .npy cache (in memory or memory-mapped); "
        f"reading {b} files takes a framework"
        for b in ("array_record", "tfrecord", "tfds", "parquet")
    }

    def open(self, ctx: CellContext) -> Loader:
        return NumpyLoader(ctx, bool(self.batched_ops()))
