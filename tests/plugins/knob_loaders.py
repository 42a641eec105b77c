"""NumPy references whose speed (or bytes) depend on a parallelism knob, for the tuning tests.

Loaded through DATARAX_BENCH_PLUGINS. `test-knob-numpy` pauses |workers - 2| x 5 ms per batch:
of its grid, workers=2 is the fastest by far. `test-knob-bytes` is fastest at workers=3 (no
pause, against 2 ms at workers=2), but that point adds one to every value it delivers, so the
sweep must leave it out. `test-knob-crash` cannot start with workers=2 (its best setting) and
`test-knob-broken` with none.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from datarax_bench.adapters import register
from datarax_bench.adapters.numpy_ref import NumpyLoader, NumpyReference

BEST_WORKERS = 2
PAUSE_PER_STEP_S = 0.005


class _KnobLoader(NumpyLoader):
    def __init__(self, ctx, batched, shift_at=None):
        super().__init__(ctx, batched)
        self.workers = int(ctx.parallelism["workers"])
        self.pause = PAUSE_PER_STEP_S * abs(self.workers - BEST_WORKERS)
        self.shift = self.workers == shift_at
        self.parallelism = {**self.parallelism, "workers": self.workers}

    def epoch(self, epoch):
        for batch in super().epoch(epoch):
            time.sleep(self.pause)
            if self.shift:
                batch = {k: np.asarray(v) + 1 for k, v in batch.items()}
            yield batch


@register
class KnobNumpy(NumpyReference):
    id = "test-knob-numpy"
    display_name = "NumPy reference with a speed knob"
    aliases = ()

    def open(self, ctx):
        return _KnobLoader(ctx, bool(self.batched_ops()))

    def tuning_grid(self, ctx, cores):
        return [{"workers": w} for w in (0, 1, 2, 3)]


@register
class KnobBytes(NumpyReference):
    id = "test-knob-bytes"
    display_name = "NumPy reference whose fastest setting changes the bytes"
    aliases = ()

    def open(self, ctx):
        loader = _KnobLoader(ctx, bool(self.batched_ops()), shift_at=3)
        loader.pause = {0: 0.01, 2: 0.002, 3: 0.0}.get(loader.workers, 0.01)
        return loader

    def tuning_grid(self, ctx, cores):
        return [{"workers": w} for w in (0, 2, 3)]


@register
class KnobCrash(KnobNumpy):
    id = "test-knob-crash"
    display_name = "NumPy reference that cannot start its fastest setting"
    aliases = ()
    fails_at: tuple[int, ...] = (BEST_WORKERS,)

    def open(self, ctx):
        if int(ctx.parallelism["workers"]) in self.fails_at:
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Aborted.")
        return super().open(ctx)


@register
class KnobBroken(KnobCrash):
    id = "test-knob-broken"
    display_name = "NumPy reference that cannot start any setting"
    aliases = ()
    fails_at = (0, 1, 2, 3)


@register
class KnobFailsOnce(KnobNumpy):
    """Fails its first measurement after the sweep, once per marker file
    (`DATARAX_BENCH_TEST_FAIL_ONCE`): the cell's retry follows a finished sweep."""

    id = "test-knob-fails-once"
    display_name = "NumPy reference whose first measurement after its sweep fails"
    aliases = ()

    opened = [0]  # in this worker process, whichever copy of the adapter opens

    def open(self, ctx):
        self.opened[0] += 1
        marker = Path(os.environ["DATARAX_BENCH_TEST_FAIL_ONCE"])
        if self.opened[0] > len(self.tuning_grid(ctx, 0)) and not marker.exists():
            marker.touch()
            raise RuntimeError("the first measurement after the sweep fails")
        return super().open(ctx)
