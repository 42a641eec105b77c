"""`datarax-bench compare` on result sets with known effects, built from real smoke results.

A real `run --output-dir` (NumPy reference: a throughput scenario, PR-1, PR-2, IO-2) gives
valid result files; each test writes two runs from them with chosen repetition timings (or a
changed workload, hardware, status) and the run index the CLI and the workflow write.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from support import run_cli
from support.smoke import smoke_view

from datarax_bench import stats
from datarax_bench.cli import main
from datarax_bench.report import compare
from datarax_bench.results import cell_path, load_result, write_result
from datarax_bench.run.runner import write_run_index
from datarax_bench.workload import randomness
from datarax_bench.workload.catalog import load_profile

TIGHT = [1000.0, 1004.0, 996.0, 1002.0, 998.0]
# About 10% coefficient of variation, as busy cells on a shared machine show.
NOISY = [1000.0, 1120.0, 880.0, 1060.0, 940.0]


#: The cells of the shared smoke run this module reads (support/smoke.py).
SMOKE_RUN = {"numpy": ("TAB-1", "PR-1", "PR-2", "IO-2")}


@pytest.fixture(scope="module")
def templates(tmp_path_factory, smoke_results) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("compare-templates")
    smoke_view(smoke_results, out, ["TAB-1", "PR-1", "PR-2", "IO-2"])
    results = [load_result(p) for p in sorted(out.glob("raw/*/*/*.json"))]
    return {f"{r['cell']['scenario']}/{r['cell']['variant']}": r for r in results}


def with_timings(result: dict, throughput, times=None) -> dict:
    """The result with one repetition per throughput value (and PR-1/IO-2 times, if given)."""
    doc = copy.deepcopy(result)
    first = doc["repetitions"][0]
    doc["repetitions"] = [
        {**first, "index": i, "elements_per_s": v} for i, v in enumerate(throughput)
    ]
    doc["statistics"]["repetitions"] = len(throughput)
    if times is not None and doc["cell"]["measure"] == "checkpoint":
        trip = doc["special"]["repetitions"][0]
        doc["special"]["repetitions"] = [{**trip, "restore_s": t} for t in times]
    if times is not None and doc["cell"]["measure"] == "streaming":
        doc["special"]["time_to_first_batch_s"] = list(times)
    return doc


def write_run(root: Path, results: list[dict]) -> Path:
    for doc in results:
        c = doc["cell"]
        write_result(cell_path(root, c["scenario"], c["variant"], c["adapter"]), doc)
    write_run_index(load_profile("smoke"), root, results)
    return root


def runs(tmp_path, base: list[dict], new: list[dict]) -> tuple[str, str]:
    return str(write_run(tmp_path / "base", base)), str(write_run(tmp_path / "new", new))


def tab1(templates, values) -> dict:
    return with_timings(templates["TAB-1/small"], values)


def only_row(comparison, metric="throughput"):
    (row,) = [r for r in comparison.rows if r.metric == metric]
    return row


def compared(base, new, **options):
    return compare.compare_runs(compare.load_run(base), compare.load_run(new), **options)


# --- statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes", [(5, 5), (2, 2), (3, 8), (8, 30), (10, 12), (40, 40)], ids=lambda s: f"{s[0]}v{s[1]}"
)
def test_mann_whitney_matches_scipy_exact_and_asymptotic(sizes):
    rng = np.random.default_rng(7)
    for trial in range(40):
        x, y = rng.normal(size=sizes[0]), rng.normal(0.7, size=sizes[1])
        if trial % 4 == 0:  # ties: scipy and this module both switch to the normal approximation
            x, y = np.round(x), np.round(y)
        u, p = compare.mann_whitney_u(x, y)
        expected = scipy.stats.mannwhitneyu(x, y, alternative="two-sided")
        assert u == pytest.approx(expected.statistic)
        assert p == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-15)


def test_five_against_five_repetitions_reach_p_2_over_252_at_best():
    assert compare.smallest_p_value(5, 5) == pytest.approx(2 / 252)
    assert round(2 / 252, 4) == 0.0079
    _, p = compare.mann_whitney_u([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert p == pytest.approx(2 / 252)
    assert compare.smallest_p_value(3, 3) == pytest.approx(0.1)  # never below 0.01


def test_the_ratio_interval_is_seeded_and_brackets_the_ratio():
    first = compare.ratio_interval(NOISY, [v * 0.8 for v in NOISY[::-1]])
    assert first == compare.ratio_interval(NOISY, [v * 0.8 for v in NOISY[::-1]])
    ratio, low, high = first
    assert ratio == pytest.approx(0.8) and low < ratio < high


# --- verdicts --------------------------------------------------------------------------------


def test_a_20_percent_slowdown_with_tight_repetitions_is_slower_and_exits_1(
    tmp_path, templates, capsys
):
    base, new = runs(
        tmp_path, [tab1(templates, TIGHT)], [tab1(templates, [v * 0.8 for v in TIGHT])]
    )
    row = only_row(compared(base, new))
    assert row.verdict == "slower" and row.regression
    assert row.ratio == pytest.approx(0.8) and row.ci95_high < 1 / 1.05
    assert row.p_value == pytest.approx(2 / 252)
    assert main(["compare", base, new]) == 1
    out = capsys.readouterr().out
    assert "TAB-1/small" in out and "NumPy reference" in out and "slower (REGRESSION)" in out
    assert "0.800 [" in out


def test_a_20_percent_speedup_is_faster_and_exits_0(tmp_path, templates):
    base, new = runs(
        tmp_path, [tab1(templates, TIGHT)], [tab1(templates, [v * 1.2 for v in TIGHT])]
    )
    assert only_row(compared(base, new)).verdict == "faster"
    assert main(["compare", base, new]) == 0


def test_a_3_percent_change_within_noise_is_same(tmp_path, templates):
    new_values = [v * 0.97 for v in NOISY[1:] + NOISY[:1]]
    base, new = runs(tmp_path, [tab1(templates, NOISY)], [tab1(templates, new_values)])
    row = only_row(compared(base, new))
    assert row.verdict == "same" and not row.regression
    assert row.ci95_low < 1 < row.ci95_high or row.p_value >= compare.DEFAULT_ALPHA
    assert main(["compare", base, new]) == 0


def test_a_small_but_significant_change_inside_the_threshold_is_same(tmp_path, templates):
    """Completely separated repetitions (p = 0.0079), yet only 2% slower: not called."""
    base, new = runs(
        tmp_path, [tab1(templates, TIGHT)], [tab1(templates, [v * 0.98 for v in TIGHT])]
    )
    row = only_row(compared(base, new))
    assert row.p_value < 0.01 and row.verdict == "same"
    assert only_row(compared(base, new, threshold=0.01)).verdict == "slower"


def test_the_command_line_s_default_threshold_is_10_percent(tmp_path, templates):
    """A clear 7% slowdown: called at --threshold 5%, not at the default."""
    base, new = runs(
        tmp_path, [tab1(templates, TIGHT)], [tab1(templates, [v * 0.93 for v in TIGHT])]
    )
    assert compare.DEFAULT_THRESHOLD == 0.10
    assert main(["compare", base, new, "--threshold", "5%"]) == 1
    assert main(["compare", base, new]) == 0


def test_a_different_data_digest_is_incomparable(tmp_path, templates):
    changed = tab1(templates, [v * 0.5 for v in TIGHT])
    changed["workload"]["data_digest"] = "0" * 64
    changed["workload"]["batch_size"] += 1
    base, new = runs(tmp_path, [tab1(templates, TIGHT)], [changed])
    (row,) = compared(base, new).rows
    assert row.verdict == "incomparable" and not row.regression
    assert row.reason == "workload differs (data_digest, batch_size)"
    assert main(["compare", base, new]) == 0


def test_runs_of_another_randomness_scheme_are_incomparable(tmp_path, templates):
    """A random cell's bytes are its randomness scheme's draws: a run from before the counter-based
    scheme (its workload names none) is neither faster nor slower, whatever its numbers."""
    new = templates["PR-2/small"]
    assert new["workload"]["randomness"] == randomness.SCHEME
    assert new["provenance"]["randomness"] == randomness.SCHEME
    assert "randomness" not in templates["TAB-1/small"]["workload"]  # draws nothing
    old = copy.deepcopy(new)
    del old["workload"]["randomness"]
    base, new = runs(tmp_path, [old], [new])
    (row,) = compared(base, new).rows
    assert row.verdict == "incomparable" and not row.regression
    assert row.reason == "workload differs (randomness)"


def test_a_cell_measured_on_a_busy_machine_is_incomparable_not_slower(tmp_path, templates):
    busy = tab1(templates, [v * 0.5 for v in TIGHT])
    busy["statistics"]["busy"] = True
    busy["statistics"]["machine_load"] = {"foreign_share": 0.45}
    base, new = runs(tmp_path, [tab1(templates, TIGHT)], [busy])
    (row,) = compared(base, new).rows
    assert row.verdict == "incomparable" and not row.regression
    assert row.reason == "the machine was busy (new: others used 45%)"
    assert main(["compare", base, new]) == 0


def test_a_hardware_mismatch_is_refused_unless_allowed(tmp_path, templates, capsys):
    other = tab1(templates, TIGHT)
    other["provenance"]["cpu"]["model"] = "Some Other CPU"
    other["provenance"]["memory_bytes"] *= 2
    base, new = runs(tmp_path, [tab1(templates, TIGHT)], [other])
    assert main(["compare", base, new]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "different hardware" in err and "'Some Other CPU'" in err
    assert "RAM GiB" in err and "--allow-different-hardware" in err

    csv_path = tmp_path / "out.csv"
    code = main(["compare", base, new, "--allow-different-hardware", "--csv", str(csv_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "Different hardware (compared anyway): CPU model" in out
    rows = list(csv.DictReader(csv_path.open()))
    assert rows and all(r["note"].startswith("different hardware: CPU model") for r in rows)


def test_ok_to_failed_is_a_status_change_and_a_regression(tmp_path, templates):
    ok = tab1(templates, TIGHT)
    failed = copy.deepcopy(ok)
    for key in ("repetitions", "statistics", "parallelism"):
        failed.pop(key)
    failed.update(status="failed", reason="loader raised RuntimeError: boom", error="Traceback")
    base, new = runs(tmp_path, [ok], [failed])
    (row,) = compared(base, new).rows
    assert row.verdict == "status changed" and row.regression
    assert row.reason == "ok -> failed (loader raised RuntimeError: boom)"
    assert main(["compare", base, new]) == 1
    # The other way round is a fix, not a regression.
    (back,) = compared(new, base).rows
    assert back.verdict == "status changed" and not back.regression
    assert main(["compare", new, base]) == 0


def test_a_checkpoint_that_stops_resuming_exactly_is_a_regression(tmp_path, templates):
    pr1 = templates["PR-1/small"]
    base_doc = with_timings(pr1, TIGHT, times=[0.010, 0.0101, 0.0099, 0.0098, 0.0102])
    new_doc = with_timings(pr1, TIGHT, times=[0.020, 0.0202, 0.0198, 0.0199, 0.0201])
    new_doc["special"]["resume_exact"] = False
    base, new = runs(tmp_path, [base_doc], [new_doc])
    result = compared(base, new)
    flag = only_row(result, "resume_exact")
    assert flag.verdict == "regressed" and flag.reason == "exact -> not exact" and flag.regression
    restore = only_row(result, "restore time")
    assert restore.verdict == "slower" and restore.ratio == pytest.approx(0.5)
    assert only_row(result, "throughput").verdict == "same"
    assert main(["compare", base, new]) == 1


def test_determinism_lost_is_a_regression_and_gained_is_not(tmp_path, templates):
    pr2 = with_timings(templates["PR-2/small"], TIGHT)
    broken = copy.deepcopy(pr2)
    broken["special"]["deterministic"] = False
    base, new = runs(tmp_path, [pr2], [broken])
    assert only_row(compared(base, new), "deterministic").verdict == "regressed"
    assert main(["compare", base, new]) == 1
    assert only_row(compared(new, base), "deterministic").verdict == "improved"
    assert main(["compare", new, base]) == 0


def test_streaming_compares_time_to_first_batch(tmp_path, templates):
    io2 = next(r for k, r in templates.items() if k.startswith("IO-2/"))
    base_doc = with_timings(io2, TIGHT, times=[0.1, 0.101, 0.099, 0.098, 0.102])
    new_doc = with_timings(io2, TIGHT, times=[0.05, 0.0505, 0.0495, 0.0498, 0.051])
    base, new = runs(tmp_path, [base_doc], [new_doc])
    row = only_row(compared(base, new), "time to first batch")
    assert row.verdict == "faster" and row.ratio == pytest.approx(2.0) and row.unit == "s"


# --- outputs -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_markdown_csv_and_plot_sorted_by_effect_with_package_differences(tmp_path, templates):
    pr2 = with_timings(templates["PR-2/small"], TIGHT)
    newer = [tab1(templates, [v * 0.7 for v in TIGHT]), with_timings(pr2, [v * 0.9 for v in TIGHT])]
    for doc in newer:
        doc["provenance"]["packages"]["numpy"] = "9.9.9"
    base, new = runs(tmp_path, [tab1(templates, TIGHT), pr2], newer)
    md, table, plot = tmp_path / "c.md", tmp_path / "c.csv", tmp_path / "c.png"
    args = ["compare", base, new, "--markdown", str(md), "--csv", str(table), "--plot", str(plot)]
    assert main(args) == 1
    text = md.read_text()
    assert text.startswith("# Comparison of two benchmark runs")
    numpy_version = templates["TAB-1/small"]["provenance"]["packages"]["numpy"]
    assert f"Package versions differ: numpy {numpy_version} -> 9.9.9" in text
    rows = list(csv.DictReader(table.open()))
    assert [(r["scenario"], r["metric"], r["verdict"]) for r in rows] == [
        ("TAB-1", "throughput", "slower"),
        ("PR-2", "throughput", "slower"),
        ("PR-2", "deterministic", "same"),
    ]
    assert rows[0]["regression"] == "True" and float(rows[0]["ratio"]) == pytest.approx(0.7)
    assert text.index("| TAB-1/small |") < text.index("| PR-2/small |")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_too_few_repetitions_are_flagged_as_unable_to_call_a_change(tmp_path, templates):
    base, new = runs(
        tmp_path, [tab1(templates, [1000.0, 1001.0])], [tab1(templates, [500.0, 501.0])]
    )
    result = compared(base, new)
    assert only_row(result).verdict == "same"
    assert any(
        "with 2 against 2 repetitions the smallest p-value is 0.333" in line
        for line in compare.preamble(result)
    )


# --- bad input -----------------------------------------------------------------------------------


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line_naming_it(tmp_path, templates):
    base, new = runs(tmp_path, [tab1(templates, TIGHT)], [tab1(templates, TIGHT)])
    cli = lambda *a: run_cli("compare", *a)  # noqa: E731
    _one_line_error(cli(str(tmp_path / "nowhere"), new), "nowhere: not a directory")
    _one_line_error(cli(str(tmp_path), new), "no manifest.json, so not a results directory")
    _one_line_error(cli(base, new, "--threshold", "5"), "--threshold '5'")
    _one_line_error(cli(base, new, "--alpha", "2"), "--alpha '2'")
    corrupt = Path(new) / "raw/TAB-1/small/numpy.json"
    text = corrupt.read_text()
    corrupt.write_text(text[: len(text) // 2])
    _one_line_error(cli(base, new), str(corrupt), "SHA-256 differs")
    manifest = json.loads((Path(new) / "manifest.json").read_text())
    manifest["cells"][0].pop("sha256")
    (Path(new) / "manifest.json").write_text(json.dumps(manifest))
    _one_line_error(cli(base, new), str(corrupt), "not valid JSON")
    assert not any(Path(new).glob("comparison*"))


# --- repetitions from several worker processes -------------------------------------------------


def with_processes(result: dict, groups: list[list[float]]) -> dict:
    """The result with each group's throughputs as one worker process's windows."""
    doc = with_timings(result, [v for group in groups for v in group])
    labels = [p for p, group in enumerate(groups) for _ in group]
    for rep, process in zip(doc["repetitions"], labels, strict=True):
        rep["process"] = process
    if len(groups) > 1:
        doc["statistics"]["processes"] = len(groups)
    return doc


@pytest.mark.parametrize("df", [1, 1.5, 2, 2.7, 4, 7.3, 30, 400])
def test_the_t_quantile_matches_scipy(df):
    for p in (0.9, 0.975, 0.995):
        assert stats.t_quantile(p, df) == pytest.approx(scipy.stats.t.ppf(p, df), rel=1e-5)


def test_the_process_interval_is_welchs_over_log_process_medians():
    base = [[1000.0, 1004.0], [1100.0, 1090.0, 1095.0], [1040.0, 1046.0]]
    new = [[900.0, 905.0], [960.0, 955.0], [1010.0, 1000.0], [930.0, 936.0]]
    ratio, low, high = compare.ratio_interval(base, new)
    pooled = np.median(np.concatenate(new)) / np.median(np.concatenate(base))
    assert ratio == pytest.approx(pooled)
    welch = scipy.stats.ttest_ind(
        np.log([np.median(g) for g in new]), np.log([np.median(g) for g in base]), equal_var=False
    ).confidence_interval(0.95)
    half = (welch.high - welch.low) / 2
    # t_quantile agrees with scipy's to about 1e-5 of the quantile.
    assert np.log(low) == pytest.approx(np.log(ratio) - half, abs=1e-6)
    assert np.log(high) == pytest.approx(np.log(ratio) + half, abs=1e-6)


def test_a_shift_within_the_spread_between_processes_is_same(tmp_path, templates):
    """Every window of the new run is below every window of the base: counted as windows that
    is a 12% slowdown; but the base run's own processes differ by as much."""
    base_groups = [[1000.0, 1002, 1001, 999], [1060, 1058, 1061, 1059], [1120, 1123, 1121, 1119]]
    new_groups = [[880.0, 882, 881, 879], [930, 933, 931, 932], [980, 978, 979, 981]]
    base, new = runs(
        tmp_path,
        [with_processes(templates["TAB-1/small"], base_groups)],
        [with_processes(templates["TAB-1/small"], new_groups)],
    )
    row = only_row(compared(base, new, threshold=0.05))
    assert row.p_value < 0.01 and row.ratio == pytest.approx(0.879, abs=0.005)
    assert row.verdict == "same" and row.ci95_low < 0.8 and row.ci95_high > 1 / 1.05
    assert (row.base_processes, row.new_processes) == (3, 3)
    assert main(["compare", base, new, "--threshold", "5%"]) == 0

    # The same windows as if each run were one process: the interval no longer sees it.
    flat = tmp_path / "flat"
    base, new = runs(
        flat, [tab1(templates, sum(base_groups, []))], [tab1(templates, sum(new_groups, []))]
    )
    assert only_row(compared(base, new, threshold=0.05)).verdict == "slower"


