"""The results bucket read from this machine, on real APIs: S3 (moto's server, through boto3)
and Google Cloud Storage (gcp-storage-emulator's server, through google-cloud-storage found by
STORAGE_EMULATOR_HOST). The same calls answer the same on both."""

from __future__ import annotations

import subprocess

import pytest
from loopback import storage

from datarax_bench.cloud import buckets
from datarax_bench.cloud.buckets import parse_bucket

BUCKET = "dxb-results"
OBJECTS = {
    "bench/smoke/gcp/cells/raw/TAB-1/small/numpy.json": b'{"a": 1}',
    "bench/smoke/gcp/cells/attempts/raw/TAB-1/small/numpy.json/1": b"",
    "bench/smoke/gcp-other/cells/raw/TAB-1/small/numpy.json": b"{}",  # a prefix's sibling
    "elsewhere/x.json": b"{}",
}


@pytest.fixture(params=["s3", "gs"])
def bucket(request, tmp_path, monkeypatch):
    """A bucket holding OBJECTS, with this process's client pointed at its server."""
    if request.param == "s3":
        with storage.moto_server(tmp_path) as endpoint:
            for key, value in storage.aws_env(endpoint).items():
                monkeypatch.setenv(key, value)
            s3 = storage.s3_client(endpoint)
            s3.create_bucket(Bucket=BUCKET)
            for key, body in OBJECTS.items():
                s3.put_object(Bucket=BUCKET, Key=key, Body=body)
            yield parse_bucket(f"s3://{BUCKET}/bench")
        return
    with storage.gcs_emulator(tmp_path) as endpoint:
        monkeypatch.setenv(buckets.EMULATOR_ENV, endpoint)
        gcs = storage.gcs_client(endpoint)
        gcs.create_bucket(BUCKET)
        for key, body in OBJECTS.items():
            gcs.bucket(BUCKET).blob(key).upload_from_string(body)
        yield parse_bucket(f"gs://{BUCKET}/bench")


def test_keys_under_a_prefix_and_one_object_downloaded_or_absent(bucket, tmp_path):
    store = buckets.client(bucket)
    assert isinstance(store, buckets.GCSStore if bucket.scheme == "gs" else buckets.S3Store)
    assert sorted(buckets.list_keys(bucket, "smoke/gcp/cells", store=store)) == [
        "attempts/raw/TAB-1/small/numpy.json/1",
        "raw/TAB-1/small/numpy.json",
    ]
    assert list(buckets.list_keys(bucket, "smoke/nothing-here", store=store)) == []
    dest = tmp_path / "pulled" / "numpy.json"
    assert buckets.download(bucket, "smoke/gcp/cells/raw/TAB-1/small/numpy.json", dest, store=store)
    assert dest.read_bytes() == b'{"a": 1}'
    missing = tmp_path / "pulled" / "grain.json"
    assert not buckets.download(bucket, "smoke/gcp/cells/raw/TAB-1/small/grain.json", missing)
    assert not missing.exists()


def test_one_object_is_deleted_and_deleting_an_absent_one_is_nothing(bucket):
    store = buckets.client(bucket)
    buckets.delete(bucket, "smoke/gcp/cells/raw/TAB-1/small/numpy.json", store=store)
    assert sorted(buckets.list_keys(bucket, "smoke/gcp/cells", store=store)) == [
        "attempts/raw/TAB-1/small/numpy.json/1"
    ]
    buckets.delete(bucket, "smoke/gcp/cells/raw/TAB-1/small/numpy.json", store=store)
    assert len(list(buckets.list_keys(bucket, "smoke/gcp/cells", store=store))) == 1


