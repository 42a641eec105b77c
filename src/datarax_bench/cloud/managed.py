"""Cells on SkyPilot managed jobs: one job per shard, every result kept in a bucket at once.

`cloud_mode: managed` (workflow/rules/managed.smk). The profile's cells are split over `shards`
managed jobs of the same task, hence the same instance type. Each job mounts the results bucket
(SkyPilot storage, `MOUNT_CACHED`) and runs `datarax-bench run --cells <its share> --resume-dir
<bucket>/<profile>/<infra>/cells`: every result goes to the bucket as soon as it is written, and a
job restarted by SkyPilot after a preemption (same task, a fresh machine) takes the cells already
there and measures the rest, so a preemption costs at most the cell in flight. On clouds where
SkyPilot cannot mount a bucket (Vast, RunPod) the job does the same with `--resume-bucket`: it
copies the kept cells down at the start and uploads each file as soon as it is written, with the
S3 keys of this machine passed by name as SkyPilot secrets. This machine only submits, watches
(`sky jobs queue`), cancels on error, and pulls each cell from the bucket, validated, when its
shard has finished.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datarax_bench import provenance
from datarax_bench.cloud import billing, buckets, sky, tasks
from datarax_bench.cloud import cluster as cloud
from datarax_bench.cloud.buckets import BucketURI
from datarax_bench.cloud.standalone import BUCKET_ENV, BUCKET_MOUNT, with_results_bucket
from datarax_bench.console import say
from datarax_bench.errors import UserError
from datarax_bench.files import write_text_atomic
from datarax_bench.results import (
    ATTEMPTS_DIR,
    infra_dir,
    load_result,
    utc_now,
    write_json_atomic,
    write_result,
)

#: The job's share of the matrix (`run --cells`) and where in the bucket its cells go.
CELLS_ENV = "DATARAX_BENCH_CELLS"
BUCKET_KEY_ENV = "DATARAX_BENCH_BUCKET_KEY"
#: `sky jobs queue` statuses after which a managed job does nothing more (sky/jobs/state.py).
TERMINAL = {
    "SUCCEEDED", "CANCELLED", "FAILED", "FAILED_SETUP", "FAILED_PRECHECKS",
    "FAILED_NO_RESOURCE", "FAILED_CONTROLLER",
}  # fmt: skip
#: Consecutive failed `sky jobs queue` calls tolerated before a shard gives up watching.
QUEUE_FAILURES_TOLERATED = 10
PROGRESS_EVERY_S = 300
_SHARD_KEYS = ("shard", "name", "job_id", "status", "recoveries", "job_duration_s", "hourly_usd")
_JOB_ID = re.compile(r"Managed [Jj]ob ID:\s*(\d+)")
#: What the job's uploads to an s3:// bucket need from this machine's environment, by name:
#: SkyPilot secrets (redacted in its logs), and plain settings when they are set here.
S3_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_SECRETS = ("AWS_SESSION_TOKEN",)
S3_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")
#: SkyPilot's jobs controller: a cluster of its own, `sky-jobs-controller-<user hash>`
#: (sky/utils/common.py), launched by the first `sky jobs launch` where none is UP.
CONTROLLER_PREFIX = "sky-jobs-controller-"
#: What SkyPilot 0.14.1 gives it unless `jobs.controller.resources` says otherwise
#: (sky/jobs/constants.py, sky/utils/controller_utils.py).
CONTROLLER_DEFAULT = (
    "4+ vCPUs, memory 4x the vCPUs, 50 GB disk, on-demand, on the task's cloud (Vast may host "
    "it); autostop: STOPPED, not deleted, after 10 idle minutes, its disk billing until `sky "
    "down`"
)


# --- the plan ---------------------------------------------------------------------------------


def cells_key(profile: str, infra: str) -> str:
    """Where in the bucket a run keeps its cells, as results/ keeps them here (an --infra such
    as gcp/us-central1 is one directory name, as in results/)."""
    return f"{profile}/{infra_dir(infra)}/cells"


def job_name(cluster: str, shard: int) -> str:
    return f"{cluster}-s{shard}"


def mounts_buckets(infra: str) -> bool:
    """Whether SkyPilot can mount the results bucket on `infra`'s machines."""
    return buckets.unmounting_cloud(infra) is None


def render_task(
    profile,
    image: str = "",
    bucket_scheme: str = "s3",
    mounted: bool = True,
    instance_type: str = "",
) -> dict[str, Any]:
    """The profile's task (same setup and resources) with the bucket mounted, or uploaded to
    where it cannot be; its `run` checks the hardware, then measures the cells named in
    CELLS_ENV, resuming from the bucket."""
    task = tasks.render_provision_task(profile, image, instance_type)
    out = f"{tasks.REMOTE_RESULTS}/{profile.name}"
    # The machine's hardware report, one per attempt (SKYPILOT_TASK_ID is the same for every
    # recovery of a job), compared by this machine as it arrives (check_job_hardware).
    report = "doctor/$SKYPILOT_TASK_ID/$(date -u +%Y%m%dT%H%M%S%N).json"
    if mounted:
        # $HOME, not ~: a quoted ~ is not expanded.
        kept = f"$HOME/{BUCKET_MOUNT.removeprefix('~/')}/${{{BUCKET_KEY_ENV}}}"
        keep_report = (
            f'mkdir -p "{kept}/doctor/$SKYPILOT_TASK_ID" && cp {out}/doctor.json "{kept}/{report}"'
        )
        resume = f"--resume-dir {kept}"
    else:
        kept = f"{bucket_scheme}://${{{BUCKET_ENV}}}/${{{BUCKET_KEY_ENV}}}"
        keep_report = f'datarax-bench upload {out}/doctor.json "{kept}/{report}"'
        resume = f'--resume-bucket "{kept}"'
    task["run"] = tasks.run_body(
        *tasks.doctor_commands(profile.name),
        keep_report,
        f"datarax-bench run --profile {shlex.quote(profile.name)} --output-dir {out} "
        f"{resume} --cells ${CELLS_ENV}",
    )
    if mounted:
        # The existing bucket by its URI: SkyPilot mounts it from its own store on whichever
        # cloud the job lands, and refuses the launch if it does not exist. A bare name unknown
        # to SkyPilot's state would make it pick, or create, a bucket of that name on the job's
        # cloud (GCS on GCP), where the pull from the named store would never find the results.
        task = with_results_bucket(task, bucket_scheme)
    envs = task["envs"] = dict(task.get("envs") or {})
    # The job's workdir reaches it through a storage upload, which leaves `.git` out: its
    # results name the commit (and `run --resume-dir` reuses a kept cell) only by these.
    envs.update(provenance.commit_envs())
    # null: given per shard with --env; SkyPilot refuses a launch that leaves one unset.
    envs.update({BUCKET_ENV: None, CELLS_ENV: None, BUCKET_KEY_ENV: None})
    tasks.validate_task(
        {**task, "envs": {**envs, CELLS_ENV: "x", BUCKET_KEY_ENV: "x", BUCKET_ENV: "x"}},
        f"managed task rendered for profile {profile.name}",
    )
    return task


