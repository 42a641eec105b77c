"""The load accounting reads the kernel's real counters: real processes burn real CPU here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from support import PLUGINS, ROOT

from datarax_bench import machine_load
from datarax_bench.results import load_result

# Every test here measures the machine's load or a window's timing.
pytestmark = pytest.mark.alone

BURN = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"
#: /proc/stat and a process's times tick at USER_HZ (100 Hz here): a few ticks either way.
TICKS = 0.05


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


@pytest.fixture
def foreign_burner():
    """A process burning one core that is not a descendant of this one (its parent exits)."""
    launcher = subprocess.run(
        [
            sys.executable,
            "-c",
            "import subprocess, sys\n"
            f"p = subprocess.Popen([sys.executable, '-c', {BURN!r}], start_new_session=True,\n"
            "    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "print(p.pid)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(launcher.stdout)
    proc = psutil.Process(pid)
    assert proc not in psutil.Process().children(recursive=True)
    try:
        yield proc
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_foreign_process_counts_as_foreign_and_not_as_own(foreign_burner):
    time.sleep(0.2)
    before = _cpu_s(foreign_burner)
    probe = machine_load.WindowLoad().start()
    time.sleep(1.0)
    load = probe.stop()
    burned = _cpu_s(foreign_burner) - before
    assert burned > 0.05, "the burner got too little CPU to tell"
    assert load["foreign_cpu_s"] >= burned - TICKS
    assert load["own_cpu_s"] < TICKS
    assert load["foreign_share"] >= (burned - TICKS) / (load["wall_s"] * load["cpus"])


def test_a_descendant_counts_as_own_including_one_reaped_in_the_window():
    child = subprocess.Popen([sys.executable, "-c", BURN])
    try:
        time.sleep(0.2)
        proc = psutil.Process(child.pid)
        before = _cpu_s(proc)
        probe = machine_load.WindowLoad().start()
        time.sleep(0.8)
        burned = _cpu_s(proc) - before
        child.kill()
        child.wait()  # reaped: its time moves into this process's children's times
        load = probe.stop()
    finally:
        if child.poll() is None:
            child.kill()
    assert burned > 0.05
    assert abs(load["own_cpu_s"] - burned) <= TICKS * 2
    assert load["own_busy_cores"] == pytest.approx(load["own_cpu_s"] / load["wall_s"], abs=1e-3)


def test_summary_weights_windows_by_length_and_flags_busy():
    window = {"wall_s": 1.0, "cpus": 2, "steal_share": 0.0}
    quiet = {**window, "foreign_cpu_s": 0.0, "foreign_share": 0.0}
    loud = {**window, "wall_s": 3.0, "foreign_cpu_s": 3.0, "foreign_share": 0.5}
    summary = machine_load.summarize([quiet, loud])
    assert summary["foreign_share"] == pytest.approx(3.0 / 8.0)
    assert summary["foreign_share_max"] == 0.5
    assert summary["busy"] is True
    assert machine_load.summarize([quiet, quiet])["busy"] is False
    assert machine_load.summarize([])["busy"] is None
    short = {**loud, "wall_s": 0.01, "foreign_cpu_s": 0.01}
    assert machine_load.summarize([short, short])["busy"] is None, "too short to tell"


def test_a_summary_over_windows_saturated_past_their_ticks_is_a_share_the_schema_takes():
    """A window's foreign CPU seconds may pass its capacity by tick skew (a container's smoke
    run recorded 1.0365, and the result failed validation): the summary's share stays <= 1."""
    window = {"wall_s": 2.0, "cpus": 2, "steal_share": 0.0}
    saturated = {**window, "foreign_cpu_s": 4.15, "foreign_share": 1.0}
    summary = machine_load.summarize([saturated, saturated])
    assert summary["foreign_share"] == 1.0 and summary["busy"] is True


def test_preflight_warns_about_a_busy_machine_and_too_few_cores(foreign_burner):
    report = machine_load.preflight(seconds=1.0, parallelism=machine_load.usable_cores() + 1)
    text = "\n".join(report["warnings"])
    assert "other processes used" in text
    assert f"{machine_load.usable_cores()} usable cores, fewer than" in text


def test_cpu_frequency_reports_what_is_readable_or_none():
    freq = machine_load.cpu_frequency()
    assert set(freq) == {"current_mhz", "max_mhz", "governor"}
    for key in ("current_mhz", "max_mhz"):
        assert freq[key] is None or freq[key] > 0


@pytest.mark.slow
def test_doctor_strict_refuses_a_busy_machine_and_records_what_it_saw(foreign_burner, tmp_path):
    report = tmp_path / "doctor.json"
    cmd = [sys.executable, "-m", "datarax_bench.cli", "doctor", "--profile", "smoke"]
    cmd += ["--watch-seconds", "1", "--json", str(report)]
    lenient = subprocess.run(cmd, capture_output=True, text=True)
    assert lenient.returncode == 0, lenient.stderr
    assert "doctor: warning: other processes used" in lenient.stderr
    seen = json.loads(report.read_text())["preflight"]
    assert seen["foreign_share"] > machine_load.BUSY_SHARE and seen["warnings"]
    strict = subprocess.run([*cmd, "--strict"], capture_output=True, text=True)
    assert strict.returncode == machine_load.UNFIT_EXIT_CODE, strict.stderr
    assert "refusing" in strict.stderr.splitlines()[-1]


