"""SkyPilot 0.14's managed jobs for the loopback `sky`: `sky jobs launch|queue|cancel|logs`.

A managed job is run by a controller process on this machine (its own session: it outlives the
`sky` call that started it) that provisions the job a cluster, runs it, and recovers it:

- The job's cluster is named as SkyPilot names it (`generate_managed_job_cluster_name`); its
  "machine" is the directory `<node home>/.loopback-clusters/<cluster>` on the loopback node,
  the job's HOME there. Each attempt gets a fresh one: the workdir is synced into it (without
  `.git`, as SkyPilot's storage upload leaves it out, and without .gitignore'd files), bucket
  mounts are filled from their buckets, and the job runs `setup`, then `run`, followed by
  SkyPilot's own wait for the bucket uploads (tests/loopback/skypilot_job.py). Environment
  values and secrets reach the node on ssh's stdin only.
- Every attempt of one job has the same SKYPILOT_TASK_ID (`common_utils.get_global_job_id`
  with is_managed_job: `sky-managed-<launch time>_<job name>_<job id>-0`).
- A bucket mount has rclone's write-back uploader (storage.py `write-back`) running in the
  job's process group, logging as rclone does; the job ends when SkyPilot's wait has seen its
  last upload. A dead machine takes it along.
- Fault `preempt_managed_after_s` (a list of seconds in faults.json): each attempt whose `run`
  starts pops the first value; that long after, the machine dies (its processes are killed, its
  directory wiped), the job is RECOVERING, and it restarts from scratch on a fresh cluster.
- Fault `preempt_first_attempt_on_file` (a glob, relative to the machine's HOME): every job's
  first attempt dies as soon as a file matching it exists there, e.g. its first result in
  a bucket mount, whatever the machine's speed; later attempts run undisturbed.
- Every attempt after the first is a new machine with other hardware (half the node's cores,
  by CPU affinity), as SkyPilot's recovery takes any offer that fits, unless the task pins
  `instance_type` (task resources or `-t`): then it is the same type, the same hardware.
- A job that fails is restarted while `resources.job_recovery.max_restarts_on_errors` allows:
  like SkyPilot, it shows RECOVERING and the restart counts in #RECOVERIES; otherwise it ends
  FAILED, or FAILED_SETUP when its setup failed.
- `cancel` only asks (status CANCELLING, as SkyPilot's signal file does); the controller kills
  the attempt, removes its cluster and then marks the job CANCELLED.

- The jobs controller is a cluster of its own, as in SkyPilot 0.14.1: the first `jobs launch`
  launches `sky-jobs-controller-<user hash>` (listed by `sky status`, priced in `cost-report`)
  on the task's infra, or where `jobs.controller.resources` (`~/.sky/config.yaml`,
  `$SKYPILOT_CONFIG`, `--config`) pins it; a STOPPED one is restarted, an UP one kept as it is.
  Its skylet stops it (not down) after 10 idle minutes without an in-progress job. `sky down`
  of it is refused while a job is in progress and needs 'delete' typed even with -y; the jobs'
  records go with it. `jobs launch -y` prints no estimate of the job, only the controller's
  launch table when it launches one.

State per job, written atomically: ~/.sky/loopback/managed/<id>.json (with its events), the
job's output in <id>.log and the controller's in <id>.controller.log.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import yaml

try:  # imported by the tests as `loopback.managed`
    from . import skypilot_job
except ImportError:  # run next to the `sky` script, which imports its siblings by bare name
    import skypilot_job

JOB_FAILED, JOB_NOT_FINISHED, JOB_NOT_FOUND, JOB_CANCELLED = 100, 101, 102, 103
TERMINAL = {
    "SUCCEEDED",
    "CANCELLED",
    "FAILED",
    "FAILED_SETUP",
    "FAILED_PRECHECKS",
    "FAILED_NO_RESOURCE",
    "FAILED_CONTROLLER",
}
STATUSES = [
    "PENDING",
    "SUBMITTED",
    "STARTING",
    "RUNNING",
    "WINDING_DOWN",
    "RECOVERING",
    "CANCELLING",
    *sorted(TERMINAL),
]
CLUSTERS_DIR = ".loopback-clusters"  # relative to the node's home
JOBS_CLUSTER_NAME_PREFIX_LENGTH = 25  # sky/jobs/constants.py
CLUSTER_NAME_HASH_LENGTH = 2  # sky/utils/common_utils.py
NUM_JOBS_TO_SHOW = 50  # `sky jobs queue --limit` default (_NUM_MANAGED_JOBS_TO_SHOW)
DEFAULT_TAIL_LINES = 1000
VALID_NAME = re.compile(r"[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?")
POLL_S = 0.2
#: The jobs controller: a cluster of its own, named `sky-jobs-controller-<user hash>`
#: (sky/utils/common.py), with SkyPilot's default resources and autostop (sky/jobs/constants.py):
#: 4+ vCPUs on the task's cloud unless `jobs.controller.resources` pins it, stopped (not torn
#: down) after 10 minutes without an in-progress managed job.
CONTROLLER_PREFIX = "sky-jobs-controller-"
CONTROLLER_RESOURCES = {"cpus": "4+", "memory": "4x", "disk_size": 50}
CONTROLLER_AUTOSTOP = {"idle_minutes": 10, "down": False}
USER_HASH_LENGTH = 8
#: The controller is the one loopback machine with a price, so that a bill that takes its
#: launch table for the job's (with -y it is the only table printed) shows.
CONTROLLER_PRICE_PER_HOUR = 0.19


class Usage(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # click's usage errors exit with 2
        raise Usage(message)


def state_dir(cli) -> Path:
    return cli.STATE / "managed"


def write_back_s() -> float:
    return float(os.environ.get("LOOPBACK_RCLONE_WRITE_BACK_S", "5"))


# --- job records ---------------------------------------------------------------------------


def record_path(cli, job_id: int) -> Path:
    return state_dir(cli) / f"{job_id}.json"


def load(cli, job_id: int) -> dict | None:
    try:
        return json.loads(record_path(cli, job_id).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def save(cli, job: dict) -> None:
    path = record_path(cli, job["job_id"])
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(job, indent=2))
    os.replace(tmp, path)


class Locked:
    def __init__(self, cli):
        state_dir(cli).mkdir(parents=True, exist_ok=True)
        self.path = state_dir(cli) / "jobs.lock"

    def __enter__(self):
        self.file = open(self.path, "a")  # noqa: SIM115 (closed in __exit__)
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        self.file.close()


def update(cli, job_id: int, status: str | None = None, reason: str = "", **changes) -> dict:
    """Change a job's record; a status change is also an event (time, status, reason)."""
    with Locked(cli):
        job = load(cli, job_id)
        job.update(changes)
        # A job that ended stays ended (a cancel may race the controller's last update).
        if status is not None and status != job["status"] and job["status"] not in TERMINAL:
            job["status"] = status
            job["events"].append([time.time(), status, reason])
        save(cli, job)
        return job