def upload_credentials(bucket: BucketURI, infra: str, environ=None) -> tuple[list[str], list[str]]:
    """(secret names, setting names) the job needs to upload to `bucket` from `infra`, all set
    in this machine's environment and passed by name; none where SkyPilot mounts the bucket."""
    cloud_name = buckets.unmounting_cloud(infra)
    if cloud_name is None:
        return [], []
    problem = buckets.unmountable_problem(bucket.uri, infra)
    if problem:
        raise UserError(f"results_bucket: {problem}")
    environ = os.environ if environ is None else environ
    missing = [name for name in S3_SECRETS if not environ.get(name)]
    if missing:
        raise UserError(
            f"cloud_mode managed on {cloud_name}: {' and '.join(missing)} not set here; expected "
            "the S3 keys of the results bucket in the environment (the job uploads each cell "
            "itself; they are passed to it by name as SkyPilot secrets, never written anywhere)"
        )
    secrets = [*S3_SECRETS, *(n for n in S3_OPTIONAL_SECRETS if environ.get(n))]
    return secrets, [name for name in S3_SETTINGS if environ.get(name)]


def launch_argv(
    task_file: Path,
    name: str,
    infra: str,
    use_spot: bool,
    envs: dict[str, str],
    by_name: tuple[Sequence[str], Sequence[str]] = ((), ()),
    config_file: Path | None = None,
) -> list[str]:
    """`sky jobs launch` (`config_file`: a SkyPilot config layer, the controller's pin);
    `by_name` = (secrets, settings) whose values SkyPilot copies from this machine's
    environment, so that they appear on no command line."""
    argv = ["sky", "jobs", "launch", str(task_file), "-n", name, "-y", "-d"]
    argv += _placement_and_envs(infra, use_spot, envs)
    if config_file is not None:
        argv += ["--config", str(config_file)]
    return argv + _by_name(by_name)


def _placement_and_envs(infra: str, use_spot: bool, envs: dict[str, str]) -> list[str]:
    argv = [] if infra == "any" else ["--infra", infra]
    argv.append("--use-spot" if use_spot else "--no-use-spot")
    for key, value in envs.items():
        argv += ["--env", f"{key}={value}"]
    return argv


def _by_name(by_name: tuple[Sequence[str], Sequence[str]]) -> list[str]:
    secrets, settings = by_name
    return [a for key in settings for a in ("--env", key)] + [
        a for key in secrets for a in ("--secret", key)
    ]


def job_estimate(
    task_file: Path,
    name: str,
    infra: str,
    use_spot: bool,
    envs: dict[str, str],
    by_name: tuple[Sequence[str], Sequence[str]],
    log: Path | None,
) -> dict[str, Any]:
    """The job's hourly price. `sky jobs launch -y` prints no estimate of the job (SkyPilot
    shows one only to be confirmed); the only table it may print is the jobs controller's, when
    it launches one. So a `sky launch --dryrun` of the same task, infra and spot choice quotes
    the job; None ("not quoted") when that fails."""
    argv = ["sky", "launch", "--dryrun", "-y", "-c", f"{name}-estimate", str(task_file)]
    argv += _placement_and_envs(infra, use_spot, envs) + _by_name(by_name)
    try:
        proc = sky.run_sky(argv, log, check=True)
    except (RuntimeError, sky.SkyTimeout) as exc:
        say(f"{name}: no price quoted for the job ({exc}); its cost is left out of the bill")
        return {"table_header": None, "chosen": None, "hourly_usd": None}
    return sky.parse_launch_estimate(proc.stdout)


def parse_job_id(output: str) -> int:
    match = _JOB_ID.search(re.sub(r"\x1b\[[0-9;]*m", "", output))
    if not match:
        raise RuntimeError("`sky jobs launch` printed no managed job id")
    return int(match.group(1))


# --- `sky jobs queue` ---------------------------------------------------------------------------


def parse_queue(output: str) -> dict[int, dict[str, Any]]:
    """Rows of `sky jobs queue`'s table by job id: status, #RECOVERIES, durations.

    The table's columns are found by their headers (two or more spaces apart), so that columns
    SkyPilot adds or drops between versions do not shift what is read.
    """
    lines = re.sub(r"\x1b\[[0-9;]*m", "", output).splitlines()
    rows: dict[int, dict[str, Any]] = {}
    header: list[tuple[str, int]] | None = None
    for line in lines:
        if re.match(r"^\s*ID\s{2,}", line) and "STATUS" in line:
            header = [(m.group(0), m.start()) for m in re.finditer(r"\S+(?: \S+)*", line)]
            continue
        if header is None or not re.match(r"^\s*\d+\s", line):
            continue
        starts = [s for _, s in header] + [len(line) + 1]
        values = {}
        for (name, start), end in zip(header, starts[1:], strict=False):
            values[name] = line[start:end].strip() if start < len(line) else ""
        # The last column (STATUS, possibly followed by others) is the first word there.
        try:
            job_id = int(values.get("ID", "").split()[0])
        except (ValueError, IndexError):
            continue
        status = (values.get("STATUS") or "").split()
        recoveries = values.get("#RECOVERIES", "0").split()
        rows[job_id] = {
            "id": job_id,
            "name": values.get("NAME", ""),
            "status": status[0] if status else "",
            "recoveries": int(recoveries[0]) if recoveries and recoveries[0].isdigit() else 0,
            "job_duration": values.get("JOB DURATION", ""),
        }
    return rows


