"""Figures from results.csv and repetitions.csv (the workflow's plot rules).

Per scenario three PNGs: throughput, per-batch latency, time to first batch; and one overview of
the run (per scenario variant, each adapter's throughput as a fraction of the fastest). What a
reader needs at a glance is drawn in: a value axis turns logarithmic (and says so) as soon as the
values span more than 10x; bars run horizontally so that adapter names never collide; each bar
carries its value; unstable cells are marked as in summary.md; cells that were not measured are
listed under the plot; every figure ends with a footer naming profile, infra, machine, date and
commit, so a PNG passed around keeps its meaning.

Throughput is drawn in the shape of the scenario's variants (from the catalog): variants that
sweep one number (chain depth, device count) become one line per adapter against that number;
three or more variants that differ in one named choice (the IO-1 backends) become a matrix of
adapter x variant; anything else horizontal bars.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from datarax_bench.files import atomic_file  # noqa: E402
from datarax_bench.results import shortest_fed_label, utilisation_columns  # noqa: E402
from datarax_bench.stats import UNSTABLE_CV  # noqa: E402

PERCENTILES = ("p50", "p95", "p99")
#: Values spanning more than this factor get a logarithmic axis.
LOG_SPAN = 10.0
PLOT_KINDS = ("throughput", "latency", "first_batch")
#: Variant keys that size a workload rather than say what the variant is about.
_SIZE_KEYS = {"num_elements", "batch_size", "side", "tiny"}
_PALETTE = plt.get_cmap("tab10").colors
_ROW_IN = 0.34  # height per bar row, inches: 8-point labels never touch
_WIDTH_IN = 8.0


# --- provenance footer -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunFacts:
    """Where and when a run was measured: what every figure's footer says."""

    profile: str
    infra: str
    machine: str
    date: str
    commit: str

    def footer(self) -> str:
        return (
            f"profile {self.profile} · infra {self.infra} · {self.machine} · "
            f"measured {self.date} · commit {self.commit}"
        )


def _machine(provenance: dict[str, Any]) -> str:
    cpu = provenance.get("cpu") or {}
    cores = cpu.get("usable_cores") or cpu.get("logical_cores")
    text = f"CPU {cpu.get('model') or 'unknown'}" + (f", {cores} cores" if cores else "")
    gpu = provenance.get("gpu")
    if gpu:
        count = (provenance.get("jax") or {}).get("device_count") or 1
        text += f" · GPU {count}× {gpu}"
    else:
        text += " · no GPU"
    return text


def run_facts(table: pd.DataFrame, run_dir: str | Path) -> RunFacts:
    """The run's facts from results.csv and the provenance in its raw results (paths in the table)."""
    if table.empty:
        return RunFacts("?", "?", "machine unknown", "?", "unknown")
    machines, dirty = [], False
    for rel in dict.fromkeys(table["path"].dropna()):
        try:
            provenance = json.loads((Path(run_dir) / rel).read_text()).get("provenance") or {}
        except (OSError, ValueError):
            continue
        dirty = dirty or bool(provenance.get("git_dirty"))
        if provenance.get("cpu"):
            machines.append(_machine(provenance))
    commits = [str(c)[:12] for c in dict.fromkeys(table["git_commit"].dropna())]
    commit = ", ".join(commits) or "unknown"
    if dirty:
        commit += " (uncommitted changes)"
    started = pd.to_datetime(table["started"].dropna(), utc=True)
    if started.empty:
        date = "?"
    else:
        first, last = started.min().strftime("%Y-%m-%d"), started.max().strftime("%Y-%m-%d")
        date = first if first == last else f"{first} to {last}"
    machine = " | ".join(dict.fromkeys(machines)) or "machine unknown"
    return RunFacts(
        profile=", ".join(dict.fromkeys(table["profile"].astype(str))),
        infra=", ".join(dict.fromkeys(table["infra"].astype(str))),
        machine=machine,
        date=date,
        commit=commit,
    )


# --- shared drawing helpers ------------------------------------------------------------------


def needs_log(values: Iterable[float]) -> bool:
    """Whether the positive values span more than LOG_SPAN (a linear axis would hide the small)."""
    v = np.asarray([x for x in values if x == x and x is not None], dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return len(v) > 1 and v.max() / v.min() > LOG_SPAN


def si(value: float) -> str:
    """722k, 9.0k, 1.2M, 35.4: three significant digits at most, SI prefix."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}"
    return f"{value:.3g}"


def duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def adapter_colors(table: pd.DataFrame) -> dict[str, Any]:
    """One colour per adapter for the whole run, in the run's adapter order."""
    names = list(dict.fromkeys(table["adapter_name"])) if len(table) else []
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}


