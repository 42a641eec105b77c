"""Rule pull_cell: one cell's result from the results bucket, validated, as a raw result."""

import sys
from contextlib import redirect_stderr

from datarax_bench.cloud import managed
from datarax_bench.cloud.buckets import parse_bucket
from datarax_bench.run.cell import CellId

with open(snakemake.log[0], "a", buffering=1) as log_file, redirect_stderr(log_file):  # noqa: F821
    p, w = snakemake.params, snakemake.wildcards  # noqa: F821
    try:
        rel = str(CellId(w.scenario, w.variant, w.adapter, p.style).path())
        managed.pull_cell(parse_bucket(p.bucket), w.profile, p.infra, rel, snakemake.output[0])  # noqa: F821
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise
