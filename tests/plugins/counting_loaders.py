"""The NumPy reference, counting the loaders it opens.

Loaded through DATARAX_BENCH_PLUGINS by the warm-repetition tests: every `open` appends a
line to the file DATARAX_TEST_OPENS names, so a test can tell how many loaders a cell started.
"""

from __future__ import annotations

import os

from datarax_bench.adapters import register
from datarax_bench.adapters.numpy_ref import NumpyReference

OPENS_ENV = "DATARAX_TEST_OPENS"


@register
class CountingNumpy(NumpyReference):
    id = "test-counting-numpy"
    display_name = "NumPy reference that counts its loaders"
    aliases = ()

    def open(self, ctx):
        with open(os.environ[OPENS_ENV], "a") as fh:
            fh.write("open\n")
        return super().open(ctx)
