"""`cloud_mode: managed` end to end: real Snakemake, ssh and rsync, the loopback's managed jobs
(tests/loopback/managed.py: a controller per job, preemption and recovery as SkyPilot's) and a
real S3 API (moto's server) or a real GCS API (gcp-storage-emulator's server) as the results
bucket, read here with boto3 or google-cloud-storage and mounted MOUNT_CACHED on the loopback
machines (tests/loopback/storage.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from loopback import node as loopback
from loopback import storage
from support import BIN
from support.loopback_cluster import (
    SENTINEL,
    assert_no_secret,
    check_against_real_sky_cli,
    raw_cells,
)
from support.managed_loopback import (
    ADAPTERS,
    BUCKET,
    PINNED,
    PINNED_VAST,
    PREFIX,
    SCENARIOS,
    bucket_keys,
    loopback_processes,
    queue,
    snakemake,
    snakemake_argv,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(loopback.missing_tools()),
        reason=f"loopback cluster needs {', '.join(loopback.missing_tools())}",
    ),
]


def test_two_shards_two_preemptions_every_cell_once_and_a_foreign_shard_refused(
    managed_env, tmp_path, monkeypatch
):
    node, home, env, work, repo, s3 = managed_env
    monkeypatch.setenv("HOME", str(home))  # the real CLI's parser is imported in this process
    run_dir = work / "results" / "smoke" / "ssh_loopback"
    # Each shard's first machine dies as its first cell lands in the bucket mount; SkyPilot's
    # recovery (here the loopback's controller) brings up a fresh one and restarts the job, on
    # the same hardware because the machine type is pinned (test_managed_hardware.py: not).
    loopback.set_faults(
        home, preempt_first_attempt_on_file="datarax-bench-bucket/*/*/*/cells/raw/*/*/*.json"
    )
    done = snakemake(repo, work, env, PINNED)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]

    expected = {(s, "small", a) for s in SCENARIOS for a in ADAPTERS}
    cells = raw_cells(run_dir)
    assert set(cells) == expected

    # Identical statuses to a local run of the same cells.
    local = tmp_path / "local"
    subprocess.run(
        [str(BIN / "datarax-bench"), "run", "--profile", "smoke", "--scenarios", *SCENARIOS,
         "--adapters", *ADAPTERS, "--output-dir", str(local)],
        check=True, capture_output=True, env={**os.environ, "HOME": str(home)},
    )  # fmt: skip
    assert cells == raw_cells(local)

    # Two jobs, both recovered once, finished; nothing of them is left running.
    teardown = json.loads((run_dir / "cloud" / "teardown.json").read_text())
    info = teardown["managed"]
    assert [s["status"] for s in info["shards"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert sorted(s["recoveries"] for s in info["shards"]) == [1, 1]
    assert info["recoveries"] == 2
    assert sum(s["cells"] for s in info["shards"]) == len(expected)
    assert all(n <= 2 for n in info["measured_more_than_once"].values())
    events = [
        json.loads(line) for line in (run_dir / "cloud" / "ledger.jsonl").read_text().splitlines()
    ]
    assert sum(e["event"] == "managed_job_recovered" for e in events) == 2
    assert sum(e["event"] == "managed_job_submitted" for e in events) == 2
    # The bill counts each job from submission to end (provisioning and the recovery
    # included), not SkyPilot's JOB DURATION.
    assert all(s["wall_s"] > s["job_duration_s"] for s in info["shards"])
    # The jobs controller this run launched is torn down, verified with `sky status`; the
    # jobs' records (`sky jobs queue`) went with it, as with SkyPilot; no process is left.
    assert teardown["controller"]["state"] == "torn down (verified with `sky status`)"
    assert teardown["still_billing"] is False and teardown["jobs_ended_verified"] is True
    status = subprocess.run(["sky", "status", "-o", "json"], env=env, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert "sky-jobs-controller-" not in status
    assert "No in-progress managed jobs." in queue(env) and loopback_processes(home, node) == []
    summary = (run_dir / "summary.md").read_text()
    assert "## Managed jobs" in summary and "Recoveries: 2." in summary
    assert "Jobs controller `sky-jobs-controller-" in summary and "torn down" in summary
    shard_log = (
        work / "logs" / "smoke" / "ssh_loopback" / "cloud" / "managed" / "shard-1.log"
    ).read_text()
    assert "shard 1/2:" in shard_log and "1 recovery" in shard_log
    assert "shard 2/2:" in out and "cells, RUNNING" in out  # shown where Snakemake runs too

    # Each cell is in the bucket once, under the run's prefix; so is each machine's hardware.
    keys = bucket_keys(s3)
    cell_keys = [k for k in keys if "/cells/raw/" in k]
    assert len(cell_keys) == len(expected)
    assert all(k.startswith(f"{PREFIX}/smoke/ssh_loopback/cells/raw/") for k in cell_keys)
    assert len([k for k in keys if "/cells/doctor/" in k]) >= 2

    # The W&B key reached nothing: files here, the nodes, the bucket, the recorded commands.
    calls = loopback.calls(home)
    check_against_real_sky_cli(calls)
    assert not any(SENTINEL in " ".join(c["argv"]) for c in calls)
    assert_no_secret(work, home / ".sky", node.home)
    for key in keys:
        assert SENTINEL.encode() not in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    # A rerun submits nothing.
    n_calls = len(calls)
    again = snakemake(repo, work, env, PINNED)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not [c for c in loopback.calls(home)[n_calls:] if c["argv"][:2] == ["jobs", "launch"]]

    # A cell of shard 2 measured on other hardware: refused before aggregation, naming both.
    key = next(k for k in cell_keys if k.endswith("TAB-1/small/pytorch.json"))
    result = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    model = result["provenance"]["cpu"]["model"]
    result["provenance"]["cpu"]["model"] = "Another CPU @ 3.0GHz"
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(result).encode())
    cell = run_dir / "raw" / "TAB-1" / "small" / "pytorch.json"
    cell.unlink()
    n_calls = len(loopback.calls(home))
    pulled = snakemake(
        repo, work, env, PINNED, targets=[str(cell.relative_to(work))]
    )  # pulled again, not measured
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    assert not [c for c in loopback.calls(home)[n_calls:] if c["argv"][:2] == ["jobs", "launch"]]
    refused = snakemake(repo, work, env, PINNED)
    assert refused.returncode != 0
    logs = "\n".join(p.read_text() for p in (work / "logs").rglob("finish.log"))
    assert "shards ran on different hardware" in logs
    assert "shard 1 vs shard 2" in logs and model in logs and "Another CPU" in logs


def test_ctrl_c_cancels_the_jobs_and_leaves_none_running(managed_env, monkeypatch):
    node, home, env, work, repo, s3 = managed_env
    monkeypatch.setenv("HOME", str(home))
    run_dir = work / "results" / "smoke" / "ssh_loopback"
    # Four cells per shard: the jobs are still measuring when Ctrl-C comes.
    adapters = ["numpy", "pytorch", "grain", "tfdata"]
    proc = subprocess.Popen(
        snakemake_argv(repo, work, adapters=adapters), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            jobs = list((run_dir / "cloud" / "managed").glob("shard-*.job.json"))
            if len(jobs) == 2 and queue(env).count("RUNNING") == 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the two managed jobs never ran")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    ledger = (run_dir / "cloud" / "ledger.jsonl").read_text()
    assert '"managed_job_cancelled"' in ledger
    # Every job ended, so the jobs controller this run launched is torn down (verified), and
    # the jobs' records went with it, as with SkyPilot.
    assert "onerror: jobs controller sky-jobs-controller-" in out, out[-3000:]
    assert "torn down (verified with `sky status`)" in out
    status = subprocess.run(["sky", "status", "-o", "json"], env=env, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert "sky-jobs-controller-" not in status
    assert "No in-progress managed jobs." in queue(env)
    assert loopback_processes(home, node) == [], "a cancelled job's processes are still running"
    assert "onerror: cancelled managed jobs" in out or "cancelling managed job" in "\n".join(
        p.read_text() for p in (work / "logs").rglob("*.log")
    )
    check_against_real_sky_cli(loopback.calls(home))


def test_a_gs_bucket_keeps_the_cells_and_they_are_pulled_with_googles_client(
    managed_env, tmp_path, monkeypatch
):
    node, home, env, work, repo, s3 = managed_env
    monkeypatch.setenv("HOME", str(home))
    run_dir = work / "results" / "smoke" / "ssh_loopback"
    with storage.gcs_emulator(tmp_path) as gcs_endpoint:
        # This machine's pull finds the emulator as google-cloud-storage finds any; the
        # loopback machines' mounts through the loopback's own setting.
        env = {**env, "STORAGE_EMULATOR_HOST": gcs_endpoint, storage.GCS_ENDPOINT_ENV: gcs_endpoint}
        gcs = storage.gcs_client(gcs_endpoint)
        gcs.create_bucket(BUCKET)
        config = {"shards": 1, "scenarios": ["TAB-1"], "adapters": ["numpy"],
                  "bucket": f"gs://{BUCKET}/{PREFIX}"}  # fmt: skip
        done = snakemake(repo, work, env, **config)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        keys = sorted(blob.name for blob in gcs.list_blobs(BUCKET))

    assert set(raw_cells(run_dir)) == {("TAB-1", "small", "numpy")}
    cell_keys = [k for k in keys if "/cells/raw/" in k]
    assert len(cell_keys) == 1
    assert all(k.startswith(f"{PREFIX}/smoke/ssh_loopback/cells/raw/") for k in cell_keys)
    assert [k for k in keys if "/cells/doctor/" in k]
    assert bucket_keys(s3) == []  # nothing went through S3
    task = (run_dir / "cloud" / "managed" / "shard-1.yaml").read_text()
    assert "source: gs://${DATARAX_BENCH_BUCKET}" in task
    teardown = json.loads((run_dir / "cloud" / "teardown.json").read_text())
    assert teardown["managed"]["bucket"] == f"gs://{BUCKET}/{PREFIX}"
    assert [s["status"] for s in teardown["managed"]["shards"]] == ["SUCCEEDED"]
    check_against_real_sky_cli(loopback.calls(home))


def test_on_vast_the_job_uploads_each_cell_itself_and_resumes_from_the_bucket(
    managed_env, tmp_path, monkeypatch
):
    """Vast cannot mount a bucket: the job copies the kept cells down, uploads each file with
    the S3 keys passed by name, and after a preemption measures only what is not there."""
    node, home, env, work, repo, s3 = managed_env
    monkeypatch.setenv("HOME", str(home))
    aws_secret = "dxb-aws-secret-sentinel-4c1d9e"  # moto takes any key
    env = {**env, "AWS_SECRET_ACCESS_KEY": aws_secret}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, env[name])  # the real CLI's parser copies names from here
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_secret)
    run_dir = work / "results" / "smoke" / "vast"
    # The first machine dies once the second cell has started, i.e. after the first cell's
    # result was uploaded: the restarted job must take that cell from the bucket.
    loopback.set_faults(
        home,
        preempt_first_attempt_on_file="datarax-bench-results/.smoke.resume-bucket/attempts/raw/"
        "TAB-1/small/pytorch.json/*",
    )
    done = snakemake(repo, work, env, PINNED_VAST, infra="vast", shards=1, scenarios=["TAB-1"])
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert set(raw_cells(run_dir)) == {("TAB-1", "small", a) for a in ADAPTERS}

    task = (run_dir / "cloud" / "managed" / "shard-1.yaml").read_text()
    assert "--resume-bucket" in task and "MOUNT_CACHED" not in task
    (launch,) = [c for c in loopback.calls(home) if c["argv"][:2] == ["jobs", "launch"]]
    argv = launch["argv"]
    assert argv[argv.index("--infra") + 1] == "vast"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert argv[argv.index(name) - 1] == "--secret"

    info = json.loads((run_dir / "cloud" / "teardown.json").read_text())["managed"]
    assert [(s["status"], s["recoveries"]) for s in info["shards"]] == [("SUCCEEDED", 1)]
    keys = bucket_keys(s3)
    root = f"{PREFIX}/smoke/vast/cells"
    assert sorted(k for k in keys if k.startswith(f"{root}/raw/")) == [
        f"{root}/raw/TAB-1/small/numpy.json", f"{root}/raw/TAB-1/small/pytorch.json",
    ]  # fmt: skip
    assert [k for k in keys if k.startswith(f"{root}/doctor/")]
    # The cell uploaded before the preemption was measured once; the one in flight again.
    started = [k for k in keys if k.startswith(f"{root}/attempts/raw/TAB-1/small/numpy.json/")]
    assert len(started) == 1
    assert set(info["measured_more_than_once"]) <= {"raw/TAB-1/small/pytorch.json"}
    # The job's log, kept with the run: the controller's teardown took SkyPilot's copy.
    assert not list((home / ".sky" / "loopback" / "managed").glob("*.log"))
    job_log = "\n".join(
        p.read_text() for p in (run_dir / "cloud" / "managed").glob("shard-1.job-*.log")
    )
    kept = [ln for ln in job_log.splitlines() if "kept in the resume directory" in ln]
    assert len(kept) == 1 and "TAB-1/small/numpy: ok" in kept[0], job_log[-3000:]

    # Neither key reached a file, a recorded command line or the bucket.
    calls = loopback.calls(home)
    check_against_real_sky_cli(calls)
    assert not any(aws_secret in " ".join(c["argv"]) for c in calls)
    for root_dir in (work, home / ".sky", node.home):
        for path in root_dir.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                assert aws_secret.encode() not in data and SENTINEL.encode() not in data, path
    for key in keys:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert aws_secret.encode() not in body and SENTINEL.encode() not in body, key