def _value_axis(ax, which: str, values: Iterable[float], label: str, fmt) -> bool:
    """Scale and label one value axis: logarithmic (and said so) when the values span > 10x."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    log = needs_log(values)
    if log:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        v = np.asarray([x for x in values if x == x and x > 0], dtype=float)
        decades = np.log10(v.max() / v.min())
        axis.set_major_locator(LogLocator(subs=(1.0,) if decades > 3 else (1.0, 2.0, 5.0)))
        axis.set_minor_formatter(NullFormatter())
        label += " — log scale"
    axis.set_major_formatter(FuncFormatter(lambda x, _: fmt(x)))
    (ax.set_xlabel if which == "x" else ax.set_ylabel)(label, fontsize=9)
    return log


def _not_measured_note(cells: pd.DataFrame) -> str:
    missing = cells[cells["status"] != "ok"]
    if missing.empty:
        return ""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in missing.itertuples():
        groups.setdefault((r.status, r.adapter_name), []).append(str(r.variant))
    parts = [f"{status}: {adapter} ({', '.join(v)})" for (status, adapter), v in groups.items()]
    return "Not measured — " + "; ".join(parts) + "."


def _unstable_note(cells: pd.DataFrame) -> str:
    if not cells.get("unstable", pd.Series(dtype=bool)).fillna(False).astype(bool).any():
        return ""
    return (
        f"unstable: the repetitions of a cell so marked vary by more than {UNSTABLE_CV:.0%} "
        "(coefficient of variation), as in summary.md."
    )


def _all_axes_bbox(fig):
    return lambda renderer: Bbox.union([a.get_tightbbox(renderer) for a in fig.axes])


def _below(fig, anchor, text: str, fontsize: float, color: str = "black") -> Annotation:
    """A block of text under `anchor` (a bbox callable or an artist), left-aligned to it."""
    wrapped = "\n".join(
        textwrap.fill(line, width=int(fig.get_figwidth() * 150 / fontsize))
        for line in text.splitlines()
    )
    note = Annotation(
        wrapped,
        xy=(0, 0),
        xycoords=anchor,
        xytext=(0, -6),
        textcoords="offset points",
        ha="left",
        va="top",
        fontsize=fontsize,
        color=color,
    )
    fig.add_artist(note)
    return note


def finish(fig, cells: pd.DataFrame, facts: RunFacts, *, unstable_marked: bool = True) -> None:
    """Under the plot: cells not measured, what `unstable` means, and the footer."""
    anchor = _all_axes_bbox(fig)
    notes = [_not_measured_note(cells)]
    if unstable_marked:
        notes.append(_unstable_note(cells))
    text = "\n".join(n for n in notes if n)
    if text:
        anchor = _below(fig, anchor, text, 8)
    _below(fig, anchor, facts.footer(), 7, color="dimgray")


def _title(ax, title: str) -> None:
    ax.set_title(title, fontsize=11, loc="left")


def _make_room_right(fig, ax, texts) -> None:
    """Widen the x range until every value label ends inside the axes."""
    renderer = fig.canvas.get_renderer()
    for _ in range(4):
        box = ax.get_window_extent(renderer)
        right = max((t.get_window_extent(renderer).x1 for t in texts), default=box.x1)
        if right <= box.x1 - 4:
            return
        lo, hi = ax.get_xlim()
        grow = (right - box.x0 + 12) / box.width
        if ax.get_xscale() == "log":
            ax.set_xlim(lo, lo * (hi / lo) ** grow)
        else:
            ax.set_xlim(lo, lo + (hi - lo) * grow)


def _figure(rows: int, min_height: float = 2.6):
    fig, ax = plt.subplots(figsize=(_WIDTH_IN, max(min_height, 1.2 + _ROW_IN * rows)))
    return fig, ax


def _empty(fig, ax, what: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"No {what}.", ha="center", va="center", fontsize=10)


def _timing_figure(keys, title: str, cells, facts, what: str):
    """A figure with a row per key; with no key, the finished "No <what>." figure."""
    fig, ax = _figure(len(keys))
    _title(ax, title)
    if not keys:
        _empty(fig, ax, what)
        finish(fig, cells, facts, unstable_marked=False)
    return fig, ax


def _cell_label(adapter: str, variant: str, several_variants: bool) -> str:
    return f"{adapter} · {variant}" if several_variants else adapter


# --- throughput ------------------------------------------------------------------------------


def _ok(cells: pd.DataFrame) -> pd.DataFrame:
    ok = cells[cells["status"] == "ok"].copy()
    ok["unstable"] = ok["unstable"].fillna(False).astype(bool)
    return ok


def throughput_bars_figure(cells: pd.DataFrame, title: str, facts: RunFacts, colors=None):
    """Horizontal bars: median elements/s, whiskers the 95% CI, the value at each bar's end."""
    colors = colors or adapter_colors(cells)
    ok = _ok(cells)
    fig, ax = _figure(len(ok))
    _title(ax, title)
    if ok.empty:
        _empty(fig, ax, "throughput measured")
        finish(fig, cells, facts)
        return fig
    order = {v: i for i, v in enumerate(dict.fromkeys(cells["variant"]))}
    ok = ok.assign(_v=ok["variant"].map(order)).sort_values(
        ["_v", "elements_per_s_median"], ascending=[True, False]
    )
    several = len(order) > 1
    y = np.arange(len(ok))
    median = ok["elements_per_s_median"].to_numpy(float)
    low = ok["elements_per_s_ci95_low"].to_numpy(float)
    high = ok["elements_per_s_ci95_high"].to_numpy(float)
    log = _value_axis(
        ax,
        "x",
        [*median, *low, *high],
        "elements/s (bar: median of repetitions; whisker: 95% CI)",
        si,
    )
    bars = ax.barh(
        y,
        median,
        0.7,
        xerr=np.vstack([median - low, high - median]),
        color=[colors.get(a, "tab:gray") for a in ok["adapter_name"]],
        hatch=["//" if u else None for u in ok["unstable"]],
        edgecolor="white",
        error_kw={"capsize": 3, "elinewidth": 1, "ecolor": "black"},
    )
    ax.set_yticks(
        y,
        [
            _cell_label(a, v, several)
            for a, v in zip(ok["adapter_name"], ok["variant"], strict=True)
        ],
    )
    ax.tick_params(axis="y", labelsize=8)
    ax.invert_yaxis()
    if log:
        ax.set_xlim(max(low.min(), median.min()) / 2, high.max() * 1.5)
    else:
        ax.set_xlim(0, high.max() * 1.1)
    texts = []
    for bar, m, h, r in zip(bars, median, high, ok.itertuples(), strict=True):
        label = f"{si(m)}/s" + (f"  unstable (CV {r.elements_per_s_cv:.0%})" if r.unstable else "")
        x = h * 1.08 if log else h + (ax.get_xlim()[1] * 0.01)
        texts.append(ax.text(x, bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=8))
    _make_room_right(fig, ax, texts)
    ax.grid(axis="x", alpha=0.3, which="major")
    ax.set_axisbelow(True)
    finish(fig, cells, facts)
    return fig


