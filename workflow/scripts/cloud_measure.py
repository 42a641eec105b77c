"""Rule measure_remote: one cell on the cluster, pulled back and validated, as one job."""

import sys
from contextlib import redirect_stderr
from pathlib import Path

from datarax_bench.cloud import cluster as cloud
from datarax_bench.workload.catalog import load_profile

with open(snakemake.log[0], "a", buffering=1) as log_file, redirect_stderr(log_file):  # noqa: F821
    p, w = snakemake.params, snakemake.wildcards  # noqa: F821
    try:
        spec = cloud.ClusterSpec(
            profile=load_profile(w.profile),
            infra=p.infra,
            name=p.cluster,
            settings=cloud.CloudSettings.from_config(snakemake.config),  # noqa: F821
            work_dir=Path(p.work_dir),
            log=Path(snakemake.log[0]),  # noqa: F821
        )
        output = snakemake.output[0]  # noqa: F821
        cloud.measure_remote_cell(spec, w.scenario, w.variant, w.adapter, output, p.style)
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)  # the reason, in the cell's log too
        raise
