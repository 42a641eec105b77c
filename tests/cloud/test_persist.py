"""A standalone task's results outlive the machine, or its job fails saying where they are:
`datarax-bench persist` (the run step's last command) with the real wandb library (offline
fallback, unreachable server) and a real S3 API (moto's server) behind the loopback's
MOUNT_CACHED emulation. The run step itself is taken from the task files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from loopback import skypilot_job, storage
from support import BIN, ROOT, run_cli

# The export tests' fixtures (results_dir, wandb_env) read the shared smoke run's SMOKE_RUN cells.
from support.wandb_offline import (
    SENTINEL_KEY,
    SMOKE_RUN,  # noqa: F401
    _closed_port,
    assert_key_nowhere,
    offline_run_dir,
)

from datarax_bench.cloud import standalone


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_nothing_kept_fails_and_says_where_the_only_copy_is(results_dir, wandb_env):
    before = tree(results_dir)
    proc = run_cli("persist", "--results-dir", str(results_dir))
    assert proc.returncode == standalone.NOT_KEPT == 3
    assert f"ONLY on this machine, in {results_dir}" in proc.stderr
    assert "--down" in proc.stderr and "rsync -a" in proc.stderr
    assert tree(results_dir) == before


def test_bucket_copy_is_complete_and_verifiable(results_dir, wandb_env, tmp_path):
    bucket = tmp_path / "mount"
    bucket.mkdir()
    proc = run_cli("persist", "--results-dir", str(results_dir), "--bucket-dir", str(bucket))
    assert proc.returncode == 0, proc.stderr
    (dest,) = (bucket / results_dir.name).iterdir()
    record = json.loads((dest / standalone.RECORD).read_text())
    copied = tree(dest)
    copied.pop(standalone.RECORD)
    assert copied == tree(results_dir) and set(record["files"]) == set(copied)
    assert "results kept in bucket" in proc.stderr


def test_a_requested_bucket_that_is_not_mounted_fails(results_dir, wandb_env, tmp_path):
    proc = run_cli(
        "persist", "--results-dir", str(results_dir), "--bucket-dir", str(tmp_path / "absent")
    )
    assert proc.returncode == 3
    assert "does not exist" in proc.stderr and "task-file --results-bucket" in proc.stderr


@pytest.mark.slow
def test_unreachable_wandb_alone_keeps_nothing(results_dir, wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SENTINEL_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    proc = run_cli("persist", "--results-dir", str(results_dir))
    assert proc.returncode == 3, proc.stderr
    assert "W&B upload failed; an offline run is in" in proc.stderr
    assert_key_nowhere(SENTINEL_KEY, [results_dir, *wandb_env.values()], proc)


@pytest.mark.slow
def test_unreachable_wandb_with_bucket_keeps_the_offline_run_there(
    results_dir, wandb_env, monkeypatch, tmp_path
):
    monkeypatch.setenv("WANDB_API_KEY", SENTINEL_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    bucket = tmp_path / "mount"
    bucket.mkdir()
    proc = run_cli("persist", "--results-dir", str(results_dir), "--bucket-dir", str(bucket))
    assert proc.returncode == 0, proc.stderr
    (dest,) = (bucket / results_dir.name).iterdir()
    run = offline_run_dir(results_dir).relative_to(results_dir)
    assert (dest / run).is_dir() and any((dest / run).rglob("*.wandb"))
    assert_key_nowhere(SENTINEL_KEY, [bucket, results_dir, *wandb_env.values()], proc)


def _run_step_without_measuring(path: Path) -> str:
    """The task file's run step minus `doctor` and `run` (the results are made beforehand)."""
    run = yaml.safe_load(path.read_text())["run"].replace("\\\n", " ")  # join continued lines
    kept = [
        line
        for line in run.splitlines()
        if not line.strip().startswith(("datarax-bench doctor", "datarax-bench run"))
    ]
    assert len(kept) == len(run.splitlines()) - 2, run
    return "\n".join(kept)


@pytest.mark.parametrize("with_bucket", [True, False], ids=["bucket", "no-bucket"])
def test_run_step_puts_results_in_the_s3_bucket(
    results_template, wandb_env, tmp_path, with_bucket, monkeypatch
):
    """The gpu task's run step on a node HOME, in the job script SkyPilot makes of it: with the
    bucket variant and `--env DATARAX_BENCH_BUCKET`, the job's files reach the S3 bucket before
    SkyPilot's wait lets the job end; without, the job fails."""
    monkeypatch.setenv("HOME", str(tmp_path))  # importing sky writes ~/.sky
    path = ROOT / "benchmarks" / "sky" / "gpu-benchmark.yaml"
    home = tmp_path / "node-home"
    out = home / "datarax-bench-results" / "gpu_a100"
    out.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(results_template), str(out)], check=True)
    (home / ".datarax-bench-env").write_text(f'export PATH="{BIN}:$PATH"\n')
    variant = standalone.write_bucket_task(path, tmp_path / "gpu-bucket.yaml", "s3")
    config = (
        yaml.safe_load(variant.read_text()) if with_bucket else yaml.safe_load(path.read_text())
    )
    envs = {k: "" if v is None else str(v) for k, v in config["envs"].items()}
    if with_bucket:
        envs["DATARAX_BENCH_BUCKET"] = "dxb-results"
    with storage.moto_server(tmp_path) as endpoint:
        if with_bucket:  # an existing bucket, mounted by its URI
            storage.s3_client(endpoint).create_bucket(Bucket="dxb-results")
        mounts = storage.prepare_mounts(config, envs, home, endpoint)
        assert bool(mounts) == with_bucket
        script = skypilot_job.task_script(_run_step_without_measuring(path))
        body = storage.wrap_job(script, mounts, endpoint)
        env = {**wandb_env_vars(wandb_env), **envs, "HOME": str(home), "PATH": "/usr/bin:/bin"}
        # The code under test, where it is not the installed package's (a worktree).
        env.update({k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ})
        proc = subprocess.run(["bash", "-c", body], env=env, capture_output=True, text=True)
        client = storage.s3_client(endpoint)
        buckets = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
        objects = []
        if with_bucket:
            listing = client.list_objects_v2(Bucket="dxb-results")
            objects = [o["Key"] for o in listing.get("Contents", [])]
    if not with_bucket:  # refused by the pre-flight, before anything would be measured
        assert proc.returncode == 3 and buckets == [], proc.stderr
        assert "persist --check: nothing would keep the results" in proc.stderr
        assert "results kept" not in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    assert "skypilot: cached mount upload complete" in proc.stdout, proc.stdout + proc.stderr
    prefix = {key.split("/")[:2][1] for key in objects}
    assert len(prefix) == 1 and all(k.startswith("gpu_a100/") for k in objects)
    stamp = prefix.pop()
    expected = {f"gpu_a100/{stamp}/{rel}" for rel in tree(results_template)}
    assert expected | {f"gpu_a100/{stamp}/{standalone.RECORD}"} == set(objects)


def wandb_env_vars(dirs: dict[str, Path]) -> dict[str, str]:
    return {name: str(path) for name, path in dirs.items() if name != "HOME"}
