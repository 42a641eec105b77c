"""The results bucket of a managed cloud run: `s3://` through the S3 API (boto3), `gs://` through
Google Cloud Storage's client. This machine only reads it. A job writes to it through SkyPilot's
storage mount, or, on clouds that cannot mount one (Vast, RunPod), through `MirroredDirectory`
here (`datarax-bench run --resume-bucket`, `datarax-bench upload`).

boto3 takes the credentials from its usual chain (environment, ~/.aws) and the endpoint from
`AWS_ENDPOINT_URL` when it is set, so S3-compatible stores (R2, MinIO, a test's moto server)
work the same way. google-cloud-storage takes Application Default Credentials (`gcloud auth
application-default login`, `GOOGLE_APPLICATION_CREDENTIALS`, a VM's service account) and,
when `STORAGE_EMULATOR_HOST` is set, talks anonymously to that emulator instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from datarax_bench.errors import UserError

# S3's bucket naming rules: 3-63 characters, lower case, digits, dots and hyphens.
_S3_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/.*)?$")
# Google Cloud Storage's: 3-63 characters, lower case, digits, dashes, underscores and dots,
# starting and ending with a letter or digit; no "goog" prefix, no "google" anywhere.
_GS_URI = re.compile(r"^gs://([a-z0-9][a-z0-9._-]{1,61}[a-z0-9])(/.*)?$")
_GS_RESERVED = re.compile(r"^goog|g[o0][o0]gle")
EXPECTED = (
    "s3://BUCKET[/PREFIX] (an S3 bucket name: 3-63 lower-case letters, digits, dots or "
    "hyphens) or gs://BUCKET[/PREFIX] (a Google Cloud Storage bucket name: 3-63 lower-case "
    "letters, digits, dashes, underscores or dots, no goog at the start, no google inside)"
)
#: The URI schemes of the stores a results bucket may be on.
SCHEMES = ("s3", "gs")
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
#: Clouds on which SkyPilot cannot mount a bucket (`CloudImplementationFeatures.STORAGE_MOUNTING`:
#: its mounts need FUSE on the VM): there a job uploads each file itself.
NO_BUCKET_MOUNTS = {"vast": "Vast", "runpod": "RunPod"}


def unmounting_cloud(infra: str) -> str | None:
    """The name of `infra`'s cloud where SkyPilot cannot mount buckets there, else None."""
    return NO_BUCKET_MOUNTS.get(infra.split("/")[0])


def unmountable_problem(bucket_uri: str, infra: str) -> str | None:
    """Why a managed run on `infra` cannot keep its cells in `bucket_uri`, or None: where
    nothing is mounted the job uploads with the S3 API, so only s3:// works there."""
    cloud = unmounting_cloud(infra)
    if cloud is None or bucket_uri.startswith("s3://"):
        return None
    return (
        f"got {bucket_uri!r} with infra {infra!r}; expected an s3:// bucket there: SkyPilot "
        f"cannot mount buckets on {cloud}, so the job uploads each cell with the S3 API"
    )


@dataclass(frozen=True)
class BucketURI:
    """`s3://NAME[/PREFIX]` or `gs://NAME[/PREFIX]`: the bucket and the key prefix under which a
    run keeps its files."""

    name: str
    prefix: str = ""
    scheme: str = "s3"

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.name}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))


def parse_bucket(uri: str, what: str = "results_bucket") -> BucketURI:
    for scheme, pattern in (("s3", _S3_URI), ("gs", _GS_URI)):
        match = pattern.match(uri or "")
        if match and not (scheme == "gs" and _GS_RESERVED.search(match.group(1))):
            return BucketURI(match.group(1), (match.group(2) or "").strip("/"), scheme)
    raise UserError(f"{what}: got {uri!r}, expected {EXPECTED}")


class Store(Protocol):
    """What is done with a bucket: list keys under a prefix, copy one object down or up."""

    def list_keys(self, bucket: str, prefix: str) -> Iterator[str]: ...

    def download(self, bucket: str, key: str, dest: Path) -> bool: ...

    def upload(self, src: Path, bucket: str, key: str) -> None: ...

    def delete(self, bucket: str, key: str) -> None: ...


