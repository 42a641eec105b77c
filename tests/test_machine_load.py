"""The load accounting reads the kernel's real counters: real processes burn real CPU here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from datarax_bench import machine_load

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
    assert burned > 0.3, "the burner got too little CPU to tell"
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
    assert burned > 0.3
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
