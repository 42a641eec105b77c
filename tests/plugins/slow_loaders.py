"""The NumPy reference with a pause before each batch: a loader that got slower.

Loaded through DATARAX_BENCH_PLUGINS by the comparison tests. The pause is
DATARAX_TEST_LOADER_SLEEP_S seconds per batch (0 when unset), so one adapter id measures as
the reference in one run and as a regression in the next.
"""

from __future__ import annotations

import os
import time

from datarax_bench.adapters import register
from datarax_bench.adapters.numpy_ref import NumpyLoader, NumpyReference

SLEEP_ENV = "DATARAX_TEST_LOADER_SLEEP_S"


class _SleepingLoader(NumpyLoader):
    def epoch(self, epoch):
        pause = float(os.environ.get(SLEEP_ENV) or 0)
        for batch in super().epoch(epoch):
            time.sleep(pause)
            yield batch


@register
class SleepingNumpy(NumpyReference):
    id = "test-sleepy-numpy"
    display_name = "NumPy reference that sleeps per batch"
    aliases = ()

    def open(self, ctx):
        return _SleepingLoader(ctx)
