"""A cluster's lifecycle in a workflow run: its name, launch or reuse, each cell measured remotely
and pulled, teardown verified, a failed run's bill (calling `sky`: sky.py; task files: tasks.py).

The Snakemake rules in `workflow/rules/cloud.smk` only call these functions. Everything goes
through the `sky` executable on PATH (the real SkyPilot CLI, or the test loopback) and plain
`rsync` over the ssh alias SkyPilot writes for each cluster. No secret goes to the cluster:
results come back by rsync and the W&B export runs on this machine.

What keeps a cluster from billing without limit (SkyPilot 0.14 runs the task's setup inside the
first job and arms autostop just before it; a running job keeps a cluster from ever idling):

- every `sky` call has a wall-clock limit, and one cut by it (or by an interrupt) has its
  request cancelled on SkyPilot's API server; a launch that fails or overruns is torn down,
  and a teardown first cancels and waits for the cluster's requests still running;
- autodown is armed with `--wait-for none`, which SkyPilot's skylet applies on the cluster
  itself whatever the cluster is doing: it tears the cluster down a fixed number of minutes
  after the last job was submitted (each submission and each setting restarts the count). The
  minutes are the longest the next job may legitimately take plus `idle_minutes`, and never
  more than what is left of `max_cluster_hours` since the launch was requested, so a hung
  setup, a hung cell or a dead orchestrator all end within those bounds;
- teardown is verified with a refreshed `sky status` (`sky down` exits 0 when it fails).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datarax_bench import paths, provenance
from datarax_bench.cloud import batches
from datarax_bench.cloud.billing import Ledger, billing, cost_report, ledger_for, remaining_minutes
from datarax_bench.cloud.sky import (
    _UP,
    DOWN_TIMEOUT_S,
    SHORT_TIMEOUT_S,
    SkyTimeout,
    autostop_argv,
    cluster_records,
    cluster_status,
    exec_argv,
    fetch,
    fetch_present,
    launch_argv,
    parse_launch_estimate,
    resolve_use_spot,
    run_sky,
    settle_cluster_requests,
)
from datarax_bench.cloud.tasks import (
    REMOTE_RESULTS,
    REMOTE_SETUP_DONE,
    _environment,
    load_task,
    remote_batch_command,
    remote_cell_command,
    remote_cell_path,
    render_provision_task,
    task_envs,
    write_task,
)
from datarax_bench.console import say
from datarax_bench.errors import UserError
from datarax_bench.files import atomic_file
from datarax_bench.results import cell_label, load_result, utc_now, write_json_atomic, write_result
from datarax_bench.run.cell import CellClock, CellId, make_result, resolve_cell
from datarax_bench.run.runner import kept_result, static_status
from datarax_bench.workload.catalog import load_catalog

#: Each Snakemake invocation has its own id (set in common.smk, inherited by its jobs): a
#: cluster record from an earlier invocation is re-checked before it is trusted.
INVOCATION_ENV = "DATARAX_BENCH_INVOCATION"


_CLUSTER_NAME_MAX = 35  # GCP's limit is the tightest SkyPilot enforces per cloud.


#: What a cell may need beyond its repetitions: imports, data generation, format builds.
CELL_MARGIN_S = 600


TEARDOWN_ATTEMPTS = 3


@dataclass(frozen=True)
class CloudSettings:
    """The workflow keys that decide provisioning and the billing limits (config/README.md)."""

    idle_minutes: float = 30
    use_spot: bool | str = "auto"
    max_cluster_hours: float = 8
    launch_timeout_minutes: float = 60
    #: A benchmark image (benchmarks/docker) the cluster runs in instead of installing; "" none.
    image: str = ""
    #: The machine type every launch asks for (SkyPilot's `instance_type`); "" SkyPilot picks.
    instance_type: str = ""
    #: At most this many cells per `sky exec` (cloud/batches.py); 1: one job per cell.
    remote_batch_cells: int = batches.DEFAULT_CELLS

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CloudSettings:
        return cls(
            idle_minutes=config["idle_minutes"],
            use_spot=config["use_spot"],
            max_cluster_hours=config["max_cluster_hours"],
            launch_timeout_minutes=config["launch_timeout_minutes"],
            image=config.get("image") or "",
            instance_type=config.get("instance_type") or "",
            remote_batch_cells=config.get("remote_batch_cells", batches.DEFAULT_CELLS),
        )


@dataclass(frozen=True)
class ClusterSpec:
    """A run's cluster and what every step on it shares: the profile it measures, where it
    runs, its name, the billing limits, the local work directory (task, ledger, record) and
    the log of the current job."""

    profile: Any
    infra: str
    name: str
    settings: CloudSettings
    work_dir: Path
    log: Path
    #: Cells in the run's longest batch: the autodown deadline covers a whole batch's job.
    batch_cells: int = 1

    @property
    def ledger(self) -> Ledger:
        return ledger_for(self.work_dir)


def invocation_id() -> str | None:
    return os.environ.get(INVOCATION_ENV) or None


def cluster_name(profile: str, infra: str, run_name: str) -> str:
    """Deterministic, valid for every cloud: `dxb-<profile>-<infra>-<run>-<hash>`, ≤ 35 chars.

    The hash of the full (profile, infra, run) keeps names distinct after truncation.
    """
    digest = hashlib.sha256(f"{profile}\0{infra}\0{run_name}".encode()).hexdigest()[:6]
    words = [re.sub(r"[^a-z0-9]+", "-", w.lower()).strip("-") for w in (profile, infra, run_name)]
    stem = "-".join(w for w in ["dxb", *words] if w)
    stem = stem[: _CLUSTER_NAME_MAX - len(digest) - 1].rstrip("-")
    return f"{stem}-{digest}"


def cell_allowance_s(profile) -> float:
    """The longest a cell may legitimately take: every attempt's timeout in each of its worker
    processes, plus start-up."""
    attempts = (1 + profile.retries) * profile.measurement.get("processes", 1)
    return float(profile.measurement["timeout_s"]) * attempts + CELL_MARGIN_S


@contextmanager
def cluster_lock(lock_file: Path) -> Iterator[None]:
    """One job at a time on a cluster: launches never race, cells never overlap."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def arm_autodown(cluster: str, ledger: Ledger, minutes: int, reason: str, log: Path | None) -> None:
    run_sky(autostop_argv(cluster, minutes), log, timeout=SHORT_TIMEOUT_S)
    ledger.add("autodown_armed", cluster, minutes=minutes, wait_for="none", reason=reason)


