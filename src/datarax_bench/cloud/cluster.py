"""Cloud runs through SkyPilot: task files, cluster names, launch/exec/pull/teardown, billing.

The Snakemake rules in `workflow/rules/cloud.smk` only call these functions. Everything goes
through the `sky` executable on PATH (the real SkyPilot CLI, or the test loopback) and plain
`rsync` over the ssh alias SkyPilot writes for each cluster. No secret goes to the cluster:
results come back by rsync and the W&B export runs on this machine.

What keeps a cluster from billing without limit (SkyPilot 0.14 runs the task's setup inside the
first job and arms autostop just before it; a running job keeps a cluster from ever idling):

- every `sky` call has a wall-clock limit; a launch that fails or overruns is torn down;
- autodown is armed with `--wait-for none`, which SkyPilot's skylet applies on the cluster
  itself whatever the cluster is doing: it tears the cluster down a fixed number of minutes
  after the last job was submitted (each submission and each setting restarts the count). The
  minutes are the longest the next job may legitimately take plus `idle_minutes`, and never
  more than what is left of `max_cluster_hours` since the launch was requested, so a hung
  setup, a hung cell or a dead orchestrator all end within those bounds;
- teardown is verified with a refreshed `sky status` (`sky down` exits 0 when it fails).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import math
import os
import pwd
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from datarax_bench import paths
from datarax_bench.errors import UserError
from datarax_bench.files import atomic_file, write_text_atomic
from datarax_bench.results import cell_label, cell_path, load_result, utc_now, write_json_atomic

#: Where the remote machine keeps results, relative to its home (`~` expands there).
REMOTE_RESULTS = "~/datarax-bench-results"
#: Written by the task's setup; every remote command sources it.
REMOTE_ENV_FILE = "~/.datarax-bench-env"
#: The pinned stack inside the benchmark images (benchmarks/docker/Dockerfile.*).
IMAGE_VENV = "/opt/datarax-bench/venv"
#: Written (epoch seconds) when the rendered task's setup has finished.
REMOTE_SETUP_DONE = "~/.datarax-bench-setup-done"
#: Each Snakemake invocation has its own id (set in common.smk, inherited by its jobs): a
#: cluster record from an earlier invocation is re-checked before it is trusted.
INVOCATION_ENV = "DATARAX_BENCH_INVOCATION"
_CLUSTER_NAME_MAX = 35  # GCP's limit is the tightest SkyPilot enforces per cloud.
_RSYNC_TRANSIENT = {10, 12, 30, 35, 255}  # socket, protocol, timeouts, ssh failure
_UP = "UP"
# Wall-clock limits of the short `sky` calls, in seconds.
STATUS_TIMEOUT_S = 300
DOWN_TIMEOUT_S = 900
SHORT_TIMEOUT_S = 300
#: What a cell may need beyond its repetitions: imports, data generation, format builds.
CELL_MARGIN_S = 600
TEARDOWN_ATTEMPTS = 3


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class SkyTimeout(RuntimeError):
    """A `sky` call ran past its wall-clock limit and was killed."""


@dataclass(frozen=True)
class CloudSettings:
    """The workflow keys that decide provisioning and the billing limits (config/README.md)."""

    idle_minutes: float = 30
    use_spot: bool | str = "auto"
    max_cluster_hours: float = 8
    launch_timeout_minutes: float = 60
    #: A benchmark image (benchmarks/docker) the cluster runs in instead of installing; "" none.
    image: str = ""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CloudSettings:
        return cls(
            idle_minutes=config["idle_minutes"],
            use_spot=config["use_spot"],
            max_cluster_hours=config["max_cluster_hours"],
            launch_timeout_minutes=config["launch_timeout_minutes"],
            image=config.get("image") or "",
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

    @property
    def ledger(self) -> Ledger:
        return ledger_for(self.work_dir)


def invocation_id() -> str | None:
    return os.environ.get(INVOCATION_ENV) or None


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


def run_body(*commands: str) -> str:
    """A task's `run` text, or a `sky exec` command: `commands` in a subshell that stops at the
    first failure (errexit, nounset, pipefail).

    SkyPilot appends its own code to the run text in the same bash script
    (`TaskCodeGen.build_task_bash_script`): it takes the exit status of the text, then waits
    until MOUNT_CACHED writes are uploaded, and exits with that status. In a subshell neither an
    `exit` nor these shell options reach that code: with pipefail its `tac LOG | grep -m 1` dies
    of SIGPIPE once rclone's log is large, which would fail the job before the upload is done.
    """
    return f"( set -euo pipefail; {'; '.join(commands)} )"


def doctor_commands(profile_name: str) -> list[str]:
    out = f"{REMOTE_RESULTS}/{profile_name}"
    return [
        f"source {REMOTE_ENV_FILE}",
        f"mkdir -p {out}",
        f"datarax-bench doctor --profile {profile_name} --json {out}/doctor.json",
    ]


def render_provision_task(profile, image: str = "") -> dict[str, Any]:
    """The profile's task with the same setup; its `run` only checks the hardware (`doctor`).

    The cells then run one by one with `sky exec`, so that each becomes a Snakemake job. The
    commit is not passed along: SkyPilot syncs `.git` with the workdir, so provenance is read
    on the cluster from the tree that really runs there. With an `image` the cluster runs in
    that container, whose venv the setup uses instead of installing; every result names it.
    """
    template = task_template_path(profile)
    task = load_task(template)
    task["name"] = f"datarax-bench-{profile.name}".replace("_", "-")
    task["workdir"] = str(paths.project_root())
    envs = dict(task.get("envs") or {})
    envs.pop("DATARAX_BENCH_GIT_COMMIT", None)
    envs["DATARAX_BENCH_PROFILE"] = profile.name
    if image:
        task["resources"] = {**(task.get("resources") or {}), "image_id": f"docker:{image}"}
        envs["DATARAX_BENCH_IMAGE"] = image
        envs["DATARAX_BENCH_PREINSTALLED_VENV"] = IMAGE_VENV
    task["envs"] = envs
    if task.get("setup"):
        task["setup"] = task["setup"].rstrip("\n") + f"\ndate +%s > {REMOTE_SETUP_DONE}\n"
    task["run"] = run_body(*doctor_commands(profile.name))
    validate_task(task, f"task rendered from {template}")
    return task


def write_task(task: dict[str, Any], path: Path) -> None:
    write_text_atomic(Path(path), yaml.safe_dump(task, sort_keys=False, default_flow_style=False))


# --- spot ------------------------------------------------------------------------------------


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


# --- command lines ----------------------------------------------------------------------------


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


def remote_cell_path(
    profile: str, scenario: str, variant: str, adapter: str, style: str = "plain"
) -> str:
    return str(cell_path(f"{REMOTE_RESULTS}/{profile}", scenario, variant, adapter, style))


def remote_cell_command(
    profile: str, scenario: str, variant: str, adapter: str, style: str = "plain"
) -> str:
    q = shlex.quote
    return run_body(
        f"source {REMOTE_ENV_FILE}",
        f"datarax-bench run --profile {q(profile)} --scenario {q(scenario)} "
        f"--variant {q(variant)} --adapter {q(adapter)} --style {q(style)} "
        f"--output {remote_cell_path(profile, scenario, variant, adapter, style)}",
    )


def cell_allowance_s(profile) -> float:
    """The longest a cell may legitimately take: every attempt's timeout in each of its worker
    processes, plus start-up."""
    attempts = (1 + profile.retries) * profile.measurement.get("processes", 1)
    return float(profile.measurement["timeout_s"]) * attempts + CELL_MARGIN_S


# --- the run's length ----------------------------------------------------------------------

#: Stated estimates, not measurements on a cloud: what one cell costs beyond its worker
#: processes (a real `sky exec` round trip, 15-30 s, with the workdir sync and the pull: the
#: upper end), the launch (provisioning and the install in setup), and one worker process of a
#: profile that states none (`cloud.process_estimate_s`).
CELL_ORCHESTRATION_ESTIMATE_S = 30.0
LAUNCH_ESTIMATE_S = 900.0
DEFAULT_PROCESS_ESTIMATE_S = 30.0
#: A plan estimated past this share of `max_cluster_hours` is warned about: the estimate is
#: rough, and the ceiling cuts the run off where it stands.
ESTIMATE_WARNING_SHARE = 0.75


@dataclass(frozen=True)
class RunEstimate:
    """How long a cloud run should take: its launch, then every cell's orchestration and every
    worker process of every cell, spread over `machines` (managed shards run in parallel)."""

    cells: int
    processes: int
    process_s: float
    cell_s: float = CELL_ORCHESTRATION_ESTIMATE_S
    launch_s: float = LAUNCH_ESTIMATE_S
    machines: int = 1

    @property
    def hours(self) -> float:
        work_s = self.cells * self.cell_s + self.processes * self.process_s
        return (self.launch_s + work_s / self.machines) / 3600

    def describe(self) -> str:
        spread = f", over {self.machines} machines" if self.machines > 1 else ""
        return (
            f"{self.cells} cells x {self.cell_s:g} s + {self.processes} worker processes x "
            f"{self.process_s:g} s + {self.launch_s / 60:g} min launch{spread}"
        )


def estimate_run(profile, process_counts: Sequence[int], machines: int = 1) -> RunEstimate:
    """`process_counts`: each planned cell's worker processes (`runner.processes_of`)."""
    return RunEstimate(
        cells=len(process_counts),
        processes=sum(process_counts),
        process_s=float(profile.cloud.get("process_estimate_s", DEFAULT_PROCESS_ESTIMATE_S)),
        machines=max(1, machines),
    )


