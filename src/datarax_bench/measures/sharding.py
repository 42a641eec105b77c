"""DIST-1: every batch delivered as one global array split over N devices along the batch
axis; timed like throughput, and one delivered batch's real layout recorded."""

from __future__ import annotations

from typing import Any

import numpy as np

from datarax_bench.adapters.base import Adapter, CellContext
from datarax_bench.measures import register
from datarax_bench.measures.harness import (
    MeasureBody,
    UnsupportedHere,
    cell_context,
    first_device,
    make_delivery,
    repeat,
)
from datarax_bench.workload.catalog import Workload


def sharding_target(workload: Workload):
    """A NamedSharding over the first N devices on a 1-D mesh, batch axis split."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    wanted = workload.options["devices"]
    devices = jax.devices()
    if len(devices) < wanted:
        raise UnsupportedHere(
            f"{workload.variant} shards over {wanted} devices; this machine's JAX backend has {len(devices)}"
        )
    if workload.batch_size % wanted:
        raise ValueError(f"batch size {workload.batch_size} does not split over {wanted} devices")
    mesh = Mesh(np.array(devices[:wanted]), ("data",))
    return NamedSharding(mesh, PartitionSpec("data"))


def sharding_report(adapter: Adapter, ctx: CellContext, target) -> dict[str, Any]:
    """Deliver one batch and record how it was really laid out."""
    loader = adapter.open(ctx)
    try:
        batch = make_delivery(adapter, target)(next(iter(loader.epoch(0))))
    finally:
        loader.close()
    fields = {}
    for name, arr in sorted(batch.items()):
        fields[name] = {
            "global_shape": list(arr.shape),
            "shard_shapes": sorted({tuple(s.data.shape) for s in arr.addressable_shards}),
            "devices": len(arr.sharding.device_set),
            "equivalent": bool(arr.sharding.is_equivalent_to(target, arr.ndim)),
        }
    wanted = ctx.workload.options["devices"]
    return {
        "devices": wanted,
        "mesh_shape": dict(target.mesh.shape),
        "partition_spec": str(target.spec),
        "fields": {
            k: {**v, "shard_shapes": [list(x) for x in v["shard_shapes"]]}
            for k, v in fields.items()
        },
        "sharded": all(f["devices"] == wanted and f["equivalent"] for f in fields.values()),
    }


@register("sharding", any_adapter=True)
def measure_sharding(adapter, workload, dataset, profile, progress=None) -> MeasureBody:
    device = first_device()
    target = sharding_target(workload)
    ctx = cell_context(workload, dataset, profile)
    body = repeat(adapter, ctx, make_delivery(adapter, target), device, progress)
    body.special = sharding_report(adapter, ctx, target)
    return body