def _launch(spec: ClusterSpec, task_file: Path, ledger: Ledger) -> dict[str, Any]:
    infra, cluster, settings, log = spec.infra, spec.name, spec.settings, spec.log
    use_spot, spot_reason = resolve_use_spot(infra, settings.use_spot)
    launch_minutes = settings.launch_timeout_minutes
    autodown = math.ceil(
        min(settings.max_cluster_hours * 60, launch_minutes + settings.idle_minutes)
    )
    argv = launch_argv(cluster, task_file, infra, autodown, use_spot)
    say(
        f"cluster {cluster}: launching on infra {infra} ({spot_reason}); autodown {autodown} min "
        f"after the setup job starts, whatever it is doing"
    )
    ledger.add(
        "launch_requested",
        cluster,
        infra=infra,
        use_spot=use_spot,
        autodown_minutes=autodown,
        image=settings.image or None,
        instance_type=settings.instance_type or None,
    )
    try:
        proc = run_sky(argv, log, timeout=launch_minutes * 60)
    except (RuntimeError, SkyTimeout) as exc:
        ledger.add("launch_failed", cluster, error=str(exc))
        try:
            teardown([cluster], log, ledger)
            fate = "it was torn down (verified with `sky status`)"
        except RuntimeError as down_exc:
            fate = f"TEARDOWN FAILED: {down_exc}"
        raise RuntimeError(
            f"provisioning {cluster} on {infra} failed (see {log}): {exc}; {fate}"
        ) from None
    estimate = parse_launch_estimate(proc.stdout + proc.stderr)
    ledger.add("up", cluster, hourly_usd=estimate["hourly_usd"], chosen=estimate["chosen"])
    return {"action": "launched", "use_spot": use_spot, "spot": spot_reason, "estimate": estimate}


