"""The NumPy reference paced per batch, its pace drawn afresh for every loader it opens.

Loaded through DATARAX_BENCH_PLUGINS by the precision tests: DATARAX_TEST_JITTER (a fraction,
0 when unset) spreads each repetition's pace uniformly around 10 ms per batch, so the
repetitions' spread is under the test's control.
"""

from __future__ import annotations

import os
import random
import time

from datarax_bench.adapters import register
from datarax_bench.adapters.numpy_ref import NumpyLoader, NumpyReference

JITTER_ENV = "DATARAX_TEST_JITTER"
PACE_S = 0.01


class _PacedLoader(NumpyLoader):
    def __init__(self, ctx):
        super().__init__(ctx)
        jitter = float(os.environ.get(JITTER_ENV) or 0)
        self.pause = PACE_S * (1 + random.uniform(-jitter, jitter))

    def epoch(self, epoch):
        for batch in super().epoch(epoch):
            time.sleep(self.pause)
            yield batch


@register
class JitteryNumpy(NumpyReference):
    id = "test-jittery-numpy"
    display_name = "NumPy reference with a controlled pace per repetition"
    aliases = ()

    def open(self, ctx):
        return _PacedLoader(ctx)
