"""Figures per scenario from results.csv and repetitions.csv (the workflow's plot rule).

Three PNGs per scenario: median throughput with its 95% CI per variant and adapter; per-batch
latency percentiles (p50/p95/p99, the median over repetitions with the min-max range as the
bar); time to first batch (median, with each repetition as a dot). Cells that are not `ok` are
named in the figure instead of silently missing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

PERCENTILES = ("p50", "p95", "p99")


def _save(fig, path: str | Path) -> None:
    """Write via a temporary file so that an interrupted job never leaves half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def _not_measured_note(cells: pd.DataFrame) -> str:
    missing = cells[cells["status"] != "ok"]
    if missing.empty:
        return ""
    parts = [f"{r.variant}/{r.adapter}: {r.status}" for r in missing.itertuples()]
    return "not measured: " + "; ".join(parts)


def _empty(ax, cells: pd.DataFrame, what: str) -> None:
    ax.set_axis_off()
    note = _not_measured_note(cells) or "no cells"
    ax.text(0.5, 0.5, f"No {what}.\n{note}", ha="center", va="center", wrap=True, fontsize=9)


def _finish(fig, ax, cells: pd.DataFrame, title: str) -> None:
    ax.set_title(title, fontsize=11)
    note = _not_measured_note(cells)
    if note:
        fig.text(0.01, -0.02, note, fontsize=7, ha="left", va="top", wrap=True)


def _grouped_positions(n_groups: int, n_bars: int, width: float = 0.8):
    bar = width / max(n_bars, 1)
    offsets = (np.arange(n_bars) - (n_bars - 1) / 2) * bar
    return np.arange(n_groups), offsets, bar


def throughput_figure(cells: pd.DataFrame, title: str):
    fig, ax = plt.subplots(figsize=(7, 4))
    ok = cells[cells["status"] == "ok"]
    if ok.empty:
        _empty(ax, cells, "throughput measured")
        return fig
    variants = list(dict.fromkeys(ok["variant"]))
    adapters = list(dict.fromkeys(ok["adapter_name"]))
    x, offsets, bar = _grouped_positions(len(variants), len(adapters))
    for offset, adapter in zip(offsets, adapters, strict=True):
        rows = ok[ok["adapter_name"] == adapter].set_index("variant").reindex(variants)
        median = rows["elements_per_s_median"].to_numpy(float)
        err = np.vstack(
            [
                median - rows["elements_per_s_ci95_low"].to_numpy(float),
                rows["elements_per_s_ci95_high"].to_numpy(float) - median,
            ]
        )
        ax.bar(x + offset, median, bar, yerr=err, capsize=3, label=adapter)
    ax.set_xticks(x, variants)
    ax.set_xlabel("variant")
    ax.set_ylabel("elements/s (median, 95% CI)")
    ax.legend(fontsize=8)
    _finish(fig, ax, cells, title)
    return fig


def latency_figure(cells: pd.DataFrame, reps: pd.DataFrame, title: str):
    fig, ax = plt.subplots(figsize=(7, 4))
    if reps.empty:
        _empty(ax, cells, "latency measured")
        return fig
    keys = list(dict.fromkeys(zip(reps["variant"], reps["adapter_name"], strict=True)))
    x, offsets, bar = _grouped_positions(len(keys), len(PERCENTILES))
    for offset, pct in zip(offsets, PERCENTILES, strict=True):
        column = f"latency_ms_{pct}"
        grouped = reps.groupby(["variant", "adapter_name"], sort=False)[column]
        median = np.array([grouped.median()[k] for k in keys])
        low = np.array([grouped.min()[k] for k in keys])
        high = np.array([grouped.max()[k] for k in keys])
        ax.bar(x + offset, median, bar, yerr=[median - low, high - median], capsize=2, label=pct)
    ax.set_xticks(x, [f"{a}\n{v}" for v, a in keys], fontsize=8)
    ax.set_ylabel("per-batch latency, ms (median of repetitions; bar: min-max)")
    ax.legend(fontsize=8)
    _finish(fig, ax, cells, title)
    return fig


def first_batch_figure(cells: pd.DataFrame, reps: pd.DataFrame, title: str):
    fig, ax = plt.subplots(figsize=(7, 4))
    if reps.empty:
        _empty(ax, cells, "first batch measured")
        return fig
    keys = list(dict.fromkeys(zip(reps["variant"], reps["adapter_name"], strict=True)))
    grouped = reps.groupby(["variant", "adapter_name"], sort=False)["time_to_first_batch_s"]
    ms = {k: grouped.get_group(k).to_numpy(float) * 1e3 for k in keys}
    x = np.arange(len(keys))
    ax.bar(x, [np.median(ms[k]) for k in keys], 0.6, color="tab:gray", label="median")
    for i, k in enumerate(keys):
        ax.plot(np.full(len(ms[k]), x[i]), ms[k], "o", color="black", markersize=3)
    ax.set_xticks(x, [f"{a}\n{v}" for v, a in keys], fontsize=8)
    ax.set_ylabel("time to first batch, ms (dots: repetitions)")
    _finish(fig, ax, cells, title)
    return fig


def plot_scenario(
    table_path: str | Path,
    repetitions_path: str | Path,
    scenario: str,
    throughput: str | Path,
    latency: str | Path,
    first_batch: str | Path,
) -> None:
    table = pd.read_csv(table_path)
    reps = pd.read_csv(repetitions_path)
    cells = table[table["scenario"] == scenario]
    reps = reps[reps["scenario"] == scenario] if not reps.empty else reps
    name = cells["scenario_name"].iloc[0] if len(cells) else "no cells"
    profile = cells["profile"].iloc[0] if len(cells) else ""
    title = f"{scenario}: {name} ({profile})"
    _save(throughput_figure(cells, f"Throughput — {title}"), throughput)
    _save(latency_figure(cells, reps, f"Per-batch latency — {title}"), latency)
    _save(first_batch_figure(cells, reps, f"Time to first batch — {title}"), first_batch)