class S3Store:
    def __init__(self):
        import boto3

        self._s3 = boto3.client("s3")

    def list_keys(self, bucket: str, prefix: str) -> Iterator[str]:
        for page in self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def download(self, bucket: str, key: str, dest: Path) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.download_file(bucket, key, str(dest))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return False
            raise
        return True

    def upload(self, src: Path, bucket: str, key: str) -> None:
        self._s3.upload_file(str(src), bucket, key)

    def delete(self, bucket: str, key: str) -> None:
        self._s3.delete_object(Bucket=bucket, Key=key)


class GCSStore:
    def __init__(self):
        from google.auth.credentials import AnonymousCredentials
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage

        # project=None: reading a bucket needs no project, and ADC may not name one.
        if os.environ.get(EMULATOR_ENV):
            self._gcs = storage.Client(project=None, credentials=AnonymousCredentials())
            return
        try:
            self._gcs = storage.Client(project=None)
        except DefaultCredentialsError as exc:
            raise RuntimeError(
                "no Google credentials to read the gs:// results bucket: run `gcloud auth "
                "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS "
                f"({' '.join(str(exc).split())})"
            ) from None

    def list_keys(self, bucket: str, prefix: str) -> Iterator[str]:
        for blob in self._gcs.list_blobs(bucket, prefix=prefix):
            yield blob.name

    def download(self, bucket: str, key: str, dest: Path) -> bool:
        from google.api_core.exceptions import NotFound

        try:
            self._gcs.bucket(bucket).blob(key).download_to_filename(str(dest))
        except NotFound:
            Path(dest).unlink(missing_ok=True)
            return False
        return True

    def upload(self, src: Path, bucket: str, key: str) -> None:
        self._gcs.bucket(bucket).blob(key).upload_from_filename(str(src))

    def delete(self, bucket: str, key: str) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self._gcs.bucket(bucket).blob(key).delete()
        except NotFound:
            pass


def client(bucket: BucketURI) -> Store:
    """The store that reads `bucket`, chosen by its scheme."""
    return GCSStore() if bucket.scheme == "gs" else S3Store()


def list_keys(bucket: BucketURI, *parts: str, store: Store | None = None) -> Iterator[str]:
    """Every key under the prefix `bucket.key(*parts)`, relative to it."""
    store = store or client(bucket)
    root = bucket.key(*parts)
    prefix = f"{root}/" if root else ""
    for key in store.list_keys(bucket.name, prefix):
        yield key[len(prefix) :]


def download(bucket: BucketURI, key: str, dest: Path, store: Store | None = None) -> bool:
    """Copy one object to `dest`; False when it does not exist."""
    store = store or client(bucket)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return store.download(bucket.name, bucket.key(key), dest)


def upload(src: Path, bucket: BucketURI, key: str = "", store: Store | None = None) -> str:
    """Copy one file to `bucket` under its prefix; the object's URI."""
    store = store or client(bucket)
    store.upload(Path(src), bucket.name, bucket.key(key))
    return f"{bucket.scheme}://{bucket.name}/{bucket.key(key)}"


class MirroredDirectory:
    """A local directory that stands for a bucket prefix where it cannot be mounted: `pull`
    copies every object under the prefix into it once, and `push` uploads each file written
    into it afterwards, at once (what a `MOUNT_CACHED` mount gives a job, without FUSE)."""

    def __init__(self, bucket: BucketURI, local: Path, store: Store | None = None):
        self.bucket = bucket
        self.local = Path(local)
        self.store = store or client(bucket)

    def pull(self) -> int:
        count = 0
        for key in list_keys(self.bucket, store=self.store):
            if key and not key.endswith("/"):
                count += download(self.bucket, key, self.local / key, store=self.store)
        return count

    def push(self, path: Path) -> str:
        rel = Path(path).resolve().relative_to(self.local.resolve())
        return upload(path, self.bucket, rel.as_posix(), store=self.store)


def delete(bucket: BucketURI, key: str, store: Store | None = None) -> None:
    """Remove one object under the bucket's prefix (none there: nothing to do)."""
    store = store or client(bucket)
    store.delete(bucket.name, bucket.key(key))