def test_a_mirrored_directory_pulls_the_prefix_and_uploads_what_is_written(bucket, tmp_path):
    cells = parse_bucket(f"{bucket.uri}/smoke/gcp/cells")
    mirror = buckets.MirroredDirectory(cells, tmp_path / "mirror")
    assert mirror.pull() == 2  # only under the prefix, not its sibling gcp-other/
    assert (mirror.local / "raw/TAB-1/small/numpy.json").read_bytes() == b'{"a": 1}'
    assert (mirror.local / "attempts/raw/TAB-1/small/numpy.json/1").is_file()
    written = mirror.local / "raw" / "TAB-1" / "small" / "grain.json"
    written.write_text('{"b": 2}')
    assert mirror.push(written) == f"{cells.uri}/raw/TAB-1/small/grain.json"
    again = buckets.MirroredDirectory(cells, tmp_path / "fresh-machine")
    assert again.pull() == 3
    assert (again.local / "raw/TAB-1/small/grain.json").read_text() == '{"b": 2}'


@pytest.mark.slow
def test_upload_of_one_file_through_the_cli(bucket, tmp_path, cli_path):
    src = tmp_path / "doctor.json"
    src.write_text('{"hardware": 1}')
    dest = f"{bucket.scheme}://{BUCKET}/bench/smoke/gcp/cells/doctor/task-1.json"
    done = subprocess.run([cli_path, "upload", str(src), dest], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == dest
    back = tmp_path / "back.json"
    assert buckets.download(bucket, "smoke/gcp/cells/doctor/task-1.json", back)
    assert back.read_text() == '{"hardware": 1}'


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["upload", "missing.json", "s3://dxb-results/k"], "upload: 'missing.json' is not a file"),
        (["upload", "{src}", "s3://dxb-results"], "expected the object's whole URI"),
        (["upload", "{src}", "s3://Bad_Bucket/k"], "upload: destination: got 's3://Bad_Bucket/k'"),
        (["run", "--profile", "smoke", "--output-dir", "{out}", "--resume-bucket", "gs://x"],
         "run: --resume-bucket: got 'gs://x', expected s3://BUCKET"),
        (["run", "--profile", "smoke", "--output-dir", "{out}", "--resume-bucket", "s3://abc",
          "--resume-dir", "{out}2"], "pass one of --resume-dir"),
        (["run", "--profile", "smoke", "--scenario", "TAB-1", "--adapter", "numpy", "--output",
          "{out}.json", "--resume-bucket", "s3://abc"], "use it with --output-dir"),
    ],
)  # fmt: skip
def test_bad_bucket_arguments_are_one_line_and_exit_2(argv, message, tmp_path, cli_path):
    src = tmp_path / "f.json"
    src.write_text("{}")
    argv = [a.format(src=src, out=tmp_path / "out") for a in argv]
    done = subprocess.run([cli_path, *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.resume-bucket").exists()


def test_a_gs_bucket_that_does_not_exist_is_an_error_not_an_empty_listing(tmp_path, monkeypatch):
    from google.api_core.exceptions import NotFound

    with storage.gcs_emulator(tmp_path) as endpoint:
        monkeypatch.setenv(buckets.EMULATOR_ENV, endpoint)
        with pytest.raises(NotFound):
            list(buckets.list_keys(parse_bucket("gs://no-such-bucket/bench"), "cells"))


@pytest.mark.slow
def test_the_loopback_mounts_a_gs_source_only_as_skypilot_would(tmp_path, monkeypatch):
    """A missing source bucket and a name GCS refuses fail the launch, as in SkyPilot."""
    monkeypatch.setenv("HOME", str(tmp_path))
    task = {"run": "true", "envs": {"B": None},
            "file_mounts": {"~/b": {"source": "gs://${B}", "mode": "MOUNT_CACHED"}}}  # fmt: skip
    with storage.gcs_emulator(tmp_path) as endpoint:
        endpoints = {"gs": endpoint}
        with pytest.raises(ValueError, match="non-existent bucket as a source: gs://dxb-results"):
            storage.storage_mounts(task, {"B": BUCKET}, endpoints)
        with pytest.raises(Exception, match='cannot begin with the "goog" prefix'):
            storage.storage_mounts(task, {"B": "goog-results"}, endpoints)
        storage.gcs_client(endpoint).create_bucket(BUCKET)
        assert storage.storage_mounts(task, {"B": BUCKET}, endpoints) == {"~/b": f"gs://{BUCKET}"}
