"""A cell measured in several worker processes (`measurement.processes`): windows pooled and
labelled with their process, a failing process ends the cell, special measures run once."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml
from support.counting import PLUGINS, run_counted

from datarax_bench.cloud import cluster as cloud
from datarax_bench.report import compare
from datarax_bench.report.aggregate import repetitions_table
from datarax_bench.results import load_result, result_row
from datarax_bench.run import processes
from datarax_bench.workload.catalog import load_profile


def _profile(root: Path, name: str, retries: int = 1, **measurement) -> str:
    doc = yaml.safe_load((root / "config/profiles/smoke.yaml").read_text())
    doc["measurement"].update(measurement)
    doc["retries"] = retries
    (root / f"config/profiles/{name}.yaml").write_text(yaml.safe_dump(doc))
    return name


@pytest.fixture
def three_processes(project_copy) -> str:
    return _profile(
        project_copy, "three", processes=3, repetitions=2, repetitions_from="warm", cold_starts=3
    )


@pytest.mark.slow
def test_three_processes_pool_their_windows_each_labelled(project_copy, tmp_path, three_processes):
    proc, out, opened = run_counted(
        project_copy, tmp_path, three_processes, "TAB-1", "test-counting-numpy"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = load_result(out)  # validated against the result schema
    assert result["status"] == "ok", result["reason"]
    # Each process starts one loader: its windows' own, which is also its one cold start.
    assert opened == 3
    reps = result["repetitions"]
    assert [(r["index"], r["process"]) for r in reps] == [
        (0, 0),
        (1, 0),
        (2, 1),
        (3, 1),
        (4, 2),
        (5, 2),
    ]
    assert [(s["index"], s["process"]) for s in result["cold_starts"]] == [(0, 0), (1, 1), (2, 2)]
    assert [(a["attempt"], a["process"], a["status"]) for a in result["attempts"]] == [
        (1, 0, "ok"),
        (1, 1, "ok"),
        (1, 2, "ok"),
    ]
    statistics = result["statistics"]
    values = [r["elements_per_s"] for r in reps]
    assert statistics["repetitions"] == 6 and statistics["processes"] == 3
    assert statistics["elements_per_s"]["median"] == pytest.approx(np.median(values))
    medians = np.median(np.reshape(values, (3, 2)), axis=1)
    cv = medians.std(ddof=1) / medians.mean()
    assert statistics["between_process_cv"] == pytest.approx(cv)
    # The median's interval is Student's t over the processes' log medians (2 degrees of
    # freedom), not a bootstrap over windows that agree more than processes do.
    logs = np.log(medians)
    half = scipy.stats.t.ppf(0.975, 2) * logs.std(ddof=1) / np.sqrt(3)
    median = statistics["elements_per_s"]["median"]
    assert statistics["elements_per_s"]["ci95_low"] == pytest.approx(median * np.exp(-half))
    assert statistics["elements_per_s"]["ci95_high"] == pytest.approx(median * np.exp(half))
    assert statistics["precision"] == pytest.approx(np.sinh(half), rel=1e-4)
    # The cell's time spans its processes: the first one's start to the last one's end.
    stamps, attempts = result["timestamps"], result["attempts"]
    assert stamps["started"] < attempts[1]["started"] < attempts[2]["started"] < stamps["finished"]
    assert 0 < stamps["duration_s"] <= sum(a["duration_s"] for a in attempts)
    # Three processes are not three tries: nothing was retried.
    assert result_row(result, str(out))["attempts"] == 1
    assert "attempts" not in proc.stderr.splitlines()[-1], proc.stderr[-500:]
    table = repetitions_table([result])
    assert list(table["process"]) == [0, 0, 1, 1, 2, 2]


@pytest.mark.slow
def test_a_process_that_fails_ends_the_cell_saying_which(project_copy, tmp_path):
    profile = _profile(project_copy, "three-once", retries=0, processes=3, repetitions=2)
    env = {"DATARAX_TEST_FAIL_FROM_OPEN": "3"}
    # Fresh windows: a loader per window, so the second process's first loader is the third.
    proc, out, opened = run_counted(
        project_copy, tmp_path, profile, "TAB-1", "test-failing-numpy", **env
    )
    result = load_result(out)  # a failure is data: the result is written
    assert result["status"] == "failed"
    assert result["reason"].startswith("process 2 of 3: RuntimeError: loader 3 refused to open")
    assert [(a["process"], a["status"]) for a in result["attempts"]] == [(0, "ok"), (1, "failed")]
    assert opened == 3  # the third process never started
    assert "repetitions" not in result


@pytest.mark.slow
def test_a_special_measure_runs_one_worker_with_every_process_s_repetitions(project_copy, tmp_path):
    profile = _profile(project_copy, "three-det", processes=3, repetitions=2)
    proc, out, _ = run_counted(project_copy, tmp_path, profile, "PR-2", "numpy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = load_result(out)
    assert result["status"] == "ok", result["reason"]
    assert [a.get("process") for a in result["attempts"]] == [None]
    assert "processes" not in result["statistics"]
    # Three processes' worth of repetitions, in the one process: six same-seed runs.
    assert len(result["repetitions"]) == 6 and result["special"]["runs_same_seed"] == 6
    assert all("process" not in r for r in result["repetitions"])
    assert result["settings"]["measurement"]["repetitions"] == 2  # the profile's, as written


def _ok(index: int, throughput: list[float]) -> dict:
    return {
        "status": "ok",
        "reason": None,
        "parallelism": {"workers": 1},
        "pipeline": {"per_element": [], "per_batch": []},
        "workload": {"data_digest": "d"},
        "settings": {"seed": 0},
        "repetitions": [_window(i, v) for i, v in enumerate(throughput)],
        "statistics": {"stopped": "fixed repetitions"},
        "timestamps": {"started": f"t{index}", "finished": f"f{index}", "duration_s": 2.0},
    }


def _window(index: int, value: float) -> dict:
    return {
        "index": index,
        "elements_per_s": value,
        "bytes_per_s": value,
        "latency_ms": {"p50": 1.0, "p95": 1.0, "p99": 1.0},
        "time_to_first_batch_s": 0.1,
        "setup_s": 0.05,
        "peak_rss_bytes": 1,
        "device_peak_bytes": None,
        "first_batch_sha256": "0" * 64,
    }


def test_processes_that_measured_other_settings_are_not_pooled():
    first, second = _ok(0, [100.0, 101.0]), _ok(1, [99.0, 98.0])
    second["parallelism"] = {"workers": 2}
    pooled = processes.pool([first, second])
    assert pooled["status"] == "failed"
    assert pooled["reason"].startswith("process 2 of 2 measured with another parallelism")
    assert "repetitions" not in pooled and "statistics" not in pooled


def test_one_process_is_its_own_result_and_several_span_their_timestamps():
    only = _ok(0, [100.0, 101.0])
    assert processes.pool([only]) is only
    pooled = processes.pool([_ok(0, [100.0, 104.0]), copy.deepcopy(_ok(1, [90.0, 92.0]))])
    assert pooled["timestamps"] == {"started": "t0", "finished": "f1", "duration_s": 4.0}
    assert [r["process"] for r in pooled["repetitions"]] == [0, 0, 1, 1]
    assert pooled["statistics"]["between_process_cv"] == pytest.approx(
        np.std([102.0, 91.0], ddof=1) / 96.5
    )


def _stopped_on_precision(index: int, throughput: list[float]) -> dict:
    result = _ok(index, throughput)
    result["statistics"] = {"stopped": "precision reached"}
    return result


def test_the_precision_target_is_judged_on_the_pooled_interval_not_each_process_s():
    """Each process stops once its own windows agree; only the interval over the processes
    says whether the cell met the profile's target."""
    apart = [_stopped_on_precision(0, [100.0, 100.5]), _stopped_on_precision(1, [90.0, 90.4])]
    pooled = processes.pool(apart, 2, target=0.03)["statistics"]
    assert pooled["precision"] > 0.03
    assert pooled["stopped"] == (
        f"precision not reached across 2 processes: {pooled['precision']:.1%} > 3.0% "
        "(each: precision reached)"
    )
    close = [_stopped_on_precision(0, [100.0, 100.5]), _stopped_on_precision(1, [100.1, 100.4])]
    pooled = processes.pool(close, 2, target=0.03)["statistics"]
    assert pooled["precision"] <= 0.03
    assert pooled["stopped"] == "precision reached across 2 processes (each: precision reached)"
    # Without a target (fixed repetitions) the processes' reason stands.
    fixed = processes.pool([_ok(0, [100.0, 101.0]), _ok(1, [90.0, 91.0])], 2)
    assert fixed["statistics"]["stopped"] == "fixed repetitions"


@pytest.mark.slow
def test_a_run_with_a_precision_target_says_whether_its_processes_met_it(project_copy, tmp_path):
    profile = _profile(
        project_copy, "three-precise", processes=3, repetitions=2, precision=0.5, max_repetitions=3
    )
    proc, out, _ = run_counted(project_copy, tmp_path, profile, "TAB-1", "test-counting-numpy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    statistics = load_result(out)["statistics"]  # validated against the result schema
    met = statistics["precision"] <= 0.5
    assert statistics["stopped"].startswith(
        "precision reached across 3 processes (each: "
        if met
        else "precision not reached across 3 processes: "
    ), statistics


def test_a_cloud_cell_is_allowed_every_process_s_timeout():
    """The autodown deadline of a cloud cell must outlast three processes, each retried once."""
    profile = load_profile("gpu_a100")
    m = profile.measurement
    assert m["processes"] == 3
    expected = m["timeout_s"] * (1 + profile.retries) * 3 + cloud.CELL_MARGIN_S
    assert cloud.cell_allowance_s(profile) == expected


@pytest.mark.slow
def test_two_runs_of_three_processes_compare_over_their_processes(
    project_copy, tmp_path, three_processes
):
    """`run --output-dir` twice, then `compare`: the interval is the one over the processes."""
    env = {**os.environ, "DATARAX_BENCH_ROOT": str(project_copy)}
    dirs = []
    for name in ("base", "new"):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "datarax_bench.cli", "run", "--profile", three_processes]
        cmd += ["--scenarios", "TAB-1", "--adapters", "numpy", "--output-dir", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        dirs.append(out)
    table = tmp_path / "comparison.csv"
    cmd = [sys.executable, "-m", "datarax_bench.cli", "compare", *map(str, dirs)]
    proc = subprocess.run([*cmd, "--csv", str(table)], env=env, capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    assert "single worker process" not in proc.stdout
    (row,) = [r for r in csv.DictReader(table.open()) if r["metric"] == "throughput"]
    assert (row["base_processes"], row["new_processes"]) == ("3", "3")
    base, new = (load_result(d / "raw/TAB-1/small/numpy.json") for d in dirs)
    by_process = [
        [
            [r["elements_per_s"] for r in result["repetitions"] if r["process"] == p]
            for p in range(3)
        ]
        for result in (base, new)
    ]
    _, low, high = compare.ratio_interval(*by_process)
    assert float(row["ci95_low"]) == pytest.approx(low)
    assert float(row["ci95_high"]) == pytest.approx(high)


def _cli(root: Path, tmp_path: Path, *args: str, **env):
    """`datarax-bench ARGS` with the counting loaders: (the command, the loaders it opened, each
    as (adapter, pid), in order)."""
    opens = tmp_path / "cli.opens"
    environ = {
        **os.environ,
        "DATARAX_BENCH_ROOT": str(root),
        "DATARAX_BENCH_PLUGINS": "counting_loaders",
        "DATARAX_TEST_OPENS": str(opens),
        "DATARAX_TEST_FAIL_FROM_OPEN": "1000",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])),
        **env,
    }
    cmd = [sys.executable, "-m", "datarax_bench.cli", *args]
    proc = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=600)
    lines = opens.read_text().splitlines() if opens.exists() else []
    opens.unlink(missing_ok=True)
    return proc, [tuple(line.split()[1:]) for line in lines]


def _run_matrix(root: Path, tmp_path: Path, profile: str, adapters: str, *args: str, **env):
    """`run --output-dir` of TAB-1 with the counting loaders."""
    run = ["run", "--profile", profile, "--scenarios", "TAB-1", "--adapters", adapters]
    return _cli(root, tmp_path, *run, *args, **env)


COUNTING, FAILING = "test-counting-numpy", "test-failing-numpy"


@pytest.mark.slow
def test_a_matrix_measures_the_first_process_of_every_cell_before_any_second(
    project_copy, tmp_path, three_processes
):
    """Rounds: each cell's processes are spread over the run, so the spread between them
    includes the machine's drift over the run."""
    out = tmp_path / "out"
    proc, opened = _run_matrix(
        project_copy, tmp_path, three_processes, f"{COUNTING},{FAILING}", "--output-dir", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One loader per process (warm windows): the two cells alternate, six processes in all.
    assert [adapter for adapter, _ in opened] == [COUNTING, FAILING] * 3
    assert len({pid for _, pid in opened}) == 6
    progress = [ln for ln in proc.stderr.splitlines() if ln.startswith("[") and "..." in ln]
    assert [(ln.split()[0], ln.split()[-4]) for ln in progress] == [
        ("[1/2]", "1"), ("[2/2]", "1"), ("[1/2]", "2"), ("[2/2]", "2"), ("[1/2]", "3"),
        ("[2/2]", "3"),
    ]  # fmt: skip
    counting, failing = (
        load_result(out / f"raw/TAB-1/small/{a}.json") for a in (COUNTING, FAILING)
    )
    for result in (counting, failing):
        assert result["status"] == "ok", result["reason"]
        assert result["statistics"]["processes"] == 3
        assert [r["process"] for r in result["repetitions"]] == [0, 0, 1, 1, 2, 2]
        assert [a["process"] for a in result["attempts"]] == [0, 1, 2]
    # Each cell's time spans the other's: its last process ran after the other's first.
    assert counting["timestamps"]["started"] <= failing["attempts"][0]["started"]
    assert failing["attempts"][0]["started"] <= counting["attempts"][1]["started"]
    assert counting["attempts"][2]["started"] <= failing["timestamps"]["finished"]
    # Each process's own result is kept beside the cells, and the cell is their pool.
    own = sorted((out / "processes/TAB-1/small" / COUNTING).glob("*.json"))
    assert [p.name for p in own] == ["1.json", "2.json", "3.json"]
    for index, path in enumerate(own):
        result = load_result(path)
        assert [a["process"] for a in result["attempts"]] == [index]
        assert result["repetitions"] == [
            {k: v for k, v in r.items() if k not in ("index", "process")} | {"index": i}
            for i, r in enumerate([r for r in counting["repetitions"] if r["process"] == index])
        ]
    summary = json.loads((out / "summary.json").read_text())
    assert [c["adapter"] for c in summary["cells"]] == [COUNTING, FAILING]


@pytest.mark.slow
def test_a_cell_whose_process_fails_ends_in_its_round_and_the_others_go_on(project_copy, tmp_path):
    profile = _profile(project_copy, "three-once-warm", retries=0, processes=3, repetitions=2,
                       repetitions_from="warm", cold_starts=3)  # fmt: skip
    out = tmp_path / "out"
    # Loaders are counted over both cells: the failing cell's second loader is the fourth.
    proc, opened = _run_matrix(
        project_copy, tmp_path, profile, f"{COUNTING},{FAILING}", "--output-dir", str(out),
        DATARAX_TEST_FAIL_FROM_OPEN="4",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]  # a failed cell is data
    assert [adapter for adapter, _ in opened] == [COUNTING, FAILING, COUNTING, FAILING, COUNTING]
    failing = load_result(out / f"raw/TAB-1/small/{FAILING}.json")
    assert failing["status"] == "failed"
    assert failing["reason"].startswith("process 2 of 3: RuntimeError: loader 4 refused to open")
    assert [(a["process"], a["status"]) for a in failing["attempts"]] == [(0, "ok"), (1, "failed")]
    assert sorted(p.name for p in (out / "processes/TAB-1/small" / FAILING).iterdir()) == [
        "1.json", "2.json",
    ]  # fmt: skip
    counting = load_result(out / f"raw/TAB-1/small/{COUNTING}.json")
    assert counting["status"] == "ok" and counting["statistics"]["processes"] == 3


@pytest.mark.slow
def test_a_restart_takes_each_process_kept_and_measures_only_the_rest(
    project_copy, tmp_path, three_processes
):
    """A managed job restarted after a preemption loses at most the process in flight."""
    store = tmp_path / "store"
    first_out = tmp_path / "first"
    # The copy has no .git: the commit comes from the environment, as a managed job's task sets
    # it (a kept result of an unknown commit is never reused).
    commit = {"DATARAX_BENCH_GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567"}
    proc, opened = _run_matrix(project_copy, tmp_path, three_processes, COUNTING,
                               "--output-dir", str(first_out), "--resume-dir", str(store),
                               **commit)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    own = store / "processes/TAB-1/small" / COUNTING
    assert sorted(p.name for p in own.iterdir()) == ["1.json", "2.json", "3.json"]
    markers = store / "attempts/processes/TAB-1/small" / COUNTING
    assert sorted(p.name for p in markers.iterdir()) == ["1.json", "2.json", "3.json"]
    # Interrupted in its third process: neither the cell nor that process was kept.
    (store / f"raw/TAB-1/small/{COUNTING}.json").unlink()
    (own / "3.json").unlink()
    kept = [load_result(own / f"{k}.json") for k in (1, 2)]
    second_out = tmp_path / "second"
    proc, opened = _run_matrix(project_copy, tmp_path, three_processes, COUNTING,
                               "--output-dir", str(second_out), "--resume-dir", str(store),
                               **commit)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(opened) == 1  # the third process only
    assert proc.stderr.count("kept in the resume directory") == 2
    result = load_result(second_out / f"raw/TAB-1/small/{COUNTING}.json")
    assert result["status"] == "ok" and result["statistics"]["processes"] == 3
    pooled = [r["elements_per_s"] for r in result["repetitions"]]
    assert pooled[:4] == [r["elements_per_s"] for k in kept for r in k["repetitions"]]
    assert result["timestamps"]["started"] == kept[0]["timestamps"]["started"]
    assert (store / f"raw/TAB-1/small/{COUNTING}.json").read_bytes() == (
        second_out / f"raw/TAB-1/small/{COUNTING}.json"
    ).read_bytes()
    assert len(list((markers / "3.json").iterdir())) == 2  # measured twice: it shows


def _one_cell(profile: str, adapter: str = COUNTING) -> list[str]:
    return ["run", "--profile", profile, "--scenario", "TAB-1", "--adapter", adapter]


@pytest.mark.slow
def test_a_cell_measured_a_process_at_a_time_then_pooled_as_the_workflow_does(
    project_copy, tmp_path, three_processes
):
    cell = _one_cell(three_processes)
    first, second, pooled = (tmp_path / n for n in ("1.json", "2.json", "cell.json"))
    proc, opened = _cli(project_copy, tmp_path, *cell, "--process", "1", "--output", str(first))
    assert proc.returncode == 0 and len(opened) == 1, proc.stderr[-3000:]
    proc, opened = _cli(project_copy, tmp_path, *cell, "--process", "2", "--earlier", str(first),
                        "--output", str(second))  # fmt: skip
    assert proc.returncode == 0 and len(opened) == 1, proc.stderr[-3000:]
    proc, opened = _cli(project_copy, tmp_path, *cell, "--earlier", str(first), str(second),
                        "--output", str(pooled))  # fmt: skip
    assert proc.returncode == 0 and len(opened) == 1, proc.stderr[-3000:]
    kept = [load_result(first), load_result(second)]
    assert [[a["process"] for a in k["attempts"]] for k in kept] == [[0], [1]]
    result = load_result(pooled)
    assert result["status"] == "ok" and result["statistics"]["processes"] == 3
    values = [r["elements_per_s"] for r in result["repetitions"]]
    assert values[:4] == [r["elements_per_s"] for k in kept for r in k["repetitions"]]
    assert [a["process"] for a in result["attempts"]] == [0, 1, 2]
    assert result["timestamps"]["started"] == kept[0]["timestamps"]["started"]


@pytest.mark.slow
def test_after_a_process_that_failed_nothing_more_of_the_cell_is_measured(project_copy, tmp_path):
    profile = _profile(project_copy, "three-once-warm", retries=0, processes=3, repetitions=2,
                       repetitions_from="warm", cold_starts=3)  # fmt: skip
    cell = _one_cell(profile, FAILING)
    first, second, third, pooled = (tmp_path / f"{n}.json" for n in ("1", "2", "3", "cell"))
    _cli(project_copy, tmp_path, *cell, "--process", "1", "--output", str(first))
    # Each command counts its own loaders: the second process's first one fails.
    env = {"DATARAX_TEST_FAIL_FROM_OPEN": "1"}
    proc, _ = _cli(project_copy, tmp_path, *cell, "--process", "2", "--earlier", str(first),
                   "--output", str(second), **env)  # fmt: skip
    assert load_result(second)["status"] == "failed", proc.stderr[-3000:]
    proc, opened = _cli(project_copy, tmp_path, *cell, "--process", "3", "--earlier", str(first),
                        str(second), "--output", str(third), **env)  # fmt: skip
    assert proc.returncode == 0 and opened == [], proc.stderr[-3000:]
    skipped = load_result(third)
    assert skipped["status"] == "failed"
    assert skipped["reason"] == "not measured: process 2 of 3 ended failed"
    proc, opened = _cli(project_copy, tmp_path, *cell, "--earlier", str(first), str(second),
                        "--output", str(pooled), **env)  # fmt: skip
    assert proc.returncode == 0 and opened == [], proc.stderr[-3000:]
    result = load_result(pooled)
    assert result["status"] == "failed"
    assert result["reason"].startswith("process 2 of 3: RuntimeError: loader 1 refused to open")
    assert [(a["process"], a["status"]) for a in result["attempts"]] == [(0, "ok"), (1, "failed")]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--process", "0"], "argument --process: '0': expected a process number, 1 or more"),
        (["--process", "4"], "is measured in 3 processes; expected a number from 1 to 3"),
        (["--process", "2"], "0 results given with --earlier; expected the 1 of the processes"),
        (["--earlier", "OTHER"], "run --earlier: result 1 is of cell"),
        (["--earlier", "CORRUPT"], "corrupt.json"),
        (["--earlier", "ONE", "ONE", "ONE"], "3 results given; "),
    ],
)
@pytest.mark.slow
def test_bad_process_arguments_are_one_line_and_exit_2(
    project_copy, tmp_path, three_processes, extra, expected
):
    other = tmp_path / "other.json"
    proc, _ = _cli(project_copy, tmp_path, *_one_cell(three_processes, "numpy"), "--process", "1",
                   "--output", str(other))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"schema_version": 1, "status": "ok"')
    one = tmp_path / "one.json"
    proc, _ = _cli(project_copy, tmp_path, *_one_cell(three_processes), "--process", "1",
                   "--output", str(one))  # fmt: skip
    names = {"OTHER": str(other), "CORRUPT": str(corrupt), "ONE": str(one)}
    out = tmp_path / "out.json"
    args = [names.get(a, a) for a in extra]
    proc, opened = _cli(project_copy, tmp_path, *_one_cell(three_processes), *args,
                        "--output", str(out))  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert expected in line
    assert not out.exists() and opened == []


def test_process_arguments_belong_to_one_cell_not_a_matrix(project_copy, tmp_path, three_processes):
    proc, _ = _run_matrix(project_copy, tmp_path, three_processes, COUNTING, "--process", "1",
                          "--output-dir", str(tmp_path / "out"))  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "--process and --earlier measure part of one cell; use them with --output" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_tuned_cell_s_later_processes_measure_the_first_process_s_choice(
    project_copy, tmp_path, three_processes
):
    """Not whatever the tuning cache says by the time a later round comes: a cache entry made
    stale in between (the code changed, another sweep overwrote it) would split the cell."""
    env = {"DATARAX_BENCH_PLUGINS": "knob_loaders", "DATARAX_BENCH_CACHE": str(tmp_path / "c")}
    cell = [*_one_cell(three_processes, "test-knob-numpy"), "--style", "tuned"]
    first, second, pooled = (tmp_path / n for n in ("1.json", "2.json", "cell.json"))
    proc, _ = _cli(project_copy, tmp_path, *cell, "--process", "1", "--output", str(first), **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    swept = load_result(first)["tuning"]
    assert swept["chosen"] == {"workers": 2} and swept["grid"]
    cache = tmp_path / "c" / "tuning" / f"{swept['cache_key']}.json"
    cache.write_text(json.dumps({**json.loads(cache.read_text()), "chosen": {"workers": 1}}))
    proc, _ = _cli(project_copy, tmp_path, *cell, "--process", "2", "--earlier", str(first),
                   "--output", str(second), **env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    later = load_result(second)
    assert later["status"] == "ok", later["reason"]
    assert later["tuning"]["chosen"] == {"workers": 2} and later["tuning"]["grid"] == []
    assert later["tuning"]["note"] == "the first process's choice"
    assert later["parallelism"]["workers"] == 2
    proc, _ = _cli(project_copy, tmp_path, *cell, "--earlier", str(first), str(second),
                   "--output", str(pooled), **env)  # fmt: skip
    result = load_result(pooled)
    assert result["status"] == "ok", result["reason"]
    assert result["statistics"]["processes"] == 3
    assert result["tuning"] == swept  # the cell's record is the first process's sweep