#: Rows asked of `sky jobs queue` (its default is the newest 50 jobs: a long run's own jobs
#: could drop out of that behind newer ones).
QUEUE_LIMIT = 1000


def queue(log: Path | None) -> dict[int, dict[str, Any]]:
    argv = ["sky", "jobs", "queue", "--limit", str(QUEUE_LIMIT)]
    proc = sky.run_sky(argv, log, check=True)
    return parse_queue(proc.stdout)


def queue_records(log: Path | None) -> dict[int, dict[str, Any]]:
    """`sky jobs queue -o json` by job id: SkyPilot's records with `submitted_at` and `end_at`
    (epoch seconds), from which a job's wall time, provisioning and recoveries included, is
    read (its `job_duration`, JOB DURATION in the table, leaves both out)."""
    argv = ["sky", "jobs", "queue", "--limit", str(QUEUE_LIMIT), "-o", "json"]
    proc = sky.run_sky(argv, log, check=True)
    try:
        records = sky.json_records(proc.stdout)
    except ValueError as exc:
        raise RuntimeError(f"`sky jobs queue -o json`: {exc}") from None
    return {int(r["job_id"]): r for r in records if r.get("job_id") is not None}


def wall_s(record: dict[str, Any] | None, now: float | None = None) -> float | None:
    """From submission to the job's end (or now): the controller's wait, every provisioning,
    every recovery and the run; an upper bound on what the job's machines billed."""
    if not record or record.get("submitted_at") is None:
        return None
    end = record.get("end_at") or (time.time() if now is None else now)
    return max(0.0, float(end) - float(record["submitted_at"]))


def duration_s(text: str) -> float | None:
    """`1h 2m 3s`, `5m 10s`, `42s` (SkyPilot's human durations) in seconds; None for `-`."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(mo|w|d|h|m|s)(?![a-z])", text or "")
    if not parts:
        return None
    scale = {"mo": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
    return float(sum(float(n) * scale[u] for n, u in parts))


def cancel(job_ids: Sequence[int], log: Path | None, ledger: billing.Ledger | None = None) -> None:
    """`sky jobs cancel -y`, then check with the queue that none of them is still running."""
    job_ids = [int(j) for j in job_ids]
    if not job_ids:
        return
    sky.run_sky(["sky", "jobs", "cancel", "-y", *map(str, job_ids)], log, check=False)
    deadline = time.monotonic() + sky.SHORT_TIMEOUT_S
    while True:
        try:
            rows = queue(log)
            live = [j for j in job_ids if j in rows and rows[j]["status"] not in TERMINAL]
        except (RuntimeError, sky.SkyTimeout):
            live = job_ids
        if not live:
            for j in job_ids:
                if ledger is not None:
                    ledger.add("managed_job_cancelled", f"job-{j}", job_id=j)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"managed job(s) {', '.join(map(str, live))} still run after `sky jobs cancel` "
                f"and STILL BILL: run `sky jobs cancel -y {' '.join(map(str, live))}`"
            )
        time.sleep(2)


def cancel_run(
    names: Sequence[str],
    job_ids: Sequence[int],
    log: Path | None,
    ledger: billing.Ledger | None = None,
) -> list[int]:
    """Cancel every unfinished job of a run: those recorded, and any job named like one of its
    shards (a launch killed before it could record the id still submitted its job)."""
    rows = queue(log)
    wanted = {int(j) for j in job_ids}
    live = [
        job_id
        for job_id, row in rows.items()
        if row["status"] not in TERMINAL and (job_id in wanted or row["name"] in set(names))
    ]
    cancel(live, log, ledger)
    return live


def cancel_after_error(
    work_dir: Path, cluster: str, shards: int, keep_cluster: bool, log: Path
) -> list[int]:
    """The workflow's onerror step: cancel the run's jobs, found by their records and by their
    shards' names (a launch killed early), unless keep_cluster. Prints what it did."""
    names = [job_name(cluster, k) for k in range(1, shards + 1)]
    recorded = [j["job_id"] for j in submitted_jobs(work_dir)]
    if not recorded and not (Path(work_dir) / "managed").is_dir():
        return []  # no shard got as far as a launch
    if keep_cluster:
        print(f"keep_cluster: true; managed jobs {', '.join(names)} keep running (and billing)")
        teardown_controller(work_dir, log, keep=True)
        return []
    try:
        cancelled = cancel_run(names, recorded, log, billing.ledger_for(work_dir))
    except (RuntimeError, sky.SkyTimeout) as exc:
        print(f"onerror: {exc} (see {log})")
        cancelled = []
    else:
        if cancelled:
            print(f"onerror: cancelled managed jobs {cancelled} (verified; see {log})")
    controller = teardown_controller(work_dir, log)
    if controller.get("name"):
        print(f"onerror: jobs controller {controller['name']}: {controller['state']}"
          + (f"; STILL BILLING, end it with: {controller['command']}"
             if controller.get("still_billing") and controller.get("command") else ""))  # fmt: skip
    return cancelled


# --- the jobs controller ----------------------------------------------------------------------


def controller_config(pin: dict[str, Any] | None) -> dict[str, Any] | None:
    """The SkyPilot config layer that pins the jobs controller (`jobs.controller.resources`),
    None when nothing is pinned. `pin`: the workflow's `managed_controller` (infra, cpus,
    memory, disk_size; SkyPilot's resource fields, checked by SkyPilot's own schema)."""
    pin = {k: v for k, v in (pin or {}).items() if v not in (None, "")}
    if not pin:
        return None
    problem = controller_pin_problem(pin)
    if problem:
        raise UserError(f"managed_controller: {problem}")
    return {"jobs": {"controller": {"resources": pin}}}


def controller_pin_problem(pin: dict[str, Any]) -> str | None:
    """What SkyPilot's own resource parser says against the pin, None when it takes it."""
    import sky as sky_lib

    try:
        sky_lib.Resources.from_yaml_config(dict(pin))
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        return f"got {pin}, which SkyPilot refuses: {reason}"
    return None