def _provision_locked(spec: ClusterSpec) -> dict[str, Any]:
    profile, cluster, settings, log = spec.profile, spec.name, spec.settings, spec.log
    work_dir = Path(spec.work_dir)
    ledger = spec.ledger
    task = render_provision_task(profile, settings.image, settings.instance_type)
    task_file = work_dir / "task.yaml"
    write_task(task, task_file)
    status = cluster_status(cluster, log)
    if status == _UP:
        launched = (ledger.current_launch(cluster) or {}).get("image")
        if (launched or None) != (settings.image or None):
            raise RuntimeError(
                f"cluster {cluster} is up with {_environment(launched)}, not the requested "
                f"{_environment(settings.image)}; tear it down (sky down {cluster}) first"
            )
        launched_type = (ledger.current_launch(cluster) or {}).get("instance_type")
        if settings.instance_type and launched_type != settings.instance_type:
            # Another machine type measures other hardware: never mixed into one run.
            raise RuntimeError(
                f"cluster {cluster} is up as {launched_type or 'the type SkyPilot picked'}, not "
                f"the pinned instance_type {settings.instance_type}; tear it down "
                f"(sky down {cluster}) first"
            )
        say(f"cluster {cluster} is up; reusing it")
        launch = {"action": "reused", "status": status}
        ledger.add("reused", cluster)
    else:
        if status is not None:
            say(f"cluster {cluster} is {status}; launching it again")
        launch = _launch(spec, task_file, ledger)
    remaining = remaining_minutes(ledger, cluster, settings.max_cluster_hours)
    if remaining <= 0:
        raise RuntimeError(
            f"cluster {cluster} reached max_cluster_hours ({settings.max_cluster_hours:g} h "
            "since its launch); tear it down or raise max_cluster_hours"
        )
    hardware_file = work_dir / "doctor.json"
    setup_file = work_dir / "setup-done.txt"
    try:
        fetch(cluster, f"{REMOTE_RESULTS}/{profile.name}/doctor.json", hardware_file, log=log)
        hardware = json.loads(hardware_file.read_text())
    except (RuntimeError, OSError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"cluster {cluster}: no hardware report from `doctor`: {exc}") from None
    if launch["action"] == "launched":
        try:
            fetch(cluster, REMOTE_SETUP_DONE, setup_file, log=log)
            ledger.add("setup_done", cluster, remote_t=float(setup_file.read_text().split()[0]))
        except (RuntimeError, OSError, ValueError, IndexError) as exc:
            say(f"cluster {cluster}: setup's end time not read ({exc})")
    # From now on a job is a batch of cells: autodown follows the longest one may take.
    cell_minutes = cell_allowance_s(profile) * spec.batch_cells / 60 + settings.idle_minutes
    autodown = math.ceil(min(remaining, cell_minutes))
    arm_autodown(cluster, ledger, autodown, "cells", log)
    return {
        "cluster": cluster,
        "infra": spec.infra,
        "profile": profile.name,
        "invocation": invocation_id(),
        "autodown_minutes": autodown,
        "max_cluster_hours": settings.max_cluster_hours,
        "task": str(task_file),
        "image": settings.image or None,
        "instance_type": settings.instance_type or None,
        **launch,
        "hardware": hardware,
    }