def check_run_fits(estimate: RunEstimate, profile_name: str, max_cluster_hours: float) -> str:
    """The plan's estimate as one line; raises UserError when the run cannot fit the ceiling,
    which would cut it off with cells unmeasured. The line starts with `warning:` when the run
    comes close to it."""
    hours = estimate.hours
    estimated = (
        f"profile {profile_name}: the run is estimated at {hours:.1f} h ({estimate.describe()})"
    )
    if hours > max_cluster_hours:
        raise UserError(
            f"max_cluster_hours: got {max_cluster_hours:g}, but {estimated}; "
            f"expected max_cluster_hours >= {math.ceil(hours)}, or fewer scenarios"
        )
    line = f"{estimated} of max_cluster_hours {max_cluster_hours:g}"
    if hours > ESTIMATE_WARNING_SHARE * max_cluster_hours:
        return f"warning: {line}: close to the ceiling, which stops the run where it stands"
    return line


# --- running sky ------------------------------------------------------------------------------


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


# --- the cloud ledger -------------------------------------------------------------------------


#: Ledger events after which the cluster verifiably no longer exists: only these end billed time.
BILLING_ENDS = {"teardown_verified": "torn down (verified)", "gone": "gone (verified absent)"}


class Ledger:
    """Append-only record of what a run's clusters did and when (cloud/ledger.jsonl).

    One JSON object per line: `event`, `cluster`, `at` (UTC), `t` (epoch seconds), details.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def add(self, event: str, cluster: str, **details: Any) -> dict[str, Any]:
        record = {"event": event, "cluster": cluster, "at": utc_now(), "t": time.time()}
        record.update(details)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps(record, allow_nan=False) + "\n")
        return record

    def events(self, cluster: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill; the rest stays readable
            if cluster is None or record.get("cluster") == cluster:
                out.append(record)
        return out

    def current_launch(self, cluster: str) -> dict[str, Any] | None:
        """The latest `launch_requested` of the cluster's present life (none after teardown)."""
        launch = None
        for record in self.events(cluster):
            if record["event"] == "launch_requested":
                launch = record
            elif record["event"] in BILLING_ENDS:
                launch = None
        return launch