def controller_plan(infra: str, pin: dict[str, Any] | None) -> str:
    """Where the jobs controller will run and what it costs, for the run's opening lines."""
    layer = controller_config(pin)
    if layer is None:
        where = (
            f"not pinned, so SkyPilot's default on the task's infra {infra}: {CONTROLLER_DEFAULT}"
        )
    else:
        where = f"pinned by managed_controller to {layer['jobs']['controller']['resources']}"
    return (
        f"jobs controller: {where}; it is billed for as long as it exists (the bill includes "
        "it), and torn down after the run if this run launched it and no other managed job is "
        "live; one already UP is SkyPilot's own choice of resources, kept"
    )


def write_controller_config(work_dir: Path, pin: dict[str, Any] | None) -> Path | None:
    layer = controller_config(pin)
    if layer is None:
        return None
    path = Path(work_dir) / "managed" / "skypilot-config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    path.write_text(yaml.safe_dump(layer, sort_keys=False))
    return path


def find_controller(log: Path | None) -> dict[str, Any] | None:
    """The jobs controller's `sky status` record (any status), None when there is none.
    Raises RuntimeError when the status cannot be read: unknown is never taken for absent."""
    proc = sky.run_sky(["sky", "status", "-o", "json"], log, check=True)
    try:
        records = sky.json_records(proc.stdout)
    except ValueError as exc:
        raise RuntimeError(f"`sky status -o json`: {exc}") from None
    found = [r for r in records if str(r.get("name", "")).startswith(CONTROLLER_PREFIX)]
    return found[0] if found else None


def controller_record_path(work_dir: Path) -> Path:
    return Path(work_dir) / "managed" / "controller.json"


