"""Plots: real smoke results through aggregate, then the per-scenario figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from datarax_bench import plots
from datarax_bench.adapters import get_adapter
from datarax_bench.aggregate import aggregate_run
from datarax_bench.catalog import load_catalog, load_profile
from datarax_bench.cell import CellClock, make_result
from datarax_bench.results import cell_path, write_result


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_cache):
    """PC-1 (two variants) measured for real; TAB-1 only an `unsupported` cell."""
    out = tmp_path_factory.mktemp("plots-run")
    cli = str(Path(sys.executable).parent / "datarax-bench")
    cmd = [cli, "run", "--profile", "smoke", "--scenarios", "PC-1", "--adapters", "numpy"]
    subprocess.run([*cmd, "--output-dir", str(out)], check=True)
    profile = load_profile("smoke")
    workload = load_catalog().get("TAB-1").resolve("small", profile.size)
    doc = make_result(
        "unsupported", "no loader (test)", profile, workload, get_adapter("numpy"), CellClock()
    )
    write_result(cell_path(out, "TAB-1", "small", "numpy"), doc)
    aggregate_run(sorted((out / "raw").rglob("*.json")), out, "smoke", "local")
    return out


def _plot(run_dir, tmp_path, scenario):
    names = ("throughput", "latency", "first_batch")
    outputs = {n: tmp_path / scenario / f"{n}.png" for n in names}
    plots.plot_scenario(run_dir / "results.csv", run_dir / "repetitions.csv", scenario, **outputs)
    return outputs


def test_pngs_are_written_per_scenario(run_dir, tmp_path):
    for scenario in ("PC-1", "TAB-1"):
        for path in _plot(run_dir, tmp_path, scenario).values():
            image = matplotlib.image.imread(path)
            assert image.shape[0] > 100 and image.shape[1] > 100
    assert not list(tmp_path.rglob(".*.png")), "no temporary files left behind"


def test_throughput_bars_are_the_medians_with_ci(run_dir):
    table = pd.read_csv(run_dir / "results.csv")
    cells = table[table["scenario"] == "PC-1"]
    fig = plots.throughput_figure(cells, "t")
    ax = fig.axes[0]
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == pytest.approx(sorted(cells["elements_per_s_median"]))
    assert [t.get_text() for t in ax.get_xticklabels()] == list(cells["variant"])
    # The error bar of each bar spans the 95% CI.
    segments = ax.collections[0].get_segments()
    spans = sorted((s[0][1], s[1][1]) for s in segments)
    expected = sorted(
        zip(cells["elements_per_s_ci95_low"], cells["elements_per_s_ci95_high"], strict=True)
    )
    assert np.allclose(spans, expected)


def test_latency_and_first_batch_use_every_repetition(run_dir):
    table = pd.read_csv(run_dir / "results.csv")
    reps = pd.read_csv(run_dir / "repetitions.csv")
    cells, reps = table[table["scenario"] == "PC-1"], reps[reps["scenario"] == "PC-1"]
    fig = plots.latency_figure(cells, reps, "t")
    bars = fig.axes[0].patches
    assert len(bars) == 3 * len(cells)  # p50, p95, p99 per cell
    p99 = reps.groupby("variant", sort=False)["latency_ms_p99"].median()
    assert sorted(p.get_height() for p in bars[-len(cells) :]) == pytest.approx(sorted(p99))
    fig = plots.first_batch_figure(cells, reps, "t")
    dots = [line for line in fig.axes[0].lines if line.get_marker() == "o"]
    assert sum(len(d.get_ydata()) for d in dots) == len(reps)


def test_a_scenario_without_ok_cells_says_why(run_dir):
    table = pd.read_csv(run_dir / "results.csv")
    cells = table[table["scenario"] == "TAB-1"]
    fig = plots.throughput_figure(cells, "t")
    text = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "unsupported" in text and "small/numpy" in text
