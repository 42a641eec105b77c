"""W&B export with the real wandb library, offline: `datarax-bench export` and export.py.

The offline run is inspected through what wandb wrote: the `.wandb` transaction log (read with
wandb's own DataStore reader) and the table file under the run's files dir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support import BIN, ROOT, run_cli

# The fixtures (results_dir, wandb_env) read the shared smoke run's SMOKE_RUN cells.
from support.wandb_offline import (
    SCENARIOS,
    SENTINEL_KEY,
    SMOKE_RUN,  # noqa: F401
    _closed_port,
    assert_key_nowhere,
    offline_run_dir,
    read_offline_run,
)

from datarax_bench.errors import UserError
from datarax_bench.report import wandb_export as export


def cells_of(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results_dir / "raw").glob("*/*/*.json"))]


@pytest.mark.slow
def test_export_cli_without_key_writes_complete_offline_run(results_dir, wandb_env):
    proc = run_cli("export", "--results-dir", str(results_dir))
    assert proc.returncode == 0, proc.stderr
    run_dir = offline_run_dir(results_dir)
    assert f"wandb sync {run_dir}" in proc.stdout + proc.stderr
    assert "WANDB_API_KEY is not set" in proc.stderr

    run = read_offline_run(run_dir)
    results = cells_of(results_dir)
    manifest = json.loads((results_dir / "manifest.json").read_text())
    commit = manifest["git_commit"]
    assert run["name"].startswith(f"smoke-local-{(commit or 'nogit')[:7]}-")
    assert (run["group"], run["job_type"]) == ("smoke", "benchmark")
    assert {"infra:local", "backend:cpu"} <= set(run["tags"])
    assert run["config"]["git_commit"] == commit
    assert run["config"]["settings"] == manifest["settings"]
    assert run["config"]["hardware"]["jax_backend"] == results[0]["provenance"]["jax"]["backend"]
    assert run["config"]["packages"]["numpy"] == results[0]["provenance"]["packages"]["numpy"]

    # One table row per cell, carrying that cell's own numbers.
    assert len(run["table"]) == len(results) == len(manifest["cells"]) >= len(SCENARIOS)
    rows = {(r["scenario"], r["variant"], r["adapter"]): r for r in run["table"]}
    statuses = set()
    for result in results:
        c = result["cell"]
        row = rows[(c["scenario"], c["variant"], c["adapter"])]
        statuses.add(result["status"])
        assert row["status"] == result["status"]
        assert row["reason"] == result["reason"]
        key = f"{c['scenario']}/{c['variant']}/{c['adapter']}"
        assert run["summary"][f"{key}/status"] == result["status"]
        if result["status"] == "ok":
            median = result["statistics"]["elements_per_s"]["median"]
            assert row["elements_per_s_median"] == pytest.approx(median)
            assert run["summary"][f"{key}/elements_per_s_median"] == pytest.approx(median)
            p95 = result["statistics"]["latency_ms_p95_median"]
            assert run["summary"][f"{key}/latency_ms_p95_median"] == pytest.approx(p95)
        else:
            assert row["elements_per_s_median"] is None
            assert f"{key}/elements_per_s_median" not in run["summary"]
    assert "ok" in statuses and len(statuses) > 1, "the fixture should hold ok and non-ok cells"
    assert run["summary"]["cells/total"] == len(results)

    # The artifact holds every raw result, the manifest and the table.
    (artifact,) = [a for a in run["artifacts"] if a["type"] == "benchmark-results"]
    raw = {str(p.relative_to(results_dir)) for p in (results_dir / "raw").glob("*/*/*.json")}
    assert raw | {"manifest.json", "summary.json", "cells.table.json"} == set(artifact["files"])
    assert artifact["metadata"]["commit"] == commit
    assert (artifact["metadata"]["profile"], artifact["metadata"]["infra"]) == ("smoke", "local")
    # Staged copies live inside the results directory, so `wandb sync` works while it exists.
    for name in raw:
        staged = Path(artifact["files"][name])
        assert staged.is_relative_to(results_dir / "wandb")
        assert staged.read_bytes() == (results_dir / name).read_bytes()


@pytest.mark.slow
def test_export_infers_infra_from_workflow_layout_and_writes_marker(
    results_template, tmp_path, wandb_env
):
    results_dir = tmp_path / "results" / "smoke" / "vast"
    shutil.copytree(results_template, results_dir)
    plots = results_dir / "plots"
    plots.mkdir()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([1, 2], [3, 4])
    fig.savefig(plots / "throughput.png")
    plt.close(fig)

    marker = results_dir / "wandb_export.json"
    report = export.export_results(results_dir, marker=marker, mode="offline")
    assert json.loads(marker.read_text()) == report
    assert report["infra"] == "vast" and report["mode"] == "offline"
    assert report["run_name"].startswith("smoke-vast-")
    assert report["exported"]["plots"] == ["plots/throughput.png"]
    run = read_offline_run(Path(report["run_dir"]))
    assert run["name"] == report["run_name"]
    assert "infra:vast" in run["tags"]
    (artifact,) = [a for a in run["artifacts"] if a["type"] == "benchmark-results"]
    assert "plots/throughput.png" in artifact["files"]
    image = [h for h in run["history"] if "plots/throughput/path" in h]
    assert (
        image and (Path(report["run_dir"]) / "files" / image[0]["plots/throughput/path"]).is_file()
    )
    assert report["sync_command"] == f"wandb sync {report['run_dir']}"


@pytest.mark.slow
def test_cli_offline_flag_wins_over_a_key_and_sets_project_entity_infra(
    results_dir, wandb_env, monkeypatch
):
    monkeypatch.setenv("WANDB_API_KEY", SENTINEL_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    args = ["--offline", "--infra", "lambda", "--project", "proj", "--entity", "team"]
    proc = run_cli("export", "--results-dir", str(results_dir), *args)
    assert proc.returncode == 0, proc.stderr
    assert "falling back" not in proc.stderr  # never tried to go online
    run = read_offline_run(offline_run_dir(results_dir))
    assert (run["project"], run["entity"]) == ("proj", "team")
    assert run["name"].startswith("smoke-lambda-") and "infra:lambda" in run["tags"]


def test_skip_without_key_exports_nothing(results_dir, wandb_env):
    proc = run_cli("export", "--results-dir", str(results_dir), "--skip-without-key")
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stderr and "WANDB_API_KEY is not set" in proc.stderr
    assert not (results_dir / "wandb").exists()


def test_disabled_mode_logs_nothing(results_dir, wandb_env):
    report = export.export_results(results_dir, mode="disabled")
    assert report["mode"] == "disabled"
    assert not (results_dir / "wandb").exists()


@pytest.mark.slow
def test_key_with_unreachable_server_falls_back_offline_at_once(
    results_dir, wandb_env, monkeypatch
):
    monkeypatch.setenv("WANDB_API_KEY", SENTINEL_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.monotonic()
    proc = run_cli("export", "--results-dir", str(results_dir))
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 30
    assert "falling back to offline" in proc.stderr
    assert "wandb sync" in proc.stdout
    read_offline_run(offline_run_dir(results_dir))
    assert_key_nowhere(SENTINEL_KEY, [results_dir, *wandb_env.values()], proc)


class _StallingWandb(BaseHTTPRequestHandler):
    """Answers the reachability probe, then never answers W&B's API calls."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def do_POST(self):
        time.sleep(90)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_key_with_stalling_server_gives_up_within_a_minute(results_dir, wandb_env, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StallingWandb)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("WANDB_API_KEY", SENTINEL_KEY)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
        t0 = time.monotonic()
        proc = run_cli("export", "--results-dir", str(results_dir), timeout=150)
        elapsed = time.monotonic() - t0
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 60, f"export took {elapsed:.0f} s against a stalled server"
    assert "falling back to offline" in proc.stderr and "online export failed" in proc.stderr
    assert not list((results_dir / "wandb").glob("run-*")), "the failed online run is removed"
    run = read_offline_run(offline_run_dir(results_dir))
    assert len(run["table"]) == len(cells_of(results_dir))
    assert_key_nowhere(SENTINEL_KEY, [results_dir, *wandb_env.values()], proc)


