"""Cloud runs through SkyPilot: task files, cluster names, launch/exec/pull/teardown.

The Snakemake rules in `workflow/rules/cloud.smk` only call these functions. Everything goes
through the `sky` executable on PATH (the real SkyPilot CLI, or the test loopback) and plain
`rsync` over the ssh alias SkyPilot writes for each cluster. Secrets are forwarded by name
(`--secret NAME`, which copies the local value) and never appear in a file or command line.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import pwd
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from . import paths
from .errors import UserError
from .results import load_result, utc_now, write_json_atomic

#: Where the remote machine keeps results, relative to its home (`~` expands there).
REMOTE_RESULTS = "~/datarax-bench-results"
#: Written by the task's setup; every remote command sources it.
REMOTE_ENV_FILE = "~/.datarax-bench-env"
_CLUSTER_NAME_MAX = 35  # GCP's limit is the tightest SkyPilot enforces per cloud.
_RSYNC_TRANSIENT = {10, 12, 30, 35, 255}  # socket, protocol, timeouts, ssh failure
_UP = "UP"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- names and task files ---------------------------------------------------------------------


def cluster_name(profile: str, infra: str, run_name: str) -> str:
    """Deterministic, valid for every cloud: `dxb-<profile>-<infra>-<run>-<hash>`, ≤ 35 chars.

    The hash of the full (profile, infra, run) keeps names distinct after truncation.
    """
    digest = hashlib.sha256(f"{profile}\0{infra}\0{run_name}".encode()).hexdigest()[:6]
    words = [re.sub(r"[^a-z0-9]+", "-", w.lower()).strip("-") for w in (profile, infra, run_name)]
    stem = "-".join(w for w in ["dxb", *words] if w)
    stem = stem[: _CLUSTER_NAME_MAX - len(digest) - 1].rstrip("-")
    return f"{stem}-{digest}"


def task_template_path(profile) -> Path:
    path = paths.project_root() / "benchmarks" / "sky" / profile.cloud["template"]
    if not path.is_file():
        raise UserError(
            f"profile {profile.name}: cloud.template {profile.cloud['template']!r} not found; "
            "expected a file in benchmarks/sky/"
        )
    return path


def load_task(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read SkyPilot task: {exc}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a SkyPilot task (a YAML mapping)")
    return doc


def validate_task(config: dict[str, Any], source: str | Path) -> None:
    """SkyPilot's own loader: rejects unknown or misspelled fields, nested ones too."""
    import sky

    try:
        sky.Task.from_yaml_config(copy.deepcopy(config))
    except Exception as exc:  # SkyPilot raises ValueError, SchemaError, ...
        message = " ".join(str(exc).split())
        raise UserError(f"{source}: invalid SkyPilot task: {message}") from None


def doctor_command(profile_name: str) -> str:
    out = f"{REMOTE_RESULTS}/{profile_name}"
    return (
        f"set -euo pipefail; source {REMOTE_ENV_FILE}; mkdir -p {out}; "
        f"datarax-bench doctor --profile {profile_name} --json {out}/doctor.json"
    )


def render_provision_task(profile, git_commit: str | None) -> dict[str, Any]:
    """The profile's task with the same setup; its `run` only checks the hardware (`doctor`).

    The cells then run one by one with `sky exec`, so that each becomes a Snakemake job.
    """
    template = task_template_path(profile)
    task = load_task(template)
    task["name"] = f"datarax-bench-{profile.name}".replace("_", "-")
    task["workdir"] = str(paths.project_root())
    envs = dict(task.get("envs") or {})
    envs["DATARAX_BENCH_PROFILE"] = profile.name
    envs["DATARAX_BENCH_GIT_COMMIT"] = git_commit or "unknown"
    task["envs"] = envs
    task["run"] = doctor_command(profile.name)
    validate_task(task, f"task rendered from {template}")
    return task


