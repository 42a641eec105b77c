"""Does the loader keep an accelerator fed (datarax_bench.measures.feed): the emulated training loop's
utilisation on a clock the test controls, the shortest fed step, the profile's `feed` key, and
the whole path a user takes: `datarax-bench run` with a profile that asks for it, the result,
the summary's table and the plot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
import yaml
from support import BIN, PLUGINS, ROOT

from datarax_bench import results
from datarax_bench.measures import feed
from datarax_bench.report import plots
from datarax_bench.report.aggregate import aggregate_run
from datarax_bench.results import cell_path, load_result
from datarax_bench.workload.catalog import load_catalog, load_profile
from datarax_bench.workload.schemas import load_schema

SLOW = "test-sleepy-numpy"  # tests/plugins/slow_loaders.py
PAUSE_S = 0.025


# --- the loop, on a clock the test controls ---------------------------------------------------


class Clock:
    """Time that passes only when the loader fetches or the host sleeps (then `late` more)."""

    def __init__(self, late_s: float = 0.0):
        self.now = 100.0
        self.late_s = late_s
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds + self.late_s


def _window(fetch_times, step_ms, late_s=0.0, min_steps=40, min_seconds=0.0):
    clock = Clock(late_s)
    times = iter(fetch_times)

    def fetch():
        clock.now += next(times)
        return object()

    window = feed.training_window(fetch, step_ms / 1000, min_steps, min_seconds, clock, clock.sleep)
    return window, clock


def _forever(*seconds):
    while True:
        yield from seconds


def test_a_loader_much_faster_than_the_step_keeps_it_busy():
    window, clock = _window(_forever(0.001), step_ms=10, late_s=0.0002)
    assert window.utilisation == pytest.approx(1.0, abs=1e-9)
    assert window.steps == 40 and window.wall_s == pytest.approx(0.4)
    # The host waited for every step but the first and woke late each time; every step started
    # at the previous one's end.
    assert clock.sleeps == 40 and window.late_s == pytest.approx([0.0002] * 40)


def test_a_loader_slower_than_the_step_reaches_step_over_fetch_time():
    window, clock = _window(_forever(0.020), step_ms=5)
    assert window.utilisation == pytest.approx(5 / 20, rel=1e-9)
    assert clock.sleeps == 0  # the step was always over before the next batch came


def test_a_late_timer_does_not_count_against_the_loader():
    # A fetch of 9.9 ms begun 0.2 ms late, after the host timer's wait, still counts as begun when
    # the 10 ms step did: the loader is in time.
    window, _ = _window(_forever(0.0099), step_ms=10, late_s=0.0002)
    assert window.utilisation == pytest.approx(1.0, abs=1e-9)
    # A fetch slower than the step is not helped by it: 10.1 ms per step.
    window, _ = _window(_forever(0.0101), step_ms=10, late_s=0.0002)
    assert window.utilisation == pytest.approx(10 / 10.1, rel=1e-6)


def test_one_step_in_flight_does_not_average_out_a_slow_batch():
    # Fetches of 2 and 18 ms average the 10 ms step, but the step after a slow fetch must wait
    # for it: two steps take 10 + 18 ms.
    window, _ = _window(_forever(0.002, 0.018), step_ms=10)
    assert window.utilisation == pytest.approx(20 / 28, rel=1e-3)


def test_a_window_lasts_min_steps_and_min_seconds_and_leaves_the_first_fetch_out():
    window, _ = _window(_forever(0.5, *[0.001] * 1000), step_ms=10, min_steps=5, min_seconds=0.3)
    assert window.steps in (30, 31)  # 0.3 s of 10 ms steps, give or take a rounding
    assert window.wall_s == pytest.approx(window.steps * 0.01)
    assert window.utilisation == pytest.approx(1.0)
    window, _ = _window(_forever(0.001), step_ms=100, min_steps=5, min_seconds=0.3)
    assert window.steps == 5 and window.wall_s == pytest.approx(0.5)


# --- the shortest step fed ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("utilisation", "expected"),
    [
        ({1: 0.5, 5: 0.93, 20: 0.99, 100: 1.0}, 5),
        ({1: 0.95, 5: 0.99, 20: 1.0, 100: 1.0}, 1),
        ({1: 0.1, 5: 0.3, 20: 0.6, 100: 0.89}, None),
        # A short step fed by chance between longer ones that are not is not the answer.
        ({1: 0.5, 5: 0.92, 20: 0.85, 100: 0.99}, 100),
        ({1: 0.5, 5: 0.9, 20: 0.95, 100: 0.99}, 5),  # the threshold itself counts as fed
    ],
)
def test_shortest_fed_step(utilisation, expected):
    assert feed.shortest_fed(utilisation, 0.9) == expected


def test_shortest_fed_label_says_when_the_range_ends_it():
    steps = [1.0, 5.0, 20.0, 100.0]
    assert results.shortest_fed_label(5.0, steps) == "5 ms"
    assert results.shortest_fed_label(1.0, steps) == "≤ 1 ms"
    assert results.shortest_fed_label(None, steps) == "> 100 ms"
    assert results.shortest_fed_label(float("nan"), steps) == "> 100 ms"


# --- the profile's key -------------------------------------------------------------------------


def test_schema_defaults_are_the_ones_the_code_applies():
    keys = load_schema("profile")["properties"]["feed"]["properties"]
    assert {k: keys[k]["default"] for k in feed.DEFAULTS} == feed.DEFAULTS


def test_only_a_profile_with_feed_measures_it_and_only_its_throughput_scenarios():
    catalog = load_catalog()
    smoke, ci = load_profile("smoke"), load_profile("ci_cpu")
    assert "feed" not in smoke.settings() and feed.FeedSettings.of(smoke) is None
    assert ci.settings()["feed"] == ci.feed
    assert feed.fed_scenarios(ci, catalog, ci.scenarios) == ["CV-1", "NLP-1", "TAB-1"]
    settings = feed.FeedSettings.of(ci)
    assert settings.step_ms == (1.0, 5.0, 20.0, 100.0) and settings.threshold == 0.9
    assert feed.settings_for(ci, catalog.get("PC-1").resolve("d1")) is None
    assert feed.settings_for(ci, catalog.get("TAB-1").resolve("small")) == settings


def _profile_copy(project_copy: Path, name: str, feed_key) -> None:
    """config/profiles/<name>.yaml in the copy: the smoke profile with `feed_key` as its feed."""
    doc = yaml.safe_load((project_copy / "config/profiles/smoke.yaml").read_text())
    doc["feed"] = feed_key
    (project_copy / f"config/profiles/{name}.yaml").write_text(yaml.safe_dump(doc))


def _cli(cli_path, project_copy, *args, **env):
    return subprocess.run(
        [cli_path, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DATARAX_BENCH_ROOT": str(project_copy), **env},
    )


@pytest.mark.parametrize(
    ("feed_key", "message"),
    [
        ({"step_ms": [0, 5]}, "feed.step_ms.0: got 0"),
        ({"step_ms": []}, "feed.step_ms: got []"),
        ({"step_ms": [5], "threshold": 1.5}, "feed.threshold: got 1.5"),
        ({"step_ms": [5], "steps": 3}, "'steps' was unexpected"),
        ({"min_seconds": 1}, "'step_ms' is a required property"),
        (
            {"step_ms": [5], "scenarios": ["IO-1"]},
            "feed.scenarios: got 'IO-1', expected a throughput scenario of the profile",
        ),
    ],
)
@pytest.mark.slow
def test_a_bad_feed_is_one_line_and_exit_2(cli_path, project_copy, tmp_path, feed_key, message):
    _profile_copy(project_copy, "badfeed", feed_key)
    out = tmp_path / "out" / "cell.json"
    proc = _cli(
        cli_path, project_copy, "run", "--profile", "badfeed", "--scenario", "TAB-1",
        "--adapter", "numpy", "--output", str(out),
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "badfeed.yaml" in lines[0] and message in lines[0], proc.stderr
    assert not out.parent.exists()


# --- the whole path: run, result, summary, plot -----------------------------------------------


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory):
    """`datarax-bench run` of TAB-1 and NLP-1 with the reference and the reference pausing
    PAUSE_S per batch, on a profile whose feed (steps of 5 and 50 ms) covers TAB-1 only."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "config", root / "config")
    shutil.copytree(ROOT / "workflow" / "schemas", root / "workflow" / "schemas")
    _profile_copy(
        root,
        "fed",
        {"step_ms": [50, 5], "min_seconds": 0.3, "min_batches": 5, "scenarios": ["TAB-1"]},
    )
    out = tmp_path_factory.mktemp("results") / "fed" / "local"
    cli = str(BIN / "datarax-bench")
    pythonpath = os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))
    proc = _cli(
        cli, root, "run", "--profile", "fed", "--scenarios", "TAB-1", "NLP-1",
        "--adapters", f"numpy,{SLOW}", "--output-dir", str(out),
        DATARAX_BENCH_PLUGINS="slow_loaders", PYTHONPATH=pythonpath,
        DATARAX_TEST_LOADER_SLEEP_S=str(PAUSE_S),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, out


def _feed(out: Path, scenario: str, adapter: str):
    result = load_result(cell_path(out, scenario, "small", adapter))
    assert result["status"] == "ok", result["reason"]
    return result.get("feed")


def _windows(section) -> dict[float, dict]:
    return {w["step_ms"]: w for w in section["windows"]}


@pytest.mark.slow
@pytest.mark.alone  # fed_run measures step times (in the first test to use it)
def test_a_fast_loader_keeps_the_step_busy(fed_run):
    _, out = fed_run
    section = _feed(out, "TAB-1", "numpy")
    assert section["emulation"] == "host timer" and section["steps_in_flight"] == 1
    windows = _windows(section)
    assert list(windows) == [5.0, 50.0]  # shortest step first, whatever the profile's order
    # A tiny batch of the reference takes about a millisecond: far faster than either step.
    assert windows[50.0]["utilisation"] > 0.97, windows
    assert windows[5.0]["utilisation"] > 0.9, windows
    assert windows[50.0]["batches"] >= 6 and windows[50.0]["wall_s"] >= 0.3
    assert section["shortest_fed_step_ms"] == 5.0


@pytest.mark.slow
@pytest.mark.alone  # fed_run measures step times (in the first test to use it)
def test_a_slow_loader_feeds_step_over_its_time_per_batch(fed_run):
    _, out = fed_run
    section = _feed(out, "TAB-1", SLOW)
    windows = _windows(section)
    short = windows[5.0]
    # The pause (plus the reference's own work and the sleep's overshoot) sets the pace.
    assert short["fetch_ms_mean"] >= PAUSE_S * 1000
    assert short["utilisation"] == pytest.approx(5 / short["fetch_ms_mean"], rel=0.05), short
    assert 0.75 * 5 / (PAUSE_S * 1000) < short["utilisation"] <= 5 / (PAUSE_S * 1000)
    # The same loader is much faster than a 50 ms step.
    assert windows[50.0]["utilisation"] > 0.97, windows
    assert section["shortest_fed_step_ms"] == 50.0


@pytest.mark.slow
@pytest.mark.alone  # fed_run measures step times (in the first test to use it)
def test_scenarios_outside_the_feed_have_none(fed_run):
    _, out = fed_run
    assert _feed(out, "NLP-1", "numpy") is None and _feed(out, "NLP-1", SLOW) is None


@pytest.mark.slow
@pytest.mark.alone  # fed_run measures step times (in the first test to use it)
def test_summary_table_rows_and_plot(fed_run, monkeypatch, tmp_path):
    root, out = fed_run
    monkeypatch.setenv("DATARAX_BENCH_ROOT", str(root))
    paths = sorted((out / "raw").rglob("*.json"))
    table = aggregate_run(paths, out, "fed", "local")

    tab = table[table["scenario"] == "TAB-1"].set_index("adapter")
    assert tab.loc[SLOW, "feed_shortest_fed_step_ms"] == 50.0
    assert tab.loc["numpy", "feed_utilisation_50ms"] > 0.97
    assert table[table["scenario"] == "NLP-1"]["feed_shortest_fed_step_ms"].isna().all()
    csv = pd.read_csv(out / "results.csv")
    assert {"feed_utilisation_5ms", "feed_utilisation_50ms", "feed_threshold"} <= set(csv.columns)

    summary = (out / "summary.md").read_text()
    tab_section = summary.split("## TAB-1")[1].split("## ")[0]
    assert "| Variant | Adapter | AU at 5 ms | AU at 50 ms | Fed from |" in tab_section
    slow_row = next(
        line for line in tab_section.splitlines() if f"(`{SLOW}`)" in line and "ms |" in line
    )
    assert slow_row.endswith("| 50 ms |"), slow_row
    numpy_row = next(
        line for line in tab_section.splitlines() if "(`numpy`)" in line and "ms |" in line
    )
    assert numpy_row.endswith("| ≤ 5 ms |"), numpy_row
    assert "AU at" not in summary.split("## NLP-1")[1].split("## ")[0]

    png = tmp_path / "feed.png"
    plots.plot_feed(out / "results.csv", "TAB-1", png, load_catalog())
    assert matplotlib.image.imread(png).shape[0] > 200
    fig = plots.feed_figure(csv[csv["scenario"] == "TAB-1"], "feed", plots.run_facts(csv, out))
    (ax,) = fig.axes
    lines = {
        line.get_label(): list(line.get_ydata())
        for line in ax.get_lines()
        if line.get_label()[0] != "_"
    }
    assert set(lines) == {
        "NumPy reference (fed from ≤ 5 ms)",
        "NumPy reference that sleeps per batch (fed from 50 ms)",
    }, lines
    assert lines["NumPy reference that sleeps per batch (fed from 50 ms)"][0] < 0.3
    empty = plots.feed_figure(csv[csv["scenario"] == "NLP-1"], "feed", plots.run_facts(csv, out))
    assert any("No feed measured." in t.get_text() for t in empty.axes[0].texts)
    assert json.loads((out / "manifest.json").read_text())["settings"]["feed"]["step_ms"] == [50, 5]


@pytest.mark.slow
def test_the_workflow_plots_the_feed_of_each_scenario_that_has_one(tmp_path):
    from support.workflow import copy_workflow, planned, snakemake

    workdir = copy_workflow(tmp_path / "checkout")
    ci = snakemake(workdir, "-n", config=["profile=ci_cpu"])
    assert planned(ci, "plot_feed") == 3  # CV-1, NLP-1, TAB-1
    assert "plots/TAB-1/feed.png" in ci.output and "plots/PC-1/feed.png" not in ci.output
    smoke = snakemake(workdir, "-n", config=["profile=smoke"])
    assert planned(smoke, "plot_feed") == 0 and planned(smoke, "plot_scenario") > 0
