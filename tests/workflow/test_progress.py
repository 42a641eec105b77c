"""The run's plan, its estimate and the progress lines (datarax_bench.workflow.progress), on fixed inputs."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from datarax_bench.cloud import cluster as cloud
from datarax_bench.run.cell import resolve_cell
from datarax_bench.workflow import progress
from datarax_bench.workflow.progress import (
    LOADER_START_S,
    START_S,
    WINDOW_EXTRA_S,
    PlannedProcess,
    duration,
    process_seconds,
)
from datarax_bench.workload.catalog import load_catalog, load_profile

CATALOG = load_catalog()


def cell(scenario, variant, adapter, style="plain", profile="first_look"):
    return resolve_cell(load_profile(profile, CATALOG), CATALOG, scenario, variant, adapter, style)


def test_a_later_process_is_its_start_windows_and_share_of_cold_starts():
    # first_look: warm windows, 2 to 3 of 0.5 s (expected 2.5), 2 cold starts over 2 processes.
    expected = START_S["numpy"] + 2.5 * (0.5 + WINDOW_EXTRA_S) + 1 * LOADER_START_S["numpy"]
    assert process_seconds(cell("TAB-1", "small", "numpy"), 2, 2, cores=2) == pytest.approx(
        expected
    )


def test_the_first_process_adds_the_feed_and_a_tuned_cell_s_sweep():
    later = process_seconds(cell("CV-1", "small", "grain", "tuned"), 2, 2, cores=2)
    first = process_seconds(cell("CV-1", "small", "grain", "tuned"), 1, 2, cores=2)
    loader = LOADER_START_S["grain"]
    feed = 4 * 0.25 + loader  # four step times of 0.25 s, from a loader of its own
    # Grain's grid on 2 cores: workers {0, 2} x threads {1, 2} x prefetch {2, 8}, each point
    # three 0.1 s windows from a loader of its own.
    sweep = 8 * (3 * 0.1 + loader)
    assert first - later == pytest.approx(feed + sweep)
    plain = process_seconds(cell("CV-1", "small", "grain"), 1, 2, cores=2)
    assert first - plain == pytest.approx(sweep)


def test_an_adapter_without_knobs_sweeps_nothing_and_one_core_shrinks_the_grid():
    plain = process_seconds(cell("NLP-1", "small", "numpy"), 1, 2, cores=2)
    assert process_seconds(cell("NLP-1", "small", "numpy", "tuned"), 1, 2, cores=2) == plain
    two = process_seconds(cell("NLP-1", "small", "pytorch", "tuned"), 1, 2, cores=2)
    one = process_seconds(cell("NLP-1", "small", "pytorch", "tuned"), 1, 2, cores=1)
    # PyTorch: in-process, then 1..cores workers x prefetch {2, 8}: 5 points on 2 cores, 3 on 1.
    point = 3 * 0.1 + LOADER_START_S["pytorch"]
    assert two - one == pytest.approx(2 * point)


def test_a_cell_that_runs_no_loader_costs_a_bare_start():
    unsupported = cell("IO-1", "array_record", "numpy", profile="ci_cpu")
    assert process_seconds(unsupported, 1, 1, cores=2) == START_S["numpy"]


def test_fresh_windows_pay_a_loader_start_each():
    smoke = cell("TAB-1", "small", "tfdata", profile="smoke")  # fresh, 2 windows, no feed
    expected = START_S["tfdata"] + 2 * (0.0 + WINDOW_EXTRA_S) + 2 * LOADER_START_S["tfdata"]
    assert process_seconds(smoke, 1, 1, cores=2) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0.4, "0 s"),
        (45, "45 s"),
        (89, "89 s"),
        (90, "2 min"),
        (754, "13 min"),
        (4830, "1 h 20 min"),
    ],
)
def test_durations_read_as_people_say_them(seconds, said):
    assert duration(seconds) == said


def steps():
    """Two cells of two processes each: 10 s per first process, 5 s per second."""
    out = []
    for name in ("TAB-1/small/numpy/plain", "TAB-1/small/grain/plain"):
        for k, seconds in ((1, 10.0), (2, 5.0)):
            out.append(PlannedProcess(f"first_look/{name}", k, 2, f"out/{name}/{k}", seconds))
    return out


def test_the_plan_says_cells_processes_adapters_styles_and_the_estimate():
    lines = progress.plan_lines(steps(), finish_s=40.0)
    assert lines[0] == (
        "plan: profile first_look: 2 cells (TAB-1/small x grain, numpy x plain), "
        "2 worker processes each"
    )
    assert lines[1].startswith("plan: 4 worker processes, one at a time, in rounds")
    assert lines[2].startswith("estimate: about 70 s (30 s measuring, 40 s for the table")


def test_the_finish_grows_with_the_scenarios_plotted():
    assert progress.finish_seconds(steps()) == progress.FINISH_S + progress.FINISH_PER_SCENARIO_S


def plan(started=1000.0, finish_s=40.0):
    return {"invocation": "", "started": started, "finish_s": finish_s, "processes": steps()}


def as_doc(p):
    return {**p, "processes": [vars(s) for s in p["processes"]]}


def test_what_is_left_is_the_model_scaled_by_the_pace_so_far():
    doc = as_doc(plan())
    # Both first processes done (20 model seconds) in 40 s: the machine runs at half the
    # model's speed, so the two second processes (10 model seconds) should take 20 s.
    done = {"out/TAB-1/small/numpy/plain/1", "out/TAB-1/small/grain/plain/1"}
    line = progress.progress_line(doc, done, now=1040.0)
    assert line == (
        "progress: 0 of 2 cells, 2 of 4 worker processes done in 40 s; about 60 s left "
        "(the model's pace x2.00)"
    )
    done |= {"out/TAB-1/small/numpy/plain/2"}
    assert progress.progress_line(doc, done, now=1050.0).startswith(
        "progress: 1 of 2 cells, 3 of 4 worker processes done in 50 s; about 50 s left"
    )
    everything = {s.output for s in steps()}
    assert progress.progress_line(doc, everything, now=1070.0) == (
        "progress: 2 of 2 cells, 4 of 4 worker processes done in 70 s; measuring done; "
        "about 40 s for the table, plots and export (the model's pace x2.33)"
    )


def test_a_job_reads_the_plan_its_invocation_wrote_and_counts_what_this_run_wrote(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(progress.INVOCATION_ENV, "run-1")
    path = tmp_path / "logs/run_plan.json"
    lines = progress.announce(path, steps(), now=1000.0)
    assert [line.split(":")[0] for line in lines] == ["plan", "plan", "estimate"]
    doc = json.loads(path.read_text())
    assert doc["invocation"] == "run-1" and len(doc["processes"]) == 4
    # One output written in this run, one left by an earlier run (older than the plan).
    for name, mtime in (("numpy/plain/1", 1010.0), ("grain/plain/1", 900.0)):
        out = tmp_path / f"out/TAB-1/small/{name}"
        out.parent.mkdir(parents=True)
        out.write_text("{}")
        os.utime(out, (mtime, mtime))
    assert progress.report(path, now=1020.0).startswith(
        "progress: 0 of 2 cells, 1 of 4 worker processes done in 20 s"
    )
    monkeypatch.setenv(progress.INVOCATION_ENV, "run-2")
    assert progress.report(path, now=1020.0) is None


def test_a_job_without_a_plan_prints_nothing_and_never_fails(tmp_path, capsys):
    assert progress.main([str(tmp_path / "missing.json")]) == 0
    (tmp_path / "bad.json").write_text("{not json")
    assert progress.main([str(tmp_path / "bad.json")]) == 0
    assert capsys.readouterr().err == ""


def job(rule, output, process=None, **wildcards):
    """A stand-in for a Snakemake job: its rule's name, wildcards and outputs."""
    w = {"profile": "first_look", "scenario": "TAB-1", "variant": "small", "adapter": "grain"}
    w.update({"style_suffix": "", **wildcards})
    if process is not None:
        w["process"] = str(process)
    return SimpleNamespace(rule=SimpleNamespace(name=rule), wildcards=SimpleNamespace(**w),
                           output=[output])  # fmt: skip


