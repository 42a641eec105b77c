"""The NumPy reference adapter: no loader framework, the zero-framework floor.

Slices elements from the cached arrays, applies every catalog transform with the reference
semantics (`datarax_bench.reference`) and stacks batches, in the consuming thread.
"""

from __future__ import annotations

from collections.abc import Iterator

from .. import reference
from . import register
from .base import Adapter, Batch, CellContext, Loader


class NumpyLoader(Loader):
    def __init__(self, ctx: CellContext):
        self.ctx = ctx
        self.parallelism = {"threads": 1, "workers": 0, "prefetch": 0}

    def epoch(self, epoch: int) -> Iterator[Batch]:
        w = self.ctx.workload
        for b in range(w.num_batches):
            yield reference.reference_batch(
                self.ctx.dataset, w.transforms, self.ctx.seed, epoch, b, w.batch_size
            )


@register
class NumpyReference(Adapter):
    id = "numpy"
    display_name = "NumPy reference"
    aliases = ("reference", "numpy-reference")
    distributions = ("numpy",)
    ops = reference.ALL_OPS
    # Reads each element from the cached arrays as it goes: memory-mapped files stream from disk.
    measures = frozenset({"throughput", "streaming"})

    def open(self, ctx: CellContext) -> Loader:
        return NumpyLoader(ctx)
