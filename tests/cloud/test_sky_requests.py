"""SkyPilot 0.14's CLI only streams a request its API server runs: a `sky` client killed by a
time limit or a Ctrl-C leaves the request running. These tests show that every call we cut has
its request cancelled on the server, and that teardown waits for a launch still provisioning.

The command lines are checked against SkyPilot 0.14.1's own click commands; the behaviour
against the loopback `sky`, whose API server is as harsh as SkyPilot's (a request's work goes on
after its client dies)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from loopback import node as loopback

from datarax_bench.cloud import cluster as cloud
from datarax_bench.cloud import managed, sky

needs_loopback = pytest.mark.skipif(
    bool(loopback.missing_tools()),
    reason=f"loopback cluster needs {', '.join(loopback.missing_tools())}",
)

PROVISION_S = 6  # how long the loopback's fresh launch provisions (its cluster INIT meanwhile)


@pytest.fixture
def skypilot_home(tmp_path, monkeypatch):
    """`import sky` and its CLI write ~/.sky: keep them in a temporary HOME."""
    monkeypatch.setenv("HOME", str(tmp_path))
    from sky.client.cli import command

    return command


def real_command(command_module, argv):
    group = command_module.cli
    words = argv[1:]
    while hasattr(group, "commands") and words and words[0] in group.commands:
        group, words = group.commands[words[0]], words[1:]
    return group, words


def test_every_request_command_accepts_async_in_skypilot_0_14_1(
    skypilot_home, tmp_path, monkeypatch
):
    """What we submit with `--async`, and how we wait for and cancel it, parses with the real
    CLI; commands outside the list have no `--async` (they would be refused)."""
    monkeypatch.setenv("S", "secret")  # `--secret S` / `--env T` copy these local values
    monkeypatch.setenv("T", "setting")
    task = tmp_path / "task.yaml"
    task.write_text("run: echo hi\n")
    argvs = [
        sky.launch_argv("c1", task, "vast", 70, True),
        sky.exec_argv("c1", "A100:1", "echo hi", {"A": "1"}, workdir=tmp_path),
        sky.autostop_argv("c1", 30),
        ["sky", "down", "-y", "c1", "c2"],
        ["sky", "cancel", "-y", "c1", "-a"],
        managed.launch_argv(task, "dxb-job", "gcp", True, {"A": "1"}, (["S"], ["T"])),
    ]
    assert {sky._command(a) for a in argvs} == set(sky.REQUEST_COMMANDS)
    for argv in argvs:
        cmd, words = real_command(skypilot_home, sky.async_argv(argv))
        ctx = cmd.make_context(" ".join(argv[:2]), list(words))
        assert ctx.params["async_call"] is True, argv
    rid = "0d7c5b2e-3f41-4c1a-9d2e-6a1b2c3d4e5f"
    for argv in (
        ["sky", "api", "logs", rid],
        ["sky", "api", "cancel", rid],
        ["sky", "api", "status", "-v", "-o", "json", "-l", "none", "-a", "-c", "c1", rid],
        ["sky", "logs", "c1", "3"],
        ["sky", "status", "c1"],
    ):
        cmd, words = real_command(skypilot_home, argv)
        cmd.make_context(" ".join(argv[:3]), list(words))
    for argv in (["sky", "status"], ["sky", "jobs", "queue"], ["sky", "jobs", "cancel"]):
        cmd, _ = real_command(skypilot_home, argv)
        assert not [p for p in cmd.params if "--async" in getattr(p, "opts", [])], argv


def test_the_request_id_is_read_from_what_skypilots_cli_prints(skypilot_home):
    """`_async_call_or_wait` itself prints the submission; our parser finds the full id."""
    rid = "0d7c5b2e-3f41-4c1a-9d2e-6a1b2c3d4e5f"
    for name in ("sky.launch", "sky.jobs.launch", "sky.Scheduling autodown on"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            skypilot_home._async_call_or_wait(rid, True, name)
        assert sky._SUBMITTED.findall(sky._COLOURS.sub("", out.getvalue())) == [rid]


def test_the_api_status_json_fields_we_read_are_skypilots(skypilot_home):
    """`sky api status -v -o json` dumps these fields of SkyPilot's request payload."""
    from sky.server.requests import payloads

    fields = set(payloads.RequestPayload.model_fields)
    assert {"request_id", "name", "status", "created_at", "cluster_name"} <= fields
    assert "cluster_name" in skypilot_home._VERBOSE_REQUEST_FIELDS_TO_SHOW


@pytest.fixture
def loopback_sky(tmp_path, monkeypatch):
    """This process's `sky` is the loopback (HOME a temporary directory); its node, skylets
    and API server workers are stopped by pid at the end."""
    node = loopback.make_node(tmp_path / "node")
    home = tmp_path / "home"
    home.mkdir()
    try:
        env = loopback.loopback_env(home, node)
        for key in ("HOME", "PATH", "LOOPBACK_SKY_NODE"):
            monkeypatch.setenv(key, env[key])
        task = home / "task.yaml"
        (home / "empty").mkdir()
        task.write_text(yaml.safe_dump({"run": "echo ran", "workdir": str(home / "empty")}))
        loopback.set_faults(home, provision_s=PROVISION_S)
        yield node, home, env, task
    finally:
        stop_requests(home)
        loopback.stop_skylets(home)
        node.stop()


