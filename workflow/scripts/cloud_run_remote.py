"""Rule run_remote: one cell on the cluster with `sky exec` (relaunching a gone cluster)."""

from contextlib import redirect_stderr

from datarax_bench import cloud
from datarax_bench.catalog import load_profile
from datarax_bench.provenance import git_info

with open(snakemake.log[0], "a", buffering=1) as log_file, redirect_stderr(log_file):  # noqa: F821
    p, w = snakemake.params, snakemake.wildcards  # noqa: F821
    record = cloud.run_remote_cell(
        load_profile(w.profile),
        p.infra,
        p.cluster,
        git_info()[0],
        p.idle_minutes,
        p.use_spot,
        p.work_dir,
        w.scenario,
        w.variant,
        w.adapter,
        snakemake.log[0],  # noqa: F821
    )
    cloud.write_record(snakemake.output[0], record)  # noqa: F821