def test_the_plan_takes_the_measuring_jobs_snakemake_will_run():
    jobs = [
        job("measure_process", "p/1.json", process=1, style_suffix=".tuned"),
        job("measure", "raw/grain.tuned.json", style_suffix=".tuned"),
        job("aggregate", "results.csv"),
    ]
    loaded = {}
    planned = progress.planned_processes(
        jobs, lambda name: loaded.setdefault(name, load_profile(name, CATALOG)), CATALOG, cores=2
    )
    assert [(p.cell, p.process, p.processes, p.output) for p in planned] == [
        ("first_look/TAB-1/small/grain/tuned", 1, 2, "p/1.json"),
        ("first_look/TAB-1/small/grain/tuned", 2, 2, "raw/grain.tuned.json"),
    ]
    tuned = cell("TAB-1", "small", "grain", "tuned")
    assert [p.seconds for p in planned] == [
        process_seconds(tuned, 1, 2, cores=2),
        process_seconds(tuned, 2, 2, cores=2),
    ]


def test_nothing_to_measure_announces_nothing(tmp_path):
    assert progress.announce(tmp_path / "plan.json", []) == []
    assert not (tmp_path / "plan.json").exists()


def test_the_invocation_variable_is_the_workflow_s():
    assert progress.INVOCATION_ENV == cloud.INVOCATION_ENV