def note_controller(work_dir: Path, log: Path | None, after_launch: bool = False) -> dict:
    """Before this run's first launch: whether the jobs controller existed already (kept in
    managed/controller.json, written once per run under a lock, so parallel shards agree);
    after a launch: its name. Only a controller this run launched is this run's to tear down."""
    path = controller_record_path(work_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            record = None
        if record is not None and (record.get("name") or not after_launch):
            return record
        found = find_controller(log)
        if record is None:
            record = {
                "name": found["name"] if found else None,
                "status_before_run": found.get("status") if found else None,
                "launched_by_this_run": found is None,
                "checked_at": utc_now(),
            }
        else:
            record["name"] = found["name"] if found else None
        if found is not None:
            record["launched_at"] = found.get("launched_at")
        write_json_atomic(path, record)
        return record


def _down_controller(name: str, log: Path | None) -> int:
    """`sky down NAME`: SkyPilot asks to type 'delete' for a controller, which -y does not skip."""
    argv = ["sky", "down", name]
    try:
        proc = subprocess.run(
            argv, input="delete\n", capture_output=True, text=True, timeout=sky.DOWN_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return -1
    if log is not None:
        with open(log, "a") as fh:
            fh.write(f"$ {shlex.join(argv)} <<< delete\n{proc.stdout}{proc.stderr}"
                     f"[exit {proc.returncode}]\n")  # fmt: skip
    return proc.returncode


def teardown_controller(work_dir: Path, log: Path | None, keep: bool = False) -> dict[str, Any]:
    """After the run (and on error): tear the jobs controller down when this run launched it
    and no managed job is live, verified with a refreshed `sky status`; otherwise say loudly
    that it still bills and the command that ends it. Returns the record for the bill."""
    path = controller_record_path(work_dir)
    try:
        noted = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"state": "no record: no job submitted since the last verified teardown"}
    out: dict[str, Any] = dict(noted)
    name = noted.get("name")
    try:
        if not name:
            found = find_controller(log)
            name = out["name"] = found["name"] if found else None
        if not name:
            out.update(state="none found in `sky status`", still_billing=False, verified=True)
            return out
        command = f"sky down {name}  (type 'delete' when asked)"
        out["command"] = command
        if keep or not noted.get("launched_by_this_run"):
            why = (
                "keep_cluster: true"
                if keep
                else f"it was {noted.get('status_before_run')} before this run"
            )
            out.update(state=f"left: {why}", still_billing=True, verified=False)
        else:
            rows = queue(log)
            live = sorted(j for j, r in rows.items() if r["status"] not in TERMINAL)
            if live:
                out.update(
                    state=f"left: managed job(s) {', '.join(map(str, live))} still live",
                    still_billing=True,
                    verified=False,
                )
            else:
                exit_code = _down_controller(name, log)
                remaining = sky.cluster_records([name], log)
                if remaining:
                    out.update(
                        state=f"teardown failed (`sky down` exit {exit_code}; `sky status` "
                        f"still lists it {remaining[name].get('status')})",
                        still_billing=True,
                        verified=False,
                    )
                else:
                    out.update(
                        state="torn down (verified with `sky status`)",
                        torn_down_at=utc_now(),
                        still_billing=False,
                        verified=True,
                    )
    except (RuntimeError, sky.SkyTimeout) as exc:
        out.update(state=f"unknown: {exc}", still_billing=True, verified=False)
    if name:
        reported = billing.cost_report([name], log)
        if reported:
            out["sky_cost_report"] = reported[0]
    if out.get("still_billing"):
        say(
            f"WARNING: the jobs controller {name or '(name unknown)'} STILL BILLS "
            f"({out['state']}): it stops after 10 idle minutes but is not deleted, and its "
            f"disk bills until you run: {out.get('command') or 'sky status; sky down <it>'}"
        )
    else:
        say(f"jobs controller {name}: {out['state']}")
        if out.get("torn_down_at"):
            path.unlink(missing_ok=True)
    return out


# --- one shard ----------------------------------------------------------------------------------


@dataclass
class Shard:
    """One managed job's share of the matrix and everything watching it needs."""

    profile: Any
    infra: str
    index: int
    total: int
    name: str
    cells: list[str]  # cell ids, S/V/A/STYLE
    cell_files: dict[str, str]  # cell id -> raw/S/V/A[.STYLE].json
    bucket: BucketURI
    settings: cloud.CloudSettings
    work_dir: Path
    log: Path
    keep_cluster: bool = False
    poll_s: float = 30.0
    use_spot: bool = True
    controller_pin: dict[str, Any] | None = None  # config managed_controller

    @property
    def ledger(self) -> billing.Ledger:
        return billing.ledger_for(self.work_dir)

    @property
    def key(self) -> str:
        return self.bucket.key(cells_key(self.profile.name, self.infra))

    @property
    def label(self) -> str:
        return f"shard {self.index}/{self.total}"


def job_record_path(work_dir: Path, index: int) -> Path:
    return Path(work_dir) / "managed" / f"shard-{index}.job.json"


def submitted_jobs(work_dir: Path) -> list[dict[str, Any]]:
    """The managed jobs this run submitted (for cancelling them from the onerror handler)."""
    out = []
    for path in sorted((Path(work_dir) / "managed").glob("shard-*.job.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def kept_cells(shard: Shard, store=None) -> set[str]:
    """Cells of the shard whose results are in the bucket already."""
    present = set(
        buckets.list_keys(shard.bucket, cells_key(shard.profile.name, shard.infra), store=store)
    )
    return {cid for cid in shard.cells if shard.cell_files[cid] in present}


def current_cells(shard: Shard, store=None) -> set[str]:
    """Cells of the shard whose results in the bucket a job would keep (runner.kept_result,
    what `run --resume-dir` applies there): the others must be submitted, so that no stale
    result is pulled without a job having looked at it."""
    import tempfile

    from datarax_bench.run.runner import kept_result, resolve_cell
    from datarax_bench.workload.catalog import load_catalog

    catalog = load_catalog()
    current = set()
    with tempfile.TemporaryDirectory() as tmp:
        for cid in kept_cells(shard, store):
            dest = Path(tmp) / Path(shard.cell_files[cid]).name
            key = f"{cells_key(shard.profile.name, shard.infra)}/{shard.cell_files[cid]}"
            if not buckets.download(shard.bucket, key, dest, store=store):
                continue
            cell = resolve_cell(shard.profile, catalog, *cid.split("/"))
            if kept_result(dest, cell) is not None:
                current.add(cid)
    return current


def attempts(bucket: BucketURI, profile: str, infra: str, store=None) -> dict[str, int]:
    """How many measurements each cell file had started (a cell interrupted counts twice)."""
    counts: dict[str, int] = {}
    for key in buckets.list_keys(bucket, cells_key(profile, infra), ATTEMPTS_DIR, store=store):
        rel = key.rsplit("/", 1)[0]
        counts[rel] = counts.get(rel, 0) + 1
    return counts


def run_shard(shard: Shard, report: Path) -> dict[str, Any]:
    """Submit the shard's missing cells as one managed job, watch it to its end, write `report`.

    Cancels the job on any error or interrupt (unless keep_cluster): a managed job left running
    bills until it finishes by itself.
    """
    store = buckets.client(shard.bucket)
    refusal_path(shard.work_dir, shard.index).unlink(missing_ok=True)  # this attempt decides anew
    current = current_cells(shard, store)
    missing = [cid for cid in shard.cells if cid not in current]
    record: dict[str, Any] = {
        "shard": shard.index, "shards": shard.total, "name": shard.name, "cells": shard.cells,
        "submitted_cells": missing, "bucket": shard.bucket.uri, "job_id": None,
    }  # fmt: skip
    if not missing:
        say(
            f"{shard.label}: all {len(shard.cells)} cells are in {shard.bucket.uri}, measured "
            "by this commit with these settings; no job"
        )
        record.update(status="NOT_NEEDED", recoveries=0, job_duration_s=0.0, finished_at=utc_now())
        write_json_atomic(report, record)
        return record
    by_name = upload_credentials(shard.bucket, shard.infra)
    task_file = shard.work_dir / "managed" / f"shard-{shard.index}.yaml"
    task = render_task(
        shard.profile,
        shard.settings.image,
        shard.bucket.scheme,
        mounts_buckets(shard.infra),
        shard.settings.instance_type,
    )
    tasks.write_task(task, task_file)
    envs = {
        BUCKET_ENV: shard.bucket.name,
        BUCKET_KEY_ENV: shard.key,
        CELLS_ENV: " ".join(missing),
    }
    config_file = write_controller_config(shard.work_dir, shard.controller_pin)
    argv = launch_argv(
        task_file, shard.name, shard.infra, shard.use_spot, envs, by_name, config_file
    )
    say(f"{shard.label}: {controller_plan(shard.infra, shard.controller_pin)}")
    noted = note_controller(shard.work_dir, shard.log)
    if not noted["launched_by_this_run"]:
        say(
            f"{shard.label}: jobs controller {noted['name']} was already there "
            f"({noted['status_before_run']}): SkyPilot uses it as it is, and this run leaves it"
        )
    ledger = shard.ledger
    estimate = job_estimate(
        task_file, shard.name, shard.infra, shard.use_spot, envs, by_name, shard.log
    )
    # Job ids start again at 1 once the jobs controller is torn down, so an earlier run's job
    # of the same shard and id left reports that must not be taken for this job's.
    earlier_reports = set(
        buckets.list_keys(shard.bucket, cells_key(shard.profile.name, shard.infra), "doctor",
                          store=store)
    )  # fmt: skip
    ledger.add("managed_job_requested", shard.name, shard=shard.index, cells=len(missing))
    try:
        proc = sky.run_sky(argv, shard.log, timeout=shard.settings.launch_timeout_minutes * 60)
        job_id = parse_job_id(proc.stdout + proc.stderr)
    except BaseException:
        if not shard.keep_cluster:  # a launch cut short may still have submitted its job
            try:
                cancel_run([shard.name], [], shard.log, ledger)
            except Exception as exc:  # the launch's own error is the one to report
                say(f"{shard.label}: could not check for a job left by the launch: {exc}")
        raise
    try:
        noted = note_controller(shard.work_dir, shard.log, after_launch=True)
        say(f"{shard.label}: jobs controller {noted.get('name') or '(not found in sky status)'}")
    except (RuntimeError, sky.SkyTimeout) as exc:  # the teardown looks it up again
        say(f"{shard.label}: could not read the jobs controller's status: {exc}")
    # With -y the launch prints only the controller's table, when it launched the controller.
    controller_price = sky.parse_launch_estimate(proc.stdout)["hourly_usd"]
    record.update(
        job_id=job_id,
        hourly_usd=estimate["hourly_usd"],
        controller_launch_hourly_usd=controller_price,
        submitted_at=utc_now(),
    )
    write_json_atomic(job_record_path(shard.work_dir, shard.index), {
        "job_id": job_id, "name": shard.name, "shard": shard.index, "submitted_at": utc_now(),
    })  # fmt: skip
    ledger.add("managed_job_submitted", shard.name, job_id=job_id, shard=shard.index,
               hourly_usd=estimate["hourly_usd"])  # fmt: skip
    say(f"{shard.label}: managed job {job_id} ({shard.name}), {len(missing)} cells")
    try:
        final = _watch(shard, job_id, missing, store, earlier_reports)
    except BaseException as exc:
        if shard.keep_cluster:
            say(f"{shard.label}: keep_cluster: managed job {job_id} keeps running (and billing)")
        else:
            say(f"{shard.label}: cancelling managed job {job_id}")
            cancel([job_id], shard.log, ledger)
        if isinstance(exc, HardwareMismatch):
            write_refusal(shard, job_id, missing, store, exc)
        raise
    save_job_log(job_id, job_log_path(shard.work_dir, shard.index, job_id))
    record.update(
        status=final["status"],
        recoveries=final["recoveries"],
        job_duration_s=duration_s(final.get("job_duration", "")),
        measured_cells=sorted(kept_cells(shard, store) & set(missing)),
        finished_at=utc_now(),
    )
    ledger.add("managed_job_finished", shard.name, job_id=job_id, status=final["status"],
               recoveries=final["recoveries"], job_duration_s=record["job_duration_s"],
               cells_measured=len(record["measured_cells"]),
               hourly_usd=record["hourly_usd"])  # fmt: skip
    write_json_atomic(report, record)
    return record


class HardwareMismatch(RuntimeError):
    """A job's machine is not the hardware of the run's first machine; `details`: the job,
    its report, the reference and what differs, for the run's explanation (refusal_path)."""

    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.details = details or {}


#: How to keep a run's machines alike, said wherever a job is refused for its hardware.
PIN_ADVICE = (
    "SkyPilot takes any offer that fits the task, after a preemption too; pin the machine type "
    "with `--config instance_type=<type>` so that every shard and every recovery rents the same "
    "one (on Vast the CPU model can still differ), and the infra's region with "
    "`infra=<cloud>/<region>`"
)


def refusal_path(work_dir: Path, index: int) -> Path:
    return Path(work_dir) / "managed" / f"shard-{index}.refused.json"


def write_refusal(
    shard: Shard, job_id: int, missing: Sequence[str], store, exc: HardwareMismatch
) -> dict[str, Any]:
    """Keep why the shard's job was cancelled and what became of its cells (refusal_path),
    for the explanation the run ends with (explain_refusals); say it in the shard's log."""
    try:
        kept = kept_cells(shard, store) & set(missing)
        # A job still running (keep_cluster) may yet write: only a cancelled one is sorted.
        aside = [] if shard.keep_cluster else set_aside(shard, sorted(kept), store, exc.details)
    except Exception as error:  # the bucket could not be read: none is known to be kept
        say(f"{shard.label}: could not read its cells in the bucket: {error}")
        kept, aside = set(), []
    record = {
        "shard": shard.index,
        "shards": shard.total,
        "name": shard.name,
        **{k: v for k, v in exc.details.items() if not k.endswith("hardware")},
        "job_id": job_id,
        "cancelled": not shard.keep_cluster,
        "cells_kept": [c for c in missing if c in kept and c not in aside],
        "cells_not_measured": [c for c in missing if c not in kept or c in aside],
        "cells_set_aside": aside,
        "set_aside_in": str(refused_cells_dir(shard.work_dir)),
        "at": utc_now(),
    }
    write_json_atomic(refusal_path(shard.work_dir, shard.index), record)
    for line in refusal_lines(record):
        say(line)
    return record


def refused_cells_dir(work_dir: Path) -> Path:
    return Path(work_dir) / "managed" / "refused-cells"


def set_aside(shard: Shard, cells: Sequence[str], store, details: dict[str, Any]) -> list[str]:
    """Cells of `cells` in the bucket that the refused machine measured before it was
    cancelled (their hardware has the refused machine's values where it differed from the
    reference): each is moved out of the bucket to refused_cells_dir here, so that the next
    run measures it again rather than resuming from it, which managed_finish would refuse."""
    refused, reference = details.get("hardware") or {}, details.get("reference_hardware") or {}
    keys = [k for k in refused if refused.get(k) != reference.get(k)]
    if not keys:
        return []
    root = cells_key(shard.profile.name, shard.infra)
    out = []
    for cid in cells:
        rel = shard.cell_files[cid]
        dest = refused_cells_dir(shard.work_dir) / rel
        if not buckets.download(shard.bucket, f"{root}/{rel}", dest, store=store):
            continue
        try:
            hw = provenance.hardware(json.loads(dest.read_text())["provenance"])
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            hw = {}
        if not all(hw.get(k) == refused[k] for k in keys):
            dest.unlink()  # measured on the run's hardware: it stays
            continue
        buckets.delete(shard.bucket, f"{root}/{rel}", store=store)
        out.append(cid)
    return out


def refusal_lines(record: dict[str, Any]) -> list[str]:
    """A refused job in plain words: which shard and job, what differed, its cells, the fix."""
    label = f"shard {record['shard']}/{record['shards']}"
    not_measured, kept = record.get("cells_not_measured", []), record.get("cells_kept", [])
    lines = [
        f"{label}: managed job {record['job_id']} "
        + (
            "was cancelled"
            if record.get("cancelled", True)
            else "was refused (keep_cluster: it keeps running, and billing)"
        )
        + " because it landed on different hardware than the run's first machine "
        f"({record.get('reference')}): "
        f"{'; '.join(record.get('differs') or []) or 'see the shard log'}.",
        f"{label}: {len(not_measured)} of its {len(not_measured) + len(kept)} cells were not "
        f"measured: {', '.join(not_measured) or 'none'}"
        + (f"; kept in the bucket from before: {', '.join(kept)}" if kept else "")
        + ".",
    ]
    if record.get("cells_set_aside"):
        lines.append(
            f"{label}: measured on that machine before its cancel, so taken out of the bucket "
            f"(kept in {record.get('set_aside_in')}) and measured again by the next run: "
            f"{', '.join(record['cells_set_aside'])}."
        )
    lines += [
        f"To avoid it: {PIN_ADVICE}. Then run the same command again: it measures only the "
        "cells that are missing.",
    ]
    return lines


def explain_refusals(work_dir: Path) -> list[str]:
    """The lines of every shard of the run refused for its hardware (none when no shard was)."""
    lines: list[str] = []
    for path in sorted((Path(work_dir) / "managed").glob("shard-*.refused.json")):
        try:
            lines += refusal_lines(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, KeyError):
            continue
    return list(dict.fromkeys(lines))  # the advice once, however many shards were refused


def write_stopped_summary(work_dir: Path, lines: Sequence[str]) -> Path:
    """summary.md of a run stopped by a refused job: why, in the words of the shard's log; the
    run's next complete invocation writes the full summary over it."""
    path = Path(work_dir).parent / "summary.md"
    text = ["# The run stopped before every cell was measured", ""]
    text += [f"- {line}" for line in lines]
    write_text_atomic(path, "\n".join(text) + "\n")
    return path


def hardware_reference_path(work_dir: Path) -> Path:
    return Path(work_dir) / "managed" / "hardware.json"


def check_job_hardware(shard: Shard, job_id: int, seen: set[str], store=None) -> None:
    """Compare each new hardware report of this job (one per attempt, under doctor/ in the
    bucket) with the run's reference, the first report any shard saw (managed/hardware.json,
    under a lock). A different machine raises HardwareMismatch naming both, so that the job is
    cancelled before it measures more; cells it kept stay in the bucket."""
    import tempfile

    root = cells_key(shard.profile.name, shard.infra)
    mine = f"_{shard.name}_{job_id}-"  # SKYPILOT_TASK_ID: sky-managed-<stamp>_<name>_<id>-0
    new = sorted(
        k for k in buckets.list_keys(shard.bucket, root, "doctor", store=store)
        if mine in k and k not in seen
    )  # fmt: skip
    for key in new:
        with tempfile.TemporaryDirectory() as tmp:
            dest = Path(tmp) / "doctor.json"
            if not buckets.download(shard.bucket, f"{root}/doctor/{key}", dest, store=store):
                continue
            try:
                hw = provenance.hardware(json.loads(dest.read_text()))
            except (json.JSONDecodeError, AttributeError):
                continue  # a report cut short: the next poll reads it again
        seen.add(key)
        path = hardware_reference_path(shard.work_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                reference = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                reference = {"hardware": hw, "source": f"{shard.label}, job {job_id}: {key}"}
                write_json_atomic(path, reference)
        if hw != reference["hardware"]:
            differs = [
                f"{k}: {reference['hardware'].get(k)!r} vs {hw.get(k)!r}"
                for k in hw
                if hw.get(k) != reference["hardware"].get(k)
            ]
            diff = "; ".join(differs)
            shard.ledger.add("managed_job_hardware_refused", shard.name, job_id=job_id,
                             report=key, reference=reference["source"], differs=diff)  # fmt: skip
            raise HardwareMismatch(
                f"{shard.label}: managed job {job_id} landed on different hardware ({key}) "
                f"than the run's first machine ({reference['source']}): {diff}; cancelling it "
                f"before it measures more ({PIN_ADVICE})",
                {"job_id": job_id, "report": key, "reference": reference["source"],
                 "differs": differs, "hardware": hw,
                 "reference_hardware": reference["hardware"]},
            )  # fmt: skip


def _watch(
    shard: Shard, job_id: int, missing: list[str], store, earlier_reports: set[str]
) -> dict[str, Any]:
    """Poll `sky jobs queue` until the job ends; print progress; record recoveries.
    `earlier_reports`: hardware reports in the bucket before the launch, not this job's."""
    started = time.monotonic()
    deadline = started + shard.settings.max_cluster_hours * 3600
    failures, recoveries, done, last_line, last_said = 0, 0, 0, "", 0.0
    seen_reports = set(earlier_reports)
    while True:
        try:
            row = queue(shard.log).get(job_id)
            failures = 0
        except (RuntimeError, sky.SkyTimeout) as exc:
            failures += 1
            say(f"{shard.label}: `sky jobs queue` failed ({failures} in a row): {exc}")
            if failures >= QUEUE_FAILURES_TOLERATED:
                raise RuntimeError(
                    f"{shard.label}: `sky jobs queue` failed {failures} times in a row; "
                    f"managed job {job_id} is no longer watched"
                ) from None
            time.sleep(shard.poll_s)
            continue
        if row is None:
            raise RuntimeError(f"{shard.label}: managed job {job_id} is not in `sky jobs queue`")
        if row["recoveries"] > recoveries:
            for n in range(recoveries + 1, row["recoveries"] + 1):
                shard.ledger.add("managed_job_recovered", shard.name, job_id=job_id, recovery=n)
            recoveries = row["recoveries"]
        try:
            done = len(kept_cells(shard, store) & set(missing))
        except Exception:  # a bucket listing that failed once is no reason to stop watching
            pass  # the last count stands
        try:
            check_job_hardware(shard, job_id, seen_reports, store)
        except HardwareMismatch:
            raise
        except Exception as exc:  # a listing or download that failed: the next poll retries
            say(f"{shard.label}: could not read the job's hardware reports: {exc}")
        line = (
            f"{shard.label}: {done}/{len(missing)} cells, {row['status']}, "
            f"{recoveries} recover{'y' if recoveries == 1 else 'ies'}, "
            f"{(time.monotonic() - started) / 60:.1f} min"
        )
        now = time.monotonic()
        if line.split(", ")[:3] != last_line.split(", ")[:3] or now - last_said > PROGRESS_EVERY_S:
            say(line)
            last_line, last_said = line, now
        if row["status"] in TERMINAL:
            if row["status"] != "SUCCEEDED":
                tail = _job_log_tail(job_id, shard.log)
                raise RuntimeError(
                    f"{shard.label}: managed job {job_id} ended {row['status']} after "
                    f"{recoveries} recoveries{': ' + tail if tail else ''}"
                )
            return row
        if now > deadline:
            raise RuntimeError(
                f"{shard.label}: managed job {job_id} still {row['status']} after "
                f"max_cluster_hours={shard.settings.max_cluster_hours:g}"
            )
        time.sleep(shard.poll_s)


def job_log_path(work_dir: Path, index: int, job_id: int) -> Path:
    return Path(work_dir) / "managed" / f"shard-{index}.job-{job_id}.log"


def save_job_log(job_id: int, dest: Path) -> None:
    """Keep the job's own log (all its attempts) with the run: tearing the jobs controller
    down takes every managed job's log with it (SkyPilot: "All logs and status information
    of the managed jobs ... will be lost")."""
    argv = ["sky", "jobs", "logs", "--no-follow", str(job_id)]
    try:
        proc = sky.run_sky(argv, None, check=False)
    except sky.SkyTimeout as exc:
        say(f"managed job {job_id}: its log was not kept ({exc})")
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(proc.stdout + proc.stderr)


def _job_log_tail(job_id: int, log: Path | None) -> str:
    try:
        proc = sky.run_sky(["sky", "jobs", "logs", "--no-follow", str(job_id)], log, check=False)
    except sky.SkyTimeout:
        return ""
    lines = [ln for ln in (proc.stdout or "").splitlines() if ln.strip()]
    return " | ".join(lines[-3:])


# --- pulling, checking, finishing -------------------------------------------------------------


def pull_cell(bucket: BucketURI, profile: str, infra: str, cell_file: str, dest: Path) -> dict:
    """One cell's result from the bucket, validated against the result schema, written to `dest`."""
    tmp = Path(dest).with_name(Path(dest).name + ".pulling")
    key = f"{cells_key(profile, infra)}/{cell_file}"
    try:
        if not buckets.download(bucket, key, tmp):
            raise RuntimeError(
                f"{bucket.uri}/{key} is missing although its shard finished: the job did not "
                "keep it (see the shard's log)"
            )
        result = load_result(tmp)
        write_result(Path(dest), result)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def check_hardware(results_by_shard: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """One hardware fingerprint for every cell of every shard, or a UserError naming both."""
    reference: tuple[int, dict[str, Any]] | None = None
    for shard, results in sorted(results_by_shard.items()):
        for result in results:
            if reference is None:
                reference = (shard, result["provenance"])
                continue
            if diff := provenance.hardware_differences(reference[1], result["provenance"]):
                raise UserError(
                    f"shards ran on different hardware, refusing to aggregate: shard "
                    f"{reference[0]} vs shard {shard} ({'; '.join(diff)})"
                )
    return provenance.hardware(reference[1]) if reference else {}


def finish(
    work_dir: Path,
    reports: Sequence[Path],
    cell_results: dict[int, Sequence[Path]],
    bucket: BucketURI,
    profile: str,
    infra: str,
    log: Path | None,
    keep_controller: bool = False,
) -> dict[str, Any]:
    """After every cell is pulled: check the hardware across shards, check that no job of this
    run still runs (cancel any that does), tear down the jobs controller if this run launched
    it and nothing else uses it (teardown_controller), and return the record for
    cloud/teardown.json with the bill: the jobs' wall time and the controller's cost."""
    shards = [json.loads(Path(p).read_text()) for p in reports]
    hardware = check_hardware(
        {k: [load_result(Path(p)) for p in paths] for k, paths in cell_results.items()}
    )
    ours = [s["job_id"] for s in shards if s.get("job_id") is not None]
    records = queue_records(log) if ours else {}
    live = [j for j in ours if j in records and records[j]["status"] not in TERMINAL]
    ledger = billing.ledger_for(work_dir)
    if live:
        cancel(live, log, ledger)
        records = queue_records(log)
    for s in shards:
        s["wall_s"] = wall_s(records.get(s.get("job_id"))) if s.get("job_id") else 0.0
    counts = attempts(bucket, profile, infra)
    twice = sorted(rel for rel, n in counts.items() if n > 1)
    # Billed: each job's wall time (JOB DURATION leaves provisioning and recoveries out); where
    # the queue no longer has the job, SkyPilot's JOB DURATION, said so.
    billed = [s["wall_s"] if s["wall_s"] is not None else s.get("job_duration_s") or 0.0
              for s in shards]  # fmt: skip
    costs = [
        (s.get("hourly_usd") or 0.0) * b / 3600
        for s, b in zip(shards, billed, strict=True)
        if s.get("hourly_usd") is not None
    ]
    controller = teardown_controller(work_dir, log, keep=keep_controller)
    reported = controller.get("sky_cost_report") or {}
    jobs_cost = round(sum(costs), 4) if costs else None
    controller_cost = reported.get("total_cost")
    record = {
        "mode": "managed",
        # What was checked: every job of this run ended (`sky jobs queue`, after cancelling
        # any still live); the controller's teardown has its own verdict below.
        "jobs": ours,
        "jobs_ended_verified": not ours
        or all(j in records and records[j]["status"] in TERMINAL for j in ours),
        "cancelled_at_finish": live,
        "controller": controller,
        "still_billing": bool(controller.get("still_billing")),
        "hardware": hardware,
        "managed": {
            "bucket": bucket.uri,
            "shards": [
                {k: s.get(k) for k in (*_SHARD_KEYS, "wall_s")}
                | {"cells": len(s.get("cells", [])), "submitted": len(s.get("submitted_cells", []))}
                for s in shards
            ],  # fmt: skip
            "recoveries": sum(s.get("recoveries") or 0 for s in shards),
            "measured_more_than_once": {rel: counts[rel] for rel in twice},
            "billed_s": round(sum(billed), 1),
            "billed_basis": "each job from submission to its end (`sky jobs queue -o json`): "
            "the controller's start, provisioning, recoveries and the run",
            "jobs_cost_usd": jobs_cost,
            "controller": {
                "name": controller.get("name"),
                "state": controller.get("state"),
                "still_billing": bool(controller.get("still_billing")),
                "command": controller.get("command"),
                "billed_s": reported.get("duration"),
                "cost_usd": controller_cost,
                "price_source": "`sky cost-report` (SkyPilot's catalog price over its usage "
                "intervals; a stopped controller's disk is not in it)",
            },
            "cost_usd": (
                None
                if jobs_cost is None and controller_cost is None
                else round((jobs_cost or 0.0) + (controller_cost or 0.0), 4)
            ),
        },
    }
    return record