def all_jobs(cli) -> list[dict]:
    jobs = []
    for path in state_dir(cli).glob("*.json"):
        try:
            jobs.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue
    return sorted(jobs, key=lambda j: j["job_id"], reverse=True)


def alive(pid: int | None) -> bool:
    """Whether the process exists and is not a zombie."""
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def refresh(cli, job: dict) -> dict:
    """A non-terminal job whose controller is gone failed there (SkyPilot: FAILED_CONTROLLER)."""
    if job["status"] in TERMINAL or job["status"] == "PENDING" or alive(job["controller_pid"]):
        return job
    job = load(cli, job["job_id"])  # it may have ended while we looked
    if job["status"] in TERMINAL or alive(job["controller_pid"]):
        return job
    return update(
        cli,
        job["job_id"],
        "FAILED_CONTROLLER",
        "The controller process is gone.",
        end_at=time.time(),
        failure_reason="Unexpected error in the jobs controller: its process is gone.",
    )


# --- names as SkyPilot makes them ----------------------------------------------------------


def base36(hex_str: str) -> str:
    num, out = int(hex_str, 16), ""
    while num:
        num, i = divmod(num, 36)
        out = "0123456789abcdefghijklmnopqrstuvwxyz"[i] + out
    return out or "0"


def cluster_name(job_name: str, job_id: int) -> str:
    """sky.jobs.utils.generate_managed_job_cluster_name."""
    name = re.sub(r"[._]", "-", job_name).lower()
    if len(name) > JOBS_CLUSTER_NAME_PREFIX_LENGTH:
        keep = JOBS_CLUSTER_NAME_PREFIX_LENGTH - CLUSTER_NAME_HASH_LENGTH - 1
        digest = base36(hashlib.md5(job_name.encode(), usedforsecurity=False).hexdigest())
        name = f"{name[:keep].rstrip('-')}-{digest[:CLUSTER_NAME_HASH_LENGTH]}"
    return f"{name}-{job_id}"


def task_id_env(run_timestamp: str, job_name: str, job_id: int) -> str:
    """common_utils.get_global_job_id(..., task_id=0, is_managed_job=True)."""
    stamp = run_timestamp.partition("sky-")[2]
    return f"sky-managed-{stamp}_{job_name}_{job_id}-0"


def user_name() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def user_hash(cli) -> str:
    """common_utils.get_user_hash: cached in ~/.sky/user_hash, 8 hex digits."""
    path = cli.HOME / ".sky" / "user_hash"
    try:
        value = path.read_text().strip()
        if len(value) == USER_HASH_LENGTH and re.fullmatch(r"[0-9a-f]+", value):
            return value
    except FileNotFoundError:
        pass
    value = uuid.uuid4().hex[:USER_HASH_LENGTH]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value)
    return value


def controller_name(cli) -> str:
    return CONTROLLER_PREFIX + user_hash(cli)


def is_controller(name: str) -> bool:
    return name.startswith(CONTROLLER_PREFIX)


