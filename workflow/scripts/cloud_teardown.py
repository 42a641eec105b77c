"""Rule teardown: `sky down` the run's cluster (unless keep_cluster) and record the cost."""

import sys
from contextlib import redirect_stderr

from datarax_bench import cloud
from datarax_bench.results import utc_now

with open(snakemake.log[0], "a", buffering=1) as log_file, redirect_stderr(log_file):  # noqa: F821
    p = snakemake.params  # noqa: F821
    if p.keep_cluster:
        record = {"clusters": [], "kept": [p.cluster], "at": utc_now()}
        print(f"keep_cluster: true; {p.cluster} stays up and bills", file=sys.stderr)
    else:
        record = cloud.teardown([p.cluster], snakemake.log[0])  # noqa: F821
    cloud.write_record(snakemake.output[0], record)  # noqa: F821
