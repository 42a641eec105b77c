"""A standalone task file launched as the header says, on the loopback cluster (real ssh and
rsync, setup and run inside one job) with its results bucket on a real S3 API (moto's server,
MOUNT_CACHED emulated by tests/loopback/storage.py): with the bucket the results are in the
bucket when `sky launch ... --down` returns; with neither key nor bucket the job fails before
measuring anything, saying that nothing would keep the results."""

from __future__ import annotations

import subprocess

import pytest
from loopback import node as loopback
from loopback import storage
from support import BIN, ROOT

CPU_TASK = "benchmarks/sky/cpu-benchmark.yaml"
# The loopback is an SSH node pool: on-demand only. One scenario keeps the job short.
COMMON = ["-y", "--down", "--infra", "ssh/loopback", "--no-use-spot"]
COMMON += ["--env", "DATARAX_BENCH_PROFILE=smoke", "--env", "DATARAX_BENCH_SCENARIOS=TAB-1"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(loopback.missing_tools()),
        reason=f"loopback cluster needs {', '.join(loopback.missing_tools())}",
    ),
]


def sky(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sky", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900
    )


def test_bucket_keeps_the_results_and_nothing_kept_fails_the_job(tmp_path):
    node = loopback.make_node(tmp_path / "node")
    home = tmp_path / "home"
    home.mkdir()
    env = loopback.loopback_env(home, node)
    env.pop("WANDB_API_KEY", None)
    try:
        with storage.moto_server(tmp_path) as endpoint:
            env[storage.ENDPOINT_ENV] = endpoint
            variant = tmp_path / "cpu-bucket.yaml"
            storage.s3_client(endpoint).create_bucket(Bucket="dxb-results")  # yours, existing
            subprocess.run(
                [str(BIN / "datarax-bench"), "task-file", CPU_TASK, "--results-bucket", "s3"]
                + ["-o", str(variant)],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            kept = sky(env, "launch", "-c", "dxb-bucket", str(variant), *COMMON, "--env",
                       "DATARAX_BENCH_BUCKET=dxb-results")  # fmt: skip
            # The machine goes (its home is wiped); the bucket keeps what the job wrote.
            sky(env, "down", "-y", "dxb-bucket")
            assert not (node.home / "datarax-bench-results").exists()
            client = storage.s3_client(endpoint)
            listing = client.list_objects_v2(Bucket="dxb-results").get("Contents", [])
            keys = sorted(o["Key"] for o in listing)
            lost = sky(env, "launch", "-c", "dxb-plain", CPU_TASK, *COMMON)
    finally:
        for cluster in ("dxb-bucket", "dxb-plain"):
            sky(env, "down", "-y", cluster)
        loopback.stop_skylets(home)
        node.stop()
    assert kept.returncode == 0, kept.stdout[-3000:] + kept.stderr[-3000:]
    assert all(k.startswith("smoke/") for k in keys), keys
    # Each cell went to the bucket as soon as it was measured, under the job's SKYPILOT_TASK_ID
    # (what a restarted managed job resumes from) ...
    cells = [k.split("/", 3) for k in keys if k.startswith("smoke/cells/")]
    (task_id,) = {c[2] for c in cells}
    assert task_id.startswith("sky-") and task_id.endswith("_dxb-bucket_1"), task_id
    # ... and the whole results directory at the end, under one time stamp.
    stamps = {k.split("/")[1] for k in keys if not k.startswith("smoke/cells/")}
    assert len(stamps) == 1, keys
    stamp = stamps.pop()
    results = [c[3] for c in cells if c[3].startswith("raw/")]
    assert sorted(results) == sorted(
        k.split("/", 2)[2] for k in keys if k.startswith(f"smoke/{stamp}/raw/")
    )
    # Beside each result, one marker per measurement started (none was interrupted here).
    started = [c[3] for c in cells if c[3].startswith("attempts/")]
    assert sorted(a.split("/", 1)[1].rsplit("/", 1)[0] for a in started) == sorted(results)
    assert f"smoke/{stamp}/PERSISTED.json" in keys and f"smoke/{stamp}/manifest.json" in keys
    assert any(k.startswith(f"smoke/{stamp}/raw/TAB-1/") for k in keys), keys
    assert not any("/raw/CV-1/" in k for k in keys)  # only the scenario asked for
    assert lost.returncode != 0, lost.stdout[-3000:] + lost.stderr[-3000:]
    # Refused before anything was measured (`persist --check`, exit 3).
    assert "nothing would keep the results" in lost.stdout + lost.stderr
