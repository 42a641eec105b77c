"""Every cell ends in a valid result file, whatever happens to its worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from support import PLUGINS, ROOT, run_cli
from support.process import pid_alive

from datarax_bench.results import load_result
from datarax_bench.run import runner


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("DATARAX_BENCH_PLUGINS", "misbehaving_adapters")
    return tmp_path


def _short_timeout_profile(tmp_path, monkeypatch, seconds):
    """A project copy whose smoke profile has a short cell timeout."""
    import shutil

    root = ROOT
    copy = tmp_path / "proj"
    shutil.copytree(root / "config", copy / "config")
    shutil.copytree(root / "workflow" / "schemas", copy / "workflow" / "schemas")
    profile = copy / "config/profiles/smoke.yaml"
    profile.write_text(profile.read_text().replace("timeout_s: 120", f"timeout_s: {seconds}"))
    monkeypatch.setenv("DATARAX_BENCH_ROOT", str(copy))


@pytest.mark.slow
def test_ok_cell_writes_a_valid_result_with_provenance(tmp_path, monkeypatch, run_smoke_cell):
    monkeypatch.setenv("WANDB_API_KEY", "sentinel-secret-value-0123456789")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
    out = tmp_path / "cell.json"
    proc = run_smoke_cell("TAB-1", "numpy", out)
    assert proc.returncode == 0, proc.stderr
    result = load_result(out)
    assert result["status"] == "ok" and result["reason"] is None
    assert result["cell"] == {
        "profile": "smoke",
        "scenario": "TAB-1",
        "scenario_name": "Dense feature table",
        "variant": "small",
        "size": "tiny",
        "adapter": "numpy",
        "adapter_name": "NumPy reference",
        "style": "plain",
        "measure": "throughput",
    }
    prov = result["provenance"]
    assert prov["git_commit"] and len(prov["git_commit"]) == 40
    assert prov["jax"]["backend"] == "cpu" and prov["packages"]["numpy"]
    assert prov["environment"]["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=true"
    assert prov["environment"]["JAX_PLATFORMS"] == "cpu"
    assert "sentinel-secret-value" not in out.read_text()
    assert "WANDB_API_KEY" not in out.read_text()
    assert len(result["repetitions"]) == 2
    assert not [p for p in tmp_path.iterdir() if p.name != "cell.json"], "no temporary files left"


@pytest.mark.slow
def test_a_cell_runs_with_the_profiles_threads_whatever_the_callers_environment(
    tmp_path, monkeypatch, run_smoke_cell
):
    # SkyPilot runs every job with OMP_NUM_THREADS=1; a local shell may set anything.
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("MKL_NUM_THREADS", "5")
    out = tmp_path / "cell.json"
    proc = run_smoke_cell("TAB-1", "numpy", out)
    assert proc.returncode == 0, proc.stderr
    prov = load_result(out)["provenance"]
    assert prov["threads"] == {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": None,
        "OPENBLAS_NUM_THREADS": None,
        "TF_NUM_INTRAOP_THREADS": None,
        "TF_NUM_INTEROP_THREADS": None,
    }
    assert prov["environment"]["OMP_NUM_THREADS"] == "1"
    assert "MKL_NUM_THREADS" not in prov["environment"]
    assert load_result(out)["settings"]["threads_env"] == {"OMP_NUM_THREADS": 1}


def test_a_profiles_threads_env_sets_and_unsets_the_thread_variables(project_copy, monkeypatch):
    from datarax_bench.errors import UserError
    from datarax_bench.workload.catalog import load_profile

    profile = project_copy / "config/profiles/smoke.yaml"
    text = profile.read_text()
    monkeypatch.setenv("DATARAX_BENCH_ROOT", str(project_copy))
    profile.write_text(text + "threads_env: {OMP_NUM_THREADS: 4, OPENBLAS_NUM_THREADS: null}\n")
    smoke = load_profile("smoke")
    env = runner.worker_environment(smoke, {"OPENBLAS_NUM_THREADS": "8", "PATH": "/bin"})
    assert env == {"OMP_NUM_THREADS": "4", "PATH": "/bin"}
    assert smoke.settings()["threads_env"] == {"OMP_NUM_THREADS": 4, "OPENBLAS_NUM_THREADS": None}
    profile.write_text(text + "threads_env: {OMP_NUM_THREADS: 0}\n")
    with pytest.raises(UserError, match="threads_env.OMP_NUM_THREADS"):
        load_profile("smoke")
    profile.write_text(text + "threads_env: {NUMBA_NUM_THREADS: 2}\n")
    with pytest.raises(UserError, match="threads_env"):
        load_profile("smoke")


def test_git_commit_comes_from_the_environment_without_a_checkout(tmp_path, monkeypatch):
    import shutil

    root = ROOT
    copy = tmp_path / "synced-tree"  # like the tree SkyPilot syncs: no .git
    shutil.copytree(root / "config", copy / "config")
    shutil.copytree(root / "workflow" / "schemas", copy / "workflow" / "schemas")
    monkeypatch.setenv("DATARAX_BENCH_ROOT", str(copy))
    monkeypatch.setenv("DATARAX_BENCH_GIT_COMMIT", "f" * 40)
    from datarax_bench import provenance

    provenance.git_info.cache_clear()
    monkeypatch.setattr(provenance.paths, "project_root", lambda: copy)
    assert provenance.git_info() == ("f" * 40, None)
    provenance.git_info.cache_clear()


def test_unsupported_cell_names_the_transform_and_runs_no_loader(plugin_env, run_smoke_cell):
    out = plugin_env / "cell.json"
    proc = run_smoke_cell("CV-1", "test-limited", out)
    assert proc.returncode == 0, proc.stderr
    result = load_result(out)
    assert result["status"] == "unsupported"
    assert "'random_resized_crop'" in result["reason"]
    assert "[worker]" not in proc.stderr, "no worker process was started"
    assert "repetitions" not in result


def test_a_measure_the_harness_does_not_implement_is_not_implemented_and_nothing_is_timed(
    tmp_path, run_smoke_cell, project_copy, monkeypatch
):
    """Every shipped measure is implemented; a catalog that declares a new one before the
    harness has it gets `not_implemented` cells, without a worker."""
    schema = project_copy / "workflow/schemas/catalog.schema.yaml"
    schema.write_text(schema.read_text().replace("determinism]", "determinism, energy]"))
    catalog = project_copy / "config/scenarios.yaml"
    catalog.write_text(catalog.read_text().replace("measure: dag", "measure: energy"))
    monkeypatch.setenv("DATARAX_BENCH_ROOT", str(project_copy))
    out = tmp_path / "cell.json"
    proc = run_smoke_cell("PC-2", "numpy", out)
    assert proc.returncode == 0, proc.stderr
    result = load_result(out)
    assert result["status"] == "not_implemented" and "'energy'" in result["reason"]
    assert "repetitions" not in result and "[worker]" not in proc.stderr


@pytest.mark.slow
def test_exception_in_the_loader_is_a_failed_result(plugin_env, run_smoke_cell):
    out = plugin_env / "cell.json"
    run_smoke_cell("TAB-1", "test-raise", out)
    result = load_result(out)
    assert result["status"] == "failed"
    assert result["reason"] == "ValueError: the loader refused this workload"
    assert "Traceback" in result["error"]


@pytest.mark.slow
def test_worker_that_dies_is_a_failed_result(plugin_env, run_smoke_cell):
    out = plugin_env / "cell.json"
    proc = run_smoke_cell("TAB-1", "test-crash", out)
    assert proc.returncode == 0
    result = load_result(out)
    assert result["status"] == "failed"
    assert "exited with code 3" in result["reason"] and "about to die hard" in result["reason"]
    # A failure that repeats stays failed; each attempt is recorded with its reason.
    assert [(a["attempt"], a["status"], a["exit_code"]) for a in result["attempts"]] == [
        (1, "failed", 3),
        (2, "failed", 3),
    ]
    assert all("about to die hard" in a["reason"] for a in result["attempts"])
    assert "attempt 1 failed" in proc.stderr


@pytest.mark.slow
def test_a_worker_that_aborts_once_is_retried_and_the_cell_is_one_attempts_measurement(
    plugin_env, monkeypatch, run_smoke_cell
):
    marker = plugin_env / "aborted"
    monkeypatch.setenv("DATARAX_TEST_ABORT_ONCE_FILE", str(marker))
    out = plugin_env / "cell.json"
    proc = run_smoke_cell("TAB-1", "test-abort-once", out)
    assert proc.returncode == 0, proc.stderr
    assert marker.exists(), "the first worker aborted"
    result = load_result(out)
    assert result["status"] == "ok" and result["reason"] is None
    first, second = result["attempts"]
    assert (first["status"], first["signal"], first["exit_code"]) == ("failed", "SIGABRT", None)
    assert "killed by SIGABRT" in first["reason"] and "terminate called" in first["reason"]
    assert (second["status"], second["signal"], second["exit_code"]) == ("ok", None, 0)
    # All repetitions come from the attempt that completed; none from the aborted one.
    assert [r["index"] for r in result["repetitions"]] == [0, 1]
    assert result["statistics"]["repetitions"] == 2
    assert "after 2 attempts" in proc.stdout


@pytest.mark.slow
def test_retries_zero_leaves_a_crashed_cell_failed_after_one_attempt(
    plugin_env, monkeypatch, run_smoke_cell, project_copy
):
    profile = project_copy / "config/profiles/smoke.yaml"
    profile.write_text(profile.read_text().replace("retries: 1", "retries: 0"))
    monkeypatch.setenv("DATARAX_BENCH_ROOT", str(project_copy))
    monkeypatch.setenv("DATARAX_TEST_ABORT_ONCE_FILE", str(plugin_env / "aborted"))
    out = plugin_env / "cell.json"
    run_smoke_cell("TAB-1", "test-abort-once", out)
    result = load_result(out)
    assert result["status"] == "failed" and "SIGABRT" in result["reason"]
    assert len(result["attempts"]) == 1


def test_a_bad_retries_value_is_one_line_naming_it(project_copy, monkeypatch, tmp_path):
    profile = project_copy / "config/profiles/smoke.yaml"
    profile.write_text(profile.read_text().replace("retries: 1", "retries: -1"))
    monkeypatch.setenv("DATARAX_BENCH_ROOT", str(project_copy))
    out = tmp_path / "cell.json"
    proc = run_cli(
        "run",
        "--profile",
        "smoke",
        "--scenario",
        "TAB-1",
        "--adapter",
        "numpy",
        "--output",
        str(out),
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "retries" in lines[0] and "-1" in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_the_summary_counts_retried_cells(plugin_env, monkeypatch):
    from datarax_bench.report.aggregate import aggregate_run

    monkeypatch.setenv("DATARAX_TEST_ABORT_ONCE_FILE", str(plugin_env / "aborted"))
    out = plugin_env / "results"
    proc = run_cli(
        "run",
        "--profile",
        "smoke",
        "--scenarios",
        "TAB-1",
        "--adapters",
        "numpy",
        "test-abort-once",
        "test-crash",
        "--output-dir",
        str(out),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    cells = sorted(out.glob("raw/*/*/*.json"))
    table = aggregate_run(cells, out, "smoke", "local")
    attempts = dict(zip(table["adapter"], table["attempts"], strict=True))
    assert attempts == {"numpy": 1, "test-abort-once": 2, "test-crash": 2}
    summary = (out / "summary.md").read_text()
    assert "3 cells: 2 ok, 1 failed; 2 retried after a failed attempt (1 ok, 1 failed)" in summary


@pytest.mark.slow
def test_missing_framework_makes_the_cell_unsupported(plugin_env, run_smoke_cell):
    out = plugin_env / "cell.json"
    run_smoke_cell("TAB-1", "test-missing", out)
    result = load_result(out)
    assert result["status"] == "unsupported"
    assert "framework_that_is_not_installed" in result["reason"]


@pytest.mark.slow
def test_hanging_loader_times_out_and_leaves_no_process(plugin_env, monkeypatch, run_smoke_cell):
    _short_timeout_profile(plugin_env, monkeypatch, 6)
    pid_file = plugin_env / "child.pid"
    monkeypatch.setenv("DATARAX_TEST_CHILD_PID_FILE", str(pid_file))
    out = plugin_env / "cell.json"
    start = time.monotonic()
    proc = run_smoke_cell("TAB-1", "test-hang", out)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    result = load_result(out)
    assert result["status"] == "timeout" and "6 s" in result["reason"]
    assert [a["status"] for a in result["attempts"]] == ["timeout"], "a timeout is not retried"
    assert elapsed < 60
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while pid_alive(child):
        assert time.monotonic() < deadline, "the loader's worker process outlived its cell"
        time.sleep(0.1)


def _reaped_within(proc: subprocess.Popen, limit: float) -> bool:
    waiter = threading.Thread(target=runner._reap, args=(proc,), daemon=True)
    waiter.start()
    waiter.join(limit)
    return not waiter.is_alive()


def test_a_killed_worker_is_reaped_after_an_interrupt_inside_popen_wait():
    """Ctrl-C (or SIGTERM, raised as an exception) inside `Popen.wait` can leave the Popen's
    lock held or its child reaped without a return code; the supervisor must still end."""
    held = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # CPython's lock, as an interrupt between its acquire and its try block leaves it.
        assert held._waitpid_lock.acquire(blocking=False)
        os.kill(held.pid, signal.SIGKILL)
        assert _reaped_within(held, 10), "waiting for the killed worker never ended"
        assert held.returncode == -signal.SIGKILL
    finally:
        held._waitpid_lock.release()
    reaped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    os.kill(reaped.pid, signal.SIGKILL)
    os.waitpid(reaped.pid, 0)  # as an interrupt between waitpid and recording the status
    assert _reaped_within(reaped, 10) and reaped.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_matrix_writes_every_cell_manifest_and_summary(plugin_env):
    out = plugin_env / "results"
    proc = run_cli(
        "run",
        "--profile",
        "smoke",
        "--scenarios",
        "TAB-1,PR-1",
        "--scenarios",
        "CV-1",
        "--adapters",
        "numpy",
        "test-limited",
        "--output-dir",
        str(out),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[6/6]" in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    got = {(c["scenario"], c["adapter"]): c["status"] for c in manifest["cells"]}
    assert got == {
        ("TAB-1", "numpy"): "ok",
        ("TAB-1", "test-limited"): "ok",
        ("PR-1", "numpy"): "ok",
        ("PR-1", "test-limited"): "unsupported",
        ("CV-1", "numpy"): "ok",
        ("CV-1", "test-limited"): "unsupported",
    }
    for cell in manifest["cells"]:
        load_result(out / cell["path"])
    assert summary["counts"] == {"ok": 4, "unsupported": 2}
    assert len(summary["cells"]) == 6
