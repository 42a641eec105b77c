"""Result files: the schema, atomic writes, and clear errors for bad files."""

from __future__ import annotations

import copy
import json
import os
import stat

import pytest

from datarax_bench.errors import UserError
from datarax_bench.provenance import recorded_environment
from datarax_bench.results import (
    all_or_nothing,
    cell_path,
    load_result,
    write_json_atomic,
    write_result,
    write_text_atomic,
)

#: The cells of the shared smoke run this module reads (support/smoke.py).
SMOKE_RUN = {"numpy": ("CV-1",)}


@pytest.fixture(scope="module")
def ok_result(smoke_results):
    """A real smoke-profile result of CV-1 with the NumPy reference (the session's shared run)."""
    return json.loads(cell_path(smoke_results, "CV-1", "small", "numpy").read_text())


def test_ok_result_validates_and_round_trips(ok_result, tmp_path):
    path = tmp_path / "x.json"
    write_result(path, ok_result)
    assert load_result(path) == ok_result


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.update(status="great"), "status: got 'great'"),
        (lambda r: r.update(status="failed"), "reason"),
        (lambda r: r.update(reason="all fine"), "reason"),
        (lambda r: r["repetitions"][0].pop("latency_ms"), "'latency_ms' is a required property"),
        (lambda r: r["repetitions"][0].update(first_batch_sha256="abc"), "first_batch_sha256"),
        (lambda r: r.update(schema_version=2), "schema_version 2, expected 1"),
    ],
)
def test_malformed_result_files_are_named(ok_result, tmp_path, mutate, expected):
    bad = copy.deepcopy(ok_result)
    mutate(bad)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(UserError) as err:
        load_result(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_truncated_json_is_named(ok_result, tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(ok_result)[:200])
    with pytest.raises(UserError, match=r"cut\.json: not valid JSON"):
        load_result(path)


def test_invalid_result_is_never_written(ok_result, tmp_path):
    bad = copy.deepcopy(ok_result)
    bad["status"] = "great"
    path = tmp_path / "never.json"
    with pytest.raises(UserError):
        write_result(path, bad)
    assert not path.exists()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "doc.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"v": float("nan")})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


def test_recorded_environment_never_keeps_secret_names():
    env = {
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--x",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "WANDB_API_KEY": "s3cret",
        "TF_AUTH_TOKEN": "s3cret",
        "DATARAX_BENCH_SECRET": "s3cret",
        "AWS_SECRET_ACCESS_KEY": "s3cret",
        "HOME": "/root",
    }
    assert recorded_environment(env) == {
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "XLA_FLAGS": "--x",
    }


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_rejected_naming_file_and_key(ok_result, tmp_path, literal):
    """`minimum: 0` cannot reject NaN (every comparison with it is false): reading must."""
    marker = 123456.789
    doc = copy.deepcopy(ok_result)
    doc["statistics"]["elements_per_s"]["median"] = marker
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(doc).replace(str(marker), literal))
    with pytest.raises(UserError) as err:
        load_result(path)
    message = str(err.value)
    assert message.startswith(f"{path}: statistics.elements_per_s.median: got {literal}")
    assert "expected a finite number" in message and "\n" not in message


def test_non_finite_numbers_are_never_written(ok_result, tmp_path):
    bad = copy.deepcopy(ok_result)
    bad["statistics"]["elements_per_s"]["cv"] = float("nan")
    path = tmp_path / "never.json"
    with pytest.raises(ValueError, match=r"statistics\.elements_per_s\.cv is nan"):
        write_result(path, bad)
    assert list(tmp_path.iterdir()) == []


def test_all_or_nothing_renames_every_file_or_none(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"v": 1})
    with pytest.raises(ValueError), all_or_nothing():
        write_json_atomic(tmp_path / "a.json", {"v": 2})
        write_text_atomic(tmp_path / "b.txt", "new")
        write_json_atomic(tmp_path / "c.json", {"v": float("inf")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1}
    with all_or_nothing():
        write_json_atomic(tmp_path / "a.json", {"v": 2})
        write_text_atomic(tmp_path / "b.txt", "new")
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 2}
    assert (tmp_path / "b.txt").read_text() == "new"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    """Like any file the user creates (the plots already were), not mkstemp's private 0600."""
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "doc.json", {"v": 1})
        write_text_atomic(tmp_path / "table.csv", "a,b\n")
    finally:
        os.umask(old)
    for name in ("doc.json", "table.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
