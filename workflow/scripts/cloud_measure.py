"""Rule measure_remote: one cell on the cluster, pulled back and validated, as one job."""

import sys
from contextlib import redirect_stderr

from datarax_bench import cloud
from datarax_bench.catalog import load_profile

with open(snakemake.log[0], "a", buffering=1) as log_file, redirect_stderr(log_file):  # noqa: F821
    p, w = snakemake.params, snakemake.wildcards  # noqa: F821
    try:
        cloud.measure_remote_cell(
            load_profile(w.profile),
            p.infra,
            p.cluster,
            cloud.CloudSettings.from_config(snakemake.config),  # noqa: F821
            p.work_dir,
            w.scenario,
            w.variant,
            w.adapter,
            snakemake.output[0],  # noqa: F821
            snakemake.log[0],  # noqa: F821
        )
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)  # the reason, in the cell's log too
        raise