def pull_cell(
    cluster: str,
    profile: str,
    scenario: str,
    variant: str,
    adapter: str,
    output: Path,
    log: Path,
    style: str = "plain",
) -> dict[str, Any]:
    """Bring one cell's result back; it becomes the target only if it is a valid result."""
    label = cell_label(scenario, variant, adapter, style)
    remote = remote_cell_path(profile, scenario, variant, adapter, style)
    with atomic_file(Path(output), suffix=".pull") as tmp:
        try:
            fetch(cluster, remote, tmp, log=log)
        except RuntimeError as exc:
            raise RuntimeError(
                f"cell {label}: result not retrieved from {cluster}: {exc}"
            ) from None
        try:
            result = load_result(tmp)
        except UserError as exc:
            raise RuntimeError(
                f"cell {label}: the result pulled from {cluster} is invalid: {exc}"
            ) from None
        cell = result["cell"]
        got = (cell["scenario"], cell["variant"], cell["adapter"], cell.get("style", "plain"))
        if got != (scenario, variant, adapter, style):
            raise RuntimeError(f"cell {label}: the pulled file describes another cell {cell}")
        if problem := other_hardware(result, Path(output).parents[2], Path(output)):
            raise RuntimeError(f"cell {label}: {problem}")
    return result


def other_hardware(result: dict[str, Any], raw_dir: Path, output: Path) -> str | None:
    """Why a measured cell may not join the run's cells in `raw_dir`: they were measured on
    other hardware (a relaunch after a preemption or a teardown lands on whatever the cloud
    offers), named with both machines; None when the machines agree or nothing was measured."""
    if result["status"] != "ok":
        return None
    for path in sorted(Path(raw_dir).rglob("*.json")) if Path(raw_dir).is_dir() else []:
        if path == output:
            continue
        try:
            earlier = load_result(path)
        except UserError:
            continue
        if earlier["status"] != "ok":
            continue
        if diff := provenance.hardware_differences(earlier["provenance"], result["provenance"]):
            return (
                f"measured on other hardware than the run's earlier cells (e.g. {path.name} of "
                f"{earlier['cell']['scenario']}: {'; '.join(diff)}); not kept. Measure the whole "
                f"run on one machine: remove {raw_dir} to start again on this one"
            )
        return None  # every earlier cell was checked the same way when it arrived
    return None


def cluster_record_path(work_dir: Path) -> Path:
    return Path(work_dir) / "cluster.json"


