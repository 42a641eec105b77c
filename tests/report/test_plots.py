"""Plots: real smoke results through aggregate, then every figure, checked through the renderer.

Two runs are drawn. `real`: the NumPy reference measured for real on PC-1, IO-1, TAB-1 (IO-1's
file formats it cannot read are `unsupported` cells) and Datarax on NLP-2 (unsupported). `spread`: the same
measured rows under five adapter names, their numbers scaled by factors like those a real run
shows (one adapter 80x faster, first batches from milliseconds to seconds), so that the figures
meet long labels, wide spans and unstable cells.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import LogNorm
from matplotlib.text import Text
from support.smoke import smoke_view

from datarax_bench.report import plots
from datarax_bench.report.aggregate import aggregate_run
from datarax_bench.workload.catalog import load_catalog

SCENARIOS = ("PC-1", "IO-1", "TAB-1", "NLP-2")
#: adapter id, name, throughput factor, time-to-first-batch factor, unstable
SPREAD = [
    ("numpy", "NumPy reference", 1.0, 1.0, False),
    ("datarax", "Datarax", 80.0, 300.0, True),
    ("grain", "Google Grain", 0.5, 2000.0, False),
    ("pytorch", "PyTorch DataLoader", 0.45, 900.0, False),
    ("tfdata", "tf.data", 0.52, 50.0, False),
    # Both styles of every adapter, as the default run has them, and more loaders: the
    # figures must stay readable at a dozen columns.
    ("numpy.tuned", "NumPy reference (tuned)", 1.1, 1.0, False),
    ("datarax.tuned", "Datarax (tuned)", 85.0, 300.0, False),
    ("grain.tuned", "Google Grain (tuned)", 0.8, 1500.0, False),
    ("pytorch.tuned", "PyTorch DataLoader (tuned)", 0.6, 700.0, False),
    ("tfdata.tuned", "tf.data (tuned)", 0.9, 40.0, False),
    ("hf_datasets", "Hugging Face Datasets", 0.3, 20.0, False),
    ("mosaicml_streaming", "MosaicML Streaming", 0.35, 600.0, False),
]
CATALOG = load_catalog()


#: The cells of the shared smoke run this module reads (support/smoke.py).
SMOKE_RUN = {"numpy": ("PC-1", "IO-1", "TAB-1"), "datarax": ("NLP-2",)}


@pytest.fixture(scope="module")
def real(tmp_path_factory, smoke_results):
    out = tmp_path_factory.mktemp("plots-real")
    for scenarios, adapter in ((["PC-1", "IO-1", "TAB-1"], "numpy"), (["NLP-2"], "datarax")):
        smoke_view(smoke_results, out, scenarios, adapter)
    aggregate_run(sorted((out / "raw").rglob("*.json")), out, "smoke", "local")
    return out


def _spread(frame: pd.DataFrame, columns_up, columns_down, which: int) -> pd.DataFrame:
    copies = []
    for adapter, name, faster, slower_start, unstable in SPREAD:
        copy = frame.copy()
        copy["adapter"], copy["adapter_name"] = adapter, name
        for column in columns_up:
            copy[column] = copy[column] * faster
        for column in columns_down:
            copy[column] = copy[column] * (slower_start if "first_batch" in column else 1 / faster)
        if which == 0 and unstable:
            copy["unstable"] = copy["status"] == "ok"
            copy["elements_per_s_cv"] = copy["elements_per_s_cv"].where(~copy["unstable"], 0.25)
        copies.append(copy)
    return pd.concat(copies, ignore_index=True)


@pytest.fixture(scope="module")
def spread(real, tmp_path_factory):
    out = tmp_path_factory.mktemp("plots-spread")
    table = pd.read_csv(real / "results.csv")
    table["path"] = [str(real / p) for p in table["path"]]  # provenance stays the real one
    eps = [c for c in table.columns if c.startswith("elements_per_s_") and not c.endswith("_cv")]
    table = _spread(table, [*eps, "bytes_per_s_median"], ["time_to_first_batch_s_median"], 0)
    ok = table["status"] == "ok"
    best = (
        table["elements_per_s_median"]
        .where(ok)
        .groupby([table["scenario"], table["variant"]])
        .transform("max")
    )
    table["ratio_to_best"] = (table["elements_per_s_median"] / best).where(ok)
    table.to_csv(out / "results.csv", index=False)
    reps = pd.read_csv(real / "repetitions.csv")
    latency = [c for c in reps.columns if c.startswith("latency_ms_")]
    reps = _spread(reps, ["elements_per_s"], [*latency, "time_to_first_batch_s"], 1)
    reps.to_csv(out / "repetitions.csv", index=False)
    return out


RUNS = ("real", "spread")


def _load(run_dir):
    table = plots.in_catalog_order(pd.read_csv(run_dir / "results.csv"), CATALOG)
    reps = plots.in_catalog_order(pd.read_csv(run_dir / "repetitions.csv"), CATALOG)
    return table, reps, plots.run_facts(table, run_dir)


def _figures(run_dir):
    """(name, figure) for every figure of the run: each scenario's three and the overview."""
    table, reps, facts = _load(run_dir)
    for scenario in SCENARIOS:
        for kind, fig in plots.scenario_figures(table, reps, scenario, facts, CATALOG).items():
            yield f"{scenario}/{kind}", fig
    yield "overview", plots.overview_figure(table, facts)


@pytest.fixture(scope="module", params=RUNS)
def figures(request):
    run_dir = request.getfixturevalue(request.param)
    table, reps, facts = _load(run_dir)
    # Both runs' figures stay open for the module's tests (closed at its end).
    with plots.plt.rc_context({"figure.max_open_warning": 0}):
        made = dict(_figures(run_dir))
    for fig in made.values():
        fig.canvas.draw()
    yield request.param, table, reps, facts, made
    for fig in made.values():
        plots.plt.close(fig)


def drawn_texts(fig) -> list[Text]:
    """Every piece of text the renderer puts on the figure: every `Text` artist it holds
    (titles, axis and tick labels, bar and cell labels, legends, colorbars, notes, footer),
    tick labels only where their tick is inside the view (the others are not drawn)."""
    ticks: set[int] = set()
    drawn_ticks: list[Text] = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            span = hi - lo
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                labels = (tick.label1, tick.label2)
                ticks.update(id(t) for t in labels)
                if lo - 1e-9 * span <= tick.get_loc() <= hi + 1e-9 * span:
                    drawn_ticks += labels
    others = [t for t in fig.findobj(match=Text) if id(t) not in ticks]
    texts = [*drawn_ticks, *others]
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def footer(fig) -> str:
    return [t.get_text() for t in drawn_texts(fig) if "commit" in t.get_text()][-1]


def below_plot(fig) -> str:
    return " ".join(t.get_text() for t in fig.artists if isinstance(t, Text)).replace("\n", " ")


@pytest.mark.slow
def test_every_figure_is_written_and_no_temporary_file_left(real, tmp_path):
    already_open = set(plots.plt.get_fignums())
    for scenario in SCENARIOS:
        outputs = {k: tmp_path / scenario / f"{k}.png" for k in plots.PLOT_KINDS}
        plots.plot_scenario(real / "results.csv", real / "repetitions.csv", scenario, **outputs)
        for path in outputs.values():
            image = matplotlib.image.imread(path)
            assert image.shape[0] > 200 and image.shape[1] > 500
    plots.plot_overview(real / "results.csv", tmp_path / "overview.png")
    assert matplotlib.image.imread(tmp_path / "overview.png").shape[0] > 200
    assert not list(tmp_path.rglob(".*.png")), "no temporary files left behind"
    # A figure written is closed: a caller that plots many runs does not pile them up.
    assert set(plots.plt.get_fignums()) == already_open


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
@pytest.mark.slow
def test_figures_follow_the_umask_like_every_other_output(real, tmp_path, umask, mode):
    import os
    import stat

    outputs = {k: tmp_path / f"{k}.png" for k in plots.PLOT_KINDS}
    old = os.umask(umask)
    try:
        plots.plot_scenario(real / "results.csv", real / "repetitions.csv", "TAB-1", **outputs)
        plots.plot_overview(real / "results.csv", tmp_path / "overview.png")
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("*.png")} == {mode}


def test_no_two_labels_overlap(figures):
    _, _, _, _, made = figures
    for name, fig in made.items():
        renderer = fig.canvas.get_renderer()
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in drawn_texts(fig)]
        assert len(boxes) > 5, name
        for i, (text_a, a) in enumerate(boxes):
            for text_b, b in boxes[i + 1 :]:
                assert not a.overlaps(b), f"{name}: {text_a!r} overlaps {text_b!r}"


def _span(values) -> float:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return v.max() / v.min()


def _check_axis(ax, which: str, values, seen: set) -> None:
    log = _span(values) > 10
    scale = ax.get_xscale() if which == "x" else ax.get_yscale()
    label = (ax.get_xlabel() if which == "x" else ax.get_ylabel()).lower()
    assert scale == ("log" if log else "linear"), (which, _span(values))
    assert ("log scale" in label) == log, label
    seen.add(log)


def test_value_axes_are_log_exactly_when_the_values_span_more_than_10x(figures):
    run, table, reps, _, made = figures
    seen: set[bool] = set()
    tab = table[(table["scenario"] == "TAB-1") & (table["status"] == "ok")]
    bounds = [*tab["elements_per_s_ci95_low"], *tab["elements_per_s_ci95_high"]]
    _check_axis(made["TAB-1/throughput"].axes[0], "x", bounds, seen)
    pc1 = table[(table["scenario"] == "PC-1") & (table["status"] == "ok")]
    ax = made["PC-1/throughput"].axes[0]
    _check_axis(ax, "x", [1, 5], seen)  # smoke's depths: d1, d5
    _check_axis(ax, "y", [*pc1["elements_per_s_ci95_low"], *pc1["elements_per_s_ci95_high"]], seen)
    for scenario in ("PC-1", "IO-1"):
        r = reps[reps["scenario"] == scenario]
        _check_axis(made[f"{scenario}/first_batch"].axes[0], "x", r["time_to_first_batch_s"], seen)
        latency = [*r["latency_ms_p50"], *r["latency_ms_p95"], *r["latency_ms_p99"]]
        _check_axis(made[f"{scenario}/latency"].axes[0], "x", latency, seen)
    io1 = table[(table["scenario"] == "IO-1") & (table["status"] == "ok")]
    norm = made["IO-1/throughput"].axes[0].images[0].norm
    assert isinstance(norm, LogNorm) == (_span(io1["elements_per_s_median"]) > 10)
    if run == "spread":  # 80x between adapters: the case a linear axis flattens
        assert made["TAB-1/throughput"].axes[0].get_xscale() == "log"
        assert isinstance(norm, LogNorm)
        assert seen == {True, False}, "both the log and the linear case were met"


def test_every_figure_has_a_footer_with_profile_machine_date_and_commit(figures):
    _, table, _, _, made = figures
    commit = table["git_commit"].dropna().iloc[0][:12]
    day = table["started"].iloc[0][:10]
    for name, fig in made.items():
        text = footer(fig)
        assert f"commit {commit}" in text, name
        assert "profile smoke" in text and "infra local" in text, name
        assert "CPU " in text and " cores" in text and ("GPU" in text), name
        assert day in text, name


def test_throughput_bars_are_the_medians_with_ci_and_their_values(figures):
    _, table, _, _, made = figures
    cells = table[(table["scenario"] == "TAB-1") & (table["status"] == "ok")]
    ax = made["TAB-1/throughput"].axes[0]
    widths = sorted(p.get_width() for p in ax.patches)
    assert widths == pytest.approx(sorted(cells["elements_per_s_median"]))
    segments = ax.collections[0].get_segments()
    spans = sorted((s[0][0], s[1][0]) for s in segments)
    expected = sorted(
        zip(cells["elements_per_s_ci95_low"], cells["elements_per_s_ci95_high"], strict=True)
    )
    assert np.allclose(spans, expected)
    values = [t.get_text().split()[0] for t in ax.texts]
    assert sorted(values) == sorted(f"{plots.si(v)}/s" for v in cells["elements_per_s_median"])
    # Horizontal bars: the adapters are the y tick labels, fastest first.
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == list(
        cells.sort_values("elements_per_s_median", ascending=False)["adapter_name"]
    )


def test_unstable_cells_are_marked_as_in_the_summary(spread):
    table, reps, facts = _load(spread)
    figs = plots.scenario_figures(table, reps, "TAB-1", facts, CATALOG)
    ax = figs["throughput"].axes[0]
    marked = [t.get_text() for t in ax.texts if "unstable" in t.get_text()]
    shaky = table[(table["scenario"] == "TAB-1") & table["unstable"].fillna(False).astype(bool)]
    # Datarax's copy always; the others too when the real cell itself varied by more than 10%.
    assert "Datarax" in set(shaky["adapter_name"])
    assert sorted(m.split("  ")[1] for m in marked) == sorted(
        f"unstable (CV {cv:.0%})" for cv in shaky["elements_per_s_cv"]
    )
    assert sum(bool(p.get_hatch()) for p in ax.patches) == len(shaky)
    assert "vary by more than 10%" in below_plot(figs["throughput"])
    overview = plots.overview_figure(table, facts)
    assert any(t.get_text().endswith("*") for t in overview.axes[0].texts)
    plots.plt.close("all")


def test_pc1_is_one_line_per_adapter_against_depth(figures):
    _, table, _, _, made = figures
    ax = made["PC-1/throughput"].axes[0]
    pc1 = table[(table["scenario"] == "PC-1") & (table["status"] == "ok")]
    adapters = list(dict.fromkeys(pc1["adapter_name"]))
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    assert list(lines) == adapters
    for adapter, line in lines.items():
        rows = table[(table["scenario"] == "PC-1") & (table["adapter_name"] == adapter)]
        assert list(line.get_xdata()) == [1.0, 5.0]
        assert list(line.get_ydata()) == pytest.approx(list(rows["elements_per_s_median"]))
    assert [t.get_text() for t in ax.get_legend().get_texts()][-len(adapters) :] == adapters
    assert ax.get_xlabel().startswith("depth")


def test_io1_is_a_backend_by_adapter_matrix_with_unsupported_cells_empty(figures):
    _, table, _, _, made = figures
    fig = made["IO-1/throughput"]
    ax = fig.axes[0]
    io1 = table[table["scenario"] == "IO-1"]
    variants = list(dict.fromkeys(io1["variant"]))
    assert variants == CATALOG.get("IO-1").default_variants
    assert [t.get_text() for t in ax.get_xticklabels()] == variants
    adapters = [t.get_text() for t in ax.get_yticklabels()]
    assert adapters == list(dict.fromkeys(io1["adapter_name"]))
    grid = np.ma.getdata(ax.images[0].get_array())
    mask = np.ma.getmaskarray(ax.images[0].get_array())
    for r in io1.itertuples():
        i, j = adapters.index(r.adapter_name), variants.index(r.variant)
        if r.status == "ok":
            assert not mask[i, j] and grid[i, j] == pytest.approx(r.elements_per_s_median)
        else:
            assert mask[i, j], (r.variant, r.adapter_name)
            (text,) = [t for t in ax.texts if t.get_position() == (j, i)]
            assert text.get_text() == r.status
    unsupported = "array_record, tfrecord, tfds, parquet, webdataset, litdata"
    assert f"unsupported: NumPy reference ({unsupported})" in below_plot(fig)


def test_first_batch_is_a_dot_per_repetition(figures):
    _, _, reps, _, made = figures
    r = reps[reps["scenario"] == "IO-1"]
    ax = made["IO-1/first_batch"].axes[0]
    dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert sorted(np.concatenate([d.get_xdata() for d in dots])) == pytest.approx(
        sorted(r["time_to_first_batch_s"])
    )


def test_a_scenario_without_measured_cells_says_why(real):
    table, reps, facts = _load(real)
    for kind, fig in plots.scenario_figures(table, reps, "NLP-2", facts, CATALOG).items():
        assert any(t.get_text().startswith("No ") for t in fig.axes[0].texts), kind
        assert "unsupported: Datarax (small)" in below_plot(fig), kind
        plots.plt.close(fig)


def test_overview_names_the_fastest_adapter_of_each_variant_and_the_ratios(figures):
    _, table, _, _, made = figures
    ax = made["overview"].axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    expected = [
        f"{s} {v} — {CATALOG.get(s).name}"
        for s in CATALOG.scenarios
        if s in SCENARIOS
        for v in CATALOG.get(s).variants
        if v in set(table.loc[table["scenario"] == s, "variant"])
    ]
    assert rows == expected  # catalog order: d1, d5 (never d1, d10, d2)
    # Column headers wrap the adapters' names over narrow columns.
    adapters = [" ".join(t.get_text().split()) for t in ax.get_xticklabels()]
    ok = table[table["status"] == "ok"]
    cell_text = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    for r in ok.itertuples():
        i = rows.index(f"{r.scenario} {r.variant} — {r.scenario_name}")
        text = cell_text[(i, adapters.index(r.adapter_name))].get_text()
        if r.ratio_to_best == 1:
            assert text.startswith("best") and plots.si(r.elements_per_s_median) in text
        else:
            assert text.rstrip("*") == f"{r.ratio_to_best:.2g}×"
    # every measured variant has exactly one best
    bests = [t for t in ax.texts if t.get_text().startswith("best")]
    assert len(bests) == len(ok.groupby(["scenario", "variant"]))


def _offline_history(run_dir: Path) -> dict:
    """Every key logged to the history of an offline W&B run, with its value; the W&B charts
    (panels) it declares under `charts`."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    (log_file,) = run_dir.glob("run-*.wandb")
    store = datastore.DataStore()
    store.open_for_scan(str(log_file))
    logged: dict = {"charts": {}}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                logged["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                if list(item.nested_key[:2]) == ["_wandb", "visualize"]:
                    panel = json.loads(item.value_json)["panel_config"]
                    logged["charts"][item.nested_key[2]] = panel
    return logged


@pytest.mark.slow
def test_wandb_gets_the_figures_and_its_own_charts_from_the_table(real, tmp_path, monkeypatch):
    from datarax_bench.report import wandb_export as export

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SERVICE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    results = tmp_path / "results" / "smoke" / "local"
    shutil.copytree(real, results)
    for scenario in SCENARIOS:
        outputs = {k: results / "plots" / scenario / f"{k}.png" for k in plots.PLOT_KINDS}
        plots.plot_scenario(
            results / "results.csv", results / "repetitions.csv", scenario, **outputs
        )
    plots.plot_overview(results / "results.csv", results / "plots" / "overview.png")
    report = export.export_results(results, marker=tmp_path / "marker.json", mode="offline")
    assert "plots/overview.png" in report["exported"]["plots"]
    run_dir = Path(report["run_dir"])
    logged = _offline_history(run_dir)
    assert {"plots/overview/path", "plots/PC-1/throughput/path"} <= set(logged)

    def chart_rows(key, kind, fields):
        panel = logged["charts"][key]
        assert panel["panelDefId"] == f"wandb/{kind}/v0" and panel["fieldSettings"] == fields
        table = logged[f"{key}_table/path"]
        doc = json.loads((run_dir / "files" / table).read_text())
        return [dict(zip(doc["columns"], row, strict=True)) for row in doc["data"]]

    ok = pd.read_csv(results / "results.csv").query("status == 'ok'")
    for scenario, cells in ok.groupby("scenario"):
        bars = {"label": "cell", "value": "elements_per_s_median"}
        rows = chart_rows(f"charts/{scenario}/throughput", "bar", bars)
        assert sorted(r["elements_per_s_median"] for r in rows) == pytest.approx(
            sorted(cells["elements_per_s_median"])
        )
    lines = {"x": "depth", "y": "elements_per_s_median", "stroke": "adapter"}
    sweep = chart_rows("charts/PC-1/throughput_by_depth", "line", lines)
    assert sorted(r["depth"] for r in sweep) == [1, 5]
    assert {r["adapter"] for r in sweep} == {"NumPy reference"}


def test_pc1_over_the_full_depth_range_is_log_log(spread):
    """The default profiles' depths (1 to 50): the measured d1 rows, slower with depth."""
    table, _, facts = _load(spread)
    d1 = table[(table["scenario"] == "PC-1") & (table["variant"] == "d1")]
    eps = [c for c in table.columns if c.startswith("elements_per_s_") and not c.endswith("_cv")]
    depths = [1, 2, 5, 10, 20, 50]
    cells = pd.concat(
        [d1.assign(variant=f"d{n}", **{c: d1[c] / n**0.7 for c in eps}) for n in depths]
    )
    fig = plots.throughput_figure(cells, "t", facts, CATALOG.get("PC-1"))
    ax = fig.axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert "log scale" in ax.get_xlabel() and "log scale" in ax.get_ylabel()
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_visible()]
    assert ticks == [str(n) for n in depths]
    plots.plt.close(fig)
