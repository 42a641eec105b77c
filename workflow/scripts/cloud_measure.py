"""Rule measure_remote: one cell on the cluster, pulled back and validated, as one job (its
batch-mates measured by the same `sky exec` when they have no result yet)."""

import sys
from contextlib import redirect_stderr
from pathlib import Path

from datarax_bench.cloud import cluster as cloud
from datarax_bench.run.cell import CellId
from datarax_bench.workflow.cloud_runs import remote_batch
from datarax_bench.workload.catalog import load_profile

with open(snakemake.log[0], "a", buffering=1) as log_file, redirect_stderr(log_file):  # noqa: F821
    p, w, config = snakemake.params, snakemake.wildcards, snakemake.config  # noqa: F821
    try:
        cell = CellId(w.scenario, w.variant, w.adapter, p.style)
        batch, longest = remote_batch(config, w.profile, cell)
        spec = cloud.ClusterSpec(
            profile=load_profile(w.profile),
            infra=p.infra,
            name=p.cluster,
            settings=cloud.CloudSettings.from_config(config),
            work_dir=Path(p.work_dir),
            log=Path(snakemake.log[0]),  # noqa: F821
            batch_cells=longest,
        )
        output = snakemake.output[0]  # noqa: F821
        cloud.measure_remote_cell(spec, *cell[:3], output, cell.style, batch=batch)
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)  # the reason, in the cell's log too
        raise
