"""The comparison figure: per cell and metric the speed ratio new/base with its 95% interval,
on a logarithmic axis (a halving and a doubling look alike), over the threshold band."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

from datarax_bench.report.compare import Comparison, cell_label  # noqa: E402
from datarax_bench.report.plots import _save  # noqa: E402

#: Ratios labelled on the log axis (those inside its range).
TICKS = (0.1, 0.25, 0.5, 0.67, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 4, 10)
VERDICT_COLORS = {"slower": "#c0392b", "faster": "#1e8449", "same": "#555555"}


def _ticks(left: float, right: float) -> list[float]:
    """TICKS within the axis, 1 always, the others only where their labels cannot collide."""
    gap = math.log(right / left) / 10
    chosen = [1.0]
    for tick in sorted((t for t in TICKS if left <= t <= right), key=lambda t: abs(math.log(t))):
        if all(abs(math.log(tick / c)) >= gap for c in chosen):
            chosen.append(tick)
    return sorted(chosen)


def _short(path: Path) -> str:
    """The last three parts of a results directory: results/PROFILE/INFRA or the like."""
    return "/".join(Path(path).absolute().parts[-3:])


def comparison_figure(comparison: Comparison):
    """One horizontal row per timed metric of a matched cell; what has no ratio is listed below."""
    rows = [r for r in comparison.rows if r.ratio is not None]
    rows.reverse()  # the largest effects (first in the table) at the top
    others = [r for r in comparison.rows if r.ratio is None and r.verdict != "same"]
    fig, ax = plt.subplots(figsize=(8.0, max(2.4, 0.34 * len(rows) + 1.4)))
    low, high = 1 / (1 + comparison.threshold), 1 + comparison.threshold
    ax.axvspan(low, high, color="#d6eaf8", label=f"threshold ±{comparison.threshold:.0%}")
    ax.axvline(1.0, color="#888888", linewidth=0.8)
    for y, r in enumerate(rows):
        color = VERDICT_COLORS.get(r.verdict, "#555555")
        ax.errorbar(
            r.ratio,
            y,
            xerr=[[r.ratio - r.ci95_low], [r.ci95_high - r.ratio]],
            fmt="o",
            color=color,
            capsize=3,
            markersize=5,
        )
        ax.annotate(
            f"{r.ratio:.2f} {r.verdict}",
            (r.ci95_high, y),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
            color=color,
        )
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(
        [f"{cell_label(r)} · {r.adapter_name} · {r.metric}" for r in rows], fontsize=8
    )
    ax.set_xscale("log")
    values = [v for r in rows for v in (r.ci95_low, r.ci95_high)] + [low, high]
    left, right = min(values) / 1.15, max(values) * 1.6
    ax.set_xlim(left, right)
    ax.set_ylim(-0.6, max(len(rows), 1) - 0.4)
    ax.xaxis.set_major_locator(FixedLocator(_ticks(left, right)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("speed new/base (log scale; above 1 is faster), 95% interval")
    ax.set_title("Comparison: speed of the new run against the base run", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    if not rows:
        ax.text(0.5, 0.5, "no cell measured in both runs", transform=ax.transAxes, ha="center")
    notes = [f"{cell_label(r)} {r.adapter_name}: {r.verdict_text}" for r in others[:12]]
    if len(others) > 12:
        notes.append(f"... and {len(others) - 12} more (comparison.csv)")
    footer = (
        f"base {_short(comparison.base.root)} · new {_short(comparison.new.root)} · "
        f"p < {comparison.alpha:g} and interval outside the band to call a change"
    )
    fig.text(0.01, 0.005, "\n".join([*notes, footer]), fontsize=6.5, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.03 + 0.02 * len(notes), 1, 1))
    return fig


def plot_comparison(comparison: Comparison, path: str | Path) -> None:
    """Written as the other figures are: via a temporary file, with the user's file mode."""
    _save(comparison_figure(comparison), path)