def _cluster_record(work_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads(cluster_record_path(work_dir).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _cluster_for_this_invocation(spec: ClusterSpec) -> dict[str, Any]:
    """The cluster record of this invocation: provisioned by its first cell, trusted after.

    A record from an earlier invocation (a finished or killed run) is checked again; a failed
    provisioning fails every later cell of the same invocation at once, without a relaunch.
    """
    cluster, work_dir, log = spec.name, spec.work_dir, spec.log
    ledger = spec.ledger
    record = _cluster_record(work_dir)
    if record is not None and record.get("invocation") == invocation_id():
        return record
    failed = [
        e
        for e in ledger.events(cluster)
        if e["event"] == "provision_failed" and e.get("invocation") == invocation_id()
    ]
    if failed:
        raise RuntimeError(
            f"cluster {cluster}: provisioning already failed in this run ({failed[-1]['error']}); "
            "not launched again"
        )
    try:
        record = _provision_locked(spec)
    except Exception as exc:
        ledger.add("provision_failed", cluster, invocation=invocation_id(), error=str(exc))
        raise
    write_json_atomic(cluster_record_path(work_dir), record)
    if record["action"] == "reused":
        # A killed run's jobs may still be measuring on the cluster: never two at once.
        run_sky(["sky", "cancel", "-y", cluster, "-a"], log, check=False)
        ledger.add("earlier_jobs_cancelled", cluster)
    return record


def measure_remote_cell(
    spec: ClusterSpec,
    scenario: str,
    variant: str,
    adapter: str,
    output: Path,
    style: str = "plain",
    batch: Sequence[CellId] = (),
) -> dict[str, Any]:
    """Measure one cell on the cluster, pull its result and validate it: one job, one outcome.

    The local result exists if and only if the cell was measured, pulled and validated. With
    `batch` (the cells measured with this one, `cloud/batches.py`) a result pulled earlier by a
    batch-mate's job is taken from the batch cache without any `sky` call; otherwise this job
    measures, in one `sky exec`, its cell and every batch-mate that has no result yet, and keeps
    theirs in the cache. A cell that fails is a `failed` result like any other; a job that
    dies keeps what was measured before it, and fails only this cell if it has nothing. The
    invocation's first job provisions; a cluster provisioned by this invocation that is gone
    fails the cell at once, unmeasured. The cluster lock is held throughout: jobs on one
    cluster never overlap.
    """
    label = cell_label(scenario, variant, adapter, style)
    profile, cluster, settings, log = spec.profile, spec.name, spec.settings, spec.log
    cell = resolve_cell(profile, load_catalog(), scenario, variant, adapter, style)
    if decided := static_status(cell):
        # Unsupported or not implemented whatever the machine: written here, never billed.
        result = make_result(*decided, profile, cell.workload, cell.adapter, CellClock())
        write_result(Path(output), result)
        say(f"cell {label}: {decided[0]}, written here without the cluster")
        return result
    me = CellId(scenario, variant, adapter, style)
    work_dir = Path(spec.work_dir)
    ledger = spec.ledger
    if len(batch) > 1 and provenance.git_info()[0] is None:
        # Without a known commit no cached result can be told fresh: one cell per job.
        say(f"cell {label}: this checkout's commit is unknown; measured alone, not in a batch")
        batch = ()
    with cluster_lock(work_dir / "cluster.lock"):
        if len(batch) > 1 and (taken := _take_from_cache(spec, me, cell, Path(output))):
            return taken
        record = _cluster_for_this_invocation(spec)
        remaining = remaining_minutes(ledger, cluster, settings.max_cluster_hours)
        if remaining <= 0:
            raise RuntimeError(
                f"cell {label}: cluster {cluster} reached max_cluster_hours "
                f"({settings.max_cluster_hours:g} h); not measured"
            )
        armed = record.get("autodown_minutes") or 0
        if remaining < armed:  # the deadline draws near: autodown at it, not later
            minutes = max(1, math.floor(remaining))
            arm_autodown(cluster, ledger, minutes, "max_cluster_hours", log)
            record["autodown_minutes"] = minutes
            write_json_atomic(cluster_record_path(work_dir), record)
        task = load_task(Path(record.get("task") or work_dir / "task.yaml"))
        run_dir = Path(output).parents[3] if len(batch) > 1 else None  # results/{profile}/{infra}
        others = [c for c in batch if c != me and _missing(spec, c, run_dir)]
        if not others:
            return _measure_alone(spec, task, me, Path(output))
        return _measure_batch(spec, task, me, [c for c in batch if c == me or c in others], output)


def _exec(spec: ClusterSpec, task: dict[str, Any], command: str) -> list[str]:
    return exec_argv(
        spec.name,
        spec.profile.cloud["accelerator"],
        command,
        task_envs(task),
        workdir=paths.project_root(),
    )


def _measure_alone(spec: ClusterSpec, task: dict[str, Any], me: CellId, output: Path):
    """One cell, one `sky exec` (`remote_batch_cells: 1`, or no batch-mate left to measure)."""
    label = cell_label(*me)
    cluster, ledger, log = spec.name, spec.ledger, spec.log
    argv = _exec(spec, task, remote_cell_command(spec.profile.name, *me))
    started = ledger.add("cell_started", cluster, cell=label)
    try:
        proc = run_sky(argv, log, check=False, timeout=cell_allowance_s(spec.profile))
    except SkyTimeout as exc:
        ledger.add("cell_finished", cluster, cell=label, outcome="timeout")
        run_sky(["sky", "cancel", "-y", cluster, "-a"], log, check=False)
        raise RuntimeError(f"cell {label}: {exc}; its job on {cluster} was cancelled") from None
    ledger.add("cell_finished", cluster, cell=label, exit=proc.returncode)
    if proc.returncode != 0:
        raise RuntimeError(_exec_failure(spec, label, proc))
    result = pull_cell(cluster, spec.profile.name, *me[:3], output, log, me.style)
    ledger.add(
        "pulled",
        cluster,
        cell=label,
        job_s=round(time.time() - started["t"], 3),  # sync, job, log streaming, pull
        measured_s=result["timestamps"]["duration_s"],
        status=result["status"],
    )
    return result


def _exec_failure(spec: ClusterSpec, label: str, proc) -> str:
    """Why a `sky exec` that exited non-zero did: raises RuntimeError when the cluster is not
    UP (gone, stopped, unreadable: nothing can be pulled), else returns the reason."""
    cluster, ledger, log = spec.name, spec.ledger, spec.log
    try:
        status = cluster_status(cluster, log)
    except RuntimeError as exc:
        # Unknown is not gone: the cluster may still be up, so its bill runs on.
        ledger.add("status_unreadable", cluster, error=str(exc))
        raise RuntimeError(
            f"cell {label}: `sky exec` on {cluster} exited with {proc.returncode} and "
            f"its status could not be read ({exc}); the cell was not measured and the "
            "cluster may still be up and billing"
        ) from None
    if status is None:
        ledger.add("gone", cluster)
        raise RuntimeError(
            f"cell {label}: cluster {cluster} is gone (preempted, torn down or "
            "autodowned); the cell was not measured. Rerun the same command to "
            "provision again and measure what is missing"
        )
    if status != _UP:
        # INIT or STOPPED still exists: a stopped machine's disk bills, an INIT one may be
        # running.
        ledger.add("not_up", cluster, status=status)
        raise RuntimeError(
            f"cell {label}: cluster {cluster} is {status} (preempted, failing or "
            "stopped; it still exists and may bill); the cell was not measured. Rerun "
            "the same command to provision again and measure what is missing"
        )
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
    return (
        f"cell {label}: `sky exec` on {cluster} exited with {proc.returncode} (see {spec.log}): "
        f"{tail}"
    )


def _missing(spec: ClusterSpec, cell: CellId, run_dir: Path) -> bool:
    """Whether a batch-mate still needs measuring: no result in the run (for its workload and
    settings, what the workflow's rerun trigger compares) and none fresh in the batch cache."""
    resolved = resolve_cell(spec.profile, load_catalog(), *cell)
    local = cell.path(run_dir)
    if local.is_file():
        try:
            if batches.same_measurement(load_result(local), resolved):
                return False
        except UserError:
            pass
    cached = batches.cache_path(spec.work_dir, cell)
    return not (cached.is_file() and kept_result(cached, resolved) is not None)


def _copy_result(source: Path, output: Path) -> None:
    with atomic_file(output, suffix=".pull") as tmp:
        shutil.copyfile(source, tmp)


def _take_from_cache(spec: ClusterSpec, me: CellId, cell, output: Path) -> dict[str, Any] | None:
    """The cell's result pulled by a batch-mate's job, moved to `output`; None when there is
    none for its workload, settings and commit (a stale one is removed)."""
    cached = batches.cache_path(spec.work_dir, me)
    if not cached.is_file():
        return None
    label = cell_label(*me)
    result = kept_result(cached, cell)
    if result is None:
        cached.unlink(missing_ok=True)
        return None
    if problem := other_hardware(result, output.parents[2], output):
        cached.unlink(missing_ok=True)
        raise RuntimeError(f"cell {label}: {problem}")
    _copy_result(cached, output)
    cached.unlink()  # taken once: a forced rerun of the cell measures it again
    spec.ledger.add("taken_from_batch", spec.name, cell=label, status=result["status"])
    say(f"cell {label}: {result['status']}, measured in its batch's job")
    return result


def _measure_batch(
    spec: ClusterSpec, task: dict[str, Any], me: CellId, cells: list[CellId], output: Path
) -> dict[str, Any]:
    """`cells` (this job's cell `me` among them) in one `sky exec`, then one pull of whatever
    results exist, whether the job ended well or not: `me`'s goes to `output`, the others' to
    the batch cache. Fails only when `me` has no valid result."""
    label = cell_label(*me)
    labels = [cell_label(*c) for c in cells]
    profile, cluster, ledger, log = spec.profile, spec.name, spec.ledger, spec.log
    argv = _exec(spec, task, remote_batch_command(profile.name, cells))
    say(f"cell {label}: measured in a batch of {len(cells)} cells ({', '.join(labels)})")
    started = ledger.add("batch_started", cluster, cell=label, cells=labels)
    failure = None
    try:
        proc = run_sky(argv, log, check=False, timeout=cell_allowance_s(profile) * len(cells))
        ledger.add("batch_finished", cluster, cell=label, exit=proc.returncode)
        if proc.returncode != 0:
            failure = _exec_failure(spec, label, proc)
    except SkyTimeout as exc:
        ledger.add("batch_finished", cluster, cell=label, outcome="timeout")
        run_sky(["sky", "cancel", "-y", cluster, "-a"], log, check=False)
        failure = f"cell {label}: {exc}; its batch's job on {cluster} was cancelled"
    pulled, problems = _pull_batch(spec, me, cells, output)
    job_s = time.time() - started["t"]  # sync, job, log streaming, pull: shared by the pulled
    for cell, result in pulled.items():
        ledger.add(
            "pulled",
            cluster,
            cell=cell_label(*cell),
            job_s=round(job_s / len(pulled), 3),
            measured_s=result["timestamps"]["duration_s"],
            status=result["status"],
            batch=label,
        )
    if me in pulled:
        if failure:
            say(f"{failure}; this cell had been measured and was kept")
        return pulled[me]
    kept = f"{len(pulled)} of the batch's {len(cells)} cells were measured and kept"
    why = failure or problems.get(me) or f"cell {label}: no result on {cluster}"
    raise RuntimeError(f"{why}; {kept}")


def _pull_batch(
    spec: ClusterSpec, me: CellId, cells: list[CellId], output: Path
) -> tuple[dict[CellId, dict[str, Any]], dict[CellId, str]]:
    """One rsync of the cells' results that exist on the cluster, each validated (a valid
    result, of its cell, on the run's hardware): `me`'s to `output`, the others' to the batch
    cache. Returns the results kept and, by cell, why one was not."""
    profile, cluster, log = spec.profile, spec.name, spec.log
    staging = Path(spec.work_dir) / batches.CACHE_DIR / f".pull-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    pulled: dict[CellId, dict[str, Any]] = {}
    problems: dict[CellId, str] = {}
    try:
        try:
            fetch_present(
                cluster,
                f"{REMOTE_RESULTS}/{profile.name}",
                [str(c.path()) for c in cells],
                staging,
                log=log,
            )
        except RuntimeError as exc:
            return {}, {c: f"cell {cell_label(*c)}: result not retrieved: {exc}" for c in cells}
        raw_dir = Path(output).parents[2]
        for cell in cells:
            label = cell_label(*cell)
            staged = cell.path(staging)
            if not staged.is_file():
                problems[cell] = f"cell {label}: no result on {cluster}"
                continue
            try:
                result = load_result(staged)
            except UserError as exc:
                problems[cell] = f"cell {label}: the result pulled from {cluster} is invalid: {exc}"
                continue
            c = result["cell"]
            if (c["scenario"], c["variant"], c["adapter"], c.get("style", "plain")) != cell:
                problems[cell] = f"cell {label}: the pulled file describes another cell {c}"
                continue
            target = Path(output) if cell == me else batches.cache_path(spec.work_dir, cell)
            if problem := other_hardware(result, raw_dir, target):
                problems[cell] = f"cell {label}: {problem}"
                continue
            _copy_result(staged, target)
            pulled[cell] = result
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for problem in problems.values():
        say(problem)
    return pulled, problems


def teardown(
    clusters: Sequence[str], log: Path | None = None, ledger: Ledger | None = None
) -> dict[str, Any]:
    """`sky down -y`, verified by a refreshed `sky status`; retried; loud when it fails.

    `sky down` exits 0 even when termination failed, so only the status afterwards counts.
    Raises RuntimeError naming every cluster that still exists (and so still bills).
    """
    record = teardown_attempts(clusters, log, ledger)
    if record["still_up"]:
        raise RuntimeError(still_billing_message(record))
    return record


def still_billing_message(record: dict[str, Any]) -> str:
    remaining = record["still_up"]
    return (
        f"cluster(s) {', '.join(remaining)} still exist after {len(record['attempts'])} "
        f"`sky down` attempts and STILL BILL: run `sky down {' '.join(remaining)}` and check "
        "the provider's console"
    )


def teardown_attempts(
    clusters: Sequence[str], log: Path | None = None, ledger: Ledger | None = None
) -> dict[str, Any]:
    """`teardown`'s attempts and outcome, without raising: `still_up` names what still bills
    (every cluster whose absence was not verified)."""
    clusters = list(clusters)
    attempts: list[dict[str, Any]] = []
    remaining = clusters
    # A launch whose client was cut (a time limit, a killed run) may still be provisioning on
    # the API server: cancel it and let it end first, or the status below can miss a cluster
    # that appears afterwards.
    cancelled = {
        cluster: [f"{r.get('name')} {r['request_id']} {r.get('status')}" for r in settled]
        for cluster in clusters
        if (settled := settle_cluster_requests(cluster, log))
    }
    for attempt in range(1, TEARDOWN_ATTEMPTS + 1):
        try:
            proc = run_sky(
                ["sky", "down", "-y", *remaining], log, check=False, timeout=DOWN_TIMEOUT_S
            )
            down_exit = proc.returncode
        except SkyTimeout:
            down_exit = None
        try:
            left = cluster_records(remaining, log)
            remaining = [c for c in remaining if c in left]
            verified = True
        except RuntimeError:
            verified = False
        attempts.append(
            {"attempt": attempt, "down_exit_code": down_exit, "status_read": verified,
             "still_listed": list(remaining) if verified else None}
        )  # fmt: skip
        if verified and not remaining:
            break
        if attempt < TEARDOWN_ATTEMPTS:
            time.sleep(2 * attempt)
    record = {
        "clusters": clusters,
        "attempts": attempts,
        "verified": bool(attempts[-1]["status_read"]) and not remaining,
        "still_up": remaining,
        "requests_cancelled": cancelled,  # requests still running before the teardown
        "torn_down_at": utc_now(),
        "cost_report": cost_report(clusters, log),
    }
    for cluster in clusters:
        if ledger is not None:
            if cluster in remaining:
                ledger.add("teardown_failed", cluster, attempts=len(attempts))
            else:
                ledger.add("teardown_verified", cluster, attempts=len(attempts))
    return record


#: The bill of a run that failed (cloud/), written by the workflow's error handler. Not
#: teardown.json, which is the teardown rule's output: a rerun must still tear down.
FAILED_RUN_BILL = "failed-run-bill.json"


def end_failed_run(
    work_dir: Path, cluster: str, log: Path, keep_cluster: bool
) -> tuple[dict[str, Any], str]:
    """After a failed run: tear the cluster down (verified) unless it is kept, and write the bill
    up to now, with what still bills, to `FAILED_RUN_BILL`. Returns it and a line to print."""
    work_dir = Path(work_dir)
    ledger = ledger_for(work_dir)
    if keep_cluster:
        ledger.add("kept", cluster)
        record: dict[str, Any] = {"clusters": [], "kept": [cluster], "at": utc_now()}
        record["cost_report"] = cost_report([cluster], log)
        outcome = f"keep_cluster: true; {cluster} stays up (and bills)"
    else:
        record = teardown_attempts([cluster], log, ledger)
        if record["still_up"]:
            outcome = still_billing_message(record)
        else:
            outcome = f"tore down {cluster} (verified; see {log})"
    bill = billing(work_dir, cluster, record.get("cost_report", []))
    record["billing"] = bill
    path = work_dir / FAILED_RUN_BILL
    write_json_atomic(path, record)
    cost = "no price" if bill["cost_usd"] is None else f"${bill['cost_usd']:.4f} at catalog price"
    summary = (
        f"{outcome}; bill: {bill['billed_s'] / 60:.1f} min billed, {cost}, "
        f"{bill['billing_state']} ({path})"
    )
    return record, summary
