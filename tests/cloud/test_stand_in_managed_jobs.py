"""The loopback `sky jobs` (tests/loopback/managed.py) behaves like SkyPilot's managed jobs:
a preempted job restarts from scratch with the same SKYPILOT_TASK_ID and resumes from its
bucket, jobs run side by side without sharing a HOME, a cancel leaves no process behind, a
failing job is restarted only within max_restarts_on_errors, and every `sky jobs` command line
used parses with SkyPilot's own CLI."""

from __future__ import annotations

import time

import pytest
from loopback import managed, storage
from loopback import node as loopback
from support.stand_in_jobs import (
    COUNTER_RUN,
    INFRA,
    bucket_mount,
    bucket_objects,
    job_record,
    launched_id,
    sky,
    task_file,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(loopback.missing_tools()),
        reason=f"loopback cluster needs {', '.join(loopback.missing_tools())}",
    ),
]


def test_a_preempted_job_recovers_with_its_task_id_and_resumes_from_the_bucket(cluster):
    node, home, env, tmp_path = cluster
    task = task_file(
        tmp_path,
        "counter",
        setup="echo setup ran",
        run=COUNTER_RUN.format(count=6, prefix=""),
        file_mounts=bucket_mount("counter-bucket"),
    )
    with storage.moto_server(tmp_path) as endpoint:
        env[storage.ENDPOINT_ENV] = endpoint
        loopback.set_faults(home, preempt_managed_after_s=[2.5])
        job_id = launched_id(sky(env, tmp_path, "jobs", "launch", str(task), "-y", "-d", *INFRA))
        logs = sky(env, tmp_path, "jobs", "logs", str(job_id))  # follows to the end
        table = sky(env, tmp_path, "jobs", "queue").stdout
        objects = bucket_objects(endpoint, "counter-bucket")
    assert logs.returncode == 0, logs.stdout + logs.stderr
    assert logs.stdout.count("setup ran") == 2  # the fresh machine ran setup again
    assert f"Managed job finished: {job_id} (status: SUCCEEDED)." in logs.stdout
    # SkyPilot's own wait ended the job, once the uploader had logged its last upload.
    assert "skypilot: cached mount upload complete" in logs.stdout
    header, row = table.splitlines()[-2:]
    assert header.split()[:3] == ["ID", "TASK", "NAME"]

    def cell(column: str) -> str:  # the table is left-aligned under its header
        return row[header.index(column) :].split()[0]

    assert (cell("ID"), cell("#RECOVERIES"), cell("STATUS")) == (str(job_id), "1", "SUCCEEDED")
    assert sorted(objects, key=int) == [str(i) for i in range(1, 7)]
    (task_id,) = set(objects.values())
    assert task_id.strip().startswith("sky-managed-")
    assert task_id.strip().endswith(f"_counter_{job_id}-0")
    assert not (node.home / ".loopback-clusters" / job_record(home, job_id)["cluster"]).exists()


def test_two_jobs_run_at_once_each_in_its_own_home(cluster):
    node, home, env, tmp_path = cluster
    ids = {}
    with storage.moto_server(tmp_path) as endpoint:
        env[storage.ENDPOINT_ENV] = endpoint
        for name in ("left", "right"):
            run = f"touch ~/mine-{name}\n" + COUNTER_RUN.format(count=3, prefix=name)
            run += "ls -a ~ > ~/out/listing-" + name
            task = task_file(tmp_path, name, run=run, file_mounts=bucket_mount(f"{name}-bucket"))
            launch = sky(env, tmp_path, "jobs", "launch", str(task), "-n", name, "-y", "-d", *INFRA)
            ids[name] = launched_id(launch)
        running = [wait_for(env, tmp_path, i, {"RUNNING"}) for i in ids.values()]
        finished = [wait_for(env, tmp_path, i, {"SUCCEEDED"}) for i in ids.values()]
        objects = {name: bucket_objects(endpoint, f"{name}-bucket") for name in ids}
    assert len({j["current_cluster_name"] for j in running}) == 2
    assert all(j["recovery_count"] == 0 for j in finished)
    for name, other in (("left", "right"), ("right", "left")):
        assert {f"{name}{i}" for i in (1, 2, 3)} <= set(objects[name])
        listing = objects[name][f"listing-{name}"].split()
        assert f"mine-{name}" in listing and f"mine-{other}" not in listing


