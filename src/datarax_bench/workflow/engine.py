"""Keep the workflow engine out of the measurements: Snakemake without its job-rate limiter.

Snakemake's command line always builds a job-rate limiter (`--max-jobs-per-timespan`, default
100/1s; every accepted value is a limit, none turns it off). `JobScheduler.schedule` (9.21.0; the
same in 9.21.1 and 9.27.1) ends every scheduling pass that found ready jobs by arming a
`threading.Timer(timespan)` that wakes the scheduler for another pass, whether or not the
limiter held a job back. A pass woken by such a timer arms the next one for as long as jobs are
ready, so the pass that follows each finished job starts one more chain, and while measuring
jobs wait for the one `bench_slot` every chain lives on: after n jobs, n full job selections per
timespan. A longer timespan only slows the chains down and keeps Snakemake alive after its last
job until the last timer fires (the timers are not daemon threads).

With no limiter (`job_rate_limiter is None`, which is what Snakemake's Python API does by
default) no pass arms a timer: the scheduler runs only when a job starts, ends or fails, and
uses no CPU while a job runs. The workflow's `onstart:` handler calls `drop_rate_limiter`:
Snakemake calls it after building its scheduler and before the first pass (`Workflow.execute`).
Nothing here needs a rate limit: it throttles submissions to a cluster, and every job of this
workflow runs on this machine (cloud cells through SkyPilot's command line).
"""

from __future__ import annotations

import sys
from typing import Any

#: What the workflow says when `drop_rate_limiter` finds no limiter to drop.
LIMITER_WARNING = (
    "warning: Snakemake's job-rate limiter is not where this Snakemake version was expected to "
    "keep it; its re-planning may load the machine during measurements"
)


def drop_rate_limiter(workflow: Any) -> bool:
    """Remove the job-rate limiter from `workflow`'s scheduler; False when there is none to remove.

    Call it from `onstart:` (Snakemake has built the scheduler then and not yet run a pass).
    """
    scheduler = getattr(workflow, "scheduler", None)
    if scheduler is None or getattr(scheduler, "job_rate_limiter", None) is None:
        return False
    scheduler.job_rate_limiter = None
    # The limiter caps job selection through this resource; without it the count is unlimited
    # (Snakemake asserts so before each selection).
    scheduler.resources["_job_count"] = scheduler.global_resources["_job_count"]
    return True


def on_start(workflow: Any, config: dict, profiles: list, cells: Any, plan: str) -> None:
    """The workflow's `onstart:` (before the first job, not on a dry run): Snakemake without its
    job-rate limiter; then, for a local run, what makes this machine noisy now (with
    strict_machine, refuse to start), and what the run will measure and how long it should take
    (`progress.announce`, into `plan`). `cells` is the run's `cells.Matrix`."""
    if not drop_rate_limiter(workflow):
        print(LIMITER_WARNING, file=sys.stderr)
    if config["infra"] != "local":
        return
    from datarax_bench import machine_load
    from datarax_bench.workflow import progress

    cores = max(machine_load.cores_assumed(p.parallelism) for p in profiles)
    machine_load.check_before_measuring(cores, config["strict_machine"], seconds=2.0)
    jobs = workflow.dag.needrun_jobs()
    progress.announce(plan, progress.planned_processes(jobs, cells.profile, cells.catalog))
