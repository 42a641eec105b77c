"""Throughput: the profile's repetitions of the timed window; then, where the profile has a
`feed`, whether the loader keeps an emulated accelerator fed (datarax_bench.feed), untimed with
respect to those windows."""

from __future__ import annotations

from .. import feed
from ..harness import MeasureBody, cell_context, first_device, make_delivery, repeat
from . import register


@register("throughput")
def measure_throughput(adapter, workload, dataset, profile, progress=None) -> MeasureBody:
    device = first_device()
    ctx = cell_context(workload, dataset, profile)
    deliver = make_delivery(adapter, device)
    body = repeat(adapter, ctx, deliver, device, progress)
    settings = feed.settings_for(profile, workload)
    if settings is not None:
        body.feed = feed.measure_feed(adapter, ctx, deliver, settings, progress)
    return body
