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
from support.managed_loopback import (
    BUCKET,
    PREFIX,
    bucket_keys,
    loopback_processes,
    queue,
    snakemake,
)
from support.stand_in_jobs import (
    INFRA,
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
        ("pinned", {**restart, "instance_type": "2CPU--8GB"}, []),
        ("flag", restart, ["-t", "2CPU--8GB"]),
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


@pytest.mark.parametrize(
    "flags, resources",
    [([], {"instance_type": "loopback-1"}), (["-t", "loopback-1"], {})],
    ids=["task", "flag"],
)
def test_a_type_the_cloud_does_not_have_is_refused_before_anything_starts(
    cluster,  # noqa: F811
    flags,
    resources,
):
    """A pinned type must be one SkyPilot accepts for the infra: on an SSH node pool only its
    virtual `{n}CPU--{k}GB` names. The loopback refuses any other with the words of SkyPilot's
    own check, before a controller or a job exists, as `sky` does."""
    import sky as sky_lib
    from sky import clouds

    node, home, env, tmp_path = cluster
    with pytest.raises(ValueError) as real:
        sky_lib.Resources(
            cloud=clouds.SSH(), instance_type="loopback-1"
        )._try_validate_instance_type()
    path = task_file(tmp_path, "typed", resources=resources, run="echo ran")
    launch = sky(env, tmp_path, "jobs", "launch", str(path), "-y", "-d", *INFRA, *flags)
    assert launch.returncode == 1, launch.stdout
    assert launch.stderr.strip().splitlines()[-1] == f"ValueError: {real.value}"
    assert "Job submitted" not in launch.stdout
    status = sky(env, tmp_path, "status").stdout
    assert "sky-jobs-controller" not in status, status


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
    pinned = snakemake(repo, work, env, "instance_type=2CPU--8GB", **config)
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


def test_cells_the_refused_machine_measured_are_taken_out_of_the_bucket(tmp_path, monkeypatch):
    """Between its report and the cancel, a refused machine may have kept cells: a rerun would
    resume from them and managed_finish refuse them, so they leave the bucket (kept here)."""
    from loopback import storage

    from datarax_bench.cloud import managed
    from datarax_bench.cloud.buckets import parse_bucket
    from datarax_bench.workload.catalog import load_profile

    files = {f"TAB-1/small/{a}/plain": f"raw/TAB-1/small/{a}.json" for a in ADAPTERS[:3]}
    numpy, pytorch, grain = files
    reference = {"CPU model": "X", "usable cores": 2, "RAM GiB": 8, "GPU": None, "GPU count": 0,
                 "JAX backend": None, "JAX device kind": None}  # fmt: skip
    refused = managed.HardwareMismatch("refused", {
        "job_id": 3, "report": "r.json", "reference": "shard 1/1, job 3: first.json",
        "differs": ["usable cores: 2 vs 1"], "hardware": {**reference, "usable cores": 1},
        "reference_hardware": reference,
    })  # fmt: skip

    def result(cores: int) -> bytes:
        cpu = {"model": "X", "usable_cores": cores}
        return json.dumps({"provenance": {"cpu": cpu, "memory_bytes": 8 * 2**30}}).encode()

    with storage.moto_server(tmp_path) as endpoint:
        for key, value in storage.aws_env(endpoint).items():
            monkeypatch.setenv(key, value)
        s3 = storage.s3_client(endpoint)
        s3.create_bucket(Bucket="dxb")
        root = "bench/smoke/vast/cells"
        s3.put_object(Bucket="dxb", Key=f"{root}/{files[numpy]}", Body=result(2))
        s3.put_object(Bucket="dxb", Key=f"{root}/{files[pytorch]}", Body=result(1))
        shard = managed.Shard(
            profile=load_profile("smoke"), infra="vast", index=1, total=1, name="dxb-s1",
            cells=list(files), cell_files=files, bucket=parse_bucket("s3://dxb/bench"),
            settings=None, work_dir=tmp_path / "work", log=tmp_path / "shard.log",
        )  # fmt: skip
        store = managed.buckets.client(shard.bucket)
        record = managed.write_refusal(shard, 3, list(files), store, refused)
        left = [o["Key"] for o in s3.list_objects_v2(Bucket="dxb").get("Contents", [])]
    assert (record["cells_kept"], record["cells_set_aside"]) == ([numpy], [pytorch])
    assert record["cells_not_measured"] == [pytorch, grain]
    assert left == [f"{root}/{files[numpy]}"]
    kept_here = managed.refused_cells_dir(shard.work_dir) / files[pytorch]
    assert json.loads(kept_here.read_text())["provenance"]["cpu"]["usable_cores"] == 1
    said = "\n".join(managed.explain_refusals(shard.work_dir))
    assert "taken out of the bucket" in said and pytorch in said and "usable cores: 2 vs 1" in said