def test_cancel_stops_the_job_and_leaves_no_process(cluster):
    node, home, env, tmp_path = cluster
    task = task_file(tmp_path, "sleeper", run="echo started; sleep 120")
    job_id = launched_id(sky(env, tmp_path, "jobs", "launch", str(task), "-y", "-d", *INFRA))
    wait_for(env, tmp_path, job_id, {"RUNNING"})
    record = job_record(home, job_id)
    pids = [record["controller_pid"], record["attempt_pid"]]
    assert all(managed.alive(pid) for pid in pids)
    unconfirmed = sky(env, tmp_path, "jobs", "cancel", str(job_id))  # stdin is not a terminal
    assert unconfirmed.returncode == 1 and "Aborted!" in unconfirmed.stderr
    assert sky(env, tmp_path, "jobs", "cancel").returncode == 2  # nothing named: usage error
    cancel = sky(env, tmp_path, "jobs", "cancel", "-y", str(job_id))
    assert cancel.returncode == 0
    assert f"Job with ID {job_id} is scheduled to be cancelled." in cancel.stdout
    wait_for(env, tmp_path, job_id, {"CANCELLED"}, timeout=20)
    assert not managed.alive(record["attempt_pid"])  # the machine went before CANCELLED
    deadline = time.monotonic() + 10  # the controller exits just after it writes CANCELLED
    while managed.alive(record["controller_pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(managed.alive(pid) for pid in pids)
    assert not (node.home / ".loopback-clusters" / record["cluster"]).exists()
    for again in (str(job_id), "99"):  # finished or unknown: nothing to do, still exit 0
        result = sky(env, tmp_path, "jobs", "cancel", "-y", again)
        assert result.returncode == 0 and "No job to cancel." in result.stdout
    logs = sky(env, tmp_path, "jobs", "logs", "--no-follow", str(job_id))
    assert logs.returncode == 103 and "started" in logs.stdout
    assert sky(env, tmp_path, "jobs", "logs", "99").returncode == 102


def test_a_failing_job_is_restarted_only_within_max_restarts_on_errors(cluster):
    node, home, env, tmp_path = cluster
    ids = {}
    for name, restarts, setup in (("retried", 1, None), ("once", 0, None), ("nosetup", 1, "false")):
        task = {"run": "echo attempt ran; exit 3"}
        task["resources"] = {"job_recovery": {"max_restarts_on_errors": restarts}}
        if setup:
            task["setup"] = setup
        path = task_file(tmp_path, name, **task)
        ids[name] = launched_id(sky(env, tmp_path, "jobs", "launch", str(path), "-y", "-d", *INFRA))
    jobs = {name: wait_for(env, tmp_path, i, managed.TERMINAL) for name, i in ids.items()}
    assert jobs["retried"]["status"] == "FAILED" and jobs["retried"]["recovery_count"] == 1
    assert jobs["once"]["status"] == "FAILED" and jobs["once"]["recovery_count"] == 0
    assert jobs["nosetup"]["status"] == "FAILED_SETUP"
    logs = {name: sky(env, tmp_path, "jobs", "logs", str(i)) for name, i in ids.items()}
    assert logs["retried"].stdout.count("attempt ran") == 2
    assert logs["once"].stdout.count("attempt ran") == 1
    assert "attempt ran" not in logs["nosetup"].stdout
    assert {r.returncode for r in logs.values()} == {100}
    events = [e[1] for e in job_record(home, ids["retried"])["events"]]
    assert events == ["PENDING", "STARTING", "RUNNING", "RECOVERING", "RUNNING", "FAILED"]