def throughput_lines_figure(
    cells: pd.DataFrame,
    title: str,
    facts: RunFacts,
    x_of_variant: dict[str, float],
    x_label: str,
    colors=None,
):
    """One line per adapter: median elements/s against the variants' swept number."""
    colors = colors or adapter_colors(cells)
    ok = _ok(cells)
    fig, ax = plt.subplots(figsize=(_WIDTH_IN, 4.2))
    _title(ax, title)
    if ok.empty:
        _empty(fig, ax, "throughput measured")
        finish(fig, cells, facts)
        return fig
    ok = ok.assign(_x=ok["variant"].map(x_of_variant)).sort_values("_x")
    xs = sorted(set(ok["_x"]))
    log_x = _value_axis(ax, "x", xs, x_label, lambda v: f"{v:g}")
    values = [*ok["elements_per_s_ci95_low"], *ok["elements_per_s_ci95_high"]]
    _value_axis(ax, "y", values, "elements/s (median; whisker: 95% CI)", si)
    ax.set_xticks(xs)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if log_x:
        ax.xaxis.set_minor_locator(plt.NullLocator())
    unstable_shown = False
    for adapter, rows in ok.groupby("adapter_name", sort=False):
        m = rows["elements_per_s_median"].to_numpy(float)
        err = [
            m - rows["elements_per_s_ci95_low"].to_numpy(float),
            rows["elements_per_s_ci95_high"].to_numpy(float) - m,
        ]
        ax.errorbar(
            rows["_x"], m, yerr=err, marker="o", capsize=3, label=adapter, color=colors[adapter]
        )
        shaky = rows[rows["unstable"]]
        if len(shaky):
            ax.plot(
                shaky["_x"],
                shaky["elements_per_s_median"],
                "o",
                markersize=12,
                markerfacecolor="none",
                markeredgecolor="red",
                label=None if unstable_shown else f"unstable (CV > {UNSTABLE_CV:.0%})",
            )
            unstable_shown = True
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3, which="major")
    finish(fig, cells, facts)
    return fig


