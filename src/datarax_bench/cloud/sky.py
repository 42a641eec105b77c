"""Calling SkyPilot: every `sky` command with a wall-clock limit, its JSON read strictly, the
command lines we build for it, and rsync over the ssh alias it writes for each cluster.

A `sky` command is a request that SkyPilot's API server runs; the CLI only streams it. The
commands that can outlast their client are submitted with `--async` and, when a limit or an
interrupt cuts them, cancelled on the server (`run_request`, docs/cloud.md)."""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datarax_bench.console import say
from datarax_bench.errors import UserError

_RSYNC_TRANSIENT = {10, 12, 30, 35, 255}  # socket, protocol, timeouts, ssh failure


_UP = "UP"


# Wall-clock limits of the short `sky` calls, in seconds.
STATUS_TIMEOUT_S = 300


DOWN_TIMEOUT_S = 900


SHORT_TIMEOUT_S = 300


class SkyTimeout(RuntimeError):
    """A `sky` call ran past its wall-clock limit and was killed."""


def spot_support(infra: str) -> tuple[bool | None, str]:
    """Whether SkyPilot offers spot on `infra`, from the cloud's own feature check.

    None when the check cannot be made here (a Kubernetes or SSH pool needs its cluster's node
    labels, and the kubernetes client, to tell).
    """
    if infra == "any":
        return True, "infra any: SkyPilot chooses among the enabled clouds that offer spot"
    import sky
    from sky import clouds, exceptions

    try:
        resources = sky.Resources(infra=infra)
    except Exception as exc:  # SkyPilot's own parse of the infra string
        raise UserError(f"infra {infra!r}: SkyPilot does not accept it: {exc}") from None
    cloud = resources.cloud
    if cloud is None:
        return True, f"infra {infra!r}: SkyPilot chooses the cloud"
    try:
        cloud.check_features_are_supported(
            resources, {clouds.CloudImplementationFeatures.SPOT_INSTANCE}
        )
    except exceptions.NotSupportedError:
        return False, f"{cloud} has no spot instances (SkyPilot's feature check)"
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        return None, f"spot support on {cloud} could not be checked here ({reason})"
    return True, f"{cloud} offers spot instances"


def resolve_use_spot(infra: str, use_spot: bool | str) -> tuple[bool, str]:
    """`auto`: spot where the cloud offers it; an explicit `true` where it does not is an error."""
    if use_spot is False:
        return False, "use_spot: false"
    supported, why = spot_support(infra)
    if use_spot is True:
        if supported is False:
            raise UserError(
                f"use_spot: true, but infra {infra!r}: {why}; expected use_spot: auto or false"
            )
        return True, f"use_spot: true ({why})"
    return supported is True, f"use_spot: auto: {why}"


def launch_argv(
    cluster: str,
    task_file: Path,
    infra: str,
    autodown_minutes: int,
    use_spot: bool,
) -> list[str]:
    """`sky launch` with autodown armed before setup, as a deadline (`--wait-for none`)."""
    argv = ["sky", "launch", "-c", cluster, str(task_file), "-y"]
    if infra != "any":  # `any`: SkyPilot picks the cheapest enabled infra
        argv += ["--infra", infra]
    argv += ["-i", str(autodown_minutes), "--down", "--wait-for", "none"]
    argv.append("--use-spot" if use_spot else "--no-use-spot")
    return argv


def autostop_argv(cluster: str, minutes: int) -> list[str]:
    return ["sky", "autostop", cluster, "-i", str(minutes), "--down", "--wait-for", "none", "-y"]


def exec_argv(
    cluster: str,
    accelerator: str | None,
    command: str,
    envs: dict[str, str] | None = None,
    workdir: Path | None = None,
) -> list[str]:
    """`sky exec`; requesting the accelerator lets the job see it and queues jobs one by one.

    `workdir` is synced first (`sky exec` syncs nothing otherwise), so that the cell runs the
    code of the local checkout at this moment. `envs` are the task's non-secret settings.
    """
    argv = ["sky", "exec", cluster]
    if workdir is not None:
        argv += ["--workdir", str(workdir)]
    if accelerator:
        argv += ["--gpus", accelerator]
    for key, value in (envs or {}).items():
        argv += ["--env", f"{key}={value}"]
    return argv + ["--", command]


#: `sky` commands that submit a request which can outlast its client: SkyPilot 0.14's CLI only
#: streams a request the API server runs, and a killed CLI leaves it running ("Request will
#: continue running asynchronously", `_async_call_or_wait`). These are submitted with `--async`,
#: so that their request id is known from the start, waited for with `sky api logs ID`, and
#: cancelled on the server (`sky api cancel ID`) when the wait is cut by a time limit or an
#: interrupt. Each accepts `--async` in 0.14.1 (tests/cloud/test_sky_requests.py checks its parser).
REQUEST_COMMANDS = {
    ("launch",): "launch",
    ("exec",): "exec",
    ("down",): "down",
    ("autostop",): "autostop",
    ("cancel",): "cancel",
    ("jobs", "launch"): "jobs.launch",
}


