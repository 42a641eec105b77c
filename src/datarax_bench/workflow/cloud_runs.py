"""The workflow's cloud runs: one per selected profile (its cluster or managed jobs, its cloud
directory, its logs); the checks before any job; what the onerror handlers do. Nothing here
calls `sky` at planning time, so `snakemake -n` stays instant and offline.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from datarax_bench.cloud import cluster as cloud
from datarax_bench.workflow.cells import Matrix, infra_dir


@dataclass(frozen=True)
class CloudRun:
    """One profile's run on a cloud infra: its cluster's name and its cloud directory
    (results/{profile}/{infra}/cloud: ledger, records, the bill)."""

    profile: str
    infra: str
    run: str
    work_dir: str

    @property
    def cluster(self) -> str:
        return cloud.cluster_name(self.profile, self.infra, self.run)

    def job_name(self, shard: int) -> str:
        """The managed job of shard `shard` (cloud_mode: managed)."""
        from datarax_bench.cloud import managed

        return managed.job_name(self.cluster, int(shard))

    def log(self, name: str) -> Path:
        return Path(f"logs/{self.profile}/{infra_dir(self.infra)}/cloud/{name}.log")


def start_invocation() -> None:
    """One id per invocation, inherited by its jobs: a cluster record from an earlier invocation
    (a killed run) is checked again before a cell trusts it."""
    os.environ.setdefault(cloud.INVOCATION_ENV, uuid.uuid4().hex)


def check_before_planning(config: dict, cells: Matrix, profiles: list[str]) -> None:
    """Before any job of a cloud run: each profile's run length, estimated from its plan (cells
    x worker processes x the profile's per-process estimate), is said on stderr, with a warning
    near max_cluster_hours, and is an error when it cannot fit, since the ceiling would cut the
    run off with cells unmeasured; then an explicit `use_spot: true` on a cloud without spot is
    an error (`auto` is decided by the provision job). Raises UserError."""
    for name in profiles:
        counts = [cells.processes(name, cell) for cell in cells.cells(name)]
        estimate = cloud.estimate_run(cells.profile(name), counts, machines=config["shards"])
        line = cloud.check_run_fits(estimate, name, config["max_cluster_hours"])
        print(line, file=sys.stderr)
    if config["use_spot"] is True:
        cloud.resolve_use_spot(config["infra"], True)


def tear_down_after_error(runs: list[CloudRun], keep_cluster: bool) -> None:
    """cloud.smk's onerror step: each cluster torn down (verified) unless kept, and its bill up to
    now written (`cloud.end_failed_run`)."""
    for run in runs:
        log = run.log("onerror-teardown")
        _, summary = cloud.end_failed_run(run.work_dir, run.cluster, log, keep_cluster)
        print(f"onerror: {summary}")


def cancel_after_error(runs: list[CloudRun], shards: int, keep_cluster: bool) -> None:
    """managed.smk's onerror step: each run's managed jobs cancelled unless kept
    (`managed.cancel_after_error`)."""
    from datarax_bench.cloud import managed

    for run in runs:
        managed.cancel_after_error(
            run.work_dir, run.cluster, shards, keep_cluster, run.log("onerror-cancel")
        )
