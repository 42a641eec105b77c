"""Real PyTorch and Grain pipelines whose worker processes hang inside the element function.

Loaded through DATARAX_BENCH_PLUGINS by the interruption tests: each loader worker process
touches a file named by its pid in DATARAX_TEST_HANG_PID_DIR, then sleeps, so a test knows the
framework's own processes are running when it kills their supervisor.
"""

from __future__ import annotations

import os
import time

from datarax_bench.adapters import grain as grain_adapter
from datarax_bench.adapters import pytorch, register

PID_DIR = "DATARAX_TEST_HANG_PID_DIR"


def _hang() -> None:
    with open(os.path.join(os.environ[PID_DIR], str(os.getpid())), "w"):
        pass
    time.sleep(600)


class _HangingDataset(pytorch.ElementDataset):
    def __getitem__(self, key):
        _hang()


class _HangingTorchLoader(pytorch.TorchLoader):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.loader.dataset.__class__ = _HangingDataset


@register
class HangingTorchWorkers(pytorch.PyTorchDataLoader):
    id = "test-hang-torch-workers"
    display_name = "PyTorch DataLoader whose workers hang"

    def open(self, ctx):
        return _HangingTorchLoader(ctx)


class _HangingTransform(grain_adapter.ElementTransform):
    def __call__(self, position, element):
        _hang()


class _HangingGrainLoader(grain_adapter.GrainLoader):
    def __init__(self, ctx):
        # GrainLoader builds its pipeline from the module's ElementTransform.
        original = grain_adapter.ElementTransform
        grain_adapter.ElementTransform = _HangingTransform
        try:
            super().__init__(ctx)
        finally:
            grain_adapter.ElementTransform = original


@register
class HangingGrainWorkers(grain_adapter.Grain):
    id = "test-hang-grain-workers"
    display_name = "Grain mp_prefetch whose workers hang"

    def open(self, ctx):
        return _HangingGrainLoader(ctx)