def test_a_20_percent_slowdown_over_three_steady_processes_is_slower(tmp_path, templates, capsys):
    base_groups = [[1000.0, 1003.0], [1010.0, 1008.0], [995.0, 998.0]]
    new_groups = [[v * 0.8 for v in group] for group in base_groups[::-1]]
    base, new = runs(
        tmp_path,
        [with_processes(templates["TAB-1/small"], base_groups)],
        [with_processes(templates["TAB-1/small"], new_groups)],
    )
    row = only_row(compared(base, new))
    assert row.verdict == "slower" and row.ratio == pytest.approx(0.8, abs=0.005)
    assert 0.75 < row.ci95_low and row.ci95_high < 0.85
    assert main(["compare", base, new]) == 1
    assert "single worker process" not in capsys.readouterr().out


def test_rows_from_one_process_are_flagged_above_the_table(tmp_path, templates, capsys):
    base, new = runs(
        tmp_path,
        [tab1(templates, TIGHT)],
        [with_processes(templates["TAB-1/small"], [TIGHT[:2], TIGHT[2:4], TIGHT[4:]])],
    )
    row = only_row(compared(base, new))
    assert (row.base_processes, row.new_processes) == (1, 3)
    main(["compare", base, new, "--csv", str(tmp_path / "c.csv")])
    out = capsys.readouterr().out
    assert "1 timed rows come from a single worker process in at least one run" in out
    (record,) = list(csv.DictReader((tmp_path / "c.csv").open()))
    assert (record["base_processes"], record["new_processes"]) == ("1", "3")
