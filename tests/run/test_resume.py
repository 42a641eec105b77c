"""`datarax-bench run --output-dir OUT --resume-dir STORE`: every cell is kept in STORE as soon as
it is written, and a run restarted on a fresh machine (a managed job after a preemption) takes
the cells already there instead of measuring them again, so a restart costs at most the cell
that was in flight."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support import run_cli

from datarax_bench.results import load_result
from datarax_bench.run.cell import resolve_cell
from datarax_bench.run.runner import kept_result
from datarax_bench.workload.catalog import load_catalog, load_profile

ARGS = ["run", "--profile", "smoke", "--adapters", "numpy"]
SCENARIOS = ["--scenarios", "TAB-1", "NLP-1", "CV-1", "PC-1"]


def _cells(root: Path) -> dict[str, Path]:
    raw = root / "raw"
    return {p.relative_to(raw).as_posix(): p for p in sorted(raw.rglob("*.json"))}


def _started(path: Path) -> str:
    return load_result(path)["timestamps"]["started"]


SENTINEL = "sentinel-secret-value-0123456789"


@pytest.mark.slow
def test_a_rerun_takes_the_kept_cells_and_measures_only_the_missing_or_stale(
    tmp_path, data_cache, monkeypatch
):
    monkeypatch.setenv("WANDB_API_KEY", SENTINEL)
    store = tmp_path / "store"
    first = run_cli(*ARGS, *SCENARIOS, "--output-dir", str(tmp_path / "a"), "--resume-dir", str(store))  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    measured, kept = _cells(tmp_path / "a"), _cells(store)
    assert len(measured) == 5 and kept.keys() == measured.keys()  # PC-1 has two variants
    for rel, path in measured.items():
        assert kept[rel].read_bytes() == path.read_bytes()

    # One cell lost (it was in flight), one kept under other measurement settings.
    missing, stale, *same = sorted(kept)
    kept[missing].unlink()
    doc = json.loads(kept[stale].read_text())
    doc["settings"]["measurement"]["min_batches"] += 1
    kept[stale].write_text(json.dumps(doc))
    before = {rel: _started(kept[rel]) for rel in same}

    second = run_cli(*ARGS, *SCENARIOS, "--output-dir", str(tmp_path / "b"), "--resume-dir", str(store))  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    out = _cells(tmp_path / "b")
    assert out.keys() == measured.keys()
    for rel in same:  # taken from the store, not measured again
        assert _started(out[rel]) == before[rel]
        assert out[rel].read_bytes() == (store / "raw" / rel).read_bytes()
    for rel in (missing, stale):
        assert _started(out[rel]) > max(before.values())
        assert (store / "raw" / rel).read_bytes() == out[rel].read_bytes()
    assert second.stderr.count("kept in the resume directory") == len(same)
    assert "measured with other settings" in second.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert len(manifest["cells"]) == 5
    # The key was in the environment of both runs; it is in nothing they kept or printed.
    assert not [p for p in store.rglob("*") if p.is_file() and SENTINEL in p.read_text()]
    assert SENTINEL not in first.stderr + first.stdout + second.stderr + second.stdout


@pytest.mark.slow
def test_a_killed_run_keeps_every_finished_cell_and_the_restart_measures_the_rest(
    cli_path, tmp_path, data_cache
):
    store = tmp_path / "store"
    cmd = [cli_path, *ARGS, *SCENARIOS, "--resume-dir", str(store)]
    proc = subprocess.Popen([*cmd, "--output-dir", str(tmp_path / "machine-1")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while len(_cells(store) if (store / "raw").exists() else {}) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # the third cell has started (a cell takes seconds)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the machine is gone, mid-cell
        proc.wait()
    kept = {rel: _started(p) for rel, p in _cells(store).items()}
    assert 2 <= len(kept) < 5
    # A fresh machine: a new output directory, the same store.
    restart = run_cli(*cmd[1:], "--output-dir", str(tmp_path / "machine-2"))
    assert restart.returncode == 0, restart.stderr[-3000:]
    out = _cells(tmp_path / "machine-2")
    assert len(out) == 5 and out.keys() == _cells(store).keys()
    assert {rel: _started(out[rel]) for rel in kept} == kept, "a kept cell was measured again"
    assert all(load_result(p)["status"] == "ok" for p in out.values())
    # Nothing half-written in the store (results are renamed into place).
    attempts = store / "attempts"
    assert not [
        p for p in store.rglob("*")
        if p.is_file() and p.suffix != ".json" and attempts not in p.parents
    ]  # fmt: skip
    # One marker per measurement started: a kept cell once, the cell in flight at the kill
    # twice (it is measured again), so the run can say which cells a restart measured twice.
    started = {rel: len(list((attempts / "raw" / rel).iterdir())) for rel in out}
    assert all(started[rel] == 1 for rel in kept)
    assert sorted(started.values()).count(2) == 1 and set(started.values()) <= {1, 2}


@pytest.mark.slow
def test_a_kept_cell_of_an_unknown_commit_is_measured_again(tmp_path, data_cache):
    """A result that names no commit (a managed job's, before its task named the commit) may be
    old code's: it is never taken."""
    store = tmp_path / "store"
    args = [*ARGS, "--scenarios", "TAB-1", "--resume-dir", str(store)]
    first = run_cli(*args, "--output-dir", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-3000:]
    kept = _cells(store)
    assert kept
    for path in kept.values():
        doc = json.loads(path.read_text())
        assert doc["provenance"]["git_commit"]
        doc["provenance"]["git_commit"] = None
        path.write_text(json.dumps(doc))
    before = max(_started(p) for p in kept.values())
    second = run_cli(*args, "--output-dir", str(tmp_path / "b"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "kept in the resume directory" not in second.stderr
    assert second.stderr.count("measured by an unknown commit") == len(kept)
    out = _cells(tmp_path / "b")
    assert out.keys() == kept.keys() and all(_started(p) > before for p in out.values())


@pytest.mark.slow
def test_a_corrupt_kept_cell_is_named_and_measured_again(tmp_path, data_cache):
    store = tmp_path / "store"
    args = [*ARGS, "--scenarios", "TAB-1", "--resume-dir", str(store)]
    assert run_cli(*args, "--output-dir", str(tmp_path / "a")).returncode == 0
    (rel, path), = _cells(store).items()  # fmt: skip
    path.write_text('{"schema_version": 1, "status": "ok"')
    again = run_cli(*args, "--output-dir", str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert str(path) in again.stderr and "measuring it again" in again.stderr
    assert load_result(path)["status"] == "ok"


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            ["--output", "cell.json", "--scenario", "TAB-1"],
            "--resume-dir keeps the cells of a matrix",
        ),
        (["--output-dir", "out", "--resume-dir", "out"], "--resume-dir must not be the output"),
    ],
)
def test_bad_resume_arguments_are_one_line_and_exit_2(cli_path, tmp_path, extra, expected):
    if "--resume-dir" not in extra:
        extra = [*extra, "--resume-dir", "store"]
    proc = subprocess.run([cli_path, *ARGS, *extra], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists()


@pytest.mark.slow
def test_a_feed_change_makes_stale_exactly_the_cells_the_workflow_reruns(tmp_path):
    """One definition of a cell's settings (`Profile.settings(workload)`): results record it and
    `--resume-dir` compares it, as the workflow's rerun trigger does (test_workflow's
    `test_changed_settings_rerun_exactly_the_affected_cells`): a feed for CV-1 leaves a TAB-1
    result current and makes a CV-1 result stale, whatever other cells the run holds."""
    out = tmp_path / "run"
    proc = run_cli(*ARGS, "--scenarios", "TAB-1", "CV-1", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    catalog, smoke = load_catalog(), load_profile("smoke")
    cells = _cells(out)

    def kept(profile, scenario):
        cell = resolve_cell(profile, catalog, scenario, "small", "numpy")
        return kept_result(cells[f"{scenario}/small/numpy.json"], cell) is not None

    assert kept(smoke, "TAB-1") and kept(smoke, "CV-1")
    fed = dataclasses.replace(smoke, feed={"step_ms": [5], "scenarios": ["CV-1"]})
    assert kept(fed, "TAB-1") and not kept(fed, "CV-1")
    assert "feed" not in load_result(cells["TAB-1/small/numpy.json"])["settings"]
    everywhere = dataclasses.replace(smoke, feed={"step_ms": [5]})
    assert not kept(everywhere, "TAB-1")
