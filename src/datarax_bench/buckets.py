"""The results bucket of a managed cloud run, read from this machine through the S3 API.

boto3 takes the credentials from its usual chain (environment, ~/.aws) and the endpoint from
`AWS_ENDPOINT_URL` when it is set, so S3-compatible stores (R2, MinIO, a test's moto server)
work the same way. Nothing here writes to the bucket: the remote job does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

# S3's bucket naming rules: 3-63 characters, lower case, digits, dots and hyphens.
_S3_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/.*)?$")


@dataclass(frozen=True)
class BucketURI:
    """`s3://NAME[/PREFIX]`: the bucket and the key prefix under which a run keeps its files."""

    name: str
    prefix: str = ""

    @property
    def uri(self) -> str:
        return f"s3://{self.name}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))


def parse_bucket(uri: str, what: str = "results_bucket") -> BucketURI:
    match = _S3_URI.match(uri or "")
    if not match:
        raise UserError(
            f"{what}: got {uri!r}, expected s3://BUCKET[/PREFIX] (an S3 bucket name: 3-63 "
            "lower-case letters, digits, dots or hyphens)"
        )
    return BucketURI(match.group(1), (match.group(2) or "").strip("/"))


def client():
    import boto3

    return boto3.client("s3")


def list_keys(bucket: BucketURI, *parts: str, s3=None) -> Iterator[str]:
    """Every key under the prefix `bucket.key(*parts)`, relative to it."""
    s3 = s3 or client()
    root = bucket.key(*parts)
    prefix = f"{root}/" if root else ""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"][len(prefix) :]


def download(bucket: BucketURI, key: str, dest: Path, s3=None) -> bool:
    """Copy one object to `dest`; False when it does not exist."""
    from botocore.exceptions import ClientError

    s3 = s3 or client()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        s3.download_file(bucket.name, bucket.key(key), str(dest))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return False
        raise
    return True
