"""The NumPy reference, counting the loaders it opens.

Loaded through DATARAX_BENCH_PLUGINS by the warm-repetition and worker-process tests: every
`open` appends a line (`open ADAPTER PID`) to the file DATARAX_TEST_OPENS names, so a test can
tell how many loaders a cell started, and which process of which cell started them.
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
        # Which adapter opened it, in which process: the order of a matrix's processes shows.
        with open(os.environ[OPENS_ENV], "a") as fh:
            fh.write(f"open {self.id} {os.getpid()}\n")
        return super().open(ctx)


FAIL_FROM_ENV = "DATARAX_TEST_FAIL_FROM_OPEN"


@register
class FailingNumpy(CountingNumpy):
    """Counts its loaders like the one above and raises from the Nth on (N in
    DATARAX_TEST_FAIL_FROM_OPEN): a cell's later worker process fails where its first did not."""

    id = "test-failing-numpy"
    display_name = "NumPy reference that fails from its Nth loader"

    def open(self, ctx):
        loader = super().open(ctx)
        with open(os.environ[OPENS_ENV]) as fh:
            opened = len(fh.read().splitlines())
        if opened >= int(os.environ[FAIL_FROM_ENV]):
            loader.close()
            raise RuntimeError(f"loader {opened} refused to open")
        return loader
