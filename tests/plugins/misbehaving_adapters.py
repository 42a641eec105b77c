"""Adapters that misbehave on purpose, loaded through DATARAX_BENCH_PLUGINS by the tests.

They check that the runner turns every kind of trouble into a result file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from datarax_bench.adapters import register
from datarax_bench.adapters.base import Adapter, Loader
from datarax_bench.adapters.numpy_ref import NumpyLoader
from datarax_bench.workload.reference import ALL_OPS

#: Where the hanging adapter writes the pid of the child it starts (to prove it was killed).
CHILD_PID_FILE = "DATARAX_TEST_CHILD_PID_FILE"


class _Hanging(Loader):
    parallelism = {"workers": 1}

    def __init__(self):
        # A worker process of our own, like a DataLoader's, that must not outlive the cell.
        self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        if os.environ.get(CHILD_PID_FILE):
            with open(os.environ[CHILD_PID_FILE], "w") as fh:
                fh.write(str(self.child.pid))

    def epoch(self, epoch):
        while True:
            time.sleep(1)
        yield  # pragma: no cover


@register
class HangingAdapter(Adapter):
    id = "test-hang"
    display_name = "Test hanging loader"
    ops = ALL_OPS

    def open(self, ctx):
        return _Hanging()


@register
class CrashingAdapter(Adapter):
    id = "test-crash"
    display_name = "Test crashing loader"
    ops = ALL_OPS

    def open(self, ctx):
        print("about to die hard", file=sys.stderr, flush=True)
        os._exit(3)


@register
class RaisingAdapter(Adapter):
    id = "test-raise"
    display_name = "Test raising loader"
    ops = ALL_OPS

    def open(self, ctx):
        raise ValueError("the loader refused this workload")


@register
class MissingFrameworkAdapter(Adapter):
    id = "test-missing"
    display_name = "Test missing framework"
    ops = ALL_OPS

    def open(self, ctx):
        import framework_that_is_not_installed  # noqa: F401

        return NumpyLoader(ctx)


@register
class LimitedAdapter(Adapter):
    id = "test-limited"
    display_name = "Test limited loader"
    ops = ALL_OPS - {"random_resized_crop"}

    def open(self, ctx):
        return NumpyLoader(ctx)


#: Where the adapter that aborts once marks that it did, so that its next worker measures.
ABORT_ONCE_FILE = "DATARAX_TEST_ABORT_ONCE_FILE"
#: Batches the first worker delivers before it aborts: the warmup and the first repetition.
ABORT_AFTER_BATCHES = 5


class _AbortsOnce(NumpyLoader):
    """The NumPy reference, whose first worker ever aborts mid-measurement (as a C++ runtime's
    `terminate` does), after it measured a repetition."""

    delivered = 0

    def epoch(self, epoch):
        marker = os.environ[ABORT_ONCE_FILE]
        for batch in super().epoch(epoch):
            _AbortsOnce.delivered += 1
            if _AbortsOnce.delivered > ABORT_AFTER_BATCHES and not os.path.exists(marker):
                with open(marker, "w") as fh:
                    fh.write(str(os.getpid()))
                print("terminate called without an active exception", file=sys.stderr, flush=True)
                os.abort()
            yield batch


@register
class AbortsOnceAdapter(Adapter):
    id = "test-abort-once"
    display_name = "Test loader that aborts once"
    ops = ALL_OPS

    def open(self, ctx):
        return _AbortsOnce(ctx)
