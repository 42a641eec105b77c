"""The workflow's cloud runs: one per selected profile (its cluster or managed jobs, its cloud
directory, its logs); the checks before any job; what the onerror handlers do. Nothing here
calls `sky` at planning time, so `snakemake -n` stays instant and offline.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from datarax_bench.cloud import billing, sky
from datarax_bench.cloud import cluster as cloud
from datarax_bench.results import infra_dir
from datarax_bench.workflow.cells import Matrix


@dataclass(frozen=True)
class CloudRun:
    """One profile's run on a cloud infra: its cluster's name and its cloud directory
    (results/{profile}/{infra}/cloud: ledger, records, the bill)."""

    profile: str
    infra: str
    run: str
    #: The cloud directory, or its pattern with {profile} and {infra} (as the workflow's).
    work_dir: str

    def __post_init__(self) -> None:
        work_dir = self.work_dir.format(profile=self.profile, infra=infra_dir(self.infra))
        object.__setattr__(self, "work_dir", work_dir)

    @property
    def cluster(self) -> str:
        return cloud.cluster_name(self.profile, self.infra, self.run)

    def job_name(self, shard: int) -> str:
        """The managed job of shard `shard` (cloud_mode: managed)."""
        from datarax_bench.cloud import managed

        return managed.job_name(self.cluster, int(shard))

    def log(self, name: str) -> Path:
        return Path(f"logs/{self.profile}/{infra_dir(self.infra)}/cloud/{name}.log")


def prepare(config: dict, cells: Matrix, profiles: list, work_dir: str) -> dict[str, CloudRun]:
    """Profile name -> its cloud run, for the selected `profiles` (`Profile`s; `work_dir`: the
    cloud directory's pattern). On a cloud infra, before any job: the invocation's id, then
    `check_before_planning` (which raises UserError)."""
    names = [profile.name for profile in profiles]
    runs = {name: CloudRun(name, config["infra"], config["run"], work_dir) for name in names}
    if config["infra"] != "local":
        start_invocation()
        check_before_planning(config, cells, names)
    return runs


def remote_batch(config: dict, profile: str, cell) -> tuple[list, int]:
    """A remote cell's batch (`cloud/batches.py`) under the config's matrix and
    `remote_batch_cells`, and the cell count of the run's longest batch (which the cluster's
    autodown deadline must cover)."""
    from datarax_bench.cloud import batches
    from datarax_bench.workload.catalog import load_catalog

    catalog = load_catalog()
    matrix = Matrix.from_config(config, catalog)
    size = config.get("remote_batch_cells", batches.DEFAULT_CELLS)
    plan = batches.remote_plan(matrix.profile(profile), catalog, matrix.cells(profile), size)
    return batches.batch_of(plan, cell), max((len(b) for b in plan), default=1)


def start_invocation() -> None:
    """One id per invocation, inherited by its jobs: a cluster record from an earlier invocation
    (a killed run) is checked again before a cell trusts it."""
    os.environ.setdefault(cloud.INVOCATION_ENV, uuid.uuid4().hex)


def check_before_planning(config: dict, cells: Matrix, profiles: list[str]) -> None:
    """Before any job of a cloud run: each profile's run length, estimated from its plan (the
    cells measured on the cloud, in their batches, x worker processes x the profile's
    per-process estimate; an unsupported cell is written here and costs the cloud nothing), is
    said on stderr, with a warning near max_cluster_hours, and is an error when it cannot fit,
    since the ceiling would cut the run off with cells unmeasured; then an explicit
    `use_spot: true` on a cloud without spot is an error (`auto` is decided by the provision
    job). Raises UserError."""
    from datarax_bench.cloud import batches

    size = config.get("remote_batch_cells", batches.DEFAULT_CELLS)
    for name in profiles:
        plan = batches.remote_plan(cells.profile(name), cells.catalog, cells.cells(name), size)
        counts = [cells.processes(name, cell) for batch in plan for cell in batch]
        estimate = billing.estimate_run(
            cells.profile(name), counts, machines=config["shards"], calls=len(plan)
        )
        line = billing.check_run_fits(estimate, name, config["max_cluster_hours"])
        print(line, file=sys.stderr)
    if config["use_spot"] is True:
        sky.resolve_use_spot(config["infra"], True)


def tear_down_after_error(runs: Iterable[CloudRun], keep_cluster: bool) -> None:
    """cloud.smk's onerror step: each cluster torn down (verified) unless kept, and its bill up to
    now written (`cloud.end_failed_run`)."""
    for run in runs:
        log = run.log("onerror-teardown")
        _, summary = cloud.end_failed_run(run.work_dir, run.cluster, log, keep_cluster)
        print(f"onerror: {summary}")


def cancel_after_error(runs: Iterable[CloudRun], shards: int, keep_cluster: bool) -> None:
    """managed.smk's onerror step: each run's managed jobs cancelled unless kept
    (`managed.cancel_after_error`); a shard refused for its hardware explained on stdout and in
    the run's summary.md."""
    from datarax_bench.cloud import managed

    for run in runs:
        managed.cancel_after_error(
            run.work_dir, run.cluster, shards, keep_cluster, run.log("onerror-cancel")
        )
        # A job refused for its hardware stops the run: say why where the user looks.
        lines = managed.explain_refusals(run.work_dir)
        if lines:
            for line in lines:
                print(f"onerror: {line}")
            summary = managed.write_stopped_summary(run.work_dir, lines)
            print(f"onerror: why the run stopped: {summary}")
