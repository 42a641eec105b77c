"""Throughput: the profile's repetitions of the timed window, nothing else."""

from __future__ import annotations

from ..harness import MeasureBody, cell_context, first_device, make_delivery, repeat
from . import register


@register("throughput")
def measure_throughput(adapter, workload, dataset, profile, progress=None) -> MeasureBody:
    device = first_device()
    ctx = cell_context(workload, dataset, profile)
    return repeat(adapter, ctx, make_delivery(adapter, device), device, progress)