#: Their requests submit a job that the plain CLI then follows (its exit status is the job's).
_FOLLOWS_JOB = {("launch",), ("exec",)}


#: How long a cancelled request may take to end on the server.
CANCEL_TIMEOUT_S = 120


_ACTIVE = {"PENDING", "WAITING", "RUNNING"}


_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


# `click.secho(f'Submitted {request_name} request: {request_id}')`; the name can hold spaces
# ("sky.Scheduling autodown on").
_SUBMITTED = re.compile(rf"Submitted .+? request: ({_UUID})")


_JOB_SUBMITTED = re.compile(r"Job submitted, ID: (\d+)")


_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def _command(argv: Sequence[str]) -> tuple[str, ...]:
    return tuple(argv[1:3]) if argv[1:2] == ["jobs"] else tuple(argv[1:2])


def async_argv(argv: Sequence[str]) -> list[str]:
    """The same command submitted with `--async` (placed before any `--`)."""
    n = 1 + len(_command(argv))
    return [*argv[:n], "--async", *argv[n:]]


def run_sky(
    argv: list[str], log: Path | None = None, check: bool = True, timeout: float = SHORT_TIMEOUT_S
) -> subprocess.CompletedProcess:
    """Run one sky command under a wall-clock limit, teeing its output to `log` (appended).

    A command in `REQUEST_COMMANDS` goes through `run_request`: when the limit or an interrupt
    cuts it, its request is cancelled on SkyPilot's API server and has ended before this
    returns. On timeout `SkyTimeout` is raised. The CLI stays in this process's group, so
    whatever kills the workflow kills it too.
    """
    if _command(argv) in REQUEST_COMMANDS and "--dryrun" not in argv:
        result = run_request(argv, log, timeout)
    else:
        result = _run_cli(argv, log, timeout)
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(
            f"`{shlex.join(argv[:3])} ...` exited with {result.returncode}: {' | '.join(tail)}"
        )
    return result