def throughput_matrix_figure(cells: pd.DataFrame, title: str, facts: RunFacts, column_label: str):
    """Adapter x variant: colour and number are the median elements/s; empty where not measured."""
    adapters = list(dict.fromkeys(cells["adapter_name"]))
    variants = list(dict.fromkeys(cells["variant"]))
    fig, ax = plt.subplots(
        figsize=(max(_WIDTH_IN, 2.6 + 1.25 * len(variants)), 1.6 + 0.55 * len(adapters))
    )
    _title(ax, title)
    grid = cells.set_index(["adapter_name", "variant"])
    value = np.full((len(adapters), len(variants)), np.nan)
    for i, a in enumerate(adapters):
        for j, v in enumerate(variants):
            if (a, v) in grid.index and grid.loc[(a, v), "status"] == "ok":
                value[i, j] = float(grid.loc[(a, v), "elements_per_s_median"])
    measured = value[np.isfinite(value)]
    log = needs_log(measured)
    if measured.size:
        lo, hi = measured.min(), measured.max()
        norm = LogNorm(lo, hi if hi > lo else lo * 1.01) if log else Normalize(0, hi)
    else:
        norm = Normalize(0, 1)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#f2f2f2")
    image = ax.imshow(np.ma.masked_invalid(value), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(variants)), variants, fontsize=9)
    ax.set_yticks(range(len(adapters)), adapters, fontsize=9)
    ax.set_xlabel(column_label, fontsize=9)
    ax.tick_params(length=0)
    for i, a in enumerate(adapters):
        for j, v in enumerate(variants):
            if np.isfinite(value[i, j]):
                unstable = bool(grid.loc[(a, v), "unstable"])
                shade = norm(value[i, j])
                ax.text(
                    j,
                    i,
                    f"{si(value[i, j])}/s" + ("\nunstable" if unstable else ""),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shade < 0.6 else "black",
                )
            else:
                status = grid.loc[(a, v), "status"] if (a, v) in grid.index else "not run"
                ax.text(j, i, status, ha="center", va="center", fontsize=7, color="gray")
    bar = fig.colorbar(image, ax=ax, pad=0.02)
    bar.set_label("elements/s (median)" + (" — log scale" if log else ""), fontsize=8)
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: si(x)))
    bar.ax.yaxis.set_minor_formatter(NullFormatter())
    bar.ax.tick_params(labelsize=7)
    ax.set_xticks(np.arange(len(variants) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(adapters) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)
    finish(fig, cells, facts)
    return fig


def throughput_shape(scenario: Any, variants: list[str]) -> tuple[str, str | None, dict]:
    """How a scenario's variants are drawn: ("line", name, {variant: x}), ("matrix", name, {})
    or ("bars", None, {}). From the catalog: the one key whose value tells the variants apart."""
    if scenario is None or len(variants) < 2:
        return "bars", None, {}
    specs = []
    for v in variants:
        spec = scenario.raw["variants"].get(v, {})
        flat = {k: x for k, x in spec.items() if k not in _SIZE_KEYS and k != "dims"}
        flat.update({k: x for k, x in (spec.get("dims") or {}).items() if k not in _SIZE_KEYS})
        specs.append(flat)
    for key in specs[0]:
        values = [s.get(key) for s in specs]
        if len(set(map(str, values))) != len(values):
            continue
        if all(isinstance(x, int | float) and not isinstance(x, bool) for x in values):
            return "line", key, dict(zip(variants, map(float, values), strict=True))
        if all(isinstance(x, str) for x in values) and len(variants) >= 3:
            return "matrix", key, {}
    return "bars", None, {}


def throughput_figure(
    cells: pd.DataFrame, title: str, facts: RunFacts, scenario: Any = None, colors=None
):
    variants = list(dict.fromkeys(cells["variant"]))
    shape, key, x_of_variant = throughput_shape(scenario, variants)
    if shape == "line":
        return throughput_lines_figure(
            cells, title, facts, x_of_variant, key.replace("_", " "), colors
        )
    if shape == "matrix":
        return throughput_matrix_figure(cells, title, facts, key.replace("_", " "))
    return throughput_bars_figure(cells, title, facts, colors)


# --- latency and time to first batch --------------------------------------------------------


def _rep_keys(cells: pd.DataFrame, reps: pd.DataFrame) -> list[tuple[str, str]]:
    """(variant, adapter_name) of the measured cells, in the table's order."""
    have = set(zip(reps["variant"], reps["adapter_name"], strict=True))
    keys = zip(cells["variant"], cells["adapter_name"], strict=True)
    return [k for k in dict.fromkeys(keys) if k in have]


def latency_figure(
    cells: pd.DataFrame, reps: pd.DataFrame, title: str, facts: RunFacts, colors=None
):
    """Per cell: a bar to the p50, markers at p95 and p99 (medians over repetitions), whisker
    the min-max of the p99 across repetitions."""
    colors = colors or adapter_colors(cells)
    keys = _rep_keys(cells, reps) if len(reps) else []
    fig, ax = _timing_figure(keys, title, cells, facts, "latency measured")
    if not keys:
        return fig
    grouped = reps.groupby(["variant", "adapter_name"], sort=False)
    med = {p: grouped[f"latency_ms_{p}"].median() for p in PERCENTILES}
    p99_min = grouped["latency_ms_p99"].min()
    p99_max = grouped["latency_ms_p99"].max()
    y = np.arange(len(keys))
    p50 = np.array([med["p50"][k] for k in keys])
    p95 = np.array([med["p95"][k] for k in keys])
    p99 = np.array([med["p99"][k] for k in keys])
    lo, hi = np.array([p99_min[k] for k in keys]), np.array([p99_max[k] for k in keys])
    # The axis covers every repetition's percentiles, not only the medians drawn.
    mine = reps.set_index(["variant", "adapter_name"]).loc[keys]
    values = [*(mine[f"latency_ms_{p}"] for p in PERCENTILES)]
    values = list(np.concatenate([np.asarray(v, float) for v in values]))
    log = _value_axis(ax, "x", values, "per-batch latency, ms", lambda v: f"{v:.3g}")
    several = len({v for v, _ in keys}) > 1
    bars = ax.barh(y, p50, 0.6, color=[colors.get(a, "tab:gray") for _, a in keys])
    ax.plot(p95, y, "^", color="black", markersize=5, label="p95")
    ax.errorbar(
        p99,
        y,
        xerr=[p99 - lo, hi - p99],
        fmt="D",
        color="darkred",
        markersize=4,
        capsize=3,
        label="p99 (whisker: min-max over repetitions)",
    )
    ax.set_yticks(y, [_cell_label(a, v, several) for v, a in keys], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(np.nanmin(values) / 2 if log else 0, np.nanmax(values) * (1.5 if log else 1.1))
    texts = [
        ax.text(
            h * 1.08 if log else h + ax.get_xlim()[1] * 0.01,
            yi,
            f"p50 {a:.3g} · p99 {b:.3g} ms",
            va="center",
            fontsize=8,
        )
        for yi, h, a, b in zip(y, hi, p50, p99, strict=True)
    ]
    _make_room_right(fig, ax, texts)
    handles, labels = ax.get_legend_handles_labels()
    proxy = plt.Rectangle((0, 0), 1, 1, color="lightgray")
    ax.legend(
        [proxy, *handles],
        ["p50 (bar; colour: adapter)", *labels],
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
    )
    del bars
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    finish(fig, cells, facts, unstable_marked=False)
    return fig


def first_batch_figure(
    cells: pd.DataFrame, reps: pd.DataFrame, title: str, facts: RunFacts, colors=None
):
    """Per cell: one dot per repetition's time to first batch, a tick at their median."""
    colors = colors or adapter_colors(cells)
    keys = _rep_keys(cells, reps) if len(reps) else []
    seconds = {}
    if keys:
        grouped = reps.groupby(["variant", "adapter_name"], sort=False)["time_to_first_batch_s"]
        seconds = {k: grouped.get_group(k).dropna().to_numpy(float) for k in keys}
        keys = [k for k in keys if len(seconds[k])]  # a measure that times no first batch
    fig, ax = _timing_figure(keys, title, cells, facts, "first batch measured")
    if not keys:
        return fig
    seconds = {k: seconds[k] for k in keys}
    values = np.concatenate(list(seconds.values()))
    log = _value_axis(
        ax, "x", values, "time to first batch (dot: one repetition; bar: median)", duration
    )
    several = len({v for v, _ in keys}) > 1
    texts = []
    for i, k in enumerate(keys):
        s = seconds[k]
        # Repetitions spread a little vertically, so equal times stay countable.
        spread = np.linspace(-0.15, 0.15, len(s)) if len(s) > 1 else np.zeros(1)
        ax.plot(s, i + spread, "o", color=colors.get(k[1], "tab:gray"), markersize=5, alpha=0.8)
        ax.plot([np.median(s)] * 2, [i - 0.3, i + 0.3], color="black", linewidth=2)
        x = s.max() * 1.15 if log else s.max() + values.max() * 0.03
        texts.append(ax.text(x, i, f"median {duration(np.median(s))}", va="center", fontsize=8))
    ax.set_yticks(range(len(keys)), [_cell_label(a, v, several) for v, a in keys], fontsize=8)
    ax.set_ylim(len(keys) - 0.5, -0.5)
    ax.set_xlim(values.min() / 2 if log else 0, values.max() * (1.5 if log else 1.1))
    _make_room_right(fig, ax, texts)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    finish(fig, cells, facts, unstable_marked=False)
    return fig


# --- overview --------------------------------------------------------------------------------


def column_header(name: str, width: int = 14) -> str:
    """An adapter's name over a narrow column: its style on a line of its own, long names
    wrapped at word boundaries ("PyTorch DataLoader (tuned)" -> three lines)."""
    base, style = (name[: -len(" (tuned)")], "(tuned)") if name.endswith(" (tuned)") else (name, "")
    return "\n".join([*textwrap.wrap(base, width), *([style] if style else [])])


def overview_figure(table: pd.DataFrame, facts: RunFacts):
    """Per scenario variant (rows), each adapter's throughput as a fraction of the fastest."""
    if table.empty:
        fig, ax = plt.subplots(figsize=(_WIDTH_IN, 2.6))
        _empty(fig, ax, "cells in this run")
        _below(fig, _all_axes_bbox(fig), facts.footer(), 7, color="dimgray")
        return fig
    rows = list(dict.fromkeys(zip(table["scenario"], table["variant"], strict=True)))
    adapters = list(dict.fromkeys(table["adapter_name"]))
    headers = [column_header(a) for a in adapters]
    widest = max(len(line) for h in headers for line in h.splitlines())
    column_in = max(1.35, 0.085 * widest + 0.25)  # a header line at 9 pt, and a margin
    lines = max(h.count("\n") + 1 for h in headers)
    fig, ax = plt.subplots(
        figsize=(
            max(_WIDTH_IN, 3.5 + column_in * len(adapters)),
            1.8 + 0.16 * (lines - 1) + 0.36 * len(rows),
        )
    )
    ax.set_title(
        "Who wins where: each adapter's throughput as a fraction of the fastest adapter",
        fontsize=11,
        loc="left",
    )
    grid = table.set_index(["scenario", "variant", "adapter_name"])
    ratio = np.full((len(rows), len(adapters)), np.nan)
    for i, (s, v) in enumerate(rows):
        for j, a in enumerate(adapters):
            key = (s, v, a)
            if key in grid.index and grid.loc[key, "status"] == "ok":
                ratio[i, j] = float(grid.loc[key, "ratio_to_best"])
    measured = ratio[np.isfinite(ratio)]
    log = needs_log(measured)
    norm = LogNorm(max(measured.min(), 1e-6), 1.0) if log else Normalize(0, 1)
    if log and measured.min() >= 1:
        norm = Normalize(0, 1)
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#f2f2f2")
    image = ax.imshow(np.ma.masked_invalid(ratio), cmap=cmap, norm=norm, aspect="auto")
    names = dict(zip(table["scenario"], table["scenario_name"], strict=True))
    ax.set_yticks(range(len(rows)), [f"{s} {v} — {names[s]}" for s, v in rows], fontsize=8)
    ax.set_xticks(range(len(adapters)), headers, fontsize=9)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for i, (s, v) in enumerate(rows):
        for j, a in enumerate(adapters):
            key = (s, v, a)
            if np.isfinite(ratio[i, j]):
                star = "*" if bool(grid.loc[key, "unstable"]) else ""
                best = ratio[i, j] >= 1.0
                median = float(grid.loc[key, "elements_per_s_median"])
                text = f"best {si(median)}/s{star}" if best else f"{ratio[i, j]:.2g}×{star}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    fontweight="bold" if best else "normal",
                    color="white" if norm(ratio[i, j]) < 0.2 or best else "black",
                )
            else:
                status = grid.loc[key, "status"] if key in grid.index else "not run"
                ax.text(j, i, status, ha="center", va="center", fontsize=7, color="gray")
    ax.set_xticks(np.arange(len(adapters) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(rows) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(image, ax=ax, pad=0.02, fraction=0.04)
    bar.set_label("throughput / fastest" + (" — log scale" if log else ""), fontsize=8)
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.2g}×"))
    bar.ax.yaxis.set_minor_formatter(NullFormatter())
    bar.ax.tick_params(labelsize=7)
    note = (
        "Throughput is the median elements/s over the repetitions; each cell is that adapter's "
        "throughput divided by the fastest adapter's on the same scenario variant; * marks an "
        f"unstable cell (CV > {UNSTABLE_CV:.0%}, as in summary.md); grey cells were not measured."
    )
    anchor = _below(fig, _all_axes_bbox(fig), note, 8)
    _below(fig, anchor, facts.footer(), 7, color="dimgray")
    return fig


# --- keeping an accelerator fed --------------------------------------------------------------


def feed_figure(cells: pd.DataFrame, title: str, facts: RunFacts, colors=None):
    """Accelerator utilisation against the training step time: a panel per variant, a line per
    adapter (its legend entry says the shortest step it fed), the threshold dashed."""
    colors = colors or adapter_colors(cells)
    ok = _ok(cells)
    columns = [(t, c) for t, c in utilisation_columns(ok.columns) if ok[c].notna().any()]
    measured = ok[ok[[c for _, c in columns]].notna().any(axis=1)] if columns else ok.iloc[:0]
    variants = list(dict.fromkeys(measured["variant"]))
    fig, axes = plt.subplots(
        1,
        max(1, len(variants)),
        figsize=(max(_WIDTH_IN, 3.4 * len(variants) + 2.2), 4.2),
        sharey=True,
        squeeze=False,
    )
    axes = list(axes[0])
    _title(axes[0], title)
    if measured.empty:
        _empty(fig, axes[0], "feed measured")
        finish(fig, cells, facts, unstable_marked=False)
        return fig
    steps = [t for t, _ in columns]
    threshold = float(measured["feed_threshold"].dropna().iloc[0])
    for ax, variant in zip(axes, variants, strict=True):
        rows = measured[measured["variant"] == variant]
        _value_axis(ax, "x", steps, "training step time (ms)", lambda v: f"{v:g}")
        ax.set_xticks(steps)
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.axhline(threshold, color="gray", linestyle="--", linewidth=1)
        for r in rows.to_dict("records"):
            xs = [t for t, c in columns if not pd.isna(r[c])]
            ys = [r[c] for _, c in columns if not pd.isna(r[c])]
            fed = shortest_fed_label(r["feed_shortest_fed_step_ms"], steps)
            ax.plot(
                xs,
                ys,
                marker="o",
                color=colors.get(r["adapter_name"], "tab:gray"),
                label=f"{r['adapter_name']} (fed from {fed})",
            )
        ax.set_ylim(0, 1.05)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
        ax.grid(alpha=0.3, which="major")
        ax.legend(fontsize=7, loc="lower right", title=variant, title_fontsize=8)
    axes[0].set_ylabel(
        f"accelerator utilisation (batches × step / wall); dashed: {threshold:.0%}", fontsize=9
    )
    finish(fig, cells, facts, unstable_marked=False)
    return fig


# --- files -----------------------------------------------------------------------------------


def _save(fig, path: str | Path) -> None:
    """Write via a temporary file so that an interrupted job never leaves half a PNG; the
    figure is closed once written."""
    try:
        with atomic_file(Path(path), suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def in_catalog_order(frame: pd.DataFrame, catalog) -> pd.DataFrame:
    """Scenarios and variants as the catalog lists them (d1, d2, d5, d10, not d1, d10, d2)."""
    if frame.empty or catalog is None:
        return frame
    scenarios = {s: i for i, s in enumerate(catalog.scenarios)}
    variants = {(s.id, v): i for s in catalog.scenarios.values() for i, v in enumerate(s.variants)}
    adapters = {a: i for i, a in enumerate(dict.fromkeys(frame["adapter"]))}
    keys = pd.DataFrame(
        {
            "s": frame["scenario"].map(scenarios).fillna(len(scenarios)),
            "v": [
                variants.get(k, 0) for k in zip(frame["scenario"], frame["variant"], strict=True)
            ],
            "a": frame["adapter"].map(adapters),
        },
        index=frame.index,
    )
    return frame.loc[keys.sort_values(["s", "v", "a"], kind="stable").index]


def _load_catalog(catalog):
    if catalog is not None:
        return catalog
    from datarax_bench.workload.catalog import load_catalog

    return load_catalog()


def with_style_names(frame: pd.DataFrame) -> pd.DataFrame:
    """Adapter names that say the style where it is not plain ("tf.data (tuned)"), so that each
    style of an adapter is its own series; tables from before styles existed are plain."""
    if frame.empty or "style" not in frame:
        return frame
    tuned = frame["style"].fillna("plain") != "plain"
    names = frame["adapter_name"].where(~tuned, frame["adapter_name"] + " (" + frame["style"] + ")")
    return frame.assign(adapter_name=names)


def read_table(path: str | Path, catalog) -> pd.DataFrame:
    """results.csv or repetitions.csv, styled names, in catalog order."""
    return in_catalog_order(with_style_names(pd.read_csv(path)), catalog)


def _read(table_path: str | Path, repetitions_path: str | Path, catalog):
    return read_table(table_path, catalog), read_table(repetitions_path, catalog)


def scenario_figures(
    table: pd.DataFrame, reps: pd.DataFrame, scenario: str, facts: RunFacts, catalog=None
) -> dict[str, Any]:
    """The three figures of one scenario, by kind."""
    colors = adapter_colors(table)
    cells = table[table["scenario"] == scenario]
    reps = reps[reps["scenario"] == scenario] if len(reps) else reps
    name = cells["scenario_name"].iloc[0] if len(cells) else "no cells"
    title = f"{scenario}: {name}"
    entry = catalog.scenarios.get(scenario) if catalog is not None else None
    return {
        "throughput": throughput_figure(cells, f"Throughput — {title}", facts, entry, colors),
        "latency": latency_figure(cells, reps, f"Per-batch latency — {title}", facts, colors),
        "first_batch": first_batch_figure(
            cells, reps, f"Time to first batch — {title}", facts, colors
        ),
    }


def plot_scenario(
    table_path: str | Path,
    repetitions_path: str | Path,
    scenario: str,
    throughput: str | Path,
    latency: str | Path,
    first_batch: str | Path,
    catalog=None,
) -> None:
    """The scenario's three PNGs; the footer's facts from the results next to results.csv."""
    catalog = _load_catalog(catalog)
    table, reps = _read(table_path, repetitions_path, catalog)
    facts = run_facts(table, Path(table_path).parent)
    figures = scenario_figures(table, reps, scenario, facts, catalog)
    paths = {"throughput": throughput, "latency": latency, "first_batch": first_batch}
    for kind, fig in figures.items():
        _save(fig, paths[kind])


def plot_feed(table_path: str | Path, scenario: str, feed: str | Path, catalog=None) -> None:
    """plots/{scenario}/feed.png: the utilisation curves of the scenario's cells."""
    table = read_table(table_path, _load_catalog(catalog))
    cells = table[table["scenario"] == scenario]
    name = cells["scenario_name"].iloc[0] if len(cells) else "no cells"
    facts = run_facts(table, Path(table_path).parent)
    title = f"Keeping an accelerator fed — {scenario}: {name}"
    _save(feed_figure(cells, title, facts, adapter_colors(table)), feed)


def plot_overview(table_path: str | Path, overview: str | Path, catalog=None) -> None:
    """plots/overview.png: who wins where, for the whole run."""
    table = read_table(table_path, _load_catalog(catalog))
    _save(overview_figure(table, run_facts(table, Path(table_path).parent)), overview)
