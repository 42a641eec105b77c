"""Calling SkyPilot: every `sky` command with a wall-clock limit, its JSON read strictly, the
command lines we build for it, and rsync over the ssh alias it writes for each cluster."""

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


def run_sky(
    argv: list[str], log: Path | None = None, check: bool = True, timeout: float = SHORT_TIMEOUT_S
) -> subprocess.CompletedProcess:
    """Run one sky command under a wall-clock limit, teeing its output to `log` (appended).

    On timeout the command is killed and `SkyTimeout` is raised. It stays in this process's
    group, so whatever kills the workflow kills it too.
    """
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
        stdout, stderr = proc.communicate(timeout=timeout)
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
    result = subprocess.CompletedProcess(argv, returncode, stdout, stderr)
    if check and returncode != 0:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        raise RuntimeError(
            f"`{shlex.join(argv[:3])} ...` exited with {returncode}: {' | '.join(tail)}"
        )
    return result


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
        proc = subprocess.run(
            argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600
        )
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
        say(f"rsync {cluster}:{remote}: attempt {attempt} failed ({message}); retrying")
        time.sleep(2 * attempt)