def _run_cli(argv: list[str], log: Path | None, timeout: float) -> subprocess.CompletedProcess:
    """One CLI process under a wall-clock limit; killed and `SkyTimeout` past it."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=max(timeout, 0.001))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        stdout, stderr = proc.communicate()
    except BaseException:
        _kill_group(proc)
        raise
    returncode = proc.returncode
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            end = f"timed out after {timeout:g} s, killed" if timed_out else f"exit {returncode}"
            took = time.monotonic() - started
            fh.write(f"$ {shlex.join(argv)}\n{stdout}{stderr}[{end}; {took:.1f} s]\n")
    if timed_out:
        raise SkyTimeout(f"`{shlex.join(argv[:3])} ...` ran past its limit of {timeout:g} s")
    return subprocess.CompletedProcess(argv, returncode, stdout, stderr)


def _cluster_of(argv: Sequence[str]) -> str | None:
    """The cluster a request command names (`launch -c X`, `exec X`, `autostop X`, ...)."""
    command = _command(argv)
    if command == ("launch",):
        for flag in ("-c", "--cluster"):
            if flag in argv[:-1]:
                return argv[argv.index(flag) + 1]
        return None
    if command in {("exec",), ("cancel",), ("autostop",), ("down",)}:
        # Our command lines name the cluster first among the arguments (flags before it
        # take no value: `cancel -y CLUSTER -a`, `down -y CLUSTER...`).
        names = [a for a in argv[2:] if not a.startswith("-")]
        return names[0] if names else None
    return None


def run_request(argv: list[str], log: Path | None, timeout: float) -> subprocess.CompletedProcess:
    """`argv` submitted with `--async`, its request(s) followed with `sky api logs` and, for
    `launch` and `exec` without `-d`, their job with `sky logs` (what the plain CLI does).

    If the limit or an interrupt (Ctrl-C, a signal raised as an exception) cuts the submission
    or the request, the request is cancelled on the server (`sky api cancel`) and waited for
    until it has ended, then the error goes on. Its output and exit status are the plain
    command's: the request's log, then the job's.
    """
    deadline = time.monotonic() + timeout
    started_at = time.time()
    command = _command(argv)
    name = " ".join(argv[:3]) if command == ("jobs", "launch") else " ".join(argv[:2])
    try:
        submitted = _run_cli(async_argv(argv), log, timeout)
    except BaseException as exc:
        # The request may be in the server already, its id unknown to us: look it up.
        found = _requests_since(REQUEST_COMMANDS[command], _cluster_of(argv), started_at, log)
        cancelled = cancel_requests(found, log) if found else []
        if isinstance(exc, SkyTimeout):
            raise SkyTimeout(f"{exc}{_cancelled_note(cancelled)}") from None
        raise
    outputs = [submitted]
    ids = _SUBMITTED.findall(_COLOURS.sub("", submitted.stdout + submitted.stderr))
    returncode = submitted.returncode
    try:
        for request_id in ids:
            waited = _run_cli(["sky", "api", "logs", request_id], log, deadline - time.monotonic())
            outputs.append(waited)
            returncode = waited.returncode
            if returncode != 0:
                break
    except BaseException as exc:
        cancelled = cancel_requests(ids, log)
        if isinstance(exc, SkyTimeout):
            raise SkyTimeout(
                f"`{name} ...` ran past its limit of {timeout:g} s{_cancelled_note(cancelled)}"
            ) from None
        raise
    detached = "-d" in argv or "--detach-run" in argv
    if ids and returncode == 0 and command in _FOLLOWS_JOB and not detached:
        cluster = _cluster_of(argv)
        text = _COLOURS.sub("", "".join(p.stdout + p.stderr for p in outputs))
        job = _JOB_SUBMITTED.findall(text)
        if cluster is not None and command == ("launch",):
            # The plain CLI writes the cluster's ssh alias after a launch; `sky status` does too.
            outputs.append(_run_cli(["sky", "status", cluster], log, STATUS_TIMEOUT_S))
        if cluster is not None and job:
            remaining = deadline - time.monotonic()
            try:
                followed = _run_cli(["sky", "logs", cluster, job[-1]], log, remaining)
            except SkyTimeout:
                raise SkyTimeout(
                    f"`{name} ...` ran past its limit of {timeout:g} s (its job {job[-1]} on "
                    f"{cluster} still runs)"
                ) from None
            outputs.append(followed)
            returncode = followed.returncode
    return subprocess.CompletedProcess(
        argv,
        returncode,
        "".join(p.stdout for p in outputs),
        "".join(p.stderr for p in outputs),
    )


def _cancelled_note(cancelled: Sequence[dict[str, Any]]) -> str:
    if not cancelled:
        return ""
    states = ", ".join(f"{r['request_id'][:8]} {r.get('status', '?')}" for r in cancelled)
    return f"; its request was cancelled on the API server ({states})"


def request_records(
    request_ids: Sequence[str] = (),
    log: Path | None = None,
    all_status: bool = True,
    cluster: str | None = None,
) -> list[dict[str, Any]]:
    """`sky api status -o json` of these requests (or of all, or of one cluster's; active
    ones only unless `all_status`). Raises RuntimeError when it cannot be read."""
    argv = ["sky", "api", "status", "-v", "-o", "json", "-l", "none"]
    if all_status:
        argv.append("-a")
    if cluster is not None:
        argv += ["-c", cluster]
    proc = _run_cli([*argv, *request_ids], log, STATUS_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"`sky api status` exited with {proc.returncode}")
    try:
        return json_records(proc.stdout)
    except ValueError as exc:
        raise RuntimeError(f"`sky api status`: {exc}") from None


def _requests_since(name: str, cluster: str | None, since: float, log: Path | None) -> list[str]:
    """Active requests of this name (and cluster) created since `since`: ours, when the CLI was
    cut before it printed the id."""
    try:
        records = request_records(log=log, all_status=False, cluster=cluster)
    except (RuntimeError, SkyTimeout) as exc:
        say(f"could not look up a `{name}` request to cancel: {exc}")
        return []
    return [
        r["request_id"]
        for r in records
        if r.get("name") == name
        and r.get("status") in _ACTIVE
        and float(r.get("created_at") or 0) >= since - 1
    ]


def cancel_requests(
    request_ids: Sequence[str], log: Path | None, timeout: float = CANCEL_TIMEOUT_S
) -> list[dict[str, Any]]:
    """`sky api cancel` these requests, then wait until none is still pending or running.

    Returns their last records. Never raises: it runs while another error is on its way; what
    it could not do is said.
    """
    request_ids = list(request_ids)
    if not request_ids:
        return []
    deadline = time.monotonic() + timeout
    records: list[dict[str, Any]] = []
    try:
        _run_cli(["sky", "api", "cancel", *request_ids], log, timeout)
        while True:
            records = request_records(request_ids, log)
            if not any(r.get("status") in _ACTIVE for r in records):
                return records
            if time.monotonic() > deadline:
                break
            time.sleep(1)
    except (RuntimeError, SkyTimeout, OSError) as exc:
        say(f"cancelling request(s) {', '.join(request_ids)}: {exc}")
        return records
    active = [r["request_id"] for r in records if r.get("status") in _ACTIVE]
    say(f"request(s) {', '.join(active)} still running {timeout:g} s after `sky api cancel`")
    return records


def settle_cluster_requests(cluster: str, log: Path | None) -> list[dict[str, Any]]:
    """Cancel the cluster's requests still running (a launch or exec whose client died) and wait
    until they have ended: a status read while a launch still provisions can miss the cluster.
    """
    try:
        records = request_records(log=log, all_status=False, cluster=cluster)
    except (RuntimeError, SkyTimeout) as exc:
        say(f"cluster {cluster}: its API server requests could not be listed ({exc})")
        return []
    active = [r["request_id"] for r in records if r.get("status") in _ACTIVE]
    return cancel_requests(active, log) if active else []


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def json_records(text: str) -> list[dict[str, Any]]:
    """The JSON list of records in a CLI's output, whatever text surrounds it.

    The CLI may print the API server's start-up text or "Cluster(s) not found" on stdout
    before the JSON. Raises ValueError when there is no such list.
    """
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\[", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            return value
    raise ValueError("no JSON list of records in the output")


def cluster_records(clusters: Sequence[str], log: Path | None = None) -> dict[str, dict]:
    """Refreshed `sky status` records of these clusters that still exist (any status).

    Raises RuntimeError when the status cannot be read: "unknown" is never taken for "gone".
    """
    argv = ["sky", "status", "--refresh", "-o", "json", *clusters]
    last_error = ""
    for attempt in range(2):
        try:
            proc = run_sky(argv, log, check=False, timeout=STATUS_TIMEOUT_S)
        except SkyTimeout as exc:
            last_error = str(exc)
            continue
        if proc.returncode == 0:
            try:
                records = json_records(proc.stdout)
            except ValueError as exc:
                last_error = str(exc)
            else:
                return {r["name"]: r for r in records if r.get("name") in set(clusters)}
        else:
            last_error = f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}"
        if attempt == 0:
            time.sleep(2)
    raise RuntimeError(f"cannot read the status of {', '.join(clusters)}: {last_error}")


def cluster_status(cluster: str, log: Path | None = None) -> str | None:
    """The cluster's status ('UP', 'INIT', 'STOPPED') after a refresh, or None if it is gone."""
    record = cluster_records([cluster], log).get(cluster)
    return None if record is None else str(record.get("status"))


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


