"""Rule pull: rsync one cell's result back and validate it before it becomes the target."""

from contextlib import redirect_stderr

from datarax_bench import cloud

with open(snakemake.log[0], "a", buffering=1) as log_file, redirect_stderr(log_file):  # noqa: F821
    w = snakemake.wildcards  # noqa: F821
    cloud.pull_cell(
        snakemake.params.cluster,  # noqa: F821
        w.profile,
        w.scenario,
        w.variant,
        w.adapter,
        snakemake.output[0],  # noqa: F821
        snakemake.log[0],  # noqa: F821
    )
