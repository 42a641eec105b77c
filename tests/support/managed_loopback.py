"""The managed-jobs loopback's workflow runs: a fixture with the loopback cluster, a results
bucket on a real S3 API and a checkout copy, and the helpers its tests share."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from loopback import node as loopback
from loopback import storage

from support import BIN
from support.loopback_cluster import (
    INFRA,
    SENTINEL,
    checkout_copy,
)

BUCKET = "dxb-results"
PREFIX = "bench"
SCENARIOS = ["TAB-1", "NLP-1"]
ADAPTERS = ["numpy", "pytorch"]
#: A recovery rents the same machine type, hence (on the loopback) the same hardware. A type the
#: infra has (SkyPilot refuses others): an SSH node pool's virtual one, a seeded Vast catalog's.
PINNED = "instance_type=2CPU--8GB"
PINNED_VAST = "instance_type=1x-A100-80GB-16-64"


@pytest.fixture
def managed_env(tmp_path):
    """A loopback node, moto's S3 server with the bucket, a private HOME and a checkout."""
    node = loopback.make_node(tmp_path / "node")
    home = tmp_path / "home"
    home.mkdir()
    try:
        with storage.moto_server(tmp_path) as endpoint:
            env = loopback.loopback_env(home, node)
            env.update(
                WANDB_API_KEY=SENTINEL,
                WANDB_MODE="offline",
                LOOPBACK_RCLONE_WRITE_BACK_S="1",
                # The loopback machines reach the bucket through this; boto3 here through AWS_*.
                **{storage.ENDPOINT_ENV: endpoint},
                **storage.aws_env(endpoint),
            )
            storage.s3_client(endpoint).create_bucket(Bucket=BUCKET)
            repo = checkout_copy(tmp_path / "repo")
            work = tmp_path / "work"
            (work / "config").mkdir(parents=True)
            (work / "config" / "config.yaml").write_text(
                (repo / "config" / "config.yaml").read_text()
            )
            yield node, home, env, work, repo, storage.s3_client(endpoint)
    finally:
        loopback.stop_managed_jobs(home)
        loopback.stop_skylets(home)
        node.stop()


def snakemake_argv(
    repo: Path, work: Path, *extra: str, targets=(), adapters=ADAPTERS, scenarios=SCENARIOS,
    shards=2, bucket=f"s3://{BUCKET}/{PREFIX}", infra=INFRA,
) -> list[str]:  # fmt: skip
    config = [
        "profile=smoke", f"infra={infra}", f"scenarios=[{','.join(scenarios)}]",
        f"adapters=[{','.join(adapters)}]", "cloud_mode=managed", f"shards={shards}",
        f"results_bucket={bucket}", "managed_poll_seconds=1",
    ]  # fmt: skip
    argv = [str(BIN / "snakemake"), "--snakefile", str(repo / "Snakefile"), "--cores", "2"]
    return argv + [*targets, "--directory", str(work), "--config", *config, *extra]


def snakemake(repo, work, env, *extra, targets=(), timeout=900, **config):
    return subprocess.run(
        snakemake_argv(repo, work, *extra, targets=targets, **config), env=env,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def queue(env) -> str:
    return subprocess.run(
        ["sky", "jobs", "queue"], env=env, capture_output=True, text=True, check=True
    ).stdout


def bucket_keys(s3) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def loopback_processes(home: Path, node, grace_s: float = 10.0) -> list[str]:
    """Controllers and job attempts of this test's loopback still running after `grace_s`,
    found in /proc (the controller's teardown took the jobs' records with it)."""
    marks = ("__managed_controller__", ".sky-loopback/job/job.sh")
    deadline = time.monotonic() + grace_s
    while True:
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or process_state(int(proc.name)) in (None, "Z"):
                continue
            try:
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            mine = f"HOME={home}".encode() in environ or str(node.home).encode() in environ
            if mine and any(m in cmdline(int(proc.name)) for m in marks):
                found.append(f"{proc.name} {cmdline(int(proc.name))}")
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)


def process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except FileNotFoundError:
        return "(gone)"