def write_task(task: dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(task, sort_keys=False, default_flow_style=False))
    os.replace(tmp, path)


# --- command lines ----------------------------------------------------------------------------


def launch_argv(
    cluster: str,
    task_file: Path,
    infra: str,
    idle_minutes: int,
    use_spot: bool,
    secrets: Sequence[str] = (),
) -> list[str]:
    """`sky launch` with idle autodown: the backstop that stops billing if all else fails."""
    argv = ["sky", "launch", "-c", cluster, str(task_file), "-y"]
    if infra != "any":  # `any`: SkyPilot picks the cheapest enabled infra
        argv += ["--infra", infra]
    argv += ["-i", str(idle_minutes), "--down"]
    argv.append("--use-spot" if use_spot else "--no-use-spot")
    return argv + list(secrets)


def exec_argv(
    cluster: str, accelerator: str | None, command: str, envs: dict[str, str] | None = None
) -> list[str]:
    """`sky exec`; requesting the accelerator lets the job see it and queues jobs one by one.

    `envs` are the task's non-secret settings (JAX_PLATFORMS, the git commit, ...).
    """
    argv = ["sky", "exec", cluster]
    if accelerator:
        argv += ["--gpus", accelerator]
    for key, value in (envs or {}).items():
        argv += ["--env", f"{key}={value}"]
    return argv + ["--", command]


def remote_cell_path(profile: str, scenario: str, variant: str, adapter: str) -> str:
    return f"{REMOTE_RESULTS}/{profile}/raw/{scenario}/{variant}/{adapter}.json"


def remote_cell_command(profile: str, scenario: str, variant: str, adapter: str) -> str:
    q = shlex.quote
    return (
        f"set -euo pipefail; source {REMOTE_ENV_FILE}; "
        f"datarax-bench run --profile {q(profile)} --scenario {q(scenario)} "
        f"--variant {q(variant)} --adapter {q(adapter)} "
        f"--output {remote_cell_path(profile, scenario, variant, adapter)}"
    )


# --- running sky ------------------------------------------------------------------------------