def ledger_for(work_dir: Path) -> Ledger:
    return Ledger(Path(work_dir) / "ledger.jsonl")


def remaining_minutes(ledger: Ledger, cluster: str, max_cluster_hours: float) -> float:
    launch = ledger.current_launch(cluster)
    started = launch["t"] if launch else time.time()
    return max_cluster_hours * 60 - (time.time() - started) / 60


def arm_autodown(cluster: str, ledger: Ledger, minutes: int, reason: str, log: Path | None) -> None:
    run_sky(autostop_argv(cluster, minutes), log, timeout=SHORT_TIMEOUT_S)
    ledger.add("autodown_armed", cluster, minutes=minutes, wait_for="none", reason=reason)


# --- provisioning -----------------------------------------------------------------------------


def task_envs(task: dict[str, Any]) -> dict[str, str]:
    """The rendered task's envs: `sky exec` jobs do not inherit them from the launch."""
    return {k: "" if v is None else str(v) for k, v in (task.get("envs") or {}).items()}


def _launch(spec: ClusterSpec, task_file: Path, ledger: Ledger) -> dict[str, Any]:
    infra, cluster, settings, log = spec.infra, spec.name, spec.settings, spec.log
    use_spot, spot_reason = resolve_use_spot(infra, settings.use_spot)
    launch_minutes = settings.launch_timeout_minutes
    autodown = math.ceil(
        min(settings.max_cluster_hours * 60, launch_minutes + settings.idle_minutes)
    )
    argv = launch_argv(cluster, task_file, infra, autodown, use_spot)
    _say(
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
        _say(f"rsync {cluster}:{remote}: attempt {attempt} failed ({message}); retrying")
        time.sleep(2 * attempt)


def _environment(image: str | None) -> str:
    return f"image {image}" if image else "the setup's install"


def _provision_locked(spec: ClusterSpec) -> dict[str, Any]:
    profile, cluster, settings, log = spec.profile, spec.name, spec.settings, spec.log
    work_dir = Path(spec.work_dir)
    ledger = spec.ledger
    task = render_provision_task(profile, settings.image)
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
        _say(f"cluster {cluster} is up; reusing it")
        launch = {"action": "reused", "status": status}
        ledger.add("reused", cluster)
    else:
        if status is not None:
            _say(f"cluster {cluster} is {status}; launching it again")
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
            _say(f"cluster {cluster}: setup's end time not read ({exc})")
    # From now on a job is a cell: autodown follows the longest a cell may take.
    cell_minutes = cell_allowance_s(profile) / 60 + settings.idle_minutes
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
    return result


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
) -> dict[str, Any]:
    """Run one cell on the cluster, pull its result and validate it: one job, one outcome.

    The local result exists if and only if the cell was measured, pulled and validated. The
    invocation's first cell provisions; a cluster provisioned by this invocation that is gone
    fails the cell at once, unmeasured. The cluster lock is held throughout: cells on one
    cluster never overlap.
    """
    label = cell_label(scenario, variant, adapter, style)
    profile, cluster, settings, log = spec.profile, spec.name, spec.settings, spec.log
    work_dir = Path(spec.work_dir)
    ledger = spec.ledger
    with cluster_lock(work_dir / "cluster.lock"):
        record = _cluster_for_this_invocation(spec)
        remaining = remaining_minutes(ledger, cluster, settings.max_cluster_hours)
        allowance_s = cell_allowance_s(profile)
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
        command = remote_cell_command(profile.name, scenario, variant, adapter, style)
        argv = exec_argv(
            cluster,
            profile.cloud["accelerator"],
            command,
            task_envs(task),
            workdir=paths.project_root(),
        )
        started = ledger.add("cell_started", cluster, cell=label)
        try:
            proc = run_sky(argv, log, check=False, timeout=allowance_s)
        except SkyTimeout as exc:
            ledger.add("cell_finished", cluster, cell=label, outcome="timeout")
            run_sky(["sky", "cancel", "-y", cluster, "-a"], log, check=False)
            raise RuntimeError(f"cell {label}: {exc}; its job on {cluster} was cancelled") from None
        ledger.add("cell_finished", cluster, cell=label, exit=proc.returncode)
        if proc.returncode != 0:
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
                # INIT or STOPPED still exists: a stopped machine's disk bills, an INIT one
                # may be running.
                ledger.add("not_up", cluster, status=status)
                raise RuntimeError(
                    f"cell {label}: cluster {cluster} is {status} (preempted, failing or "
                    "stopped; it still exists and may bill); the cell was not measured. Rerun "
                    "the same command to provision again and measure what is missing"
                )
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
            raise RuntimeError(
                f"cell {label}: `sky exec` on {cluster} exited with {proc.returncode} "
                f"(see {log}): {tail}"
            )
        result = pull_cell(cluster, profile.name, scenario, variant, adapter, output, log, style)
        ledger.add(
            "pulled",
            cluster,
            cell=label,
            job_s=round(time.time() - started["t"], 3),  # sync, job, log streaming, pull
            measured_s=result["timestamps"]["duration_s"],
            status=result["status"],
        )
    return result


# --- teardown ---------------------------------------------------------------------------------


def cost_report(clusters: Sequence[str], log: Path | None = None) -> list[dict[str, Any]]:
    """SkyPilot's recorded cost for these clusters (it keeps history after teardown)."""
    try:
        proc = run_sky(["sky", "cost-report", "--all", "-o", "json"], log, check=False)
        records = json_records(proc.stdout) if proc.returncode == 0 else []
    except (SkyTimeout, ValueError):
        return []
    keep = ("name", "status", "total_cost", "duration", "num_nodes", "launched_at", "resources")
    return [{k: r.get(k) for k in keep} for r in records if r.get("name") in set(clusters)]


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


# --- billing ------------------------------------------------------------------------------------


#: What the hourly price is: the figure `sky launch` prints for the resources its optimizer
#: chose, from SkyPilot's price catalog. SkyPilot 0.14.1 reports no other: `sky status -o json`
#: has no price, and `sky cost-report`'s `total_cost` is the same catalog price times its own
#: usage intervals (`Resources.get_cost`). The offer actually rented (a Vast bid, a host's own
#: rate) and disks, storage and network are not in it.
PRICE_SOURCE = (
    "SkyPilot catalog price of the resources its optimizer chose (sky launch's table), compute "
    "only: no disk, storage or network; not the rented offer's own price, which SkyPilot "
    "0.14.1 does not report"
)
#: Ledger events that leave a cluster billing, and what each says about it.
_STILL_BILLING = {
    "status_unreadable": "its status could not be read",
    "not_up": "it was found not UP but still existing",
    "teardown_failed": "its teardown failed",
    "kept": "it was kept (keep_cluster)",
}


def billing(work_dir: Path, cluster: str, cost_records: Sequence[dict] = ()) -> dict[str, Any]:
    """Billed time and cost of a run's cluster, from its ledger (and SkyPilot's cost report).

    Billed time runs from each launch request to a verified absence (a verified teardown, or a
    refreshed status that no longer lists the cluster), or to now while none has been seen: an
    upper bound, since the provider starts billing once the machine exists. A status that could
    not be read, or a teardown that failed, leaves the clock running.
    """
    events = ledger_for(work_dir).events(cluster)
    billed_s, start, price, last_seen = 0.0, None, None, None
    for record in events:
        if record["event"] == "launch_requested" and start is None:
            start = record["t"]
        elif record["event"] == "up" and record.get("hourly_usd") is not None:
            price = record["hourly_usd"]
        elif record["event"] in BILLING_ENDS and start is not None:
            billed_s += record["t"] - start
            start = None
        if record["event"] in BILLING_ENDS or record["event"] in _STILL_BILLING:
            last_seen = record
    still_billing = start is not None
    if still_billing:
        billed_s += time.time() - start
        why = _STILL_BILLING.get((last_seen or {}).get("event"), "no verified teardown yet")
        state = f"STILL BILLING: {why}" + (f" ({last_seen['at']})" if last_seen else "")
    elif last_seen is not None:
        state = f"ended: {BILLING_ENDS[last_seen['event']]} at {last_seen.get('at')}"
    else:
        state = "never launched"
    measured = [r for r in events if r["event"] == "pulled"]
    measuring_s = sum(r.get("measured_s", 0.0) for r in measured)
    job_s = sum(r.get("job_s", 0.0) for r in measured)
    cost = None if price is None else price * billed_s / 3600
    reported = [r for r in cost_records if r.get("name") == cluster]
    return {
        "cluster": cluster,
        "launches": sum(1 for r in events if r["event"] == "launch_requested"),
        "billed_s": round(billed_s, 1),
        "still_billing": still_billing,
        "billing_state": state,
        "hourly_usd": price,
        "price_source": PRICE_SOURCE,
        "cost_usd": None if cost is None else round(cost, 4),
        "cells_pulled": len(measured),
        "cost_per_cell_usd": (
            None if cost is None or not measured else round(cost / len(measured), 5)
        ),
        "measuring_s": round(measuring_s, 1),
        "measuring_share": round(measuring_s / billed_s, 4) if billed_s > 0 else None,
        # What each cell cost beyond its own run: sync, job submission, log streaming, pull.
        "orchestration_s_per_cell": (
            round((job_s - measuring_s) / len(measured), 2) if measured else None
        ),
        # The same catalog price over SkyPilot's own usage intervals; `resources` names what
        # was launched (instance type, region, spot), against which the provider's invoice
        # can be checked.
        "sky_cost_report_usd": reported[0].get("total_cost") if reported else None,
        "launched_resources": reported[0].get("resources") if reported else None,
    }


def read_billing(run_dir: Path) -> dict[str, Any] | None:
    """The bill recorded by a cloud run's teardown (cloud/teardown.json), None for local runs."""
    try:
        record = json.loads((Path(run_dir) / "cloud" / "teardown.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record.get("billing")


def billing_markdown(run_dir: Path) -> str:
    """summary.md's section on what the cluster cost; empty for a local run."""
    bill = read_billing(run_dir)
    if not bill:
        return ""
    lines = ["", "## Cloud cost", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in billing_markdown_rows(bill)]
    return "\n".join(lines) + "\n"


def billing_markdown_rows(bill: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) of each row of summary.md's bill."""

    def money(value: float | None) -> str:
        return "not quoted" if value is None else f"${value:.4f}"

    share = bill.get("measuring_share")
    rows = [
        ("cluster", f"`{bill['cluster']}`"),
        ("billing", bill.get("billing_state") or "unknown"),
        ("launches", str(bill.get("launches"))),
        (
            "billed time",
            f"{bill['billed_s'] / 60:.1f} min (launch request to verified absence"
            + (", still running)" if bill.get("still_billing") else ")"),
        ),
        (
            "hourly price",
            "not quoted" if bill.get("hourly_usd") is None else f"${bill['hourly_usd']:.2f}/h",
        ),
        ("price source", bill.get("price_source") or "unknown"),
        ("cost", money(bill.get("cost_usd"))),
        ("cells pulled", str(bill.get("cells_pulled"))),
        ("cost per cell", money(bill.get("cost_per_cell_usd"))),
        ("share of billed time measuring", "n/a" if share is None else f"{share:.1%}"),
        ("orchestration per cell", f"{bill.get('orchestration_s_per_cell')} s"),
        ("`sky cost-report` (same catalog price)", money(bill.get("sky_cost_report_usd"))),
    ]
    return rows


def billing_metrics(run_dir: Path) -> dict[str, Any]:
    """W&B summary metrics of the bill (`cloud/...`); empty for a local run."""
    bill = read_billing(run_dir) or {}
    keys = (
        "billed_s", "hourly_usd", "cost_usd", "cells_pulled", "cost_per_cell_usd",
        "measuring_share", "orchestration_s_per_cell", "sky_cost_report_usd", "launches",
        "still_billing",
    )  # fmt: skip
    return {f"cloud/{k}": bill[k] for k in keys if bill.get(k) is not None}


# --- managed runs (managed.py writes the record) ----------------------------------------------


def read_managed(run_dir: Path) -> dict[str, Any] | None:
    """The managed-jobs record of a run (cloud/teardown.json), None for other runs."""
    try:
        record = json.loads((Path(run_dir) / "cloud" / "teardown.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record.get("managed") if isinstance(record, dict) else None


def managed_metrics(run_dir: Path) -> dict[str, Any]:
    """W&B summary metrics of a managed run (`cloud/...`); empty for other runs."""
    info = read_managed(run_dir)
    if not info:
        return {}
    out = {
        "cloud/shards": len(info["shards"]),
        "cloud/recoveries": info["recoveries"],
        "cloud/cells_measured_more_than_once": len(info.get("measured_more_than_once") or {}),
        "cloud/billed_s": info["billed_s"],
    }
    if info.get("cost_usd") is not None:
        out["cloud/cost_usd"] = info["cost_usd"]
    return out


def managed_markdown(run_dir: Path) -> str:
    """summary.md's section on a managed run: shards, recoveries, cells measured twice."""
    info = read_managed(run_dir)
    if not info:
        return ""
    lines = ["", "## Managed jobs", "", f"Results bucket: `{info['bucket']}`.", ""]
    lines += ["| shard | job | status | recoveries | cells (submitted) | job time |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for s in info["shards"]:
        minutes = (s.get("job_duration_s") or 0.0) / 60
        lines.append(
            f"| {s['shard']} | {s.get('job_id') or '-'} | {s.get('status')} | "
            f"{s.get('recoveries') or 0} | {s['cells']} ({s['submitted']}) | {minutes:.1f} min |"
        )
    again = info.get("measured_more_than_once") or {}
    lines += ["", f"Recoveries: {info['recoveries']}. Billed job time: "
              f"{info['billed_s'] / 60:.1f} min"
              + ("" if info.get("cost_usd") is None else f", about ${info['cost_usd']:.4f}")
              + "."]  # fmt: skip
    if again:
        lines.append("Cells measured more than once (a preemption interrupted them; the result "
                     "kept is the last one):")  # fmt: skip
        lines += [f"- `{rel}`: {n} times" for rel, n in sorted(again.items())]
    else:
        lines.append("No cell was measured more than once.")
    return "\n".join(lines) + "\n"