def test_doctor_names_a_bad_watch_time():
    cmd = [sys.executable, "-m", "datarax_bench.cli", "doctor", "--profile", "smoke"]
    proc = subprocess.run([*cmd, "--watch-seconds", "-1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "'-1': expected seconds, more than 0 and at most 600" in proc.stderr


@pytest.mark.slow
def test_the_workflow_with_strict_machine_refuses_a_busy_machine_before_any_job(
    foreign_burner, tmp_path
):
    from support.workflow import copy_workflow, snakemake

    work = copy_workflow(tmp_path / "checkout")
    config = ["profile=smoke", "scenarios=[TAB-1]", "adapters=[numpy]", "strict_machine=True"]
    refused = snakemake(work, "--cores", "2", config=config, check=False)
    assert refused.returncode == machine_load.UNFIT_EXIT_CODE, refused.output[-3000:]
    assert "pre-flight: warning: other processes used" in refused.output
    assert not (work / "results").exists(), "nothing was started"
    # A dry run stays instant: no pre-flight.
    dry = snakemake(work, "-n", config=config)
    assert "pre-flight" not in dry.output


def _load_profile_root(tmp_path: Path) -> Path:
    """A checkout whose `loadcheck` profile times TAB-1 for 2 x 1.5 s: long enough to tell."""
    root = tmp_path / "root"
    shutil.copytree(ROOT / "config", root / "config")
    shutil.copytree(ROOT / "workflow" / "schemas", root / "workflow" / "schemas")
    profile = yaml.safe_load((root / "config/profiles/smoke.yaml").read_text())
    profile["measurement"].update(min_seconds=1.5, repetitions=2)
    profile["scenarios"] = ["TAB-1"]
    (root / "config/profiles/loadcheck.yaml").write_text(yaml.safe_dump(profile))
    return root


@pytest.mark.slow
def test_a_cell_measured_beside_a_busy_process_records_it_and_is_flagged_busy(tmp_path):
    root = _load_profile_root(tmp_path)
    env = {**os.environ, "DATARAX_BENCH_ROOT": str(root)}
    cmd = [sys.executable, "-m", "datarax_bench.cli", "run", "--profile", "loadcheck"]
    cmd += ["--scenario", "TAB-1", "--adapter", "numpy", "--output"]

    def measure(name: str) -> dict:
        out = tmp_path / f"{name}.json"
        proc = subprocess.run([*cmd, str(out)], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return load_result(out)

    burner = subprocess.Popen([sys.executable, "-c", BURN], start_new_session=True)
    try:
        busy = measure("busy")
    finally:
        burner.kill()
        burner.wait()
    quiet = measure("quiet")
    for result in (busy, quiet):
        for rep in result["repetitions"]:
            load = rep["machine_load"]
            assert load["own_cpu_s"] > 0 and rep["cpu_s_per_1k_elements"] > 0
    # One core of two burned by a process outside the cell's tree: about half the machine.
    assert busy["statistics"]["busy"] is True
    assert busy["statistics"]["machine_load"]["foreign_share"] > 0.3
    if quiet["statistics"]["busy"]:
        # A shared machine may really be busy without the burner: then a look of its own right
        # after must see the same, or the flag was wrong.
        seen = machine_load.preflight(seconds=2.0)["foreign_share"]
        assert seen > machine_load.BUSY_SHARE / 2, (quiet["statistics"]["machine_load"], seen)


@pytest.mark.slow
@pytest.mark.parametrize("jitter, stopped", [("0", "precision reached"), ("0.6", "max")])
def test_precision_stops_early_on_steady_repetitions_and_runs_to_the_cap_on_noisy_ones(
    tmp_path, jitter, stopped
):
    root = _load_profile_root(tmp_path)
    profile = yaml.safe_load((root / "config/profiles/smoke.yaml").read_text())
    profile["measurement"].update(
        min_batches=10, min_seconds=0.3, repetitions=3, precision=0.05, max_repetitions=7
    )
    (root / "config/profiles/precise.yaml").write_text(yaml.safe_dump(profile))
    plugins = str(PLUGINS)
    env = {
        **os.environ,
        "DATARAX_BENCH_ROOT": str(root),
        "DATARAX_BENCH_PLUGINS": "jittery_loaders",
        "DATARAX_TEST_JITTER": jitter,
        "PYTHONPATH": os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")])),
    }
    out = tmp_path / "cell.json"
    cmd = [sys.executable, "-m", "datarax_bench.cli", "run", "--profile", "precise"]
    cmd += ["--scenario", "TAB-1", "--adapter", "test-jittery-numpy", "--output", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    statistics = load_result(out)["statistics"]
    assert statistics["stopped"].startswith(stopped), statistics
    if stopped == "max":
        assert statistics["repetitions"] == 7 and statistics["precision"] > 0.05
    else:
        # Reached, not capped ("stopped" says which): on a drifting VM possibly only at the cap.
        assert 3 <= statistics["repetitions"] <= 7 and statistics["precision"] <= 0.05


def test_a_cap_below_the_minimum_is_one_line(tmp_path):
    root = _load_profile_root(tmp_path)
    profile = yaml.safe_load((root / "config/profiles/smoke.yaml").read_text())
    profile["measurement"].update(repetitions=5, precision=0.03, max_repetitions=3)
    (root / "config/profiles/capped.yaml").write_text(yaml.safe_dump(profile))
    cmd = [sys.executable, "-m", "datarax_bench.cli", "run", "--profile", "capped"]
    cmd += ["--scenario", "TAB-1", "--adapter", "numpy", "--output", str(tmp_path / "x.json")]
    proc = subprocess.run(
        cmd, env={**os.environ, "DATARAX_BENCH_ROOT": str(root)}, text=True, capture_output=True
    )
    assert proc.returncode == 2
    assert "measurement.max_repetitions: 3 is fewer than the 5 repetitions" in proc.stderr
    assert not (tmp_path / "x.json").exists()
