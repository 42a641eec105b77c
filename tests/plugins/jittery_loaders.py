"""The NumPy reference paced per batch, its pace set afresh for every loader it opens.

Loaded through DATARAX_BENCH_PLUGINS by the precision tests: DATARAX_TEST_JITTER (a fraction,
0 when unset) spreads the repetitions' paces around 10 ms per batch, so their spread is under
the test's control. The paces follow a fixed sequence across +-jitter rather than random draws:
a few random paces can by chance fall close together and meet a precision target that the
jitter should make out of reach.
"""

from __future__ import annotations

import itertools
import os
import time

from datarax_bench.adapters import register
from datarax_bench.adapters.numpy_ref import NumpyLoader, NumpyReference

JITTER_ENV = "DATARAX_TEST_JITTER"
PACE_S = 0.01
#: The k-th loader's offset, as a fraction of the jitter: any three in a row lie far apart.
OFFSETS = (1.0, -1.0, 0.5, -0.5, 0.75, -0.75, 0.25, -0.25, 0.0)
_opened = itertools.count()


class _PacedLoader(NumpyLoader):
    def __init__(self, ctx):
        super().__init__(ctx)
        jitter = float(os.environ.get(JITTER_ENV) or 0)
        offset = OFFSETS[next(_opened) % len(OFFSETS)]
        self.pause = PACE_S * (1 + jitter * offset)

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
