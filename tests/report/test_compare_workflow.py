"""A baseline in the workflow, end to end: the smoke workflow twice on a small subset, the
second time with one adapter (tests/plugins/slow_loaders.py) pausing before every batch and
`baseline=` the first run. That adapter's cells are `slower`, every other cell `same`, the
comparison is in the run directory, the report and the offline W&B run, and
`datarax-bench compare` exits 1.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from support import CLI, PLUGINS
from support.wandb_offline import read_offline_run
from support.workflow import copy_workflow, snakemake

SLOW = "test-sleepy-numpy"
# Five repetitions: with the smoke profile's two, no two-sided test can reach p < 0.01.
REPETITIONS = 5
# A factor of 10 either way: between two runs minutes apart the other jobs on this shared 2-core
# machine changed the NumPy reference's tiny cells by up to 3.5x (fully separated repetitions),
# while the pause makes the slow adapter's cells some hundred times slower.
THRESHOLD = 9.0
PAUSE_S = "0.5"
CONFIG = ["profile=smoke", "scenarios=[TAB-1,NLP-1]", f"adapters=[numpy,{SLOW}]"]


def _prepare(workdir: Path) -> None:
    """The copy's smoke profile takes five repetitions and its schema knows the test adapter."""
    profile = workdir / "config/profiles/smoke.yaml"
    doc = yaml.safe_load(profile.read_text())
    doc["measurement"]["repetitions"] = REPETITIONS
    profile.write_text(yaml.safe_dump(doc, sort_keys=False))
    schema_path = workdir / "workflow/schemas/config.schema.yaml"
    schema = yaml.safe_load(schema_path.read_text())
    schema["properties"]["adapters"]["items"]["enum"].append(SLOW)
    schema_path.write_text(yaml.safe_dump(schema, sort_keys=False))


@pytest.mark.slow
@pytest.mark.alone  # compares two timed runs
def test_a_slower_adapter_is_caught_against_the_baseline(tmp_path, monkeypatch):
    workdir = copy_workflow(tmp_path / "checkout")
    _prepare(workdir)
    pythonpath = [str(PLUGINS), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(pythonpath))
    monkeypatch.setenv("DATARAX_BENCH_PLUGINS", "slow_loaders")

    monkeypatch.setenv("DATARAX_TEST_LOADER_SLEEP_S", "0")
    snakemake(
        workdir, "--cores", "2", config=[*CONFIG, "results_dir=before", "wandb={mode: disabled}"]
    )
    monkeypatch.setenv("DATARAX_TEST_LOADER_SLEEP_S", PAUSE_S)
    run = [
        *CONFIG,
        "baseline=before/{profile}/{infra}",
        f"comparison_threshold={THRESHOLD}",
        "wandb={mode: offline}",
    ]
    snakemake(workdir, "--cores", "2", config=run)

    run_dir = workdir / "results/smoke/local"
    rows = list(csv.DictReader((run_dir / "comparison.csv").open()))
    verdicts = {(r["scenario"], r["adapter"], r["metric"]): r["verdict"] for r in rows}
    assert verdicts == {
        ("TAB-1", SLOW, "throughput"): "slower",
        ("NLP-1", SLOW, "throughput"): "slower",
        ("TAB-1", "numpy", "throughput"): "same",
        ("NLP-1", "numpy", "throughput"): "same",
    }, rows
    assert all(float(r["p_value"]) < 0.01 for r in rows if r["adapter"] == SLOW)
    markdown = (run_dir / "comparison.md").read_text()
    assert "slower (REGRESSION)" in markdown and "before/smoke/local" in markdown
    assert (run_dir / "plots/comparison.png").read_bytes()[:4] == b"\x89PNG"

    # The W&B run has the comparison table and plot; the artifact the files.
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    logged = read_offline_run(offline)
    (history,) = [h for h in logged["history"] if "comparison/path" in h]
    table = json.loads((offline / "files" / history["comparison/path"]).read_text())
    assert table["columns"][:3] == ["scenario", "variant", "adapter"]
    assert sorted(row[table["columns"].index("verdict")] for row in table["data"]) == [
        "same",
        "same",
        "slower",
        "slower",
    ]
    assert history["plots/comparison/_type"] == "image-file"
    (artifact,) = [a for a in logged["artifacts"] if a["type"] == "benchmark-results"]
    assert {"comparison.csv", "comparison.md", "plots/comparison.png"} <= set(artifact["files"])

    # The report shows it with its captions.
    snakemake(workdir, "--report", "results/report.html", config=run)
    html = (workdir / "results/report.html").read_text(errors="replace")
    assert (
        "comparison.md" in html
        and "comparison.png" in html
        and "The shaded band is the threshold" in html
    )

    cli = CLI
    proc = subprocess.run(
        [cli, "compare", "before/smoke/local", "results/smoke/local", "--threshold", "900%"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.count("slower (REGRESSION)") == 2


@pytest.mark.slow
def test_a_bad_baseline_stops_the_workflow_before_any_job(tmp_path):
    workdir = copy_workflow(tmp_path / "checkout")
    (workdir / "empty").mkdir()
    cases = [
        (["baseline=nowhere"], "baseline 'nowhere': nowhere is not a results directory"),
        (["baseline=empty"], "baseline 'empty': empty is not a results directory"),
        (
            ["baseline=before", "profiles=[smoke,ci_cpu]"],
            "baseline 'before': 2 profiles are measured; expected a path with {profile}",
        ),
    ]
    for extra, message in cases:
        proc = snakemake(workdir, "-n", config=["profile=smoke", *extra], check=False)
        assert proc.returncode == 2, proc.output
        assert f"error: {message}" in proc.output
        assert "Traceback" not in proc.output
