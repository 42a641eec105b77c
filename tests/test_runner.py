"""Every cell ends in a valid result file, whatever happens to its worker."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from datarax_bench.results import load_result

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("DATARAX_BENCH_PLUGINS", "misbehaving_adapters")
    return tmp_path


def _run(cli_path, *args, timeout=120):
    return subprocess.run([cli_path, *args], capture_output=True, text=True, timeout=timeout)


def _short_timeout_profile(tmp_path, monkeypatch, seconds):
    """A project copy whose smoke profile has a short cell timeout."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    copy = tmp_path / "proj"
    shutil.copytree(root / "config", copy / "config")
    shutil.copytree(root / "workflow" / "schemas", copy / "workflow" / "schemas")
    profile = copy / "config/profiles/smoke.yaml"
    profile.write_text(profile.read_text().replace("timeout_s: 120", f"timeout_s: {seconds}"))
    monkeypatch.setenv("DATARAX_BENCH_ROOT", str(copy))


def test_ok_cell_writes_a_valid_result_with_provenance(
    cli_path, tmp_path, monkeypatch, run_smoke_cell
):
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


def test_git_commit_comes_from_the_environment_without_a_checkout(cli_path, tmp_path, monkeypatch):
    import shutil

    root = Path(__file__).resolve().parents[1]
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


def test_unsupported_cell_names_the_transform_and_runs_no_loader(
    cli_path, plugin_env, run_smoke_cell
):
    out = plugin_env / "cell.json"
    proc = run_smoke_cell("CV-1", "test-limited", out)
    assert proc.returncode == 0, proc.stderr
    result = load_result(out)
    assert result["status"] == "unsupported"
    assert "'random_resized_crop'" in result["reason"]
    assert "[worker]" not in proc.stderr, "no worker process was started"
    assert "repetitions" not in result


def test_a_measure_the_harness_does_not_implement_is_not_implemented_and_nothing_is_timed(
    cli_path, tmp_path, run_smoke_cell, project_copy, monkeypatch
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


def test_exception_in_the_loader_is_a_failed_result(cli_path, plugin_env, run_smoke_cell):
    out = plugin_env / "cell.json"
    run_smoke_cell("TAB-1", "test-raise", out)
    result = load_result(out)
    assert result["status"] == "failed"
    assert result["reason"] == "ValueError: the loader refused this workload"
    assert "Traceback" in result["error"]


def test_worker_that_dies_is_a_failed_result(cli_path, plugin_env, run_smoke_cell):
    out = plugin_env / "cell.json"
    proc = run_smoke_cell("TAB-1", "test-crash", out)
    assert proc.returncode == 0
    result = load_result(out)
    assert result["status"] == "failed"
    assert "exited with code 3" in result["reason"] and "about to die hard" in result["reason"]


def test_missing_framework_makes_the_cell_unsupported(cli_path, plugin_env, run_smoke_cell):
    out = plugin_env / "cell.json"
    run_smoke_cell("TAB-1", "test-missing", out)
    result = load_result(out)
    assert result["status"] == "unsupported"
    assert "framework_that_is_not_installed" in result["reason"]


def test_hanging_loader_times_out_and_leaves_no_process(
    cli_path, plugin_env, monkeypatch, run_smoke_cell
):
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
    assert elapsed < 60
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the loader's worker process outlived its cell"
        time.sleep(0.1)


def test_matrix_writes_every_cell_manifest_and_summary(cli_path, plugin_env):
    out = plugin_env / "results"
    proc = _run(
        cli_path,
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
