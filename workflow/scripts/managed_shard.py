"""Rule managed_shard: one shard's missing cells as a managed job, watched to its end."""

import sys
from contextlib import redirect_stderr
from pathlib import Path

from datarax_bench.cloud import cluster as cloud
from datarax_bench.cloud import managed, sky
from datarax_bench.cloud.buckets import parse_bucket
from datarax_bench.workload.catalog import load_profile


class _Both:
    """The shard's progress goes to its log and to Snakemake's terminal."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self):
        for stream in self.streams:
            stream.flush()


with (
    open(snakemake.log[0], "a", buffering=1) as log_file,  # noqa: F821
    redirect_stderr(_Both(log_file, sys.stderr)),
):
    p, w = snakemake.params, snakemake.wildcards  # noqa: F821
    try:
        use_spot, why = sky.resolve_use_spot(p.infra, snakemake.config["use_spot"])  # noqa: F821
        print(f"use_spot: {use_spot} ({why})", file=sys.stderr)
        shard = managed.Shard(
            profile=load_profile(w.profile),
            infra=p.infra,
            index=int(w.shard),
            total=p.shards,
            name=p.name,
            cells=list(p.cells),
            cell_files=dict(p.cell_files),
            bucket=parse_bucket(p.bucket),
            settings=cloud.CloudSettings.from_config(snakemake.config),  # noqa: F821
            work_dir=Path(p.work_dir),
            log=Path(snakemake.log[0]),  # noqa: F821
            keep_cluster=p.keep_cluster,
            poll_s=p.poll_s,
            use_spot=use_spot,
            controller_pin=snakemake.config.get("managed_controller") or None,  # noqa: F821
        )
        managed.run_shard(shard, Path(snakemake.output[0]))  # noqa: F821
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise
