"""Run bodies as SkyPilot 0.14.1 runs them: its own `TaskCodeGen.build_task_bash_script` appends
its code to the `run` text in the same script (it takes the text's exit status, waits until
MOUNT_CACHED writes are uploaded, then exits with that status), `log_lib.make_task_bash_script`
wraps the whole, and the file runs with `/bin/bash -i FILE`, as log_lib runs it.

The node is a temporary HOME with stand-ins on PATH: `findmnt` reports an rclone mount,
`~/.sky/rclone_log/` holds a log over 100 KB whose last status line says all is uploaded (the
size at which a pipe `tac LOG | grep -m 1` dies of SIGPIPE), `sleep` records its argument and
returns at once (SkyPilot's wait polls every 10 s), and `datarax-bench` records its call and
exits as told, so that each body runs in well under a second.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from support import ROOT

from datarax_bench.cloud import managed, standalone, tasks
from datarax_bench.workload.catalog import load_profile

TASK_FILES = sorted((ROOT / "benchmarks" / "sky").glob("*-benchmark.yaml"))
UPLOADED = "skypilot: cached mount upload complete"
_STATUS = "2026/12/07 00:00:{s:02d} INFO  : vfs cache: cleaned: objects 3 (was 3) in use {n}, "
_STATUS += "to upload {n}, uploading 0, total size 1.2Ki (was 1.2Ki)\n"
_DATARAX_BENCH = """#!/bin/bash
echo "$*" >> "$HOME/calls"
case "$1" in
  persist) if [ "$2" = --check ]; then exit "${STANDIN_CHECK_EXIT:-0}"; fi ;;
  doctor) while [ $# -gt 0 ]; do [ "$1" = --json ] && echo '{}' > "$2"; shift; done ;;
  run) exit "${STANDIN_RUN_EXIT:-0}" ;;
esac
"""


class Node:
    def __init__(self, root: Path):
        self.home = root / "home"
        self.bin = root / "bin"
        (self.home / "sky_workdir").mkdir(parents=True)
        self.bin.mkdir()
        (self.home / ".datarax-bench-env").write_text("")
        self.tool("findmnt", 'echo "$HOME/datarax-bench-bucket dxb-test: fuse.rclone rw,nodev"')
        self.tool("sleep", 'echo "$*" >> "$HOME/sleeps"')
        (self.bin / "datarax-bench").write_text(_DATARAX_BENCH)
        (self.bin / "datarax-bench").chmod(0o755)
        logs = self.home / ".sky" / "rclone_log"
        logs.mkdir(parents=True)
        busy = _STATUS.format(s=0, n=1)
        text = busy * (200_000 // len(busy)) + _STATUS.format(s=10, n=0)
        assert len(text) > 100_000
        (logs / "dxb-test.log").write_text(text)

    def tool(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)

    def lines(self, name: str) -> list[str]:
        path = self.home / name
        return path.read_text().splitlines() if path.exists() else []

    def run(
        self, run_text: str, envs: dict, run_exit: int = 0, check_exit: int = 0
    ) -> subprocess.CompletedProcess:
        """The job script SkyPilot makes of `run_text` and `envs`, run as SkyPilot runs it."""
        from sky.backends.task_codegen import UNSET_RAY_ENV_VARS, TaskCodeGen
        from sky.skylet import log_lib

        unset_ray = " && ".join(f"unset {var}" for var in UNSET_RAY_ENV_VARS)  # RayCodeGen's
        body = TaskCodeGen.build_task_bash_script(run_text, env_prefix=unset_ray)
        script = self.home.parent / "sky_app.sh"
        script.write_text(log_lib.make_task_bash_script(body, env_vars=envs))
        env = {"HOME": str(self.home), "PATH": f"{self.bin}:/usr/bin:/bin"}
        env["STANDIN_RUN_EXIT"] = str(run_exit)
        env["STANDIN_CHECK_EXIT"] = str(check_exit)
        return subprocess.run(
            ["/bin/bash", "-i", str(script)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def node(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # importing sky writes ~/.sky
    return Node(tmp_path / "node")


def _envs(task: dict, **given: str) -> dict[str, str]:
    envs = {k: "" if v is None else str(v) for k, v in (task.get("envs") or {}).items()}
    return {**envs, "SKYPILOT_TASK_ID": "sky-2026-12-07-00-00-00-000000_dxb_1", **given}


def _waited(node: Node, proc: subprocess.CompletedProcess) -> None:
    """SkyPilot's wait ran (it polled the rclone log) and finished (the upload is complete)."""
    from sky.skylet import constants

    out = proc.stdout + proc.stderr
    assert UPLOADED in proc.stdout, (
        f"SkyPilot's wait did not finish (exit {proc.returncode}):\n{out}"
    )
    assert str(constants.RCLONE_CACHE_REFRESH_INTERVAL) in node.lines("sleeps")


def test_the_stand_in_node_fails_a_body_that_leaks_its_shell_options(node):
    """What the tests below would meet: SkyPilot's wait dies of SIGPIPE under pipefail."""
    proc = node.run("set -euo pipefail\ntrue\n", {})
    assert proc.returncode == 141 and UPLOADED not in proc.stdout
    proc = node.run("true\n", {})
    assert proc.returncode == 0 and UPLOADED in proc.stdout


@pytest.mark.parametrize("run_exit", [0, 1])
@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.name)
def test_task_file_body_ends_through_skypilot_wait_with_its_own_status(node, path, run_exit):
    task = standalone.with_results_bucket(yaml.safe_load(path.read_text()), "s3")
    proc = node.run(task["run"], _envs(task, DATARAX_BENCH_BUCKET="dxb-test"), run_exit)
    _waited(node, proc)
    assert proc.returncode == run_exit, proc.stdout + proc.stderr
    # The pre-flight comes first; `persist` runs whatever the run's outcome, and the job's
    # status is then the run's.
    calls = node.lines("calls")
    assert [c.split()[0] for c in calls] == ["persist", "doctor", "run", "persist"]
    assert calls[0].split()[:2] == ["persist", "--check"] and "--bucket-dir" in calls[0]
    assert "--keep-each-cell" in calls[2].split() and "--resume-dir" in calls[2]
    assert "--bucket-dir" in calls[-1] and "--check" not in calls[-1]
    assert not any("--results-on-machine" in c for c in calls)


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.name)
def test_task_file_body_stops_at_a_failed_check_before_measuring(node, path):
    """Nothing would keep the results: the job ends with the check's status, through SkyPilot's
    wait, and neither doctor nor run is started."""
    task = yaml.safe_load(path.read_text())
    proc = node.run(task["run"], _envs(task), check_exit=3)
    _waited(node, proc)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert node.lines("calls") == ["persist --check"]


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.name)
def test_task_file_body_passes_results_on_machine_when_asked(node, path):
    task = yaml.safe_load(path.read_text())
    envs = _envs(task, DATARAX_BENCH_RESULTS_ON_MACHINE="1")
    proc = node.run(task["run"], envs)
    _waited(node, proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = node.lines("calls")
    assert [c.split()[0] for c in calls] == ["persist", "doctor", "run", "persist"]
    assert all("--results-on-machine" in calls[i].split() for i in (0, 2, 3))
    assert "--bucket-dir" not in calls[0] and "--resume-dir" not in calls[2]


@pytest.mark.parametrize("run_exit", [0, 5])
def test_managed_body_ends_through_skypilot_wait_with_its_own_status(node, run_exit):
    task = managed.render_task(load_profile("gpu_a100"), bucket_scheme="s3")
    envs = _envs(
        task,
        DATARAX_BENCH_BUCKET="dxb-test",
        DATARAX_BENCH_BUCKET_KEY="gpu_a100/gcp/cells",
        DATARAX_BENCH_CELLS="TAB-1/small/numpy/plain",
    )
    proc = node.run(task["run"], envs, run_exit)
    _waited(node, proc)
    assert proc.returncode == run_exit, proc.stdout + proc.stderr
    assert [c.split()[0] for c in node.lines("calls")] == ["doctor", "run"]
    # One hardware report per attempt of the job, under its task id.
    kept = node.home / "datarax-bench-bucket" / "gpu_a100/gcp/cells" / "doctor"
    assert [p.name for p in kept.iterdir()] == [envs["SKYPILOT_TASK_ID"]]
    (report,) = (kept / envs["SKYPILOT_TASK_ID"]).iterdir()
    assert report.suffix == ".json"


@pytest.mark.parametrize("run_exit", [0, 2])
def test_cluster_bodies_end_through_skypilot_wait_with_their_own_status(node, run_exit):
    task = tasks.render_provision_task(load_profile("ci_cpu"))
    proc = node.run(task["run"], _envs(task))
    _waited(node, proc)
    assert proc.returncode == 0 and node.lines("calls")[0].startswith("doctor")
    command = tasks.remote_cell_command("ci_cpu", "TAB-1", "small", "numpy")
    proc = node.run(command, {}, run_exit)
    _waited(node, proc)
    assert proc.returncode == run_exit and node.lines("calls")[-1].startswith("run --profile")


def test_the_loopback_builds_job_scripts_as_skypilot_does(tmp_path, monkeypatch):
    """tests/loopback/skypilot_job.py puts the run text into SkyPilot's own script around a
    placeholder, built once: the result is what SkyPilot's function builds."""
    monkeypatch.setenv("HOME", str(tmp_path))
    from loopback import skypilot_job

    texts = [yaml.safe_load(p.read_text())["run"] for p in TASK_FILES]
    texts += [tasks.remote_cell_command("ci_cpu", "TAB-1", "small", "numpy"), "exit 3", ""]
    assert all(skypilot_job.matches_skypilot(text) for text in texts)
    cache = tmp_path / "task_script.json"
    assert skypilot_job.task_script("true", cache) == skypilot_job.task_script("true")
    assert cache.is_file()
