"""Warm repetitions: windows back to back from one started loader, start-up on cold starts."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml
from support import ROOT
from support.counting import run_counted

from datarax_bench.results import load_result


def _root_with_profile(tmp_path: Path, name: str, **measurement) -> Path:
    root = tmp_path / "root"
    if not root.exists():
        shutil.copytree(ROOT / "config", root / "config")
        shutil.copytree(ROOT / "workflow" / "schemas", root / "workflow" / "schemas")
    profile = yaml.safe_load((root / "config/profiles/smoke.yaml").read_text())
    profile["measurement"].update(measurement)
    (root / f"config/profiles/{name}.yaml").write_text(yaml.safe_dump(profile))
    return root


@pytest.mark.slow
def test_warm_windows_share_one_loader_and_start_up_is_timed_on_cold_starts(tmp_path):
    root = _root_with_profile(
        tmp_path, "warm", repetitions=4, repetitions_from="warm", cold_starts=2
    )
    _root_with_profile(tmp_path, "fresh", repetitions=4)
    proc, out, opened = run_counted(root, tmp_path, "warm", "TAB-1", "test-counting-numpy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = load_result(out)  # validated against the result schema
    # Four windows and two cold starts, the first of which is the windows' loader.
    assert opened == 2
    reps, starts = result["repetitions"], result["cold_starts"]
    assert [r["from"] for r in reps] == ["warm"] * 4
    assert all(r["time_to_first_batch_s"] is None and r["setup_s"] is None for r in reps)
    assert [s["index"] for s in starts] == [0, 1]
    statistics = result["statistics"]
    assert statistics["repetitions"] == 4 and statistics["repetitions_from"] == "warm"
    assert statistics["first_batch_consistent"] is True
    assert statistics["first_batch_sha256"] == starts[0]["first_batch_sha256"]
    first = sorted(s["time_to_first_batch_s"] for s in starts)
    assert statistics["time_to_first_batch_s_median"] == pytest.approx(sum(first) / 2)

    # The same cell from fresh loaders opens one per window and delivers the same first batch.
    proc, out, opened = run_counted(root, tmp_path, "fresh", "TAB-1", "test-counting-numpy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = load_result(out)
    assert opened == 4 and "cold_starts" not in fresh
    assert [r["from"] for r in fresh["repetitions"]] == ["fresh"] * 4
    assert fresh["statistics"]["repetitions_from"] == "fresh"
    assert fresh["statistics"]["first_batch_sha256"] == statistics["first_batch_sha256"]


@pytest.mark.slow
def test_checkpoint_round_trips_keep_a_loader_per_repetition_under_a_warm_profile(tmp_path):
    root = _root_with_profile(tmp_path, "warm", repetitions=2, repetitions_from="warm")
    proc, out, _ = run_counted(root, tmp_path, "warm", "PR-1", "datarax")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = load_result(out)
    assert result["status"] == "ok", result["reason"]
    assert [r["from"] for r in result["repetitions"]] == ["fresh", "fresh"]
    assert "cold_starts" not in result and result["statistics"]["repetitions_from"] == "fresh"


def test_an_unknown_repetitions_from_is_one_line_and_writes_nothing(tmp_path):
    root = _root_with_profile(tmp_path, "hot", repetitions_from="hot")
    proc, out, _ = run_counted(root, tmp_path, "hot", "TAB-1", "numpy")
    assert proc.returncode == 2
    assert "repetitions_from" in proc.stderr and "'hot'" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


def _schema():
    return yaml.safe_load((ROOT / "workflow/schemas/result.schema.yaml").read_text())


def test_the_schema_keeps_warm_windows_without_a_start_and_fresh_ones_with_one():
    schema = _schema()
    validator = jsonschema.Draft202012Validator(
        {"$defs": schema["$defs"], "$ref": "#/$defs/repetition"}
    )
    window = {
        "index": 0,
        "batches": 4,
        "elements": 64,
        "bytes": 1024,
        "window_s": 0.01,
        "epochs": 1.0,
        "elements_per_s": 6400.0,
        "bytes_per_s": 102400.0,
        "latency_ms": {"p50": 1.0, "p95": 1.0, "p99": 1.0, "mean": 1.0, "max": 1.0},
        "time_to_first_batch_s": None,
        "setup_s": None,
        "peak_rss_bytes": 1,
        "device_peak_bytes": None,
        "first_batch_sha256": None,
    }
    warm = {**window, "from": "warm"}
    assert validator.is_valid(warm)
    started = {"time_to_first_batch_s": 0.1, "setup_s": 0.05, "first_batch_sha256": "0" * 64}
    assert not validator.is_valid({**warm, **started})
    # A fresh window (and one written before windows said where they came from) has its start.
    assert validator.is_valid({**window, **started, "from": "fresh"})
    assert validator.is_valid({**window, **started})
    assert not validator.is_valid({**window, "from": "fresh"})
    assert not validator.is_valid(copy.deepcopy(window))
