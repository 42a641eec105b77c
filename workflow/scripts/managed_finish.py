"""Rule managed_finish: the same hardware on every shard, no job left running, the record."""

import sys
from contextlib import redirect_stderr

from datarax_bench.cloud import managed
from datarax_bench.cloud.buckets import parse_bucket
from datarax_bench.results import write_json_atomic

with open(snakemake.log[0], "a", buffering=1) as log_file, redirect_stderr(log_file):  # noqa: F821
    p, w = snakemake.params, snakemake.wildcards  # noqa: F821
    try:
        record = managed.finish(
            p.work_dir,
            snakemake.input.reports,  # noqa: F821
            {int(k): v for k, v in p.cells_by_shard.items()},
            parse_bucket(p.bucket),
            w.profile,
            p.infra,
            snakemake.log[0],  # noqa: F821
            keep_controller=snakemake.config["keep_cluster"],  # noqa: F821
        )
        write_json_atomic(snakemake.output[0], record)  # noqa: F821
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise
