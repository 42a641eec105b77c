"""Aggregation: real smoke results (NumPy reference) into results.csv, summary.md, the run index."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
from support.smoke import smoke_view

from datarax_bench.adapters import get_adapter
from datarax_bench.errors import UserError
from datarax_bench.report.aggregate import UNSTABLE_CV, aggregate_run, results_table
from datarax_bench.results import cell_path, load_result, write_result
from datarax_bench.run.cell import CellClock, make_result
from datarax_bench.workload.catalog import load_catalog, load_profile

#: The cells of the shared smoke run this module reads (support/smoke.py).
SMOKE_RUN = {"numpy": ("CV-1", "PC-1", "PC-2", "PR-2", "DIST-1", "TAB-1", "IO-1")}


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory, smoke_results):
    """A real `run --output-dir` of two smoke scenarios, plus an `unsupported` PC-2 cell."""
    out = smoke_view(smoke_results, tmp_path_factory.mktemp("smoke-run"), ["CV-1", "PC-1", "PC-2"])
    profile = load_profile("smoke")
    workload = load_catalog().get("PC-2").resolve("small", profile.size)
    reason = "NumPy reference cannot express transform 'branch_merge' (test)"
    doc = make_result("unsupported", reason, profile, workload, get_adapter("numpy"), CellClock())
    write_result(cell_path(out, "PC-2", "small", "numpy"), doc)
    return out


def _paths(root):
    return sorted((root / "raw").rglob("*.json"))


def _clone(root, source, adapter, factor):
    """A second 'adapter' for the same cell whose throughput is `factor` times the source's."""
    doc = copy.deepcopy(load_result(source))
    doc["cell"]["adapter"] = adapter
    doc["cell"]["adapter_name"] = adapter.title()
    stats = doc["statistics"]["elements_per_s"]
    for key in ("median", "ci95_low", "ci95_high", "min", "max"):
        stats[key] *= factor
    c = doc["cell"]
    path = cell_path(root, c["scenario"], c["variant"], adapter)
    write_result(path, doc)
    return path


def test_one_row_per_cell_with_statistics(smoke_dir):
    paths = _paths(smoke_dir)
    table = aggregate_run(paths, smoke_dir, "smoke", "local")
    assert len(table) == len(paths) == 4
    csv = pd.read_csv(smoke_dir / "results.csv")
    assert len(csv) == 4
    ok = csv[csv["status"] == "ok"]
    assert set(ok["scenario"]) == {"CV-1", "PC-1"}
    for row in ok.itertuples():
        doc = json.loads((smoke_dir / row.path).read_text())
        assert row.elements_per_s_median == pytest.approx(
            doc["statistics"]["elements_per_s"]["median"]
        )
        assert row.elements_per_s_ci95_low <= row.elements_per_s_median
        assert row.unstable == (doc["statistics"]["elements_per_s"]["cv"] > UNSTABLE_CV)
        assert row.rank == 1 and row.ratio_to_best == pytest.approx(1.0)
    missing = csv[csv["status"] != "ok"].iloc[0]
    assert missing["status"] == "unsupported" and "branch_merge" in missing["reason"]
    assert pd.isna(missing["elements_per_s_median"]) and pd.isna(missing["rank"])
    reps = pd.read_csv(smoke_dir / "repetitions.csv")
    # One row per timed repetition of every ok cell (the smoke profile runs two).
    assert len(reps) == 2 * len(ok)
    assert (reps["latency_ms_p99"] >= reps["latency_ms_p50"]).all()


def test_run_index_matches_the_cli_layout(smoke_dir):
    paths = _paths(smoke_dir)
    aggregate_run(paths, smoke_dir, "smoke", "local")
    manifest = json.loads((smoke_dir / "manifest.json").read_text())
    summary = json.loads((smoke_dir / "summary.json").read_text())
    assert manifest["profile"] == "smoke"
    assert sorted(c["path"] for c in manifest["cells"]) == sorted(
        str(p.relative_to(smoke_dir)) for p in paths
    )
    assert summary["counts"] == {"ok": 3, "unsupported": 1}


def test_ranking_ratio_and_summary(tmp_path, smoke_dir):
    root = tmp_path / "run"
    for p in _paths(smoke_dir):
        target = root / p.relative_to(smoke_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(p.read_bytes())
    source = cell_path(root, "CV-1", "small", "numpy")
    slow = _clone(root, source, "slowpoke", 0.5)
    fast = _clone(root, source, "speedy", 2.0)
    table = aggregate_run(_paths(root), root, "smoke", "local")
    cv1 = table[table["scenario"] == "CV-1"].set_index("adapter")
    assert cv1.loc["speedy", "rank"] == 1
    assert cv1.loc["numpy", "rank"] == 2 and cv1.loc["slowpoke", "rank"] == 3
    assert cv1.loc["numpy", "ratio_to_best"] == pytest.approx(0.5)
    assert cv1.loc["slowpoke", "ratio_to_best"] == pytest.approx(0.25)
    # Ranks are per variant: PC-1's two variants each have their own best.
    assert (table[table["scenario"] == "PC-1"]["rank"] == 1).all()
    text = (root / "summary.md").read_text()
    section = text.split("## CV-1")[1].split("## ")[0]
    order = [section.index(f"`{a}`") for a in ("speedy", "numpy", "slowpoke")]
    assert order == sorted(order), "adapters are listed best first"
    assert "| 0.25 |" in section
    pc2 = text.split("## PC-2")[1]
    assert "unsupported" in pc2 and "branch_merge" in pc2
    assert str(slow.relative_to(root)) in set(table["path"]) and fast.exists()


def _tuned_clone(root, source, adapter, factor, chosen, digest=None):
    """The tuned style of `adapter`'s cell, `factor` times the source's throughput."""
    doc = copy.deepcopy(load_result(source))
    doc["cell"]["adapter"] = adapter
    doc["cell"]["style"] = "tuned"
    for key in ("median", "ci95_low", "ci95_high", "min", "max"):
        doc["statistics"]["elements_per_s"][key] *= factor
    if digest:
        doc["statistics"]["first_batch_sha256"] = digest
    doc["tuning"] = {"knobs": sorted(chosen), "grid": [], "chosen": chosen, "cost_s": 1.5,
                     "cached": False}  # fmt: skip
    c = doc["cell"]
    write_result(cell_path(root, c["scenario"], c["variant"], adapter, "tuned"), doc)


def test_styles_rank_apart_with_tuned_over_plain_and_their_bytes_compared(tmp_path, smoke_dir):
    root = tmp_path / "run"
    _copy_cells(smoke_dir, root)
    source = cell_path(root, "CV-1", "small", "numpy")
    _clone(root, source, "other", 2.0)
    _tuned_clone(root, source, "numpy", 1.5, {})
    _tuned_clone(root, cell_path(root, "CV-1", "small", "other"), "other", 0.5, {"workers": 2},
                 digest="0" * 64)  # fmt: skip
    table = aggregate_run(_paths(root), root, "smoke", "local")
    cv1 = table[table["scenario"] == "CV-1"].set_index(["adapter", "style"])
    # Ranked within a style: the tuned NumPy cell (1.5x) beats the tuned other (1.0x).
    assert cv1.loc[("other", "plain"), "rank"] == 1 and cv1.loc[("numpy", "plain"), "rank"] == 2
    assert cv1.loc[("numpy", "tuned"), "rank"] == 1 and cv1.loc[("other", "tuned"), "rank"] == 2
    assert cv1.loc[("numpy", "tuned"), "tuned_to_plain"] == pytest.approx(1.5)
    assert cv1.loc[("other", "tuned"), "tuned_to_plain"] == pytest.approx(0.5)
    assert bool(cv1.loc[("numpy", "tuned"), "same_bytes_as_plain"]) is True
    assert bool(cv1.loc[("other", "tuned"), "same_bytes_as_plain"]) is False
    assert pd.isna(cv1.loc[("numpy", "plain"), "tuned_to_plain"])
    csv = pd.read_csv(root / "results.csv")
    assert set(csv["style"]) == {"plain", "tuned"}
    section = (root / "summary.md").read_text().split("## CV-1")[1].split("## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| small |")]
    assert [r.split("|")[2].strip() for r in rows] == ["plain", "plain", "tuned", "tuned"]
    tuned_numpy, tuned_other = rows[2], rows[3]
    assert "1.50×" in tuned_numpy and "`numpy`" in tuned_numpy
    assert "0.50×" in tuned_other and "workers=2" in tuned_other
    assert "first batch differs from the plain style's" in tuned_other
    assert "first batch differs" not in tuned_numpy
    assert "nan" not in section.lower()


def test_unstable_cells_are_marked(smoke_dir):
    doc = load_result(cell_path(smoke_dir, "CV-1", "small", "numpy"))
    steady, noisy = copy.deepcopy(doc), copy.deepcopy(doc)
    steady["statistics"]["elements_per_s"]["cv"] = UNSTABLE_CV / 2
    steady["statistics"]["unstable"] = False
    noisy["cell"]["adapter"] = "noisy"
    noisy["statistics"]["elements_per_s"]["cv"] = UNSTABLE_CV * 2
    noisy["statistics"]["unstable"] = True
    # A result written before the harness recorded the flag gets the same rule applied.
    legacy = copy.deepcopy(noisy)
    legacy["cell"]["adapter"] = "legacy"
    del legacy["statistics"]["unstable"]
    table = results_table([steady, noisy, legacy], "local", ["a.json", "b.json", "c.json"])
    assert list(table["unstable"]) == [False, True, True]


def test_cells_that_missed_their_precision_target_are_counted_in_the_summary(tmp_path, smoke_dir):
    root = tmp_path / "run"
    source = load_result(cell_path(smoke_dir, "CV-1", "small", "numpy"))
    stops = {
        "met": ("precision reached across 2 processes (each: precision reached)", 0.02),
        "wide": ("precision not reached across 2 processes: 9.0% > 5.0% (each: ...)", 0.09),
        "capped": ("max_repetitions reached", 0.07),
    }
    for adapter, (stopped, precision) in stops.items():
        doc = copy.deepcopy(source)
        doc["cell"]["adapter"] = adapter
        doc["statistics"].update(stopped=stopped, precision=precision)
        write_result(cell_path(root, "CV-1", "small", adapter), doc)
    table = aggregate_run(_paths(root), root, "smoke", "local")
    assert dict(zip(table["adapter"], table["precision"], strict=True)) == {
        a: p for a, (_, p) in stops.items()
    }
    assert set(table["stopped"]) == {stopped for stopped, _ in stops.values()}
    summary = (root / "summary.md").read_text()
    assert "2 of 3 cells measured to a precision target did not meet it" in summary


def test_a_bad_result_file_names_the_file(tmp_path, smoke_dir):
    bad = tmp_path / "raw" / "CV-1" / "small" / "numpy.json"
    bad.parent.mkdir(parents=True)
    doc = json.loads(cell_path(smoke_dir, "CV-1", "small", "numpy").read_text())
    doc["status"] = "great"
    bad.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=str(bad)):
        aggregate_run([bad], tmp_path, "smoke", "local")
    assert not (tmp_path / "results.csv").exists()


def test_special_measurements_get_their_own_tables(tmp_path, smoke_results):
    out = smoke_view(smoke_results, tmp_path / "special", ["PR-2", "DIST-1", "TAB-1", "IO-1"])
    paths = sorted(out.glob("raw/*/*/*.json"))
    table = aggregate_run(paths, out, "smoke", "local")
    pr2 = table[table["scenario"] == "PR-2"].iloc[0]
    assert pr2["special_deterministic"] == True and pr2["special_seeds_differ"] == True  # noqa: E712
    assert set(table[table["scenario"] == "DIST-1"]["special_devices"]) == {1, 2, 4, 8}
    summary = (out / "summary.md").read_text()
    determinism = summary.split("## PR-2")[1].split("## ")[0]
    assert "Measurement `determinism`" in determinism and "Rank" not in determinism
    assert "| small | NumPy reference (`numpy`) | 2 | 16 | 2 | 0 | 1 | True | True |" in determinism
    sharding = summary.split("## DIST-1")[1].split("## ")[0]
    assert "| dev8 | NumPy reference (`numpy`) | 8 | P('data',) | True |" in sharding
    assert "Rank" in summary.split("## TAB-1")[1].split("## ")[0], "throughput keeps its ranking"
    # IO-1: the reader and the on-disk size in binary units; per-repetition lists stay out of
    # the table, and the record encoding is said once per backend below it.
    backends = summary.split("## IO-1")[1].split("## ")[0]
    io1 = table[(table["scenario"] == "IO-1") & (table["status"] == "ok")]
    assert list(io1["variant"]) == ["memory", "npy_mmap"]
    size = io1["special_bytes_on_disk"].iloc[0]
    assert 1024 < size < 1024**2
    row = f"| npy_mmap | NumPy reference (`numpy`) | np.load(mmap_mode='r') memory maps | {size / 1024:.3g} KiB |"
    assert row in backends
    assert "| reader | bytes on disk | time to first batch s median | load s median |" in backends
    assert "- record encoding (memory, npy_mmap): NumPy .npy files" in backends
    assert io1["special_time_to_first_batch_s"].iloc[0].count(", ") == 1, "kept in results.csv"


OUTPUTS = ("results.csv", "repetitions.csv", "summary.md", "manifest.json", "summary.json")


def _copy_cells(smoke_dir, root):
    for p in _paths(smoke_dir):
        target = root / p.relative_to(smoke_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(p.read_bytes())
    return _paths(root)


def test_a_nan_median_is_rejected_before_any_output_is_written(tmp_path, smoke_dir):
    paths = _copy_cells(smoke_dir, tmp_path)
    bad = cell_path(tmp_path, "PC-1", "d5", "numpy")
    doc = json.loads(bad.read_text())
    median = doc["statistics"]["elements_per_s"]["median"]
    bad.write_text(bad.read_text().replace(repr(median), "NaN", 1))
    with pytest.raises(UserError) as err:
        aggregate_run(paths, tmp_path, "smoke", "local")
    assert str(err.value).startswith(f"{bad}: statistics.elements_per_s.median: got NaN")
    assert not any((tmp_path / name).exists() for name in OUTPUTS)


def test_a_failed_aggregation_leaves_the_previous_outputs_untouched(tmp_path, smoke_dir):
    paths = _copy_cells(smoke_dir, tmp_path)
    aggregate_run(paths, tmp_path, "smoke", "local")
    before = {name: (tmp_path / name).read_bytes() for name in OUTPUTS}
    (tmp_path / "blocked").write_text("a file where a directory is needed")
    with pytest.raises(OSError):
        aggregate_run(
            paths[:1], tmp_path, "smoke", "local", summary_path=tmp_path / "blocked" / "summary.md"
        )
    assert {name: (tmp_path / name).read_bytes() for name in OUTPUTS} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*OUTPUTS, "blocked", "raw"])