def _rsync_argv(*options: str) -> list[str]:
    """rsync over the ssh alias SkyPilot wrote (SkyPilot has no rsync command)."""
    ssh = shlex.join([*ssh_command(), "-o", "BatchMode=yes", "-o", "ConnectTimeout=20"])
    return ["rsync", "-a", *options, "--timeout=60", "-e", ssh]


def _rsync(argv: list[str], what: str, attempts: int, log: Path | None, done: set[int]) -> None:
    """Run `argv`, retrying transient failures (a dropped connection, a timeout) with a growing
    pause; an exit status in `done` is success."""
    for attempt in range(1, attempts + 1):
        proc = subprocess.run(
            argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600
        )
        if log is not None:
            with open(log, "a") as fh:
                fh.write(
                    f"$ {shlex.join(argv)}\n{proc.stdout}{proc.stderr}[exit {proc.returncode}]\n"
                )
        if proc.returncode in done:
            return
        message = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if proc.returncode not in _RSYNC_TRANSIENT or attempt == attempts:
            raise RuntimeError(f"rsync {what} failed ({proc.returncode}): {message}")
        say(f"rsync {what}: attempt {attempt} failed ({message}); retrying")
        time.sleep(2 * attempt)


def fetch(
    cluster: str, remote: str, local: Path, attempts: int = 3, log: Path | None = None
) -> None:
    """rsync one remote file to `local`."""
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    argv = _rsync_argv() + [f"{cluster}:{remote}", str(local)]
    _rsync(argv, f"{cluster}:{remote}", attempts, log, {0})


#: rsync's "partial transfer": some of the files asked for do not exist, the others came.
_RSYNC_PARTIAL = 23


def fetch_present(
    cluster: str,
    root: str,
    relative: Sequence[str],
    local_dir: Path,
    attempts: int = 3,
    log: Path | None = None,
) -> None:
    """rsync the files `relative` to the remote directory `root` that exist into `local_dir`,
    keeping their paths below it, over one connection (one round trip for a whole batch); a
    file that is not there is left out, not an error."""
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    argv = _rsync_argv("--relative")
    argv += [f"{cluster}:{root}/./{name}" for name in relative] + [f"{local_dir}/"]
    _rsync(argv, f"{cluster}:{root}", attempts, log, {0, _RSYNC_PARTIAL})
