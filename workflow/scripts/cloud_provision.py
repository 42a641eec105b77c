"""Rule provision: reuse or launch the profile's cluster and record it in cluster.json."""

from contextlib import redirect_stderr

from datarax_bench import cloud
from datarax_bench.catalog import load_profile
from datarax_bench.provenance import git_info

with open(snakemake.log[0], "a", buffering=1) as log_file, redirect_stderr(log_file):  # noqa: F821
    p = snakemake.params  # noqa: F821
    record = cloud.provision(
        load_profile(snakemake.wildcards.profile),  # noqa: F821
        p.infra,
        p.cluster,
        git_info()[0],
        p.idle_minutes,
        p.use_spot,
        p.work_dir,
        snakemake.log[0],  # noqa: F821
    )
    cloud.write_record(snakemake.output[0], record)  # noqa: F821