def run_sky(
    argv: list[str], log: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run one sky command, teeing its output to `log` (appended)."""
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            fh.write(f"$ {shlex.join(argv)}\n{proc.stdout}{proc.stderr}[exit {proc.returncode}]\n")
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(
            f"`{shlex.join(argv[:3])} ...` exited with {proc.returncode}: {' | '.join(tail)}"
        )
    return proc


def cluster_status(cluster: str, log: Path | None = None) -> str | None:
    """The cluster's status ('UP', 'INIT', 'STOPPED') after a refresh, or None if it is gone."""
    proc = run_sky(["sky", "status", "--refresh", "-o", "json", cluster], log, check=False)
    if proc.returncode != 0:
        return None
    try:
        records = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return None
    for record in records:
        if record.get("name") == cluster:
            return record.get("status")
    return None


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


_PRICE = re.compile(r"\$?\s*(\d+\.\d+)")


def parse_launch_estimate(output: str) -> dict[str, Any]:
    """The chosen resources and hourly price from `sky launch`'s 'Considered resources' table."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", output).splitlines()  # colours
    for i, line in enumerate(lines):
        if "COST ($)" in line or "COST ($/hr)" in line:
            header = line
            chosen = next((ln for ln in lines[i + 1 :] if "✔" in ln or "*" in ln[:3]), None)
            chosen = chosen or next((ln for ln in lines[i + 1 :] if ln.strip()), None)
            if chosen is None:
                break
            cells = re.split(r"\s{2,}", chosen.replace("✔", "").strip())
            names = re.split(r"\s{2,}", header.strip())
            row = dict(zip(names, cells, strict=False))
            cost = next((v for k, v in row.items() if k.startswith("COST")), None)
            price = _PRICE.search(cost or "")
            return {
                "table_header": header.strip(),
                "chosen": chosen.strip(),
                "hourly_usd": float(price.group(1)) if price else None,
            }
    return {"table_header": None, "chosen": None, "hourly_usd": None}


def ensure_cluster(
    profile,
    infra: str,
    cluster: str,
    task_file: Path,
    idle_minutes: int,
    use_spot: bool,
    log: Path,
) -> dict[str, Any]:
    """Reuse the cluster if it is UP, else launch it (setup + `doctor`). Caller holds the lock.

    Returns what happened: launched or reused, the launch's price estimate.
    """
    status = cluster_status(cluster, log)
    if status == _UP:
        _say(f"cluster {cluster} is up; reusing it")
        return {"action": "reused", "status": status}
    _say(f"cluster {cluster}: {status or 'not found'}; launching on infra {infra}")
    # No secret is forwarded: W&B uploads happen on this machine, the cluster never needs a key.
    argv = launch_argv(cluster, task_file, infra, idle_minutes, use_spot)
    started = utc_now()
    try:
        proc = run_sky(argv, log)
    except RuntimeError as exc:
        raise RuntimeError(
            f"provisioning {cluster} on {infra} failed (see {log}); "
            f"idle autodown ({idle_minutes} min) removes a half-made cluster: {exc}"
        ) from None
    return {
        "action": "launched",
        "launched_at": started,
        "estimate": parse_launch_estimate(proc.stdout + proc.stderr),
    }


def ssh_command() -> list[str]:
    """`ssh` reading the config under $HOME, where SkyPilot wrote the cluster's alias.

    ssh itself reads the passwd home's config; the two differ when HOME is redirected.
    """
    config = Path.home() / ".ssh" / "config"
    if (
        Path(pwd.getpwuid(os.getuid()).pw_dir).resolve() != Path.home().resolve()
        and config.exists()
    ):
        return ["ssh", "-F", str(config)]
    return ["ssh"]


def fetch(
    cluster: str, remote: str, local: Path, attempts: int = 3, log: Path | None = None
) -> None:
    """rsync one remote file over the ssh alias SkyPilot wrote (SkyPilot has no rsync command)."""
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    ssh = shlex.join([*ssh_command(), "-o", "BatchMode=yes", "-o", "ConnectTimeout=20"])
    argv = ["rsync", "-a", "--timeout=60", "-e", ssh]
    argv += [f"{cluster}:{remote}", str(local)]
    for attempt in range(1, attempts + 1):
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if log is not None:
            with open(log, "a") as fh:
                fh.write(
                    f"$ {shlex.join(argv)}\n{proc.stdout}{proc.stderr}[exit {proc.returncode}]\n"
                )
        if proc.returncode == 0:
            return
        message = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if proc.returncode not in _RSYNC_TRANSIENT or attempt == attempts:
            raise RuntimeError(f"rsync {cluster}:{remote} failed ({proc.returncode}): {message}")
        _say(f"rsync {cluster}:{remote}: attempt {attempt} failed ({message}); retrying")
        time.sleep(2 * attempt)


def pull_cell(
    cluster: str, profile: str, scenario: str, variant: str, adapter: str, output: Path, log: Path
) -> dict[str, Any]:
    """Bring one cell's result back; it becomes the target only if it is a valid result."""
    label = f"{scenario}/{variant}/{adapter}"
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".pull", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            fetch(cluster, remote_cell_path(profile, scenario, variant, adapter), tmp, log=log)
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
        if (cell["scenario"], cell["variant"], cell["adapter"]) != (scenario, variant, adapter):
            raise RuntimeError(f"cell {label}: the pulled file describes another cell {cell}")
        os.replace(tmp, output)
        return result
    finally:
        tmp.unlink(missing_ok=True)


def cost_report(clusters: Sequence[str], log: Path | None = None) -> list[dict[str, Any]]:
    """SkyPilot's recorded cost for these clusters (it keeps history after teardown)."""
    proc = run_sky(["sky", "cost-report", "--all", "-o", "json"], log, check=False)
    if proc.returncode != 0:
        return []
    try:
        records = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return []
    keep = ("name", "status", "total_cost", "duration", "num_nodes", "launched_at")
    return [{k: r.get(k) for k in keep} for r in records if r.get("name") in set(clusters)]


def teardown(clusters: Sequence[str], log: Path | None = None) -> dict[str, Any]:
    """`sky down -y` (exits 0 for clusters that are already gone), then the cost report."""
    proc = run_sky(["sky", "down", "-y", *clusters], log, check=False)
    return {
        "clusters": list(clusters),
        "down_exit_code": proc.returncode,
        "torn_down_at": utc_now(),
        "cost_report": cost_report(clusters, log),
    }


def write_record(path: Path, document: dict[str, Any]) -> None:
    write_json_atomic(Path(path), document)


# --- what the workflow's rules call -----------------------------------------------------------


def task_envs(task: dict[str, Any]) -> dict[str, str]:
    """The rendered task's envs: `sky exec` jobs do not inherit them from the launch."""
    return {k: "" if v is None else str(v) for k, v in (task.get("envs") or {}).items()}


def provision(
    profile,
    infra: str,
    cluster: str,
    git_commit: str | None,
    idle_minutes: int,
    use_spot: bool,
    work_dir: Path,
    log: Path,
) -> dict[str, Any]:
    """Render the task, reuse or launch the cluster (under its lock), fetch the hardware report.

    Returns the cluster record (what `provision` writes to cluster.json).
    """
    work_dir = Path(work_dir)
    task = render_provision_task(profile, git_commit)
    task_file = work_dir / "task.yaml"
    write_task(task, task_file)
    with cluster_lock(work_dir / "cluster.lock"):
        launch = ensure_cluster(profile, infra, cluster, task_file, idle_minutes, use_spot, log)
    hardware_file = work_dir / "doctor.json"
    try:
        fetch(cluster, f"{REMOTE_RESULTS}/{profile.name}/doctor.json", hardware_file, log=log)
        hardware = json.loads(hardware_file.read_text())
    except (RuntimeError, OSError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"cluster {cluster}: no hardware report from `doctor`: {exc}") from None
    return {
        "cluster": cluster,
        "infra": infra,
        "profile": profile.name,
        "idle_minutes_to_autodown": idle_minutes,
        "use_spot": use_spot,
        "task": str(task_file),
        **launch,
        "hardware": hardware,
    }


def run_remote_cell(
    profile,
    infra: str,
    cluster: str,
    git_commit: str | None,
    idle_minutes: int,
    use_spot: bool,
    work_dir: Path,
    scenario: str,
    variant: str,
    adapter: str,
    log: Path,
) -> dict[str, Any]:
    """Run one cell with `sky exec`; relaunch first if the cluster went away (autodown, teardown).

    The cluster lock is held throughout: cells on one cluster never overlap.
    """
    label = f"{scenario}/{variant}/{adapter}"
    work_dir = Path(work_dir)
    task = render_provision_task(profile, git_commit)
    task_file = work_dir / "task.yaml"
    with cluster_lock(work_dir / "cluster.lock"):
        write_task(task, task_file)
        launch = ensure_cluster(profile, infra, cluster, task_file, idle_minutes, use_spot, log)
        command = remote_cell_command(profile.name, scenario, variant, adapter)
        argv = exec_argv(cluster, profile.cloud["accelerator"], command, task_envs(task))
        started = utc_now()
        proc = run_sky(argv, log, check=False)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
        raise RuntimeError(
            f"cell {label}: `sky exec` on {cluster} exited with {proc.returncode} "
            f"(see {log}): {tail}"
        )
    return {
        "cell": label,
        "cluster": cluster,
        "cluster_action": launch["action"],
        "started": started,
        "finished": utc_now(),
        "remote_path": remote_cell_path(profile.name, scenario, variant, adapter),
    }