def skypilot_config(cli, config_args) -> dict:
    """~/.sky/config.yaml (or $SKYPILOT_CONFIG), then each `--config` (a file, or key=value)."""
    config: dict = {}
    base = Path(os.environ.get("SKYPILOT_CONFIG") or cli.HOME / ".sky" / "config.yaml")
    layers = [yaml.safe_load(base.read_text()) or {}] if base.is_file() else []
    for item in config_args or []:
        if Path(item).expanduser().is_file():
            layers.append(yaml.safe_load(Path(item).expanduser().read_text()) or {})
        elif "=" in item:
            key, value = item.split("=", 1)
            layer: dict = {}
            node = layer
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = yaml.safe_load(value)
            layers.append(layer)
        else:
            raise Usage(f"Invalid value for '--config': {item!r} is neither a file nor key=value")
    for layer in layers:
        config = merge(config, layer)
    return config


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def ensure_controller(cli, task_infra: str | None, config_args) -> str:
    """Launch the jobs controller, or restart it if STOPPED, as `sky jobs launch` does first.

    A new controller goes where `jobs.controller.resources` says, else on the task's infra
    (controller_utils.get_controller_resources); an existing one keeps its resources.
    """
    name = controller_name(cli)
    pinned = (skypilot_config(cli, config_args).get("jobs") or {}).get("controller") or {}
    pinned = dict(pinned.get("resources") or {})
    autostop = {**CONTROLLER_AUTOSTOP, **(pinned.pop("autostop", None) or {})}
    with open(cli.STATE / "state.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = cli.load_state(name)
        if state is not None and state.get("status") == "UP":
            return name
        now = time.time()
        if state is None:
            resources = {**CONTROLLER_RESOURCES, **pinned}
            infra = resources.pop("infra", None) or task_infra or "loopback"
            state = {
                "name": name,
                "launched_at": int(now),
                "jobs": [],
                "controller": True,
                "infra": infra,
                "resources": resources,
                "use_spot": False,
            }
            records = cli.history()
            records[name] = {"name": name, "launched_at": int(now), "status": "UP"}
            cli.save_history(records)
            # execution.launch of the controller's task: its optimizer prints its table.
            cli.print_considered_resources(infra, "loopback-ctl", 4, CONTROLLER_PRICE_PER_HOUR)
        else:
            print(f"Restarting jobs controller {name}...", flush=True)
        state.update(
            status="UP",
            autostop=autostop["idle_minutes"],
            to_down=bool(autostop["down"]),
            wait_for="jobs",
            last_active=now,
        )
        cli.save_state(name, state)
    cli.ssh_alias(name)
    cli.start_skylet(name)
    return name


def controller_busy(cli) -> bool:
    """An in-progress managed job keeps the controller from autostopping."""
    return any(refresh(cli, j)["status"] not in TERMINAL for j in all_jobs(cli))


# --- sky jobs launch -----------------------------------------------------------------------


def cmd_launch(cli, argv) -> int:
    p = Parser(prog="sky jobs launch")
    p.add_argument("entrypoint", nargs="+")
    p.add_argument("-n", "--name")
    p.add_argument("-c", "--cluster")
    p.add_argument("--workdir")
    p.add_argument("--infra")
    for flag in ("--cloud", "--region", "--zone", "--cpus", "--memory", "--image-id"):
        p.add_argument(flag)
    p.add_argument("--gpus")
    p.add_argument("-t", "--instance-type")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--use-spot", dest="use_spot", action="store_true", default=None)
    p.add_argument("--no-use-spot", dest="use_spot", action="store_false")
    p.add_argument("--job-recovery")
    p.add_argument("--env-file")
    p.add_argument("--env", action="append")
    p.add_argument("--secret-file")
    p.add_argument("--secret", action="append")
    p.add_argument("--disk-size", type=int)
    for flag in ("--disk-tier", "--network-tier", "--local-disk", "--priority"):
        p.add_argument(flag)
    p.add_argument("--config", action="append")
    p.add_argument("--ports", action="append")
    p.add_argument("-d", "--detach-run", action="store_true")
    p.add_argument("-y", "--yes", action="store_true")
    p.add_argument("-p", "--pool")
    p.add_argument("--num-jobs", type=int)
    p.add_argument("--async", dest="async_call", action="store_true")
    p.add_argument("--no-async", dest="async_call", action="store_false")
    p.add_argument("--job-group")
    p.add_argument("--no-job-group", action="store_true")
    p.add_argument("--git-url")
    p.add_argument("--git-ref")
    p.add_argument("-w", "--workspace")
    a = p.parse_args(argv)
    if a.pool or a.num_jobs or a.env_file or a.secret_file or a.git_url:
        raise Usage("the loopback's `sky jobs launch` has no pools, --num-jobs, env files or git")
    if a.cluster is not None:
        if a.name is not None and a.name != a.cluster:
            raise Usage(
                "Cannot specify both --name and --cluster. Use one of the flags as they are alias."
            )
        a.name = a.cluster
    entry = Path(a.entrypoint[0])
    if len(a.entrypoint) == 1 and entry.suffix in (".yaml", ".yml") and entry.is_file():
        task = yaml.safe_load(entry.read_text()) or {}
        print(f"YAML to run: {entry}")
    else:  # SkyPilot runs anything that is not a task YAML as a command
        task = {"run": " ".join(a.entrypoint)}
    try:
        envs, use_spot = cli.check_task(task, a.env, a.secret, a.use_spot, a.infra, a.instance_type)
    except cli.Refused as exc:
        print(exc, file=sys.stderr)
        return 1
    name = a.name or task.get("name") or f"sky-{uuid.uuid4().hex[:4]}-{user_name()}"
    if not VALID_NAME.fullmatch(name):
        print(
            f"sky.exceptions.InvalidClusterNameError: Cluster name {name!r} is invalid: "
            "ensure it is fully matched by regex (e.g., only contains letters, numbers and "
            f"dash): {VALID_NAME.pattern}",
            file=sys.stderr,
        )
        return 1
    recovery = (task.get("resources") or {}).get("job_recovery") or {}
    if isinstance(recovery, str):
        recovery = {"strategy": recovery}
    if a.job_recovery:
        recovery = {**recovery, "strategy": a.job_recovery}
    resources = f"1x[{a.gpus or (task.get('resources') or {}).get('accelerators') or 'CPU:1+'}]"
    # The job's estimate is printed only to be confirmed: -y prints none (jobs/client/sdk.py).
    if not a.yes:
        print(f"Managed job {name!r} will be launched on (estimated):")
        cli.print_considered_resources(a.infra)
        if not confirm(f"Launching a managed job {name!r}. Proceed?"):
            return 1
    if task.get("file_mounts"):  # SkyPilot checks the task's storage before it submits
        import storage

        try:
            storage.storage_mounts(task, envs)
        except Exception as exc:
            print(f"sky.exceptions.StorageError: {exc}", file=sys.stderr)
            return 1
    workdir = a.workdir or task.get("workdir")
    ensure_controller(cli, a.infra, a.config)
    print(f"Launching managed job {name!r} from jobs controller...", flush=True)
    now = time.time()
    with Locked(cli):
        job_id = 1 + max((j["job_id"] for j in all_jobs(cli)), default=0)
        run_timestamp = "sky-" + datetime.now().strftime("%Y-%m-%d-%H-%M-%S-%f")
        job = {
            "job_id": job_id,
            "job_name": name,
            "status": "PENDING",
            "events": [[now, "PENDING", "Job submitted."]],
            "submitted_at": now,
            "start_at": None,
            "end_at": None,
            "last_recovered_at": None,
            "run_seconds": 0.0,
            "recovery_count": 0,
            "resources": resources,
            "infra": a.infra,
            "use_spot": use_spot,
            "cluster": cluster_name(name, job_id),
            "run_timestamp": run_timestamp,
            "task_id_env": task_id_env(run_timestamp, name, job_id),
            "max_restarts_on_errors": int(recovery.get("max_restarts_on_errors") or 0),
            "failure_reason": None,
            "controller_pid": None,
            "attempt_pid": None,
            "user_name": user_name(),
        }
        save(cli, job)
    spec = {
        "task": task,
        "envs": envs,
        "workdir": str(Path(workdir).expanduser().resolve()) if workdir else None,
        "instance_type": a.instance_type or (task.get("resources") or {}).get("instance_type"),
    }
    controller = subprocess.Popen(
        [sys.executable, cli.__file__, "__managed_controller__", str(job_id)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=open(state_dir(cli) / f"{job_id}.controller.log", "a"),  # noqa: SIM115
        start_new_session=True,
        text=True,
    )
    update(cli, job_id, controller_pid=controller.pid)
    # The task's environment and secrets go to the controller on its stdin, never in a file.
    controller.stdin.write(json.dumps(spec))
    controller.stdin.close()
    print(f"⚙︎ Job submitted, ID: {job_id}", flush=True)
    code = None if a.detach_run else follow_logs(cli, job_id, follow=True, tail=None)
    print(
        f"\n📋 Useful Commands\nManaged Job ID: {job_id}\n"
        f"├── To cancel the job:\t\tsky jobs cancel {job_id}\n"
        f"├── To stream job logs:\t\tsky jobs logs {job_id}\n"
        f"├── To stream controller logs:\tsky jobs logs --controller {job_id}\n"
        "└── To view all managed jobs:\tsky jobs queue"
    )
    return 0 if code is None else code


def confirm(prompt: str) -> bool:
    """click.confirm(default=True, abort=True): EOF or a no aborts (exit 1)."""
    print(f"{prompt} [Y/n]: ", end="", flush=True)
    answer = sys.stdin.readline()
    if answer and answer.strip().lower() in ("", "y", "yes"):
        return True
    print("\nAborted!", file=sys.stderr)
    return False


# --- the controller ------------------------------------------------------------------------


class Controller:
    """Runs one managed job to its end: provision, run, watch, recover, clean up."""

    def __init__(self, cli, job_id: int, spec: dict):
        self.cli, self.job_id, self.spec = cli, job_id, spec
        self.job = load(cli, job_id)
        self.cluster = self.job["cluster"]
        self.node_home = Path(cli.node()["home"])
        self.home = self.node_home / CLUSTERS_DIR / self.cluster
        self.log = state_dir(cli) / f"{job_id}.log"
        self.cancel_file = state_dir(cli) / f"{job_id}.cancel"
        self.restarts_on_errors = 0

    def say(self, message: str) -> None:
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        print(f"I {stamp} controller: {message}", file=sys.stderr, flush=True)

    def set(self, status: str | None = None, reason: str = "", **changes) -> None:
        self.job = update(self.cli, self.job_id, status, reason, **changes)
        if status:
            self.say(f"job {self.job_id} {status}{': ' + reason if reason else ''}")

    def run(self) -> int:
        self.set("STARTING", "Launching the job's cluster.")
        attempt = 0
        while True:
            attempt += 1
            outcome = self.attempt(attempt)
            if outcome == "cancelled":
                self.teardown()
                self.set("CANCELLED", "Cancelled by the user.", end_at=time.time())
                return 0
            if outcome == "succeeded":
                self.teardown()
                self.set("SUCCEEDED", end_at=time.time())
                return 0
            if outcome == "preempted":
                self.teardown()
                self.set("RECOVERING", "Cluster preempted or failed.")
                continue
            # The user's program failed (SkyPilot's should_restart_on_failure).
            self.restarts_on_errors += 1
            failed = "FAILED_SETUP" if outcome == "failed_setup" else "FAILED"
            self.teardown()
            if self.restarts_on_errors > self.job["max_restarts_on_errors"]:
                self.set(
                    failed,
                    f"Job failed ({failed}).",
                    end_at=time.time(),
                    failure_reason=f"Job failed ({failed}) (user program failure). To see the "
                    f"details, run: sky jobs logs --controller {self.job_id}",
                )
                return 0
            limit = self.job["max_restarts_on_errors"]
            self.set(
                "RECOVERING",
                f"Job failed ({failed}). Restarting the job (restart {self.restarts_on_errors} "
                f"of {limit} on errors).",
            )

    def teardown(self) -> None:
        pid = self.job.get("attempt_pid")
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            # SkyPilot marks a job ended only once its cluster is gone.
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(self.home, ignore_errors=True)
        self.set(attempt_pid=None)

    def provision(self) -> dict:
        """A fresh machine: an empty home, the workdir synced in, bucket mounts filled."""
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        self.cli.ssh_alias(self.cluster)
        workdir = self.spec.get("workdir")
        if workdir:
            # SkyPilot uploads a managed job's workdir through storage, which leaves `.git` out.
            argv = ["rsync", "-a", "--delete", "--filter=:- .gitignore", "--exclude=/.git", "-e"]
            argv += [shlex.join([*self.cli.SSH, "-o", "BatchMode=yes"]), workdir + "/"]
            argv += [f"{self.cluster}:{self.home}/sky_workdir/"]
            subprocess.run(argv, stdin=subprocess.DEVNULL, check=True)
        mounts = {}
        if self.spec["task"].get("file_mounts"):
            import storage

            mounts = storage.prepare_mounts(self.spec["task"], self.spec["envs"], self.home)
        return mounts

    def attempt(self, number: int) -> str:
        if self.cancel_file.exists():
            return "cancelled"
        try:
            mounts = self.provision()
        except Exception as exc:  # a launch that fails is retried like a preemption
            self.say(f"provisioning failed: {exc}")
            time.sleep(1)
            return "cancelled" if self.cancel_file.exists() else "preempted"
        task = self.spec["task"]
        jobs = self.home / ".sky-loopback" / "job"
        body = []
        if task.get("setup"):
            body.append(
                f"( {task['setup']}\n) || {{ echo 'ERROR: setup failed' >&2; "
                f"touch {jobs}/setup-failed; exit 1; }}"
            )
        body.append(f"touch {jobs}/running")
        if task.get("run"):
            body.append(skypilot_job.task_script(task["run"], self.cli.STATE / "task_script.json"))
        script = "\n".join(body)
        if mounts:
            import storage

            script = storage.wrap_job(script, mounts, write_back_s=write_back_s())
        envs = {**self.spec["envs"], "SKYPILOT_TASK_ID": self.job["task_id_env"]}
        machine = self.machine(number)
        # As `sky launch` does: the environment comes on ssh's stdin and the job inherits it.
        remote = (
            f"{self.cli.env_script(envs)}\n"
            f"export HOME={shlex.quote(str(self.home))}\n"
            f"mkdir -p {jobs} ~/sky_workdir && cd ~/sky_workdir\n"
            f"cat > {jobs}/job.sh <<'LOOPBACK_JOB_EOF'\n{script}\nLOOPBACK_JOB_EOF\n"
            f"setsid nohup {machine}bash -c 'bash {jobs}/job.sh > {jobs}/job.log 2>&1; "
            f"echo $? > {jobs}/job.exit' </dev/null >/dev/null 2>&1 &\n"
            "echo $!\n"
        )
        argv = self.cli.ssh_argv(self.cluster, "bash", "-s")
        proc = subprocess.run(argv, input=remote, text=True, capture_output=True)
        if proc.returncode != 0:
            self.say(f"cannot reach the cluster: {proc.stderr.strip()}")
            return "preempted"
        pid = int(proc.stdout.split()[-1])
        now = time.time()
        if self.job["status"] == "STARTING":
            self.set("RUNNING", start_at=now, last_recovered_at=now, attempt_pid=pid)
        else:  # set_recovered: a recovery (preemption or restart on error) is counted
            self.set(
                "RUNNING",
                "Job has recovered",
                last_recovered_at=now,
                attempt_pid=pid,
                recovery_count=self.job["recovery_count"] + 1,
            )
        self.say(f"attempt {number} runs as pid {pid} on {self.home}")
        return self.watch(pid, jobs, first=number == 1)

    def machine(self, number: int) -> str:
        """The command prefix that makes the attempt's machine. A recovery (or restart) is a new
        machine: SkyPilot takes any offer that fits (on Vast the first returned, with no CPU
        model or core count), so unless the task pins `instance_type` it has other hardware;
        here half the node's cores, by CPU affinity, which every process of the job inherits
        and `provenance.cpu_info` reads (`sched_getaffinity`)."""
        if number == 1 or self.spec.get("instance_type"):
            return ""
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            self.say(f"attempt {number}: a 1-core node cannot give it other hardware")
            return ""
        chosen = cores[: len(cores) // 2]
        self.say(f"attempt {number} lands on other hardware: {len(chosen)} of {len(cores)} cores")
        return f"taskset -c {','.join(map(str, chosen))} "

    def watch(self, pid: int, jobs: Path, first: bool) -> str:
        started, offset, preempt_at = self.job["last_recovered_at"], 0, None
        dies_on = self.cli.faults().get("preempt_first_attempt_on_file") if first else None
        try:
            while True:
                offset = self.copy_log(jobs / "job.log", offset)
                if self.cancel_file.exists():
                    return "cancelled"
                if preempt_at is None and (jobs / "running").exists():
                    preempt_at = self.pop_preemption()
                exit_file = jobs / "job.exit"
                if exit_file.exists() and exit_file.read_text().strip():
                    self.copy_log(jobs / "job.log", offset)
                    code = int(exit_file.read_text().strip())
                    if code == 0:
                        return "succeeded"
                    return "failed_setup" if (jobs / "setup-failed").exists() else "failed"
                if preempt_at is not None and time.time() >= preempt_at:
                    self.say(f"preempting pid {pid}: the machine dies")
                    return "preempted"
                if dies_on and next(self.home.glob(dies_on), None) is not None:
                    self.say(f"preempting pid {pid}: {dies_on} exists, the machine dies")
                    return "preempted"
                if not alive(pid) and not exit_file.exists():
                    return "preempted"  # the job's processes are gone without an exit code
                time.sleep(POLL_S)
        finally:
            self.set(run_seconds=self.job["run_seconds"] + time.time() - started)

    def pop_preemption(self) -> float:
        path = self.cli.STATE / "faults.json"
        with open(self.cli.STATE / "faults.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.cli.faults()
            delays = current.get("preempt_managed_after_s") or []
            if not delays:
                return float("inf")
            current["preempt_managed_after_s"] = delays[1:]
            path.write_text(json.dumps(current))
        return time.time() + float(delays[0])

    def copy_log(self, remote_log: Path, offset: int) -> int:
        """Append what the attempt wrote since `offset` to the job's log here."""
        try:
            with open(remote_log, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return offset
        if data:
            with open(self.log, "ab") as out:
                out.write(data)
        return offset + len(data)


def controller_main(cli, job_id: int) -> int:
    spec = json.loads(sys.stdin.read())
    controller = Controller(cli, job_id, spec)
    try:
        return controller.run()
    except Exception as exc:
        controller.say(f"controller failed: {exc!r}")
        controller.teardown()
        controller.set(
            "FAILED_CONTROLLER",
            str(exc),
            end_at=time.time(),
            failure_reason=f"Unexpected error in the jobs controller: {exc}",
        )
        return 1
    finally:
        (cli.SSH_DIR / controller.cluster).unlink(missing_ok=True)


# --- sky jobs logs -------------------------------------------------------------------------


def follow_logs(cli, job_id: int, follow: bool, tail: int | None, controller=False) -> int:
    """SkyPilot's managed-job log tailing and its exit codes (JobExitCode)."""
    log = state_dir(cli) / (f"{job_id}.controller.log" if controller else f"{job_id}.log")
    job = refresh(cli, load(cli, job_id))
    if not follow or job["status"] in TERMINAL:
        text = log.read_text() if log.exists() else ""
        if tail:
            text = "".join(text.splitlines(keepends=True)[-tail:])
        sys.stdout.write(text)
        if job["status"] not in TERMINAL:
            return 0  # not following a job that still runs: SkyPilot exits 0
        print(f"✓ Job finished (status: {job['status']}).", flush=True)
        return exit_code(job["status"])
    offset = 0
    if tail and log.exists():
        lines = log.read_text().splitlines(keepends=True)
        offset = log.stat().st_size - sum(len(s.encode()) for s in lines[-tail:])
    while True:
        if log.exists():
            with open(log, "rb") as f:
                f.seek(offset)
                data = f.read()
            offset += len(data)
            sys.stdout.write(data.decode(errors="replace"))
            sys.stdout.flush()
        if job["status"] in TERMINAL:
            break
        time.sleep(POLL_S)
        job = refresh(cli, load(cli, job_id))
    print(f"✓ Managed job finished: {job_id} (status: {job['status']}).", flush=True)
    return exit_code(job["status"])


def exit_code(status: str) -> int:
    if status not in TERMINAL:
        return JOB_NOT_FINISHED
    return {"SUCCEEDED": 0, "CANCELLED": JOB_CANCELLED}.get(status, JOB_FAILED)


def cmd_logs(cli, argv) -> int:
    p = Parser(prog="sky jobs logs")
    p.add_argument("-n", "--name")
    p.add_argument("--follow", dest="follow", action="store_true", default=True)
    p.add_argument("--no-follow", dest="follow", action="store_false")
    p.add_argument("--controller", action="store_true")
    p.add_argument("-r", "--refresh", action="store_true")
    p.add_argument("-s", "--sync-down", action="store_true")
    p.add_argument("--tail", type=int, default=-1)
    p.add_argument("job_id", nargs="?", type=int)
    p.add_argument("task", nargs="?")
    a = p.parse_args(argv)
    if a.sync_down:
        raise Usage("the loopback's `sky jobs logs` does not sync logs down")
    tail = a.tail
    if tail == -1:
        tail = DEFAULT_TAIL_LINES if a.follow else 0
        if a.follow:
            print(
                f"Showing the last {DEFAULT_TAIL_LINES} lines (default). "
                "Pass --tail 0 to print the entire log.",
                file=sys.stderr,
            )
    jobs = all_jobs(cli)
    job_id = a.job_id
    if job_id is None and a.name is not None:
        # Without --controller SkyPilot looks the name up among the jobs still running.
        running = [
            j["job_id"]
            for j in jobs
            if j["job_name"] == a.name and (a.controller or j["status"] not in TERMINAL)
        ]
        if not running:
            print(f"No running managed job found with name {a.name!r}.")
            return JOB_NOT_FOUND
        if len(running) > 1:
            print(f"ValueError: Multiple running jobs found with name {a.name!r}.", file=sys.stderr)
            return 1
        job_id = running[0]
    if job_id is None:
        if not jobs:
            print("No managed job found.")
            return JOB_NOT_FOUND
        job_id = jobs[0]["job_id"]
    if load(cli, job_id) is None:
        print(f"Job {job_id} not found.")
        return JOB_NOT_FOUND
    return follow_logs(cli, job_id, a.follow, max(tail, 0) or None, a.controller)


# --- sky jobs queue ------------------------------------------------------------------------


def readable(start: float | None, end: float | None = None, absolute: bool = False) -> str:
    """sky.utils.log_utils.readable_time_duration."""
    import pendulum

    if start is None or start < 0:
        return "-"
    if end == start == 0:
        return "-"
    start_time = pendulum.from_timestamp(start)
    end_time = pendulum.from_timestamp(end) if end is not None else None
    duration = start_time.diff(end_time)
    if absolute:
        diff = duration.in_words()
        if duration.in_seconds() < 1:
            diff = "< 1 second"
        for long, short in (
            (" seconds", "s"),
            (" second", "s"),
            (" minutes", "m"),
            (" minute", "m"),
            (" hours", "h"),
            (" hour", "h"),
            (" days", "d"),
            (" day", "d"),
            (" weeks", "w"),
            (" week", "w"),
            (" months", "mo"),
            (" month", "mo"),
        ):
            diff = diff.replace(long, short)
    else:
        diff = start_time.diff_for_humans(end_time)
        if duration.in_seconds() < 1:
            diff = "< 1 second"
        diff = diff.replace("second", "sec").replace("minute", "min").replace("hour", "hr")
    return diff


def job_duration(job: dict) -> float:
    if job["status"] in ("RUNNING", "CANCELLING") and job.get("last_recovered_at"):
        return job["run_seconds"] + time.time() - job["last_recovered_at"]
    return job["run_seconds"]


def format_table(jobs: list[dict], show_all: bool, show_user: bool) -> str:
    """sky.jobs.utils.format_job_table for single-task jobs."""
    import prettytable

    columns = ["ID", "TASK", *(["WORKSPACE"] if show_all else []), "NAME"]
    columns += (["USER", "USER_ID"] if show_all else ["USER"]) if show_user else []
    columns += ["REQUESTED", "SUBMITTED", "TOT. DURATION", "JOB DURATION", "#RECOVERIES"]
    columns += ["STATUS", "PROGRESS", "POOL"]
    if show_all:
        columns += ["WORKER_CLUSTER", "WORKER_JOB_ID", "STARTED", "INFRA", "RESOURCES"]
        columns += ["SCHED. STATE", "DETAILS", "GIT_COMMIT"]
    table = prettytable.PrettyTable(align="l", border=False, field_names=columns)
    table.left_padding_width = 0
    table.right_padding_width = 2
    counts: dict[str, int] = {}
    for job in jobs:
        if job["status"] not in TERMINAL:
            counts[job["status"]] = counts.get(job["status"], 0) + 1
        row = [job["job_id"], "-", *(["default"] if show_all else []), job["job_name"]]
        row += ([job["user_name"], "-"] if show_all else [job["user_name"]]) if show_user else []
        row += [
            job["resources"],
            readable(job["submitted_at"]),
            readable(job["submitted_at"], job["end_at"], absolute=True),
            readable(0, job_duration(job), absolute=True),
            job["recovery_count"],
            job["status"],
            "-",
            "-",
        ]
        if show_all:
            running = job["status"] not in TERMINAL
            row += [
                job["cluster"] if running else "-",
                1 if running else "-",
                readable(job["start_at"]),
                job["infra"] or "-",
                f"1x({job['resources']})",
                "DONE" if not running else "ALIVE",
                f"Failure: {job['failure_reason']}" if job["failure_reason"] else "-",
                "-",
            ]
        table.add_row(row)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    output = f"In progress tasks: {summary}" if summary else "No in-progress managed jobs."
    if str(table):
        output += f"\n{table}"
    return output


def json_record(job: dict) -> dict:
    """The fields of SkyPilot's ManagedJobRecord the loopback has."""
    return {
        "job_id": job["job_id"],
        "task_id": 0,
        "job_name": job["job_name"],
        "task_name": job["job_name"],
        "job_duration": job_duration(job),
        "workspace": "default",
        "status": job["status"],
        "resources": job["resources"],
        "infra": job["infra"],
        "recovery_count": job["recovery_count"],
        "failure_reason": job["failure_reason"],
        "user_name": job["user_name"],
        "submitted_at": job["submitted_at"],
        "start_at": job["start_at"],
        "end_at": job["end_at"],
        "last_recovered_at": job["last_recovered_at"],
        "run_timestamp": job["run_timestamp"],
        "controller_pid": job["controller_pid"],
        "current_cluster_name": job["cluster"],
        "pool": None,
    }


def cmd_queue(cli, argv) -> int:
    skip_sentinel = "__skip_finished__"
    p = Parser(prog="sky jobs queue")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-l", "--limit", type=int, default=NUM_JOBS_TO_SHOW)
    p.add_argument("-r", "--refresh", action="store_true")
    p.add_argument("--skip-finished", action="store_true")
    p.add_argument("-s", "--status", action="append", nargs="?", const=skip_sentinel)
    p.add_argument("--since")
    p.add_argument("--after")
    p.add_argument("--before")
    p.add_argument("--infra")
    p.add_argument("-u", "--all-users", action="store_true")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.add_argument("--config")
    a = p.parse_args(argv)
    if a.since or a.after or a.before:
        raise Usage("the loopback's `sky jobs queue` has no time filters")
    statuses = [s.strip().upper() for v in a.status or [] for s in v.split(",") if s.strip()]
    if skip_sentinel.upper() in statuses:
        print(
            "Warning: `-s` without a value is a deprecated alias for `--skip-finished` and "
            "will be removed in 0.15.0. Use `--skip-finished`, or pass a status "
            "(e.g. `-s RUNNING`).",
            file=sys.stderr,
        )
        a.skip_finished = True
        statuses = [s for s in statuses if s != skip_sentinel.upper()]
    for status in statuses:
        if status not in STATUSES:
            raise Usage(f"Invalid value for '-s' / '--status': {status!r}")
    jobs = [refresh(cli, j) for j in all_jobs(cli)]
    if a.skip_finished:
        jobs = [j for j in jobs if j["status"] not in TERMINAL]
    if statuses:
        jobs = [j for j in jobs if j["status"] in statuses]
    if a.infra:
        jobs = [j for j in jobs if (j["infra"] or "").startswith(a.infra)]
    limit = None if a.all else a.limit
    total = len(jobs)
    jobs = jobs[:limit] if limit else jobs
    if a.output == "json":
        print(json.dumps([json_record(j) for j in jobs], indent=2))
        return 0
    print("Fetching managed job statuses...")
    hint = " (showing in-progress jobs only)" if a.skip_finished else ""
    print(f"Managed jobs{hint}\n{format_table(jobs, a.verbose, a.all_users)}")
    if limit and total and limit < total:
        print(
            f"Only showing the latest {limit} managed jobs(use --limit to show more managed "
            "jobs or --all to show all managed jobs) "
        )
    return 0


# --- sky jobs cancel -----------------------------------------------------------------------


def cmd_cancel(cli, argv) -> int:
    p = Parser(prog="sky jobs cancel")
    p.add_argument("-n", "--name")
    p.add_argument("-p", "--pool")
    p.add_argument("job_ids", nargs="*", type=int)
    p.add_argument("--task")
    p.add_argument("--graceful", action="store_true")
    p.add_argument("--graceful-timeout", type=int)
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-y", "--yes", action="store_true")
    p.add_argument("-u", "--all-users", action="store_true")
    p.add_argument("--config")
    a = p.parse_args(argv)
    ids = ",".join(map(str, a.job_ids))
    chosen = [bool(a.job_ids), a.name is not None, a.pool is not None, a.all or a.all_users]
    if sum(chosen) != 1:
        given = [f"--job-ids {ids}"] if a.job_ids else []
        given += [f"--name {a.name}"] if a.name is not None else []
        given += [f"--pool {a.pool}"] if a.pool is not None else []
        given += ["--all"] if a.all else []
        given += ["--all-users"] if a.all_users else []
        raise Usage(
            "Can only specify one of JOB_IDS, --name, --pool, or --all/--all-users. "
            f"Provided {' '.join(given)!r}."
        )
    if not a.yes:
        plural = "s" if len(a.job_ids) > 1 else ""
        what = (
            f"managed job{plural} with ID{plural} {ids}"
            if a.job_ids
            else f"{a.name!r}"
            if a.name is not None
            else f"managed jobs in pool {a.pool!r}"
        )
        if a.all_users:
            what = "all managed jobs FOR ALL USERS"
        elif a.all:
            what = "all managed jobs"
        if not confirm(f"Cancelling {what}. Proceed?"):
            return 1
    jobs = {j["job_id"]: refresh(cli, j) for j in all_jobs(cli)}
    if a.pool is not None:
        print(f"No running job found in pool {a.pool!r}.")
        return 0
    prefix = ""
    if a.name is not None:
        wanted = [i for i, j in jobs.items() if j["job_name"] == a.name]
        wanted = [i for i in wanted if jobs[i]["status"] not in TERMINAL]
        if not wanted:
            print(f"No running job found with name {a.name!r}.")
            return 0
        if len(wanted) > 1:
            print(f"Multiple running jobs found with name {a.name!r}.\nJob IDs: {wanted}")
            return 0
        prefix = f"{a.name!r} "
    elif a.job_ids:
        wanted = list(dict.fromkeys(a.job_ids))
    else:
        wanted = [i for i, j in jobs.items() if j["status"] not in TERMINAL]
    cancelled = []
    for job_id in wanted:
        job = jobs.get(job_id)
        if job is None or job["status"] in TERMINAL:
            continue
        (state_dir(cli) / f"{job_id}.cancel").touch()  # the controller's signal file
        if job["status"] == "PENDING":
            update(cli, job_id, "CANCELLED", "Cancelled by the user.", end_at=time.time())
        else:
            update(cli, job_id, "CANCELLING", "Cancel requested by the user.")
        cancelled.append(job_id)
    if not cancelled:
        print("No job to cancel.")
        return 0
    if len(cancelled) == 1:
        who = f"Job with ID {cancelled[0]} is"
    else:
        who = f"Jobs with IDs {', '.join(map(str, cancelled))} are"
    print(f"{prefix}{who} scheduled to be cancelled.")
    return 0


SUBCOMMANDS = {"launch": cmd_launch, "queue": cmd_queue, "cancel": cmd_cancel, "logs": cmd_logs}


def cmd_jobs(cli, argv) -> int:
    """`sky jobs ...`; `cli` is the loopback `sky` script's module (its helpers and state)."""
    try:
        if not argv or argv[0] not in SUBCOMMANDS:
            raise Usage(
                f"No such command {argv[:1]} (loopback `sky jobs`: {', '.join(SUBCOMMANDS)})."
            )
        return SUBCOMMANDS[argv[0]](cli, argv[1:])
    except Usage as exc:
        raise cli.Usage(str(exc)) from None