def stop_requests(home: Path) -> None:
    for record in (home / ".sky" / "loopback" / "requests").glob("*.json"):
        with contextlib.suppress(ValueError, KeyError, ProcessLookupError, PermissionError):
            os.killpg(json.loads(record.read_text())["pid"], signal.SIGKILL)


def requests(home: Path) -> list[dict]:
    return [
        json.loads(p.read_text()) for p in (home / ".sky" / "loopback" / "requests").glob("*.json")
    ]


def launch_argv(task: Path, cluster: str) -> list[str]:
    return sky.launch_argv(cluster, task, "ssh/loopback", 30, False)


def assert_nothing_provisions(home: Path, cluster: str, log: Path) -> None:
    """No request is left running, and none brings the cluster up later."""
    active = [r for r in requests(home) if r["status"] in ("PENDING", "RUNNING")]
    time.sleep(PROVISION_S + 2)  # past the moment the provisioning would have finished
    assert sky.cluster_records([cluster], log) == {}, "the launch went on provisioning"
    assert not (home / ".sky" / "loopback" / "clusters" / f"{cluster}.json").exists()
    assert not active


@needs_loopback
@pytest.mark.slow
def test_a_launch_cut_by_its_time_limit_is_cancelled_and_its_teardown_holds(loopback_sky):
    """The loopback's launch provisions for PROVISION_S; cut after 2 s, its request is
    cancelled, the teardown is verified, and the cluster never comes up afterwards."""
    node, home, env, task = loopback_sky
    log = home / "sky.log"
    with pytest.raises(sky.SkyTimeout) as cut:
        sky.run_sky(launch_argv(task, "c1"), log, timeout=2)
    record = cloud.teardown(["c1"], log)  # what the launch's error path does
    assert record["verified"] and record["still_up"] == []
    assert_nothing_provisions(home, "c1", log)
    (request,) = [r for r in requests(home) if r["name"] == "launch"]
    assert request["status"] == "CANCELLED"
    assert "cancelled on the API server" in str(cut.value)


@needs_loopback
@pytest.mark.slow
def test_a_ctrl_c_cancels_the_launch_request(loopback_sky, tmp_path):
    """Ctrl-C reaches the whole process group (the `sky` client too): the request is cancelled
    before the interrupt goes on, and the cluster is never brought up."""
    node, home, env, task = loopback_sky
    log = home / "sky.log"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from datarax_bench.cloud import sky
        try:
            sky.run_sky({launch_argv(task, "c2")!r}, Path({str(log)!r}), timeout=600)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            raise SystemExit(130)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, start_new_session=True, stdout=subprocess.PIPE
    )
    try:
        wait_for(lambda: [r for r in requests(home) if r["status"] == "RUNNING"])
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and b"interrupted" in out
    (request,) = [r for r in requests(home) if r["name"] == "launch"]
    assert request["status"] == "CANCELLED"
    time.sleep(PROVISION_S + 2)
    state = home / ".sky" / "loopback" / "clusters" / "c2.json"
    # What a cancelled provisioning leaves is an INIT record (teardown removes it), never UP.
    assert not state.exists() or json.loads(state.read_text())["status"] == "INIT"
    assert cloud.teardown(["c2"], log)["verified"]


@needs_loopback
@pytest.mark.slow
def test_teardown_after_a_killed_client_cancels_the_launch_still_provisioning(loopback_sky):
    """A workflow job killed with SIGKILL (Snakemake's way) cannot cancel anything: its launch
    request goes on on the server. The teardown that follows cancels it and waits for it to
    end before it reads the status, so that 'verified' means gone."""
    node, home, env, task = loopback_sky
    log = home / "sky.log"
    script = f"""
from pathlib import Path
from datarax_bench.cloud import sky
sky.run_sky({launch_argv(task, "c3")!r}, Path({str(log)!r}), timeout=600)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    try:
        wait_for(lambda: [r for r in requests(home) if r["status"] == "RUNNING"])
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job and its `sky` client die at once
        proc.wait()
    assert [r["status"] for r in requests(home) if r["name"] == "launch"] == ["RUNNING"]
    record = cloud.teardown(["c3"], log)
    assert record["verified"] and record["still_up"] == []
    (line,) = record["requests_cancelled"]["c3"]
    assert line.startswith("launch ") and line.endswith(" CANCELLED")
    assert_nothing_provisions(home, "c3", log)


@needs_loopback
@pytest.mark.slow
def test_requests_run_through_the_loopback_api_server(loopback_sky):
    """Without a cut, a launch and an exec behave as before: their jobs run, their output and
    exit status are the jobs' (`sky api logs`, then `sky logs`)."""
    node, home, env, task = loopback_sky
    loopback.set_faults(home)  # no provisioning delay
    log = home / "sky.log"
    up = sky.run_sky(launch_argv(task, "c4"), log, timeout=120)
    assert "ran" in up.stdout and "COST ($)" in up.stdout
    assert sky.cluster_status("c4", log) == "UP"
    failed = sky.run_sky(["sky", "exec", "c4", "--", "exit 3"], log, check=False, timeout=60)
    assert failed.returncode == 100  # the job's failure, as SkyPilot's `sky logs` reports it
    assert all(r["status"] == "SUCCEEDED" for r in requests(home))
    argvs = [c["argv"] for c in loopback.calls(home)]
    assert ["api", "logs"] == next(a[:2] for a in argvs if a[:1] == ["api"])
    assert any(a[:2] == ["launch", "--async"] for a in argvs)
    assert cloud.teardown(["c4"], log)["verified"]


def wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)
