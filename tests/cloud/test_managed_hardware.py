"""A managed job's recovery on other hardware, as a user meets it: real Snakemake, the loopback's
managed jobs (whose recoveries land on a machine with half the cores unless the task pins
`instance_type`, tests/loopback/managed.py) and moto's S3 as the results bucket. Unpinned, the
recovered job is cancelled as soon as its hardware report reaches the bucket and the run says
why; rerun with the type pinned, the recovery keeps the machine and every cell is measured."""

from __future__ import annotations

import json
import os
import re

import pytest
from loopback import node as loopback
from support.loopback_cluster import check_against_real_sky_cli, raw_cells
from test_managed_loopback import (  # the managed loopback's fixture and helpers
    BUCKET,
    PREFIX,
    bucket_keys,
    loopback_processes,
    managed_env,  # noqa: F401
    queue,
    snakemake,
)
from test_stand_in_managed_jobs import (  # the stand-in's fixture and helpers
    INFRA,
    cluster,  # noqa: F401
    launched_id,
    sky,
    task_file,
    wait_for,
)

CORES = len(os.sched_getaffinity(0))
ADAPTERS = ["numpy", "pytorch", "grain", "tfdata"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(loopback.missing_tools()),
        reason=f"loopback cluster needs {', '.join(loopback.missing_tools())}",
    ),
    pytest.mark.skipif(CORES < 2, reason="a recovery on other hardware needs 2 usable cores"),
]


def test_every_new_machine_of_a_job_has_other_hardware_unless_the_type_is_pinned(
    cluster,  # noqa: F811
):
    node, home, env, tmp_path = cluster
    ids = {}
    # A failing job restarted once: its second attempt is a new machine, as after a preemption.
    run = {"run": "echo cores $(nproc); exit 3"}
    restart = {"job_recovery": {"max_restarts_on_errors": 1}}
    for name, resources, flags in (
        ("drawn", restart, []),
        ("pinned", {**restart, "instance_type": "loopback-1"}, []),
        ("flag", restart, ["-t", "loopback-1"]),
    ):
        path = task_file(tmp_path, name, resources=resources, **run)
        launch = sky(env, tmp_path, "jobs", "launch", str(path), "-y", "-d", *INFRA, *flags)
        ids[name] = launched_id(launch)
    for name, job_id in ids.items():
        assert wait_for(env, tmp_path, job_id, {"FAILED"})["recovery_count"] == 1
        logs = sky(env, tmp_path, "jobs", "logs", "--no-follow", str(job_id)).stdout
        cores = re.findall(r"^cores (\d+)$", logs, re.MULTILINE)
        second = CORES // 2 if name == "drawn" else CORES
        assert cores == [str(CORES), str(second)], (name, logs)


def test_a_recovery_on_other_hardware_is_refused_at_once_and_the_summary_says_why(
    managed_env,  # noqa: F811
    monkeypatch,
):
    node, home, env, work, repo, s3 = managed_env
    monkeypatch.setenv("HOME", str(home))
    run_dir = work / "results" / "smoke" / "ssh_loopback"
    config = {"shards": 1, "scenarios": ["TAB-1"], "adapters": ADAPTERS}
    # The first machine dies as the first cell lands in the bucket mount; SkyPilot recovers the
    # job on whatever machine it gets next.
    loopback.set_faults(
        home, preempt_first_attempt_on_file="datarax-bench-bucket/*/*/*/cells/raw/*/*/*.json"
    )
    refused = snakemake(repo, work, env, **config)
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0, out[-4000:]
    differs = f"usable cores: {CORES} vs {CORES // 2}"

    # The recovered machine's own report (its `doctor`) is what was compared.
    root = f"{PREFIX}/smoke/ssh_loopback/cells"
    reports = [k for k in bucket_keys(s3) if k.startswith(f"{root}/doctor/")]
    cores = sorted(
        json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())["cpu"]["usable_cores"]
        for k in reports
    )
    assert cores == [CORES // 2, CORES]

    # Refused at once: the job was cancelled before it measured the rest of its cells.
    events = [json.loads(line) for line in (run_dir / "cloud" / "ledger.jsonl").open()]
    (event,) = [e for e in events if e["event"] == "managed_job_hardware_refused"]
    job_id = event["job_id"]
    assert differs in event["differs"]
    assert any(e["event"] == "managed_job_cancelled" and e["job_id"] == job_id for e in events)
    refusal = json.loads((run_dir / "cloud" / "managed" / "shard-1.refused.json").read_text())
    not_measured = refusal["cells_not_measured"]
    assert not_measured and len([k for k in bucket_keys(s3) if "/cells/raw/" in k]) < 4
    assert "No in-progress managed jobs." in queue(env)
    assert loopback_processes(home, node) == []

    # The run says why, where the user looks: Snakemake's output and summary.md.
    summary = (run_dir / "summary.md").read_text()
    for text in (out, summary):
        assert f"shard 1/1: managed job {job_id} was cancelled" in text, text[-3000:]
        assert "landed on different hardware" in text and differs in text
        assert f"{len(not_measured)} of its 4 cells were not measured" in text
        assert all(cell in text for cell in not_measured)
        assert "instance_type" in text

    # Pinned, the recovery is the same type of machine: the run resumes and finishes.
    loopback.set_faults(home, preempt_managed_after_s=[2])
    pinned = snakemake(repo, work, env, "instance_type=loopback-1", **config)
    out = pinned.stdout + pinned.stderr
    assert pinned.returncode == 0, out[-4000:]
    assert set(raw_cells(run_dir)) == {("TAB-1", "small", a) for a in ADAPTERS}
    info = json.loads((run_dir / "cloud" / "teardown.json").read_text())["managed"]
    assert [(s["status"], s["recoveries"]) for s in info["shards"]] == [("SUCCEEDED", 1)]
    summary = (run_dir / "summary.md").read_text()
    assert "The run stopped" not in summary and "## Managed jobs" in summary
    assert not (run_dir / "cloud" / "managed" / "shard-1.refused.json").exists()
    events = [json.loads(line) for line in (run_dir / "cloud" / "ledger.jsonl").open()]
    assert sum(e["event"] == "managed_job_hardware_refused" for e in events) == 1
    check_against_real_sky_cli(loopback.calls(home))
