"""However a run ends, no measuring process outlives it, and measurements never overlap.

Real processes and real signals: a supervisor (`datarax-bench run`, or Snakemake above it) is
interrupted or killed while its worker measures, and the worker, its guard and the loader's own
processes must be gone within about a second; the next run removes what the killed one left and
measures alone, which the machine's bench lock enforces whoever started the measurements.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from support import BIN, PLUGINS, ROOT

from datarax_bench.results import load_result

#: How long the worker's processes may take to be gone after the signal. They are killed at
#: once; a worker that has imported JAX takes a few hundred ms to exit on a loaded machine.
GONE_WITHIN_S = 1.5


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Test adapters available and a bench lock of this test's own (Ctrl-C reaches the children
    as from a terminal: tests/conftest.py)."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("DATARAX_BENCH_PLUGINS", "misbehaving_adapters")
    monkeypatch.setenv("DATARAX_BENCH_LOCK", str(tmp_path / "bench.lock"))
    monkeypatch.delenv("DATARAX_BENCH_LOCK_TIMEOUT_S", raising=False)
    yield tmp_path


def _cmdline(proc: psutil.Process) -> list[str]:
    """The process's command line, or [] once it has ended: a child listed a moment ago may
    be gone (and reaped) before its command line is read."""
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: list[psutil.Process], limit: float) -> float:
    """Seconds until none of `procs` lives; fails after `limit`."""
    start = time.monotonic()
    while any(_alive(p) for p in procs):
        if time.monotonic() - start > limit:
            left = [" ".join(_cmdline(p))[:120] for p in procs if _alive(p)]
            raise AssertionError(f"still running {limit} s after the supervisor died: {left}")
        time.sleep(0.01)
    return time.monotonic() - start


def _kill_leftovers(procs: list[psutil.Process]) -> None:
    for p in procs:
        if _alive(p):
            p.kill()


def _wait_for(condition, limit: float, what: str):
    deadline = time.monotonic() + limit
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)
    return value


def _workers(root: psutil.Process) -> list[psutil.Process]:
    try:
        below = root.children(recursive=True)
    except psutil.Error:
        return []
    return [p for p in below if "datarax_bench.run.worker" in _cmdline(p)]


def test_a_process_the_tests_start_takes_ctrl_c_as_from_a_terminal():
    """However pytest was started (a CI runner's background job inherits SIGINT ignored),
    what the Ctrl-C tests start raises KeyboardInterrupt on SIGINT."""
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert child.stdout.strip() == "True", child.stdout + child.stderr


def test_a_process_that_ends_while_it_is_looked_at_is_no_worker():
    """Processes listed a moment ago may have ended and been reaped when the helpers read them."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc = psutil.Process(child.pid)
    # Until it has exec'd, the child's command line is still pytest's.
    _wait_for(lambda: "time.sleep(60)" in " ".join(_cmdline(proc)), 10, "the child's exec")
    assert _workers(proc) == []
    child.kill()
    child.wait()
    assert _cmdline(proc) == []
    assert _workers(proc) == []
    assert not _alive(proc)


def _stale(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob(".*") if p.is_file())


def _cli(*args: str) -> list[str]:
    return [str(BIN / "datarax-bench"), *args]


def _start_hanging_cell(out: Path, pid_file: Path) -> subprocess.Popen:
    """A supervisor, in a session of its own, whose worker measures (hangs) with a child process
    of its own, like a DataLoader's worker."""
    cmd = _cli("run", "--profile", "smoke", "--scenario", "TAB-1", "--adapter", "test-hang")
    return subprocess.Popen(
        [*cmd, "--output", str(out)],
        env={**os.environ, "DATARAX_TEST_CHILD_PID_FILE": str(pid_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


KILLS = {
    "SIGINT": lambda pid: os.kill(pid, signal.SIGINT),
    "SIGTERM": lambda pid: os.kill(pid, signal.SIGTERM),
    "SIGKILL": lambda pid: os.kill(pid, signal.SIGKILL),
    "SIGKILL of its group": lambda pid: os.killpg(pid, signal.SIGKILL),
}


@pytest.mark.parametrize("kill", list(KILLS))
@pytest.mark.slow
def test_the_worker_and_its_processes_die_with_the_supervisor(env, kill, run_smoke_cell):
    out_dir = env / "cells"
    out_dir.mkdir()
    out = out_dir / "cell.json"
    pid_file = env / "child.pid"
    proc = _start_hanging_cell(out, pid_file)
    below: list[psutil.Process] = []
    try:
        _wait_for(lambda: pid_file.exists() and pid_file.read_text(), 60, "the loader's child")
        below = psutil.Process(proc.pid).children(recursive=True)
        assert len(below) >= 2, "expected the worker and the loader's child"
        sent = time.monotonic()
        KILLS[kill](proc.pid)
        proc.wait(timeout=30)
        _wait_gone(below, GONE_WITHIN_S)
        took = time.monotonic() - sent
        print(f"{kill}: the worker's processes were gone {took * 1000:.0f} ms after the signal")
        # pgrep -f for this test's cells: nothing names them any more
        assert not [
            p
            for p in psutil.process_iter(["cmdline"])
            if any(str(out_dir) in arg for arg in p.info["cmdline"] or [])
        ]
    finally:
        _kill_leftovers(below)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0 and not out.exists(), "an interrupted cell has no result"
    if kill in ("SIGINT", "SIGTERM"):
        assert not _stale(out_dir), "an interrupted supervisor removes its temporary files"
    # The next run of the cell removes what a killed one left, then measures it.
    rerun = run_smoke_cell("TAB-1", "numpy", out)
    assert rerun.returncode == 0, rerun.stderr
    assert load_result(out)["status"] == "ok"
    assert _stale(out_dir) == []


@pytest.mark.slow
def test_a_start_removes_only_the_temporary_files_of_dead_supervisors(env, run_smoke_cell):
    out = env / "cell.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [f".cell.json.{dead.pid}.abc123.worker", f".cell.json.{dead.pid}.abc123.log"]
    stale.append(f"..cell.json.{dead.pid}.abc123.worker.x7y8.tmp")
    live = [f".cell.json.{os.getpid()}.def456.log", f".other.json.{os.getpid()}.q.worker"]
    for name in stale + live:
        (env / name).write_text("x")
    proc = run_smoke_cell("TAB-1", "numpy", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in env.glob(".*.json.*")) == sorted(live)


@pytest.mark.parametrize(
    "measured", ["raw/TAB-1/small/numpy.json", "processes/TAB-1/small/numpy/2.json"]
)
@pytest.mark.slow
def test_a_cell_of_a_results_directory_sweeps_the_whole_raw_and_processes_trees(
    env, run_smoke_cell, measured
):
    """The killed run's cell (or process of a cell) may not be the next one measured: every
    start sweeps raw/ and processes/."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for left in ("raw/NLP-1/small", "processes/NLP-1/small/numpy"):
        other = env / "results" / left
        other.mkdir(parents=True)
        (other / f".1.json.{dead.pid}.abc123.log").write_text("x")
    proc = run_smoke_cell("TAB-1", "numpy", env / "results" / measured)
    assert proc.returncode == 0, proc.stderr
    assert _stale(env / "results") == []


def _hold_lock(path: Path, holder: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, holder.encode())
    return fd


@pytest.mark.slow
def test_a_measurement_waits_while_the_bench_lock_is_held_and_says_by_whom(env):
    lock = env / "bench.lock"
    fd = _hold_lock(lock, "pid 4242 measuring CV-1/small/grain since 2026-12-01T00:00:00Z\n")
    out = env / "cell.json"
    cmd = _cli("run", "--profile", "smoke", "--scenario", "TAB-1", "--adapter", "numpy")
    proc = subprocess.Popen(
        [*cmd, "--output", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(3)
        assert proc.poll() is None and not out.exists(), "it must wait, not measure"
        released = datetime.now().astimezone()
    finally:
        os.close(fd)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    waits = [ln for ln in stderr.splitlines() if "waiting for the bench lock" in ln]
    assert waits == [
        f"waiting for the bench lock {lock}, held by pid 4242 measuring "
        "CV-1/small/grain since 2026-12-01T00:00:00Z"
    ]
    attempt = load_result(out)["attempts"][0]
    assert datetime.fromisoformat(attempt["started"]) >= released


@pytest.mark.slow
def test_a_lock_wait_that_runs_out_measures_nothing(env):
    lock = env / "bench.lock"
    fd = _hold_lock(lock, "pid 4242 measuring CV-1/small/grain since 2026-12-01T00:00:00Z\n")
    out = env / "cell.json"
    cmd = _cli("run", "--profile", "smoke", "--scenario", "TAB-1", "--adapter", "numpy")
    try:
        for value, expected in (("0.5", "gave up after 0.5 s"), ("soon", "'soon': expected")):
            proc = subprocess.run(
                [*cmd, "--output", str(out)],
                env={**os.environ, "DATARAX_BENCH_LOCK_TIMEOUT_S": value},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 2, proc.stderr
            lines = proc.stderr.strip().splitlines()
            assert (
                len(lines) == 1
                and expected in lines[0]
                and "DATARAX_BENCH_LOCK_TIMEOUT_S" in lines[0]
            )
            assert "[worker]" not in proc.stderr and not out.exists()
    finally:
        os.close(fd)


def test_a_bench_lock_that_cannot_be_opened_is_one_line(env, monkeypatch):
    monkeypatch.setenv("DATARAX_BENCH_LOCK", str(env / "missing-file-as-dir" / "x" / "bench.lock"))
    (env / "missing-file-as-dir").write_text("a file, not a directory")
    out = env / "cell.json"
    cmd = _cli("run", "--profile", "smoke", "--scenario", "TAB-1", "--adapter", "numpy")
    proc = subprocess.run([*cmd, "--output", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bench lock" in lines[0] and "DATARAX_BENCH_LOCK" in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_two_runs_started_together_never_measure_at_once(env):
    """Two users' `datarax-bench run` at the same moment: one measures, then the other."""
    cmd = _cli("run", "--profile", "smoke", "--scenario", "TAB-1", "--adapter", "numpy")
    outs = [env / "a.json", env / "b.json"]
    procs = [
        subprocess.Popen([*cmd, "--output", str(o)], stderr=subprocess.PIPE, text=True)
        for o in outs
    ]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    spans = []
    for out in outs:
        result = load_result(out)
        assert result["status"] == "ok"
        start = datetime.fromisoformat(result["timestamps"]["started"])
        spans.append((start, datetime.fromisoformat(result["timestamps"]["finished"])))
    first, second = sorted(spans)
    assert first[1] <= second[0], f"the measurements overlapped: {spans}"


def _copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True)
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    shutil.copytree(ROOT / "config", dest / "config")
    shutil.copytree(ROOT / "workflow", dest / "workflow")
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill -9", "Ctrl-C"])
def test_snakemake_killed_with_its_process_group_leaves_no_measurement_running(env, sig):
    """`setsid snakemake ... & kill -9 -- -PGID` (or Ctrl-C's SIGINT to the whole group)
    mid-measurement, then the documented recovery."""
    workdir = _copy_workflow(env / "checkout")
    run_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    run_env.pop("DATARAX_BENCH_ROOT", None)
    raw = workdir / "results/smoke/local/raw"
    targets = [
        str(raw.relative_to(workdir) / c)
        for c in ("TAB-1/small/numpy.json", "NLP-1/small/numpy.json")
    ]
    config = ["--config", "profile=smoke", "scenarios=[TAB-1,NLP-1]", "adapters=[numpy]"]

    def snakemake(*args, **kwargs):
        cmd = [str(BIN / "snakemake"), "--cores", "2", *args, *config]
        return subprocess.Popen(cmd, cwd=workdir, env=run_env, text=True, **kwargs)

    first_log = env / "first-snakemake.log"
    with open(first_log, "w") as log:
        first = snakemake(*targets, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    top = psutil.Process(first.pid)
    below: list[psutil.Process] = []

    def what_happened() -> str:
        left = [f"{p.pid} {' '.join(_cmdline(p))[:150]}" for p in below if _alive(p)]
        return f"still alive: {left}\nsnakemake said:\n{first_log.read_text()[-3000:]}"

    try:
        _wait_for(lambda: first.poll() is not None or _workers(top), 120, "a worker")
        assert first.poll() is None, "snakemake ended before it started a worker"
        below = top.children(recursive=True)
        workers = _workers(top)
        sent = time.monotonic()
        os.killpg(first.pid, sig)
        _wait_gone(workers, GONE_WITHIN_S)
        took = time.monotonic() - sent
        try:
            first.wait(timeout=60)
            _wait_gone(below, 10)
        except (subprocess.TimeoutExpired, AssertionError) as exc:
            raise AssertionError(f"{exc}\n{what_happened()}") from None
        print(f"{sig.name} to snakemake's group: its workers gone {took * 1000:.0f} ms after")
        # pgrep -f datarax_bench.run.worker, for this checkout only
        orphans = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if "datarax_bench.run.worker" in (p.info["cmdline"] or []) and p.cwd() == str(
                    workdir
                ):
                    orphans.append(p)
            except psutil.Error:
                pass
        assert orphans == [], "a worker outlived snakemake"
    finally:
        _kill_leftovers(below)
    left = _stale(raw)
    if sig == signal.SIGKILL:
        assert [n for n in left if n.endswith(".log")], f"expected the killed cell's log: {left}"
    else:
        assert left == [], "an interrupted supervisor removes its temporary files"

    recovery = subprocess.run(
        [str(BIN / "snakemake"), "--unlock", *config],
        cwd=workdir,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert recovery.returncode == 0, recovery.stderr[-2000:]
    killed_at = datetime.now().astimezone()
    rerun = snakemake(
        "--rerun-incomplete", *targets, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output[-4000:]
    assert _stale(raw) == [], "the rerun removed what the killed run left"
    spans = []
    for target in targets:
        result = load_result(workdir / target)
        assert result["status"] == "ok"
        spans.append((result["timestamps"]["started"], result["timestamps"]["finished"], target))
    # Whatever the rerun measured, it measured after the kill and one cell at a time.
    remeasured = sorted(s for s in spans if datetime.fromisoformat(s[0]) >= killed_at)
    assert remeasured, "the rerun measured the killed cell"
    for a, b in zip(remeasured, remeasured[1:], strict=False):
        assert a[1] <= b[0], f"overlapping measurements: {a} {b}"

    # `retries` is not a measurement setting: changing it re-runs nothing.
    profile = workdir / "config/profiles/smoke.yaml"
    profile.write_text(profile.read_text().replace("retries: 1", "retries: 3"))
    dry = snakemake("-n", *targets, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = dry.communicate(timeout=120)[0]
    assert dry.returncode == 0 and "Nothing to be done" in output, output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["test-hang-torch-workers", "test-hang-grain-workers"])
def test_a_frameworks_worker_processes_die_with_a_killed_supervisor(env, adapter, monkeypatch):
    """PyTorch's DataLoader and Grain's mp_prefetch workers, hung in the element function."""
    monkeypatch.setenv("DATARAX_BENCH_PLUGINS", "misbehaving_adapters,hanging_loaders")
    pids = env / "pids"
    pids.mkdir()
    out = env / "cell.json"
    cmd = _cli("run", "--profile", "smoke", "--scenario", "TAB-1", "--adapter", adapter)
    proc = subprocess.Popen(
        [*cmd, "--output", str(out)],
        env={**os.environ, "DATARAX_TEST_HANG_PID_DIR": str(pids)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    below: list[psutil.Process] = []
    try:
        _wait_for(lambda: list(pids.iterdir()), 120, "a loader worker process")
        below = psutil.Process(proc.pid).children(recursive=True)
        hung = [psutil.Process(int(p.name)) for p in pids.iterdir()]
        assert all(p in below for p in hung), "the loader's workers run below the supervisor"
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _wait_gone(below, GONE_WITHIN_S)
        took = time.monotonic() - sent
        print(
            f"{adapter}: {len(below)} processes below the supervisor gone in {took * 1000:.0f} ms"
        )
    finally:
        _kill_leftovers(below)
