"""The tuned style's parallelism sweep, run the way a user runs a cell: `datarax-bench run
--style tuned`, with test adapters whose speed depends on a knob (tests/plugins/knob_loaders)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support import PLUGINS

from datarax_bench.workload import schemas


@pytest.fixture
def run_tuned(cli_path, tmp_path, monkeypatch):
    """One tuned TAB-1 smoke cell of `adapter` into `out`; the tuning cache is the test's own."""
    monkeypatch.setenv("DATARAX_BENCH_CACHE", str(tmp_path / "cache"))
    pythonpath = [str(PLUGINS), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(pythonpath))
    monkeypatch.setenv("DATARAX_BENCH_PLUGINS", "knob_loaders")

    def run(adapter: str, out: Path, style: str = "tuned") -> dict:
        cmd = [cli_path, "run", "--profile", "smoke", "--scenario", "TAB-1"]
        cmd += ["--adapter", adapter, "--style", style, "--output", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        result = json.loads(out.read_text())
        assert result["status"] == "ok", result["reason"]
        schemas.validate(result, "result", out)
        return result

    return run


@pytest.mark.slow
def test_the_sweep_picks_the_fastest_setting_and_measures_with_it(run_tuned, tmp_path):
    result = run_tuned("test-knob-numpy", tmp_path / "a.json")
    tuning = result["tuning"]
    assert tuning["knobs"] == ["workers"]
    assert [p["settings"] for p in tuning["grid"]] == [{"workers": w} for w in (0, 1, 2, 3)]
    rates = {p["settings"]["workers"]: p["elements_per_s"] for p in tuning["grid"]}
    assert max(rates, key=rates.get) == 2, rates
    assert tuning["chosen"] == {"workers": 2}
    assert tuning["cached"] is False and tuning["cost_s"] > 0
    # The repetitions ran with the choice, and none of the sweep's windows is among them.
    assert result["parallelism"]["workers"] == 2
    assert len(result["repetitions"]) == result["statistics"]["repetitions"]
    assert min(r["elements_per_s"] for r in result["repetitions"]) > max(rates[1], rates[3])


@pytest.mark.slow
def test_a_second_run_takes_the_cached_choice_without_sweeping(run_tuned, tmp_path):
    first = run_tuned("test-knob-numpy", tmp_path / "a.json")["tuning"]
    cache = tmp_path / "cache" / "tuning" / f"{first['cache_key']}.json"
    swept = json.loads(cache.read_text())
    assert swept["chosen"] == first["chosen"] and swept["cost_s"] > 0
    again = run_tuned("test-knob-numpy", tmp_path / "b.json")["tuning"]
    assert again["cached"] is True and again["cost_s"] == 0
    assert again["chosen"] == first["chosen"] and again["cache_key"] == first["cache_key"]
    # What the sweep cost is the record's, whichever attempt of the first cell made it (a
    # failed attempt is retried, and the retry takes the cached choice too).
    assert again["sweep_cost_s"] == pytest.approx(swept["cost_s"])

    # A cache file that cannot be read is swept again, not trusted.
    cache.write_text("{not json")
    third = run_tuned("test-knob-numpy", tmp_path / "c.json")["tuning"]
    assert third["cached"] is False and third["chosen"] == {"workers": 2}
    assert json.loads(cache.read_text())["chosen"] == {"workers": 2}


@pytest.mark.slow
def test_a_setting_that_changes_the_bytes_is_never_chosen(run_tuned, tmp_path):
    result = run_tuned("test-knob-bytes", tmp_path / "a.json")
    grid = {p["settings"]["workers"]: p for p in result["tuning"]["grid"]}
    assert "different first batch" in grid[3]["excluded"]
    assert grid[3]["elements_per_s"] > grid[2]["elements_per_s"]
    assert result["tuning"]["chosen"] == {"workers": 2}
    plain = run_tuned("test-knob-bytes", tmp_path / "plain.json", style="plain")
    assert result["statistics"]["first_batch_sha256"] == plain["statistics"]["first_batch_sha256"]


@pytest.mark.slow
def test_plain_cells_are_not_tuned_and_knobless_adapters_say_so(run_tuned, tmp_path):
    plain = run_tuned("test-knob-numpy", tmp_path / "plain.json", style="plain")
    assert "tuning" not in plain
    numpy = run_tuned("numpy", tmp_path / "numpy.json")["tuning"]
    assert numpy["grid"] == [] and numpy["chosen"] == {}
    assert "no parallelism knob" in numpy["note"]


def test_a_setting_that_fails_is_recorded_and_the_best_of_the_rest_chosen(run_tuned, tmp_path):
    tuning = run_tuned("test-knob-crash", tmp_path / "a.json")["tuning"]
    failed = [p for p in tuning["grid"] if p["settings"] == {"workers": 2}]
    assert failed[0]["excluded"] == (
        "failed: RuntimeError: DataLoader worker (pid 1) is killed by signal: Aborted."
    )
    assert "elements_per_s" not in failed[0]
    # Of 0, 1 and 3 workers (each 5 or 10 ms slower per batch than 2), 1 or 3 is the fastest.
    assert tuning["chosen"] in ({"workers": 1}, {"workers": 3})


@pytest.mark.slow
def test_a_sweep_where_nothing_runs_fails_the_cell_naming_every_setting(cli_path, tmp_path,
                                                                        run_tuned):  # fmt: skip
    out = tmp_path / "a.json"
    cmd = [cli_path, "run", "--profile", "smoke", "--scenario", "TAB-1", "--adapter",
           "test-knob-broken", "--style", "tuned", "--output", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    result = json.loads(out.read_text())
    assert result["status"] == "failed", result["status"]
    assert "no setting of the parallelism sweep could be measured" in result["reason"]
    assert all(f"workers={w}: failed: RuntimeError" in result["reason"] for w in range(4))
    schemas.validate(result, "result", out)
    assert done.returncode == 0


@pytest.mark.slow
def test_a_retried_cell_takes_the_choice_its_failed_attempt_swept(run_tuned, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    monkeypatch.setenv("DATARAX_BENCH_TEST_FAIL_ONCE", str(tmp_path / "failed-once"))
    result = run_tuned("test-knob-fails-once", tmp_path / "a.json")
    assert [a["status"] for a in result["attempts"]] == ["failed", "ok"]
    assert "the first measurement after the sweep fails" in result["attempts"][0]["reason"]
    tuning = result["tuning"]
    swept = json.loads((tmp_path / "cache" / "tuning" / f"{tuning['cache_key']}.json").read_text())
    assert tuning["cached"] is True and tuning["chosen"] == swept["chosen"] == {"workers": 2}
    assert tuning["sweep_cost_s"] == pytest.approx(swept["cost_s"]) and swept["cost_s"] > 0
