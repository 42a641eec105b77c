"""Statistics across repetitions: median, bootstrap CI, coefficient of variation."""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
#: Coefficient of variation across repetitions above which a cell is flagged unstable.
UNSTABLE_CV = 0.10
# Fixed so that the same repetitions always give the same interval.
BOOTSTRAP_SEED = 20260101


def bootstrap_ci(values, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the median."""
    data = np.asarray(values, dtype=float)
    if data.size == 1:
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    samples = rng.choice(data, size=(BOOTSTRAP_RESAMPLES, data.size), replace=True)
    medians = np.median(samples, axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def coefficient_of_variation(values) -> float:
    data = np.asarray(values, dtype=float)
    if data.size < 2 or data.mean() == 0:
        return 0.0
    return float(data.std(ddof=1) / data.mean())


def is_unstable(cv: float) -> bool:
    return cv > UNSTABLE_CV


def summarize(values) -> dict[str, float]:
    data = np.asarray(values, dtype=float)
    low, high = bootstrap_ci(data)
    return {
        "median": float(np.median(data)),
        "ci95_low": low,
        "ci95_high": high,
        "cv": coefficient_of_variation(data),
        "min": float(data.min()),
        "max": float(data.max()),
    }


def t_quantile(p: float, df: float) -> float:
    """The p-quantile (p above 0.5) of Student's t distribution with `df` degrees of freedom.

    The density integrated in x = tan(theta), which maps the real line onto a finite interval,
    then bisection; agrees with scipy.stats.t.ppf to 1e-5 for df from 1 on.
    """
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float) -> float:
        theta = np.linspace(0, math.atan(x), 2001)
        t = np.tan(theta)
        density = scale * (1 + t * t / df) ** (-(df + 1) / 2) / np.cos(theta) ** 2
        return 0.5 + float(np.trapezoid(density, theta))

    low, high = 0.0, 1000.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def process_median_interval(groups, level: float = 0.95) -> tuple[float, float]:
    """Interval of a cell's median throughput from its worker processes: Student's t over each
    process's log median, centred on the median of all windows (at least two processes)."""
    logs = np.log([np.median(g) for g in groups])
    centre = math.log(np.median(np.concatenate(groups)))
    half = t_quantile(1 - (1 - level) / 2, logs.size - 1) * logs.std(ddof=1) / math.sqrt(logs.size)
    return math.exp(centre - half), math.exp(centre + half)


def group_by_process(values, repetitions: list[dict]) -> list[np.ndarray]:
    """`values` (one per repetition) split by the repetitions' worker process (`process`, 0
    where a result has one process), in process order."""
    labels = [r.get("process", 0) for r in repetitions]
    return [
        np.asarray([v for v, p in zip(values, labels, strict=True) if p == label], dtype=float)
        for label in sorted(set(labels))
    ]


def latency_summary_ms(latencies_s) -> dict[str, float]:
    ms = np.asarray(latencies_s, dtype=float) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(ms.mean()),
        "max": float(ms.max()),
    }


def relative_precision(values) -> float:
    """Half-width of the reported 95% interval of the median, relative to the median."""
    data = np.asarray(values, dtype=float)
    median = float(np.median(data))
    if data.size < 2 or median == 0:
        return float("inf")
    low, high = bootstrap_ci(data)
    return (high - low) / 2 / median


def repetition_bounds(measurement: dict) -> tuple[float | None, int, int]:
    """(precision target or None, least, most repetitions) of a profile's `measurement`."""
    precision = measurement.get("precision")
    if precision is None:
        return None, measurement["repetitions"], measurement["repetitions"]
    least = measurement.get("min_repetitions", measurement["repetitions"])
    return precision, least, measurement["max_repetitions"]


def stop_reason(values, precision: float | None, minimum: int, maximum: int) -> str | None:
    """Why a cell may stop measuring after these repetitions, or None to measure another.

    Without a `precision` target the cell measures exactly `minimum` repetitions (a profile's
    fixed `repetitions`). With one, it stops once the interval is that tight (never before
    `minimum`), or at `maximum` however wide the interval still is.
    """
    n = len(values)
    if precision is None:
        return "fixed repetitions" if n >= minimum else None
    if n >= minimum and relative_precision(values) <= precision:
        return "precision reached"
    if n >= maximum:
        return "max_repetitions reached"
    return None
