"""Throughput: for the tuned style, first a short sweep of the loader's parallelism knobs
(datarax_bench.measures.tuning, cached, its cost kept out of the repetitions); then the profile's
repetitions of the timed window with the chosen setting; then, where the profile has a `feed`,
whether the loader keeps an emulated accelerator fed (datarax_bench.measures.feed), untimed with respect
to those windows."""

from __future__ import annotations

from datarax_bench.measures import feed, register, tuning
from datarax_bench.measures.harness import (
    MeasureBody,
    cell_context,
    first_device,
    make_delivery,
    repeat,
)


@register("throughput", pooled=True)
def measure_throughput(adapter, workload, dataset, profile, progress=None) -> MeasureBody:
    device = first_device()
    ctx = cell_context(workload, dataset, profile)
    deliver = make_delivery(adapter, device)
    ctx, tuned = tuning.tune(adapter, ctx, deliver, progress)
    body = repeat(adapter, ctx, deliver, device, progress)
    body.tuning = tuned
    settings = feed.settings_for(profile, workload)
    if settings is not None:
        body.feed = feed.measure_feed(adapter, ctx, deliver, settings, progress)
    return body
