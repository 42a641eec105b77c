"""MOUNT_CACHED bucket storage for the loopback cluster, on a real S3 API (moto's server).

On a real cluster SkyPilot mounts the bucket with rclone and a write-back cache: the mount shows
the bucket's objects, writes land in a local cache that rclone uploads, and a job ends only once
the upload is done (the flush script SkyPilot appends to every job's command,
sky/backends/task_codegen.py `get_rclone_flush_script`). Here, `prepare_mounts` makes each mount
directory on the node and fills it with the bucket's objects (a named bucket that does not exist
is created, as SkyPilot does), and `flush_command` is the shell step that ends a job: it uploads
what is under the mounts through boto3, then the job exits with its own status. Which mounts a
task has is read by SkyPilot's own loader (env vars filled in from `envs` and `--env`).
A managed job also gets rclone's write-back uploader (`write-back`): every
`LOOPBACK_RCLONE_WRITE_BACK_S` seconds (rclone's default delay, 5) it uploads what is new or
changed, so a machine that dies loses only what was written in its last window.

    python storage.py flush --endpoint URL '{"<node dir>": "<bucket>"}'
    python storage.py write-back --endpoint URL --interval S '{"<node dir>": "<bucket>"}'
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ENDPOINT_ENV = "DATARAX_BENCH_TEST_S3_ENDPOINT"
# moto accepts any credentials; these are not secrets.
_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def s3_client(endpoint: str | None = None):
    import boto3

    endpoint = endpoint or os.environ.get(ENDPOINT_ENV)
    if not endpoint:
        raise RuntimeError(f"the loopback's buckets need an S3 endpoint: set {ENDPOINT_ENV}")
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_CREDENTIALS)


def storage_mounts(task_config: dict, envs: dict[str, str]) -> dict[str, str]:
    """Mount path -> bucket name of the task's storage, as SkyPilot's loader reads them."""
    import sky
    from sky.data.storage import StorageMode

    task = sky.Task.from_yaml_config(copy.deepcopy(task_config), env_overrides=list(envs.items()))
    mounts = {}
    for path, store in (task.storage_mounts or {}).items():
        if store.mode != StorageMode.MOUNT_CACHED:
            raise NotImplementedError(f"the loopback emulates MOUNT_CACHED only, not {store.mode}")
        if not store.name:
            raise ValueError("Storage source or storage name must be specified.")  # SkyPilot's
        mounts[path] = store.name
    return mounts


def node_path(mount: str, home: Path) -> Path:
    if not mount.startswith("~/"):
        raise NotImplementedError(f"the loopback node maps only ~/ mount paths, not {mount}")
    return Path(home) / mount[2:]


def prepare_mounts(
    task_config: dict, envs: dict[str, str], home: Path, endpoint: str | None = None
) -> dict[str, str]:
    """Make the task's bucket mounts on the node; returns node directory -> bucket."""
    client = s3_client(endpoint)
    prepared = {}
    for mount, bucket in storage_mounts(task_config, envs).items():
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
        directory = node_path(mount, home)
        directory.mkdir(parents=True, exist_ok=True)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                target = directory / obj["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(target))
        prepared[str(directory)] = bucket
    return prepared


def flush(mounts: dict[str, str], endpoint: str | None = None) -> int:
    """Upload every file under each mount directory to its bucket; the number uploaded."""
    client = s3_client(endpoint)
    count = 0
    for directory, bucket in mounts.items():
        root = Path(directory)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            client.upload_file(str(path), bucket, path.relative_to(root).as_posix())
            count += 1
    return count


def _files(mounts: dict[str, str]) -> dict[tuple[str, str], tuple[str, int, int]]:
    """(bucket, key) -> (path, mtime_ns, size) of every file under the mount directories."""
    found = {}
    for directory, bucket in mounts.items():
        root = Path(directory)
        for path in (p for p in root.rglob("*") if p.is_file()):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            key = path.relative_to(root).as_posix()
            found[(bucket, key)] = (str(path), stat.st_mtime_ns, stat.st_size)
    return found


def write_back(mounts: dict[str, str], interval_s: float, endpoint: str | None = None) -> None:
    """Upload new and changed files every interval_s seconds until killed (what is already
    there when it starts came from the bucket)."""
    client = s3_client(endpoint)
    uploaded = _files(mounts)
    while True:
        time.sleep(interval_s)
        for (bucket, key), (path, *version) in sorted(_files(mounts).items()):
            if uploaded.get((bucket, key), (None,))[1:] != tuple(version):
                client.upload_file(path, bucket, key)
                uploaded[(bucket, key)] = (path, *version)


def _storage_command(command: str, mounts: dict[str, str], endpoint: str | None, *extra) -> str:
    endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or ""
    argv = [sys.executable, str(Path(__file__).resolve()), command, "--endpoint", endpoint]
    return shlex.join([*argv, *extra, json.dumps(mounts)])


def flush_command(mounts: dict[str, str], endpoint: str | None = None) -> str:
    """The shell step that ends a job with mounts (run after the job's own commands)."""
    return _storage_command("flush", mounts, endpoint)


def wrap_job(
    body: str,
    mounts: dict[str, str],
    endpoint: str | None = None,
    write_back_s: float | None = None,
) -> str:
    """A job body that, like SkyPilot's, ends only after the mounts are uploaded and then exits
    with the user commands' status (an `exit` in them does not skip the upload). With
    write_back_s, an uploader runs in the job's process group meanwhile (it dies with it)."""
    if not mounts:
        return body
    start, stop = "", ""
    if write_back_s is not None:
        uploader = _storage_command("write-back", mounts, endpoint, "--interval", str(write_back_s))
        start = f"{uploader} &\n__loopback_uploader=$!\n"
        stop = "kill $__loopback_uploader 2>/dev/null; wait $__loopback_uploader 2>/dev/null\n"
    return (
        f"{start}(\n{body}\n)\n__loopback_rc=$?\n{stop}"
        f"{flush_command(mounts, endpoint)} || echo 'loopback: bucket upload failed' >&2\n"
        "exit $__loopback_rc"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(log_dir: Path):
    """moto's S3 server on 127.0.0.1 (own process group), stopped by its pid afterwards."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = _free_port()
    log = open(Path(log_dir) / "moto.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start; see {log.name}") from None
                time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="storage.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("flush")
    p.add_argument("--endpoint", required=True)
    p.add_argument("mounts")
    p = sub.add_parser("write-back")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--interval", type=float, required=True)
    p.add_argument("mounts")
    args = parser.parse_args(argv)
    if args.command == "write-back":
        write_back(json.loads(args.mounts), args.interval, args.endpoint)
        return 0
    count = flush(json.loads(args.mounts), args.endpoint)
    print(f"loopback: {count} files uploaded to the bucket(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
