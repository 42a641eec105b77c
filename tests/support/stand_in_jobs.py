"""The loopback `sky jobs` driven directly: a fixture with a loopback cluster and bucket, and the
helpers its tests share."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from loopback import node as loopback
from loopback import storage

INFRA = ["--infra", "ssh/loopback", "--no-use-spot"]
# A resuming benchmark in miniature: one numbered file per second in the bucket mount, each
# with the task id, skipping the numbers a previous attempt already wrote.
COUNTER_RUN = """\
for i in $(seq 1 {count}); do
  [ -e ~/out/{prefix}$i ] || echo "$SKYPILOT_TASK_ID" > ~/out/{prefix}$i
  sleep 1
done
"""


@pytest.fixture
def cluster(tmp_path):
    node = loopback.make_node(tmp_path / "node")
    home = tmp_path / "home"
    home.mkdir()
    env = loopback.loopback_env(home, node)
    env["LOOPBACK_RCLONE_WRITE_BACK_S"] = "0.5"
    try:
        yield node, home, env, tmp_path
    finally:
        loopback.stop_managed_jobs(home)
        loopback.stop_skylets(home)
        node.stop()
    assert_jobs_calls_parse_with_the_real_cli(home)


def sky(env, cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sky", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def task_file(directory: Path, name: str, **task) -> Path:
    import yaml

    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **task}))
    return path


def bucket_mount(bucket: str) -> dict:
    return {"~/out": {"name": bucket, "mode": "MOUNT_CACHED"}}


def queue(env, cwd) -> dict[int, dict]:
    result = sky(env, cwd, "jobs", "queue", "-o", "json")
    assert result.returncode == 0, result.stderr
    return {j["job_id"]: j for j in json.loads(result.stdout[result.stdout.index("[") :])}


def wait_for(env, cwd, job_id: int, statuses: set[str], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = queue(env, cwd).get(job_id)
        if job and job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.5)


def job_record(home: Path, job_id: int) -> dict:
    return json.loads((home / ".sky" / "loopback" / "managed" / f"{job_id}.json").read_text())


def launched_id(result: subprocess.CompletedProcess) -> int:
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if "Job submitted, ID:" in x]
    assert f"Managed Job ID: {line.split()[-1]}" in result.stdout
    return int(line.split()[-1])


def bucket_objects(endpoint: str, bucket: str) -> dict[str, str]:
    client = storage.s3_client(endpoint)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read().decode() for k in keys}


def assert_jobs_calls_parse_with_the_real_cli(home: Path) -> None:
    from sky.client.cli import command

    jobs = command.cli.commands["jobs"]
    argvs = [c["argv"] for c in loopback.calls(home) if c["argv"][:1] == ["jobs"]]
    assert argvs
    for argv in argvs:
        jobs.commands[argv[1]].make_context(f"sky jobs {argv[1]}", list(argv[2:]))
