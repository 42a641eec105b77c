"""MOUNT_CACHED bucket storage for the loopback cluster, on a real S3 API (moto's server) and a
real Google Cloud Storage API (gcp-storage-emulator's server).

On a real cluster SkyPilot mounts the bucket with rclone and a write-back cache: the mount shows
the bucket's objects, writes land in a local cache that rclone uploads in the background, and
the wait SkyPilot appends to every job's script (sky/backends/task_codegen.py
`get_rclone_flush_script`) ends the job only once rclone's log says nothing is left to upload.
Here, `prepare_mounts` makes each mount directory on the node and fills it with the bucket's
objects (a named bucket that does not exist is created on S3, as SkyPilot creates one on the
store it picks; a `source: gs://NAME` or `s3://NAME` bucket must exist, as SkyPilot refuses a
missing source bucket), and `wrap_job` runs the job's script (as SkyPilot builds it) beside
rclone's write-back uploader (`write-back`): every `LOOPBACK_RCLONE_WRITE_BACK_S` seconds
(rclone's default delay, 5) it uploads what is new or changed through boto3 or
google-cloud-storage and logs its state as rclone does, so SkyPilot's own wait waits for it, and
a machine that dies loses only what was written in its last window. Which mounts a task has is
read by SkyPilot's own loader (env vars filled in from `envs` and `--env`), a gs:// name checked
by SkyPilot's own GCS naming rules. The mounts are node directory -> bucket URI (`s3://NAME`).

    python storage.py write-back --endpoint URL --gcs-endpoint URL --interval S \
        [--log-dir DIR] '{"<node dir>": "s3://<bucket>"}'
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
GCS_ENDPOINT_ENV = "DATARAX_BENCH_TEST_GCS_ENDPOINT"
# moto accepts any credentials; these are not secrets.
_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def s3_client(endpoint: str | None = None):
    import boto3

    endpoint = endpoint or os.environ.get(ENDPOINT_ENV)
    if not endpoint:
        raise RuntimeError(f"the loopback's buckets need an S3 endpoint: set {ENDPOINT_ENV}")
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_CREDENTIALS)


def aws_env(endpoint: str) -> dict[str, str]:
    """What points boto3 in another process (or this one's own clients) at moto's server."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": _CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": _CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def gcs_client(endpoint: str | None = None):
    """google-cloud-storage on the emulator, anonymously (the emulator checks no credentials)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    endpoint = endpoint or os.environ.get(GCS_ENDPOINT_ENV)
    if not endpoint:
        raise RuntimeError(f"the loopback's gs:// buckets need an endpoint: set {GCS_ENDPOINT_ENV}")
    return storage.Client(
        project="loopback",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


class _S3Bucket:
    def __init__(self, name: str, endpoint: str | None):
        self.name, self._s3 = name, s3_client(endpoint)

    def exists(self) -> bool:
        return self.name in {b["Name"] for b in self._s3.list_buckets().get("Buckets", [])}

    def create(self) -> None:
        self._s3.create_bucket(Bucket=self.name)

    def keys(self) -> list[str]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def download(self, key: str, path: Path) -> None:
        self._s3.download_file(self.name, key, str(path))

    def upload(self, path: Path, key: str) -> None:
        self._s3.upload_file(str(path), self.name, key)


class _GCSBucket:
    def __init__(self, name: str, endpoint: str | None):
        self.name, self._gcs = name, gcs_client(endpoint)

    def exists(self) -> bool:
        return self._gcs.bucket(self.name).exists()

    def create(self) -> None:
        self._gcs.create_bucket(self.name)

    def keys(self) -> list[str]:
        return [blob.name for blob in self._gcs.list_blobs(self.name)]

    def download(self, key: str, path: Path) -> None:
        self._gcs.bucket(self.name).blob(key).download_to_filename(str(path))

    def upload(self, path: Path, key: str) -> None:
        self._gcs.bucket(self.name).blob(key).upload_from_filename(str(path))


def bucket(uri: str, endpoints: dict[str, str | None] | None = None):
    """The bucket named by `s3://NAME` or `gs://NAME` on the loopback's S3 or GCS server."""
    scheme, _, name = uri.partition("://")
    endpoint = (endpoints or {}).get(scheme)
    if scheme == "gs":
        return _GCSBucket(name, endpoint)
    if scheme == "s3":
        return _S3Bucket(name, endpoint)
    raise NotImplementedError(f"the loopback has no store for {uri}")


def storage_mounts(
    task_config: dict, envs: dict[str, str], endpoints: dict[str, str | None] | None = None
) -> dict[str, str]:
    """Mount path -> bucket URI of the task's storage, as SkyPilot's loader reads them; a
    source bucket is checked as SkyPilot checks it before a launch (name, existence)."""
    import sky
    from sky.data.storage import GcsStore, StorageMode

    task = sky.Task.from_yaml_config(copy.deepcopy(task_config), env_overrides=list(envs.items()))
    mounts = {}
    for path, store in (task.storage_mounts or {}).items():
        if store.mode != StorageMode.MOUNT_CACHED:
            raise NotImplementedError(f"the loopback emulates MOUNT_CACHED only, not {store.mode}")
        source = store.source if isinstance(store.source, str) else None
        if source is None:
            if not store.name:
                raise ValueError("Storage source or storage name must be specified.")  # SkyPilot's
            mounts[path] = f"s3://{store.name}"  # a bare name: created on S3 here
            continue
        scheme, _, rest = source.partition("://")
        name, _, sub_path = rest.partition("/")
        if scheme not in ("s3", "gs"):
            raise NotImplementedError(f"the loopback mounts s3:// and gs:// sources, not {source}")
        if sub_path.strip("/"):
            raise NotImplementedError(f"the loopback mounts whole buckets, not {source}")
        if scheme == "gs":
            GcsStore.validate_name(name)  # SkyPilot's StorageNameError
        if not bucket(f"{scheme}://{name}", endpoints).exists():
            raise ValueError(  # SkyPilot's StorageBucketGetError
                f"Attempted to use a non-existent bucket as a source: {source}."
            )
        mounts[path] = f"{scheme}://{name}"
    return mounts


def node_path(mount: str, home: Path) -> Path:
    if not mount.startswith("~/"):
        raise NotImplementedError(f"the loopback node maps only ~/ mount paths, not {mount}")
    return Path(home) / mount[2:]


def _endpoints(endpoint: str | None, gcs_endpoint: str | None) -> dict[str, str | None]:
    return {"s3": endpoint, "gs": gcs_endpoint}


def prepare_mounts(
    task_config: dict,
    envs: dict[str, str],
    home: Path,
    endpoint: str | None = None,
    gcs_endpoint: str | None = None,
) -> dict[str, str]:
    """Make the task's bucket mounts on the node; returns node directory -> bucket URI."""
    endpoints = _endpoints(endpoint, gcs_endpoint)
    prepared = {}
    for mount, uri in storage_mounts(task_config, envs, endpoints).items():
        store = bucket(uri, endpoints)
        if not store.exists():
            store.create()
        directory = node_path(mount, home)
        directory.mkdir(parents=True, exist_ok=True)
        for key in store.keys():
            target = directory / key
            target.parent.mkdir(parents=True, exist_ok=True)
            store.download(key, target)
        prepared[str(directory)] = uri
    return prepared


def _files(mounts: dict[str, str]) -> dict[tuple[str, str], tuple[str, int, int]]:
    """(bucket URI, key) -> (path, mtime_ns, size) of every file under the mount directories."""
    found = {}
    for directory, uri in mounts.items():
        root = Path(directory)
        for path in (p for p in root.rglob("*") if p.is_file()):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            key = path.relative_to(root).as_posix()
            found[(uri, key)] = (str(path), stat.st_mtime_ns, stat.st_size)
    return found


def _status_line(objects: int, pending: int) -> str:
    """A status line as rclone's VFS cache logs it; SkyPilot's wait reads the last one."""
    stamp = time.strftime("%Y/%m/%d %H:%M:%S")
    return (
        f"{stamp} INFO  : vfs cache: cleaned: objects {objects} (was {objects}) in use 0, "
        f"to upload {pending}, uploading 0, total size 0 (was 0)\n"
    )


def write_back(
    mounts: dict[str, str],
    interval_s: float,
    endpoint: str | None = None,
    gcs_endpoint: str | None = None,
    log_dir: Path | None = None,
) -> None:
    """Upload new and changed files every interval_s seconds until killed (what is already
    there when it starts came from the bucket). With `log_dir`, log each mount's state after
    every round as rclone does, one log per mount, which SkyPilot's wait after a job reads."""
    stores = {uri: bucket(uri, _endpoints(endpoint, gcs_endpoint)) for uri in mounts.values()}
    uploaded = _files(mounts)

    def log_status() -> None:
        if log_dir is None:
            return
        current = _files(mounts)
        for uri in mounts.values():
            mine = [k for k in current if k[0] == uri]
            pending = sum(uploaded.get(k, (None,))[1:] != tuple(current[k][1:]) for k in mine)
            name = uri.split("://", 1)[1].replace("/", "_")
            with open(Path(log_dir) / f"{name}.log", "a") as log:
                log.write(_status_line(len(mine), pending))

    log_status()
    while True:
        time.sleep(interval_s)
        for (uri, key), (path, *version) in sorted(_files(mounts).items()):
            if uploaded.get((uri, key), (None,))[1:] != tuple(version):
                stores[uri].upload(Path(path), key)
                uploaded[(uri, key)] = (path, *version)
        log_status()


def _storage_command(
    command: str, mounts: dict[str, str], endpoint: str | None, gcs_endpoint: str | None, *extra
) -> str:
    endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or ""
    gcs_endpoint = gcs_endpoint or os.environ.get(GCS_ENDPOINT_ENV) or ""
    argv = [sys.executable, str(Path(__file__).resolve()), command, "--endpoint", endpoint]
    argv += ["--gcs-endpoint", gcs_endpoint]
    return shlex.join([*argv, *extra, json.dumps(mounts)])


#: `findmnt` for a loopback job: its bucket mounts, listed as rclone's FUSE mounts are.
FINDMNT = """#!/bin/bash
[ -f "$HOME/.sky/loopback-rclone-mounts" ] && sed 's/$/ fuse.rclone rw,nosuid,nodev/' \\
  "$HOME/.sky/loopback-rclone-mounts"
exit 0
"""


def wrap_job(
    script: str,
    mounts: dict[str, str],
    endpoint: str | None = None,
    write_back_s: float | None = None,
    gcs_endpoint: str | None = None,
) -> str:
    """A job whose `script` (as SkyPilot builds it: tests/loopback/skypilot_job.py) ends as on a
    machine with rclone mounts: rclone's write-back uploader runs meanwhile in the job's process
    group and logs to ~/.sky/rclone_log/ (as rclone does for MOUNT_CACHED), `findmnt` lists the
    mounts as rclone's, so SkyPilot's own wait after the run text waits for the upload; the
    uploader goes with the job, so what a script leaves unuploaded (an `exit` that skips the
    wait) is lost, as on a machine deleted with the job."""
    if not mounts:
        return script
    if write_back_s is None:
        write_back_s = 5.0  # rclone's default --vfs-write-back
    log_dir = "$HOME/.sky/rclone_log"
    uploader = _storage_command(
        "write-back", mounts, endpoint, gcs_endpoint, "--interval", str(write_back_s)
    )
    listing = "\n".join(f"{directory} {uri}" for directory, uri in mounts.items())
    return (
        f'mkdir -p "{log_dir}" "$HOME/.sky/loopback-bin"\n'
        f"cat > \"$HOME/.sky/loopback-bin/findmnt\" <<'LOOPBACK_FINDMNT_EOF'\n{FINDMNT}"
        "LOOPBACK_FINDMNT_EOF\n"
        'chmod +x "$HOME/.sky/loopback-bin/findmnt"\n'
        f"printf '%s\\n' {shlex.quote(listing)} > \"$HOME/.sky/loopback-rclone-mounts\"\n"
        f'{uploader} --log-dir "{log_dir}" &\n__loopback_uploader=$!\n'
        # rclone logs from the moment the bucket is mounted, before the job starts.
        f'for _ in $(seq 600); do [ -n "$(ls -A "{log_dir}")" ] && break; sleep 0.1; done\n'
        f'PATH="$HOME/.sky/loopback-bin:$PATH" bash -c {shlex.quote(script)}\n'
        "__loopback_rc=$?\n"
        "kill $__loopback_uploader 2>/dev/null; wait $__loopback_uploader 2>/dev/null\n"
        "exit $__loopback_rc"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(log_dir: Path):
    """moto's S3 server on 127.0.0.1 (own process group), stopped by its pid afterwards."""
    port = _free_port()
    with _server(["moto_server", "-H", "127.0.0.1", "-p", str(port)], port, "moto-api/",
                 Path(log_dir) / "moto.log") as url:  # fmt: skip
        yield url


@contextlib.contextmanager
def gcs_emulator(log_dir: Path):
    """gcp-storage-emulator's GCS server on 127.0.0.1, in memory (own process group), stopped
    by its pid afterwards. Its URL is what STORAGE_EMULATOR_HOST takes."""
    port = _free_port()
    argv = ["gcp-storage-emulator", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _server([*argv, "--in-memory", "--quiet"], port, "", Path(log_dir) / "gcs.log") as url:
        yield url


@contextlib.contextmanager
def _server(argv: list[str], port: int, health: str, log_path: Path):
    exe = shutil.which(argv[0]) or str(Path(sys.executable).parent / argv[0])
    log = open(log_path, "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [exe, *argv[1:]], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/{health}", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[0]} did not start; see {log.name}") from None
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
    p = sub.add_parser("write-back")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--gcs-endpoint", default="")
    p.add_argument("--interval", type=float, required=True)
    p.add_argument("--log-dir", type=Path)
    p.add_argument("mounts")
    args = parser.parse_args(argv)
    endpoints = (args.endpoint or None, args.gcs_endpoint or None)
    write_back(json.loads(args.mounts), args.interval, *endpoints, log_dir=args.log_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
