"""SkyPilot's jobs controller, named, placed, billed and torn down.

The loopback `sky` runs the controller as SkyPilot 0.14.1 does: a cluster of its own,
`sky-jobs-controller-<user hash>`, launched by the first `sky jobs launch` on the task's infra
unless `jobs.controller.resources` pins it, stopped (not deleted) after 10 idle minutes, and
torn down only by a `sky down` that is typed 'delete' while no managed job is live. The
workflow's side (datarax_bench.cloud.managed) tears down the controller it launched, verified
with `sky status`, says loudly when it leaves one billing, and bills each job's wall time.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from loopback import node as loopback

from datarax_bench.cloud import managed


def loopback_test(test):
    """A slow test on the loopback node (sshd, rsync)."""
    skip = pytest.mark.skipif(
        bool(loopback.missing_tools()),
        reason=f"loopback cluster needs {', '.join(loopback.missing_tools())}",
    )
    return pytest.mark.slow(skip(test))


@pytest.fixture
def lb(tmp_path, monkeypatch):
    """A loopback node and a private HOME; this process's `sky` is the loopback's."""
    node = loopback.make_node(tmp_path / "node")
    home = tmp_path / "home"
    home.mkdir()
    env = loopback.loopback_env(home, node)
    env["LOOPBACK_SKY_SECONDS_PER_MINUTE"] = "60"
    for key in ("HOME", "PATH", "LOOPBACK_SKY_NODE", "LOOPBACK_SKY_SECONDS_PER_MINUTE"):
        monkeypatch.setenv(key, env[key])
    try:
        yield node, home, env, tmp_path
    finally:
        loopback.stop_managed_jobs(home)
        loopback.stop_skylets(home)
        node.stop()


def sky(env, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sky", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def launch(env, tmp_path: Path, name: str, run: str, *extra: str) -> int:
    task = tmp_path / f"{name}.yaml"
    task.write_text(yaml.safe_dump({"name": name, "run": run}))
    result = sky(env, "jobs", "launch", str(task), "-y", "-d", "--no-use-spot", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return managed.parse_job_id(result.stdout)


def jobs(env) -> dict[int, dict]:
    result = sky(env, "jobs", "queue", "-o", "json")
    assert result.returncode == 0, result.stderr
    return {j["job_id"]: j for j in json.loads(result.stdout[result.stdout.index("[") :])}


def wait_ended(env, job_id: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = jobs(env).get(job_id)
        if job and job["status"] in managed.TERMINAL:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.3)


def clusters(env) -> dict[str, dict]:
    result = sky(env, "status", "-o", "json")
    assert result.returncode == 0, result.stderr
    return {r["name"]: r for r in json.loads(result.stdout[result.stdout.index("[") :])}


def controller_name(home: Path) -> str:
    return "sky-jobs-controller-" + (home / ".sky" / "user_hash").read_text().strip()


@loopback_test
def test_the_first_managed_job_launches_a_controller_cluster_that_stops_and_is_not_deleted(lb):
    node, home, env, tmp_path = lb
    env = {**env, "LOOPBACK_SKY_SECONDS_PER_MINUTE": "0.2"}  # 10 idle minutes: 2 s
    assert not clusters(env)
    job_id = launch(env, tmp_path, "quick", "echo hi", "--infra", "vast")
    name = controller_name(home)
    ctl = clusters(env)[name]  # a cluster of its own, on the task's infra, SkyPilot's autostop
    assert ctl["status"] == "UP" and ctl["infra"] == "vast"
    assert ctl["autostop"] == 10 and ctl["to_down"] is False
    assert ctl["resources"]["cpus"] == "4+" and ctl["use_spot"] is False
    wait_ended(env, job_id)
    deadline = time.monotonic() + 30
    while clusters(env)[name]["status"] != "STOPPED":  # stopped, still listed: still billing
        assert time.monotonic() < deadline, clusters(env)[name]
        time.sleep(0.3)
    time.sleep(1)
    assert clusters(env)[name]["status"] == "STOPPED"
    # -y does not confirm a controller's teardown: SkyPilot asks to type 'delete'.
    refused = sky(env, "down", "-y", name)
    assert refused.returncode == 1 and "Aborted!" in refused.stderr
    assert name in clusters(env)
    assert name not in sky(env, "down", "-a", "-y").stdout  # -a leaves controllers out
    assert name in clusters(env)
    # A new launch restarts the stopped controller rather than launching another.
    job_id = launch(env, tmp_path, "again", "echo again", "--infra", "vast")
    assert clusters(env)[name]["status"] == "UP" and len(clusters(env)) == 1
    wait_ended(env, job_id)
    gone = sky(env, "down", "-y", name, stdin="delete\n")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert name not in clusters(env)
    assert jobs(env) == {}  # the controller kept the jobs' records: they went with it
    history = json.loads(sky(env, "cost-report", "-o", "json").stdout)
    assert [r["name"] for r in history] == [name] and history[0]["status"] == "TERMINATED"


@loopback_test
def test_a_controller_is_pinned_by_jobs_controller_resources_and_kept_while_a_job_runs(lb):
    node, home, env, tmp_path = lb
    config = managed.write_controller_config(tmp_path, {"infra": "aws/us-east-1", "cpus": "2+"})
    job_id = launch(
        env, tmp_path, "sleeper", "sleep 60", "--infra", "vast", "--config", str(config)
    )
    name = controller_name(home)
    ctl = clusters(env)[name]
    assert ctl["infra"] == "aws/us-east-1" and ctl["resources"]["cpus"] == "2+"
    refused = sky(env, "down", "-y", name, stdin="delete\n")  # a managed job is in progress
    assert refused.returncode == 1 and "In-progress managed jobs" in refused.stderr
    assert name in clusters(env)
    assert sky(env, "jobs", "cancel", "-y", str(job_id)).returncode == 0
    wait_ended(env, job_id)


def test_a_bad_controller_pin_is_one_clear_error():
    with pytest.raises(managed.UserError, match="managed_controller: got .*SkyPilot refuses"):
        managed.controller_config({"cpus": "four"})
    assert managed.controller_config({}) is None
    assert "not pinned" in managed.controller_plan("vast", None)
    assert "STOPPED, not deleted" in managed.controller_plan("vast", None)


@loopback_test
def test_the_run_tears_down_the_controller_it_launched_verified_and_bills_wall_time(lb, capsys):
    node, home, env, tmp_path = lb
    work, log = tmp_path / "work", tmp_path / "ctl.log"
    noted = managed.note_controller(work, log)
    assert noted["launched_by_this_run"] is True and noted["name"] is None
    # The job's machine is provisioned, preempted once and provisioned again: its wall time
    # holds all of it, SkyPilot's job_duration only the runs.
    loopback.set_faults(home, preempt_managed_after_s=[0.5])
    job_id = launch(env, tmp_path, "pre", "sleep 2", "--infra", "vast")
    job = wait_ended(env, job_id)
    assert job["status"] == "SUCCEEDED" and job["recovery_count"] == 1
    records = managed.queue_records(log)
    assert managed.wall_s(records[job_id]) > records[job_id]["job_duration"]
    assert managed.note_controller(work, log, after_launch=True)["name"] == controller_name(home)
    out = managed.teardown_controller(work, log)
    assert out["state"] == "torn down (verified with `sky status`)", out
    assert out["verified"] is True and out["still_billing"] is False and out["torn_down_at"]
    assert controller_name(home) not in clusters(env)
    assert out["sky_cost_report"]["name"] == controller_name(home)
    assert not managed.controller_record_path(work).exists()  # the next run checks afresh


@loopback_test
def test_a_controller_this_run_did_not_launch_or_still_in_use_is_left_and_said_loudly(lb, capsys):
    node, home, env, tmp_path = lb
    first = launch(env, tmp_path, "theirs", "sleep 60", "--infra", "vast")
    name = controller_name(home)
    work, log = tmp_path / "work", tmp_path / "ctl.log"
    noted = managed.note_controller(work, log)  # up before this run: someone else's
    assert noted == {**noted, "name": name, "launched_by_this_run": False}
    out = managed.teardown_controller(work, log)
    assert out["still_billing"] is True and out["verified"] is False
    assert out["command"].startswith(f"sky down {name}")
    said = capsys.readouterr().err
    assert f"WARNING: the jobs controller {name} STILL BILLS" in said and "sky down" in said
    assert clusters(env)[name]["status"] == "UP"
    # Launched by this run, but another managed job is live: left, loudly.
    managed.controller_record_path(work).write_text(
        json.dumps({**noted, "launched_by_this_run": True})
    )
    out = managed.teardown_controller(work, log)
    assert out["state"] == f"left: managed job(s) {first} still live" and out["still_billing"]
    assert name in clusters(env)
    assert sky(env, "jobs", "cancel", "-y", str(first)).returncode == 0
    wait_ended(env, first)


def test_the_summary_says_loudly_that_a_controller_still_bills_and_how_to_end_it(tmp_path):
    from datarax_bench.report import bill

    shard = {"shard": 1, "job_id": 3, "status": "SUCCEEDED", "recoveries": 1, "cells": 2,
             "submitted": 2, "job_duration_s": 60.0, "wall_s": 300.0}  # fmt: skip
    controller = {"name": "sky-jobs-controller-1a2b3c4d", "state": "left: managed job(s) 7 still "
                  "live", "still_billing": True, "command": "sky down sky-jobs-controller-1a2b3c4d"
                  "  (type 'delete' when asked)", "billed_s": 600, "cost_usd": 0.05}  # fmt: skip
    record = {"managed": {"bucket": "s3://b", "shards": [shard], "recoveries": 1,
                          "measured_more_than_once": {}, "billed_s": 300.0, "cost_usd": 0.1,
                          "controller": controller}}  # fmt: skip
    (tmp_path / "cloud").mkdir()
    (tmp_path / "cloud" / "teardown.json").write_text(json.dumps(record))
    text = bill.managed_markdown(tmp_path)
    assert "**The jobs controller `sky-jobs-controller-1a2b3c4d` STILL BILLS**" in text
    assert "`sky down sky-jobs-controller-1a2b3c4d  (type 'delete' when asked)`" in text
    assert "| 5.0 min | 1.0 min |" in text  # wall time, then SkyPilot's JOB DURATION
    assert "Controller: 10.0 min, $0.0500" in text
    assert bill.managed_metrics(tmp_path)["cloud/controller_still_billing"] is True


@loopback_test
def test_a_preempted_vast_machine_is_stopped_not_deleted_and_keeps_billing(lb):
    node, home, env, tmp_path = lb
    # Autodown 10 "minutes": 10 s, for the exec below to lose the machine first (a `sky` call
    # takes a second or two); sooner and the autodown would take the machine, and the test fail.
    env = {**env, "LOOPBACK_SKY_SECONDS_PER_MINUTE": "1"}
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({"run": "true"}))
    (tmp_path / "wd").mkdir()
    argv = ["launch", "-c", "c1", str(task), "-y", "--infra", "vast", "--no-use-spot"]
    argv += ["--workdir", str(tmp_path / "wd")]
    up = sky(env, *argv)
    assert up.returncode == 0, up.stdout + up.stderr
    armed = sky(env, "autostop", "c1", "-i", "10", "--down", "--wait-for", "none", "-y")
    assert armed.returncode == 0, armed.stderr
    loopback.set_faults(home, preempt_after_execs=0)
    lost = sky(env, "exec", "c1", "--", "sleep 30")
    assert lost.returncode == 1 and "the node is gone" in lost.stderr
    time.sleep(12)  # past the autodown's deadline: the stopped machine's skylet is gone
    status = sky(env, "status", "--refresh", "-o", "json", "c1")
    (record,) = json.loads(status.stdout[status.stdout.index("[") :])
    assert record["status"] == "STOPPED"
    history = json.loads(sky(env, "cost-report", "-o", "json").stdout)
    assert history[0]["name"] == "c1" and history[0]["status"] == "UP"  # still billing
    assert sky(env, "down", "-y", "c1").returncode == 0
    assert "c1" not in clusters(env)


def doctor_report(cpu_model: str) -> str:
    return json.dumps({
        "cpu": {"model": cpu_model, "usable_cores": 8}, "memory_bytes": 64 * 2**30,
        "jax": {"backend": "gpu", "device_count": 1, "device_kind": "NVIDIA A100"},
        "gpu": "NVIDIA A100",
    })  # fmt: skip


@pytest.mark.slow
def test_a_recovery_on_other_hardware_is_refused_as_its_report_reaches_the_bucket(
    tmp_path, monkeypatch
):
    from loopback import storage

    from datarax_bench.cloud.buckets import parse_bucket
    from datarax_bench.workload.catalog import load_profile

    with storage.moto_server(tmp_path) as endpoint:
        for key, value in storage.aws_env(endpoint).items():
            monkeypatch.setenv(key, value)
        s3 = storage.s3_client(endpoint)
        s3.create_bucket(Bucket="dxb")
        shard = managed.Shard(
            profile=load_profile("smoke"), infra="vast", index=1, total=2, name="dxb-s1",
            cells=[], cell_files={}, bucket=parse_bucket("s3://dxb/bench"), settings=None,
            work_dir=tmp_path / "work", log=tmp_path / "shard.log",
        )  # fmt: skip
        doctor = "bench/smoke/vast/cells/doctor"
        first = f"{doctor}/sky-managed-2026-12-07-01_dxb-s1_3-0/20261207T010000.json"
        s3.put_object(Bucket="dxb", Key=first, Body=doctor_report("AMD EPYC 7B13"))
        other_job = f"{doctor}/sky-managed-2026-12-07-01_dxb-s2_4-0/20261207T010001.json"
        s3.put_object(Bucket="dxb", Key=other_job, Body=doctor_report("Intel Xeon 8480"))
        seen: set[str] = set()
        managed.check_job_hardware(shard, 3, seen, managed.buckets.client(shard.bucket))
        assert len(seen) == 1  # its own report only: the reference
        reference = json.loads(managed.hardware_reference_path(shard.work_dir).read_text())
        assert reference["hardware"]["CPU model"] == "AMD EPYC 7B13"
        # The job's recovery lands on another CPU: refused at once, naming both.
        recovered = f"{doctor}/sky-managed-2026-12-07-01_dxb-s1_3-0/20261207T020000.json"
        s3.put_object(Bucket="dxb", Key=recovered, Body=doctor_report("Intel Xeon 8480"))
        with pytest.raises(managed.HardwareMismatch, match="'AMD EPYC 7B13' vs 'Intel Xeon"):
            managed.check_job_hardware(shard, 3, seen, managed.buckets.client(shard.bucket))
        # And shard 2's job, on that other CPU, is refused against the run's reference.
        shard.name, shard.index = "dxb-s2", 2
        with pytest.raises(managed.HardwareMismatch, match="shard 2/2: managed job 4"):
            managed.check_job_hardware(shard, 4, set(), managed.buckets.client(shard.bucket))
        refused = [e for e in shard.ledger.events() if e["event"].endswith("hardware_refused")]
        assert [e["job_id"] for e in refused] == [3, 4]


@loopback_test
def test_launch_y_prints_no_job_estimate_so_the_job_is_quoted_by_a_dry_run(lb):
    node, home, env, tmp_path = lb
    task = tmp_path / "quoted.yaml"
    task.write_text(yaml.safe_dump({"name": "quoted", "run": "echo hi", "envs": {"X": None}}))
    argv = ["jobs", "launch", str(task), "-y", "-d", "--infra", "vast", "--no-use-spot"]
    first = sky(env, *argv, "--env", "X=1")
    assert first.returncode == 0, first.stderr
    # The one table is the controller's launch (SkyPilot quotes the job only to confirm it).
    assert first.stdout.count("Considered resources") == 1 and "loopback-ctl" in first.stdout
    assert sky_price(first.stdout) == 0.19
    second = sky(env, *argv, "--env", "X=2")  # the controller is up: no table at all
    assert second.returncode == 0 and "Considered resources" not in second.stdout
    quoted = managed.job_estimate(
        task, "quoted", "vast", False, {"X": "1"}, ((), ()), tmp_path / "estimate.log"
    )
    assert quoted["hourly_usd"] == 0.0 and "loopback-1" in quoted["chosen"]
    for job_id in (managed.parse_job_id(first.stdout), managed.parse_job_id(second.stdout)):
        wait_ended(env, job_id)


def sky_price(output: str) -> float | None:
    from datarax_bench.cloud import sky as sky_calls

    return sky_calls.parse_launch_estimate(output)["hourly_usd"]
