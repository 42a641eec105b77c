"""PC-2: a pipeline whose steps branch and merge, timed like throughput; the special metrics
say what the DAG was."""

from __future__ import annotations

from datarax_bench.measures import register
from datarax_bench.measures.harness import MeasureBody
from datarax_bench.measures.throughput import measure_throughput


@register("dag", any_adapter=True, pooled=True)
def measure_dag(adapter, workload, dataset, profile, progress=None) -> MeasureBody:
    body = measure_throughput(adapter, workload, dataset, profile, progress)
    merges = [t for t in workload.transforms if t["op"] == "branch_merge"]
    body.special = {
        "branches": [len(t["branches"]) for t in merges],
        "merge": [t["merge"] for t in merges],
        "ops": workload.ops(),
    }
    return body