# --- bad input: one line, exit 2, nothing exported --------------------------------------------


def _break_json(d: Path) -> Path:
    path = next((d / "raw").glob("*/*/*.json"))
    path.write_text(path.read_text()[:50])
    return path


def _break_schema(d: Path) -> Path:
    path = next((d / "raw").glob("*/*/*.json"))
    doc = json.loads(path.read_text())
    doc["status"] = "great"
    path.write_text(json.dumps(doc))
    return path


def _drop_raw(d: Path) -> Path:
    shutil.rmtree(d / "raw")
    return d / "raw"


def _drop_manifest(d: Path) -> Path:
    (d / "manifest.json").unlink()
    return d / "manifest.json"


def _stale_manifest(d: Path) -> Path:
    path = sorted((d / "raw").glob("*/*/*.json"))[-1]
    doc = json.loads(path.read_text())
    doc["reason"] = (doc["reason"] or "") + " edited"
    if doc["status"] == "ok":
        doc["reason"] = None
        doc["statistics"]["elements_per_s"]["median"] *= 2
    path.write_text(json.dumps(doc))
    return path


def _missing_cell(d: Path) -> Path:
    path = next((d / "raw").glob("*/*/*.json"))
    path.unlink()
    return path


@pytest.mark.parametrize(
    "breaker",
    [_break_json, _break_schema, _drop_raw, _drop_manifest, _stale_manifest, _missing_cell],
)
def test_bad_results_dir_exits_2_with_one_line_naming_the_file(results_dir, wandb_env, breaker):
    bad = breaker(results_dir)
    proc = run_cli("export", "--results-dir", str(results_dir), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(bad) in lines[0]
    assert not (results_dir / "wandb").exists()
    assert not any(wandb_env["WANDB_DIR"].iterdir())


def test_missing_results_dir_exits_2(tmp_path, wandb_env):
    proc = run_cli("export", "--results-dir", str(tmp_path / "nowhere"), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {tmp_path / 'nowhere'}: results directory not found; "
        "expected the --output-dir of a run"
    )


# --- units ------------------------------------------------------------------------------------


def test_choose_mode():
    key = {"WANDB_API_KEY": SENTINEL_KEY}
    assert export.choose_mode("auto", key) == ("online", None)
    assert export.choose_mode("auto", {})[0] == "offline"
    assert export.choose_mode("online", {}) == (
        "offline",
        "WANDB_API_KEY is not set (online was requested; the run is kept offline instead)",
    )
    assert export.choose_mode("offline", key) == ("offline", None)
    assert export.choose_mode("disabled", key) == ("disabled", None)
    assert export.choose_mode("auto", {**key, "WANDB_MODE": "offline"}) == (
        "offline",
        "WANDB_MODE=offline",
    )
    assert export.choose_mode("online", {**key, "WANDB_MODE": "disabled"}) == ("disabled", None)
    assert export.choose_mode("auto", {**key, "WANDB_MODE": "online"}) == ("online", None)
    with pytest.raises(UserError, match="'sometimes'.*expected one of auto, online"):
        export.choose_mode("sometimes", {})


def test_summary_keys_are_unique_per_cell(results_dir):
    bundle = export.load_bundle(results_dir)
    metrics = export.summary_metrics(bundle)
    per_cell = [k for k in metrics if not k.startswith("cells/")]
    prefixes = {k.rsplit("/", 1)[0] for k in per_cell}
    assert len(prefixes) == len(bundle.cells)
    assert all(k.count("/") == 3 for k in per_cell)


def test_infer_infra(tmp_path):
    assert export.infer_infra(tmp_path / "results" / "gpu_a100" / "lambda", "gpu_a100") == "lambda"
    assert export.infer_infra(tmp_path / "some" / "dir", "smoke") == "local"


def test_probe_reports_refused_connection():
    reason = export.probe(f"http://127.0.0.1:{_closed_port()}", timeout=2)
    assert reason and "unreachable" in reason


# --- the workflow's export_wandb rule ---------------------------------------------------------


@pytest.mark.slow
def test_workflow_smoke_run_exports_offline_and_never_writes_the_key(
    tmp_path, wandb_env, data_cache
):
    """The real workflow with a well-formed key and W&B unreachable: the rule falls back to an
    offline run, records it in the marker, and the key appears in no file and no output."""
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    shutil.copy(ROOT / "Snakefile", workdir / "Snakefile")
    shutil.copytree(ROOT / "config", workdir / "config")
    shutil.copytree(ROOT / "workflow", workdir / "workflow")
    env = {
        **{k: v for k, v in os.environ.items() if k != "DATARAX_BENCH_ROOT"},
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "WANDB_API_KEY": SENTINEL_KEY,
        "WANDB_BASE_URL": f"http://127.0.0.1:{_closed_port()}",
    }
    config = ["profile=smoke", "scenarios=[TAB-1]", "adapters=[numpy]"]
    config += ["wandb={project: bench-test, entity: my-team}"]
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--cores", "2", "--config", *config],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run_dir = workdir / "results" / "smoke" / "local"
    marker = json.loads((run_dir / "wandb_export.json").read_text())
    assert marker["mode"] == "offline" and "unreachable" in marker["reason"]
    assert (marker["project"], marker["entity"], marker["infra"]) == (
        "bench-test",
        "my-team",
        "local",
    )
    assert marker["sync_command"] in proc.stderr
    offline = Path(marker["run_dir"])
    assert offline.parent == run_dir / "wandb"
    run = read_offline_run(offline)
    assert len(run["table"]) == len(cells_of(run_dir)) == marker["exported"]["table_rows"]
    (artifact,) = [a for a in run["artifacts"] if a["type"] == "benchmark-results"]
    assert {"results.csv", "summary.md", "plots/TAB-1/throughput.png"} <= set(artifact["files"])
    assert (
        "export: cannot upload to W&B, falling back to offline"
        in (workdir / "logs/smoke/local/export_wandb.log").read_text()
    )
    assert_key_nowhere(SENTINEL_KEY, [workdir, *wandb_env.values()], proc)


@pytest.mark.slow
def test_workflow_export_records_wandb_failure_in_marker(results_dir, wandb_env):
    """W&B itself failing (here: its run directory cannot be created) is recorded, not raised."""
    (results_dir / "wandb").write_text("not a directory")
    marker = results_dir / "wandb_export.json"
    report = export.export_for_workflow(results_dir, marker, mode="offline")
    assert report["mode"] == "failed" and report["reason"]
    assert json.loads(marker.read_text()) == report


def test_workflow_export_still_fails_on_bad_results(results_dir, wandb_env):
    _break_schema(results_dir)
    marker = results_dir / "wandb_export.json"
    with pytest.raises(UserError, match="status"):
        export.export_for_workflow(results_dir, marker, mode="offline")
    assert not marker.exists()


@pytest.mark.slow
def test_workflow_export_of_a_scenario_subset_exports_that_subset(results_dir, wandb_env):
    """`snakemake --config scenarios=[CV-1]` in a results directory that holds other scenarios
    too: the aggregate rule's manifest names the CV-1 cells, and the export sends those, while
    `datarax-bench export` of the same directory still calls the manifest stale."""
    from datarax_bench.report.aggregate import aggregate_run

    subset = sorted((results_dir / "raw" / "CV-1").glob("*/*.json"))
    others = set((results_dir / "raw").glob("*/*/*.json")) - set(subset)
    assert subset and others
    aggregate_run(subset, results_dir, "smoke", "local")
    marker = results_dir / "wandb_export.json"
    report = export.export_for_workflow(results_dir, marker, mode="offline")
    assert report["mode"] == "offline" and report["cells"] == len(subset)
    run = read_offline_run(offline_run_dir(results_dir))
    assert {row["scenario"] for row in run["table"]} == {"CV-1"}
    proc = run_cli("export", "--results-dir", str(results_dir), timeout=60)
    assert proc.returncode == 2 and "the manifest is stale" in proc.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [("--project", "a/b#c"), ("--entity", "team/x"), ("--project", ""), ("--project", "p" * 129)],
)
def test_bad_project_or_entity_is_one_line_exit_2_before_wandb(
    results_dir, wandb_env, option, value
):
    proc = run_cli(
        "export", "--results-dir", str(results_dir), "--offline", option, value, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"W&B {option[2:]} {value!r}: expected" in lines[0], lines
    assert not (results_dir / "wandb").exists()


def test_a_nan_median_fails_the_export_before_any_wandb_run(results_dir, wandb_env):
    path = next(
        p for p in sorted((results_dir / "raw").glob("*/*/*.json")) if '"ok"' in p.read_text()
    )
    median = json.loads(path.read_text())["statistics"]["elements_per_s"]["median"]
    path.write_text(path.read_text().replace(repr(median), "NaN", 1))
    proc = run_cli("export", "--results-dir", str(results_dir), timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"error: {path}: statistics.elements_per_s.median: got NaN, expected a finite number"
    ]
    assert not (results_dir / "wandb").exists()


class _RefusingWandb(BaseHTTPRequestHandler):
    """Answers the reachability probe, then refuses every API call (a revoked key)."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def do_POST(self):
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"errors": [{"message": "user is not logged in"}]}')

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_failed_online_attempt_leaves_only_the_offline_run(results_dir, wandb_env, monkeypatch):
    """`wandb sync` of the results directory must find the offline run and nothing else."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingWandb)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("WANDB_API_KEY", SENTINEL_KEY)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
        proc = run_cli("export", "--results-dir", str(results_dir), timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr
    assert "online export failed" in proc.stderr and "falling back to offline" in proc.stderr
    runs = sorted(p.name for p in (results_dir / "wandb").iterdir() if "run-" in p.name)
    assert [r for r in runs if r.startswith("run-")] == [], runs
    assert len([r for r in runs if r.startswith("offline-run-")]) == 1, runs
    logs = [p.relative_to(results_dir) for p in (results_dir / "wandb").rglob("*.wandb")]
    assert logs == [offline_run_dir(results_dir).relative_to(results_dir) / logs[0].name]
    read_offline_run(offline_run_dir(results_dir))
