"""Comparing two results directories: which cells got faster, slower, or broke.

Cells are matched by (scenario, variant, adapter, style; results without one are plain). For every
matched pair and metric: the ratio of the medians (as a speed, new over base: above 1 is
faster, for times too), a 95% interval of that ratio (Welch's t over the worker processes'
medians where both runs measured the cell in several, else a bootstrap resampling both runs'
repetitions), and a two-sided Mann-Whitney U test over the repetitions. A change is called only
when the test is significant at `alpha` and the whole interval lies outside the threshold band
[1 / (1 + threshold), 1 + threshold]; otherwise the cell is `same`.

Before any number is compared the two runs must have measured the same work (data digest,
transforms, batch size, element count; else that cell is `incomparable`) on the same hardware
(CPU model and usable cores, RAM, GPU name and count, JAX backend and device kind; else the
comparison is refused unless explicitly allowed, and then every row says so).

Only numpy and the standard library: the CLI compares results without the orchestration extra
(the Mann-Whitney test is computed exactly here rather than by scipy, a runtime dependency
of 40 MB for some twenty lines).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datarax_bench import provenance
from datarax_bench.errors import UserError
from datarax_bench.results import cell_style, load_result, write_text_atomic
from datarax_bench.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, group_by_process, t_quantile
from datarax_bench.workload.schemas import read_json

# asv's default factor. A/A pairs on the 2-core development VM needed from 4.7% (a quiet
# morning) to 36% (a noisier afternoon) to call nothing: gate with your own (docs/comparing.md).
DEFAULT_THRESHOLD = 0.10
DEFAULT_ALPHA = 0.01
#: Up to this many repetitions in the smaller sample (and no ties) the p-value is exact.
EXACT_MAX = 8
FAILURES = ("failed", "timeout")
REGRESSING = ("slower", "regressed")
WORKLOAD_KEYS = ("data_digest", "transforms", "batch_size", "num_elements", "randomness")

Key = tuple[str, str, str, str | None]


# --- statistics ------------------------------------------------------------------------------


def _u_distribution(m: int, n: int) -> list[int]:
    """Number of orderings of m against n values (no ties) for each U = 0 .. m*n.

    The generating function is the Gaussian binomial [m+n choose m]_q = prod_{i=1..m}
    (1 - q^(n+i)) / (1 - q^i), multiplied and divided out exactly in integers.
    """
    m, n = min(m, n), max(m, n)
    counts = [1] + [0] * (m * n)
    for i in range(1, m + 1):
        for k in range(len(counts) - 1, n + i - 1, -1):  # times (1 - q^(n+i))
            counts[k] -= counts[k - n - i]
        for k in range(i, len(counts)):  # divided by (1 - q^i)
            counts[k] += counts[k - i]
    return counts


def mann_whitney_u(x, y) -> tuple[float, float]:
    """U statistic of `x` and two-sided p-value, as scipy.stats.mannwhitneyu(method="auto").

    Exact when the smaller sample has at most EXACT_MAX values and no value is tied; else the
    normal approximation with tie and continuity corrections.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    m, n = x.size, y.size
    if m == 0 or n == 0:
        raise ValueError("Mann-Whitney U needs at least one value in each sample")
    both = np.concatenate([x, y])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(both.size)
    sorted_values = both[order]
    _, first, tie_counts = np.unique(sorted_values, return_index=True, return_counts=True)
    average = first + (tie_counts + 1) / 2  # 1-based average rank of each distinct value
    ranks[order] = np.repeat(average, tie_counts)
    u1 = float(ranks[:m].sum() - m * (m + 1) / 2)
    u = max(u1, m * n - u1)
    if min(m, n) <= EXACT_MAX and tie_counts.max() == 1:
        counts = _u_distribution(m, n)
        at_least = sum(counts[math.ceil(u) :])
        return u1, min(1.0, 2 * at_least / math.comb(m + n, m))
    total = m + n
    ties = float((tie_counts**3 - tie_counts).sum())
    sigma = math.sqrt(m * n / 12 * ((total + 1) - ties / (total * (total - 1))))
    if sigma == 0:
        return u1, 1.0
    z = (u - m * n / 2 - 0.5) / sigma
    return u1, min(1.0, math.erfc(z / math.sqrt(2)))


def smallest_p_value(m: int, n: int) -> float:
    """The smallest two-sided p-value the exact test can reach with m against n repetitions."""
    return min(1.0, 2 / math.comb(m + n, m))


def process_interval(base, new, level: float = 0.95) -> tuple[float, float]:
    """Welch's t interval of the log speed ratio, over each process's log median.

    A process is the unit that varies between runs (datarax_bench.run.processes); its windows are
    not independent draws. Needs at least two processes in each run; centred on the ratio of
    the pooled medians, as the table reports it.
    """
    b = np.log([np.median(g) for g in base])
    n = np.log([np.median(g) for g in new])
    vb, vn = b.var(ddof=1) / b.size, n.var(ddof=1) / n.size
    centre = math.log(np.median(np.concatenate(new)) / np.median(np.concatenate(base)))
    if vb + vn == 0:
        return math.exp(centre), math.exp(centre)
    df = (vb + vn) ** 2 / (vb**2 / (b.size - 1) + vn**2 / (n.size - 1))
    half = t_quantile(1 - (1 - level) / 2, df) * math.sqrt(vb + vn)
    return math.exp(centre - half), math.exp(centre + half)


def ratio_interval(base, new, level: float = 0.95) -> tuple[float, float, float]:
    """median(new) / median(base) and its 95% interval.

    `base` and `new` are each a sequence of repetitions, or a list of arrays, one per worker
    process. Where both runs have two or more processes, the interval is `process_interval`;
    otherwise a percentile bootstrap resampling both runs' repetitions, which sees only the
    spread of one process's windows. Seeded, so that the same repetitions always give the same
    interval.
    """
    base_groups, new_groups = _groups(base), _groups(new)
    base_all, new_all = np.concatenate(base_groups), np.concatenate(new_groups)
    ratio = float(np.median(new_all) / np.median(base_all))
    if len(base_groups) > 1 and len(new_groups) > 1:
        return ratio, *process_interval(base_groups, new_groups, level)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    base_medians = np.median(rng.choice(base_all, (BOOTSTRAP_RESAMPLES, base_all.size)), axis=1)
    new_medians = np.median(rng.choice(new_all, (BOOTSTRAP_RESAMPLES, new_all.size)), axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(new_medians / base_medians, [tail, 100 - tail])
    return ratio, float(low), float(high)


def _groups(values) -> list[np.ndarray]:
    """Repetitions as a list of per-process arrays (one array for a plain sequence)."""
    if len(values) and isinstance(values[0], list | tuple | np.ndarray):
        return [np.asarray(g, dtype=float) for g in values]
    return [np.asarray(values, dtype=float)]


# --- reading the two runs --------------------------------------------------------------------


@dataclass
class Run:
    """A results directory: its run index (manifest.json) and the results it lists."""

    root: Path
    manifest: dict[str, Any]
    results: dict[Key, dict[str, Any]]


def cell_key(result: dict[str, Any]) -> Key:
    c = result["cell"]
    return c["scenario"], c["variant"], c["adapter"], cell_style(result)


def load_run(path: str | Path) -> Run:
    """Every result the run index lists, validated; a bad directory or file is a UserError."""
    root = Path(path)
    expected = "expected a results directory (the --output-dir of a run, or results/PROFILE/INFRA)"
    if not root.is_dir():
        raise UserError(f"{root}: not a directory; {expected}")
    index = root / "manifest.json"
    if not index.is_file():
        raise UserError(f"{root}: no manifest.json, so not a results directory; {expected}")
    manifest = read_json(index)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("cells"), list):
        raise UserError(f"{index}: expected a run index, a JSON object with a list of 'cells'")
    results: dict[Key, dict[str, Any]] = {}
    for entry in manifest["cells"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise UserError(f"{index}: cells: expected objects with a 'path', got {entry!r}")
        file = root / entry["path"]
        if not file.is_file():
            raise UserError(f"{file}: listed in {index} but missing")
        digest = entry.get("sha256")
        if digest and hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise UserError(f"{file}: SHA-256 differs from {index}; the file changed or is partial")
        result = load_result(file)
        results[cell_key(result)] = result
    if not results:
        raise UserError(f"{index}: lists no cells; nothing to compare")
    return Run(root, manifest, results)


def hardware(result: dict[str, Any]) -> dict[str, Any]:
    """What must match for two measurements to be comparable at all."""
    return provenance.hardware(result["provenance"])


def _differences(base: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k} {base.get(k)!r} -> {new.get(k)!r}" for k in base if base.get(k) != new.get(k)]


def packages(run: Run) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for result in run.results.values():
        for name, version in result["provenance"].get("packages", {}).items():
            found.setdefault(name, version)
    found.setdefault("python", next(iter(run.results.values()))["provenance"].get("python"))
    return found


# --- metrics and verdicts ----------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool


THROUGHPUT = Metric("throughput", "elements/s", True)
RESTORE = Metric("restore time", "s", False)
FIRST_BATCH = Metric("time to first batch", "s", False)
#: Special measures' key metrics beyond throughput: samples per measure.
TIMED = {
    "checkpoint": (RESTORE, lambda r: [t["restore_s"] for t in r["special"]["repetitions"]]),
    "streaming": (FIRST_BATCH, lambda r: r["special"]["time_to_first_batch_s"]),
}
#: Properties whose loss is a regression whatever the timings: (measure, key, good, bad).
FLAGS = {
    "checkpoint": ("resume_exact", "exact", "not exact"),
    "determinism": ("deterministic", "deterministic", "not deterministic"),
    "sharding": ("sharded", "split over the devices", "not split"),
}


@dataclass
class Row:
    key: Key
    adapter_name: str
    metric: str
    unit: str
    verdict: str
    reason: str = ""
    base_status: str = ""
    new_status: str = ""
    base_n: int | None = None
    new_n: int | None = None
    #: Worker processes whose repetitions each run pooled (datarax_bench.run.processes).
    base_processes: int | None = None
    new_processes: int | None = None
    base_median: float | str | None = None
    new_median: float | str | None = None
    ratio: float | None = None
    ci95_low: float | None = None
    ci95_high: float | None = None
    p_value: float | None = None
    note: str = ""

    @property
    def regression(self) -> bool:
        if self.verdict == "status changed":
            return self.new_status != "ok" and (
                self.base_status == "ok"
                or (self.new_status in FAILURES and self.base_status not in FAILURES)
            )
        return self.verdict in REGRESSING

    @property
    def verdict_text(self) -> str:
        return f"{self.verdict}: {self.reason}" if self.reason else self.verdict

    @property
    def effect(self) -> float:
        return abs(math.log(self.ratio)) if self.ratio else 0.0


def timed_row(key, name, metric: Metric, base, new, threshold: float, alpha: float) -> Row:
    """Ratio (as a speed), its interval, the test and the verdict for one metric of a pair.

    `base` and `new`: the repetitions, or per-process lists of them (`ratio_interval`)."""
    ratio, low, high = ratio_interval(base, new)
    if not metric.higher_is_better:  # a time: the speed ratio is base / new
        ratio, low, high = 1 / ratio, 1 / high, 1 / low
    base_processes, new_processes = len(_groups(base)), len(_groups(new))
    base, new = np.concatenate(_groups(base)), np.concatenate(_groups(new))
    _, p = mann_whitney_u(base, new)
    significant = p < alpha
    if significant and high < 1 / (1 + threshold):
        verdict = "slower"
    elif significant and low > 1 + threshold:
        verdict = "faster"
    else:
        verdict = "same"
    return Row(
        key,
        name,
        metric.name,
        metric.unit,
        verdict,
        base_status="ok",
        new_status="ok",
        base_n=len(base),
        new_n=len(new),
        base_processes=base_processes,
        new_processes=new_processes,
        base_median=float(np.median(base)),
        new_median=float(np.median(new)),
        ratio=ratio,
        ci95_low=low,
        ci95_high=high,
        p_value=p,
    )


def _throughput_by_process(result: dict[str, Any]) -> list[np.ndarray]:
    reps = result["repetitions"]
    return group_by_process([rep["elements_per_s"] for rep in reps], reps)


def _workload_differences(base: dict[str, Any], new: dict[str, Any]) -> list[str]:
    bw, nw = base.get("workload") or {}, new.get("workload") or {}
    return [k for k in WORKLOAD_KEYS if bw.get(k) != nw.get(k)]


def _busy_runs(base: dict[str, Any], new: dict[str, Any]) -> str:
    """Which runs measured this cell while other processes used the machine (results that
    recorded it; see machine_load), e.g. 'base: others used 45%'."""
    said = []
    for which, result in (("base", base), ("new", new)):
        statistics = result.get("statistics") or {}
        if statistics.get("busy"):
            share = (statistics.get("machine_load") or {}).get("foreign_share") or 0.0
            said.append(f"{which}: others used {share:.0%}")
    return ", ".join(said)


def compare_pair(key: Key, base, new, threshold: float, alpha: float) -> list[Row]:
    """The rows of one cell: every metric it has, or why it cannot be compared."""
    some = new or base
    name = some["cell"]["adapter_name"]
    if base is None or new is None:
        which = "base" if new is None else "new"
        bs, ns = (base or {}).get("status", ""), (new or {}).get("status", "")
        return [Row(key, name, "status", "", "incomparable", f"only in the {which} run", bs, ns)]
    bs, ns = base["status"], new["status"]
    if bs != ns:
        reason = f"{bs} -> {ns}" + (f" ({new['reason']})" if new["reason"] else "")
        return [Row(key, name, "status", "", "status changed", reason, bs, ns)]
    if bs != "ok":
        return [Row(key, name, "status", "", "incomparable", f"{bs} in both runs", bs, ns)]
    differs = _workload_differences(base, new)
    if differs:
        reason = f"workload differs ({', '.join(differs)})"
        return [Row(key, name, "workload", "", "incomparable", reason, bs, ns)]
    measure = new["cell"]["measure"]
    samples = [(THROUGHPUT, _throughput_by_process)]
    if measure in TIMED:
        samples.append(TIMED[measure])
    noisy = _busy_runs(base, new)
    if noisy:
        # Others' CPU use changed what was measured: a difference would be the neighbours'.
        reason = f"the machine was busy ({noisy})"
        rows = [Row(key, name, m.name, m.unit, "incomparable", reason, bs, ns) for m, _ in samples]
    else:
        rows = [
            timed_row(key, name, metric, get(base), get(new), threshold, alpha)
            for metric, get in samples
        ]
    if measure in FLAGS:
        flag, good, bad = FLAGS[measure]
        was, now = bool(base["special"][flag]), bool(new["special"][flag])
        word = {True: good, False: bad}
        if was == now:
            verdict, reason = "same", ""
        else:
            verdict = "regressed" if was else "improved"
            reason = f"{word[was]} -> {word[now]}"
        row = Row(key, name, flag, "", verdict, reason, bs, ns)
        row.base_median, row.new_median = word[was], word[now]
        rows.insert(0, row)
    return rows


@dataclass
class Comparison:
    base: Run
    new: Run
    threshold: float
    alpha: float
    rows: list[Row]
    hardware_differences: list[str] = field(default_factory=list)
    package_differences: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    settings_differences: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.regression]


def _sort_key(row: Row) -> tuple:
    # Regressions first, then improvements, then the rest; each by the size of the effect.
    if row.regression:
        group = 0
    elif row.verdict in ("faster", "improved", "status changed"):
        group = 1
    elif row.verdict == "same":
        group = 2
    else:
        group = 3
    return group, -row.effect, row.key[:3], row.metric


def _flat(settings: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(settings, dict):
        return {prefix: settings}
    out: dict[str, Any] = {}
    for k, v in settings.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return {k.rstrip("."): v for k, v in out.items()}


def compare_runs(
    base: Run,
    new: Run,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    allow_different_hardware: bool = False,
) -> Comparison:
    """Every cell of either run, matched, compared and sorted by effect (regressions first).

    Refuses (UserError) runs measured on different hardware unless allowed; then every row
    carries a note saying how the hardware differs.
    """
    check_threshold(threshold)
    check_alpha(alpha)
    keys = list(dict.fromkeys([*base.results, *new.results]))
    hardware_differences: list[str] = []
    for key in keys:
        b, n = base.results.get(key), new.results.get(key)
        if b is not None and n is not None:
            hardware_differences = _differences(hardware(b), hardware(n))
            if hardware_differences:
                break
    if hardware_differences and not allow_different_hardware:
        raise UserError(
            f"{new.root} was measured on different hardware than {base.root} "
            f"({'; '.join(hardware_differences)}); timings are comparable only on the same "
            "machine (pass --allow-different-hardware to compare anyway)"
        )
    rows = [
        row
        for key in keys
        for row in compare_pair(key, base.results.get(key), new.results.get(key), threshold, alpha)
    ]
    if hardware_differences:
        note = "different hardware: " + "; ".join(hardware_differences)
        for row in rows:
            row.note = note
    rows.sort(key=_sort_key)
    old, now = packages(base), packages(new)
    package_differences = [
        (name, old.get(name), now.get(name))
        for name in dict.fromkeys([*old, *now])
        if old.get(name) != now.get(name)
    ]
    bs, ns = _flat(base.manifest.get("settings") or {}), _flat(new.manifest.get("settings") or {})
    settings_differences = _differences(bs, ns) + [
        f"{k} (new only) {ns[k]!r}" for k in ns if k not in bs
    ]
    return Comparison(
        base,
        new,
        threshold,
        alpha,
        rows,
        hardware_differences,
        package_differences,
        settings_differences,
    )


def check_threshold(value: float) -> float:
    if not (isinstance(value, int | float) and 0 < value < math.inf):
        raise UserError(
            f"threshold {value!r}: expected a positive fraction of the speed, e.g. 0.05"
        )
    return value


def check_alpha(value: float) -> float:
    if not 0 < value < 1:
        raise UserError(f"alpha {value!r}: expected a significance level between 0 and 1")
    return value


def parse_threshold(text: str) -> float:
    """'5%' or '0.05'; a bare number of 1 or more is refused as ambiguous (say '300%')."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf and (raw.endswith("%") or value < 1)):
        raise UserError(
            f"--threshold {text!r}: expected a percentage such as 5% or a fraction such as 0.05"
        )
    return value


def parse_alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise UserError(
            f"--alpha {text!r}: expected a significance level between 0 and 1, e.g. 0.01"
        )
    return value


def check_baseline_option(baseline: str, profiles: list[str], infra: str) -> None:
    """The workflow's `baseline`: a results directory per profile, checked before any job runs."""
    if not baseline:
        return
    if len(profiles) > 1 and "{profile}" not in baseline:
        raise UserError(
            f"baseline {baseline!r}: {len(profiles)} profiles are measured; expected a path "
            "with {profile} (and {infra}) in it, e.g. results-before/{profile}/{infra}"
        )
    for profile in profiles:
        try:
            path = Path(baseline.format(profile=profile, infra=infra))
        except (KeyError, IndexError, ValueError):
            raise UserError(
                f"baseline {baseline!r}: expected a path whose only placeholders are "
                "{profile} and {infra}"
            ) from None
        if not (path / "manifest.json").is_file():
            raise UserError(
                f"baseline {baseline!r}: {path} is not a results directory (no manifest.json); "
                "expected an earlier run's results/PROFILE/INFRA or --output-dir"
            )


# --- rendering ---------------------------------------------------------------------------------

CSV_COLUMNS = (
    "scenario",
    "variant",
    "adapter",
    "adapter_name",
    "style",
    "metric",
    "unit",
    "base_status",
    "new_status",
    "base_n",
    "new_n",
    "base_processes",
    "new_processes",
    "base_median",
    "new_median",
    "ratio",
    "ci95_low",
    "ci95_high",
    "p_value",
    "verdict",
    "reason",
    "regression",
    "note",
)


def row_record(row: Row) -> dict[str, Any]:
    scenario, variant, adapter, style = row.key
    record = {
        "scenario": scenario,
        "variant": variant,
        "adapter": adapter,
        "style": style,
    }
    record.update({k: getattr(row, k) for k in CSV_COLUMNS if k not in record})
    return {k: "" if v is None else v for k, v in record.items()}


def comparison_csv(comparison: Comparison) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in comparison.rows:
        writer.writerow(row_record(row))
    return out.getvalue()


def _value(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return value
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def cell_label(row: Row) -> str:
    scenario, variant, _, style = row.key
    return f"{scenario}/{variant}" + (f" ({style})" if style != "plain" else "")


def _ratio(row: Row) -> str:
    if row.ratio is None:
        return ""
    return f"{row.ratio:.3f} [{row.ci95_low:.3f}, {row.ci95_high:.3f}]"


def table_rows(comparison: Comparison) -> list[list[str]]:
    """Cell, adapter, metric, base, new, ratio [CI], p, verdict: what both tables show."""
    rows = []
    for r in comparison.rows:
        unit = f" {r.unit}" if r.unit and r.ratio is not None else ""
        rows.append(
            [
                cell_label(r),
                r.adapter_name,
                r.metric,
                _value(r.base_median) + unit if r.base_median not in (None, "") else "",
                _value(r.new_median) + unit if r.new_median not in (None, "") else "",
                _ratio(r),
                "" if r.p_value is None else f"{r.p_value:.3g}",
                r.verdict_text + (" (REGRESSION)" if r.regression else ""),
            ]
        )
    return rows


HEADER = ["Cell", "Adapter", "Metric", "Base", "New", "New/base speed [95% CI]", "p", "Verdict"]


def _run_line(label: str, run: Run) -> str:
    some = next(iter(run.results.values()))
    commit = run.manifest.get("git_commit") or some["provenance"].get("git_commit") or "unknown"
    when = (run.manifest.get("started") or some["timestamps"]["started"])[:16].replace("T", " ")
    profile = run.manifest.get("profile") or some["cell"]["profile"]
    return f"{label}: {run.root} (profile {profile}, commit {str(commit)[:12]}, {when} UTC)"


def preamble(comparison: Comparison) -> list[str]:
    """Runs, rule, hardware, package and settings differences, and a power warning."""
    c = comparison
    regress = len(c.regressions)
    lines = [
        _run_line("base", c.base),
        _run_line("new", c.new),
        f"{len(c.rows)} rows, {regress} regression{'s' if regress != 1 else ''}. A change is "
        f"called when the Mann-Whitney U test gives p < {c.alpha:g} and the 95% interval "
        f"of the speed ratio lies outside [{1 / (1 + c.threshold):.3f}, "
        f"{1 + c.threshold:.3f}] (threshold {c.threshold:.0%}). Speed ratio above 1 is faster "
        "(for times: base time / new time).",
    ]
    if c.hardware_differences:
        lines.append("Different hardware (compared anyway): " + "; ".join(c.hardware_differences))
    if c.package_differences:
        lines.append(
            "Package versions differ: "
            + ", ".join(
                f"{n} {b or 'absent'} -> {v or 'absent'}" for n, b, v in c.package_differences
            )
        )
    if c.settings_differences:
        lines.append("Profile settings differ: " + "; ".join(c.settings_differences))
    weak = sorted(
        {
            (r.base_n, r.new_n)
            for r in c.rows
            if r.base_n and r.new_n and smallest_p_value(r.base_n, r.new_n) >= c.alpha
        }
    )
    one_process = [r for r in c.rows if r.base_processes == 1 or r.new_processes == 1]
    if one_process:
        lines.append(
            f"{len(one_process)} timed rows come from a single worker process in at least "
            "one run (rows of checkpoint, determinism and streaming cells always do): their "
            "intervals treat every window as an independent draw and miss how much a new "
            "process moves, so a change called there may be the process's, not the code's; "
            "measure with measurement.processes of 3 or more."
        )
    for m, n in weak:
        lines.append(
            f"Warning: with {m} against {n} repetitions the smallest p-value is "
            f"{smallest_p_value(m, n):.3g}, not below alpha {c.alpha:g}: no change can be called "
            "in those cells; measure more repetitions."
        )
    return lines


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def comparison_markdown(comparison: Comparison) -> str:
    lines = ["# Comparison of two benchmark runs", ""]
    lines += [f"- {_escape(line)}" for line in preamble(comparison)]
    lines += ["", "| " + " | ".join(HEADER) + " |", "|---|---|---|---:|---:|---:|---:|---|"]
    for cells in table_rows(comparison):
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    if comparison.rows and comparison.rows[0].note:
        lines += ["", f"Every row: {comparison.rows[0].note}."]
    return "\n".join(lines) + "\n"


def comparison_text(comparison: Comparison) -> str:
    """The terminal table: aligned columns, the preamble above it."""
    rows = [HEADER, *table_rows(comparison)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    right = {3, 4, 5, 6}
    out = [*preamble(comparison), ""]
    for i, cells in enumerate(rows):
        out.append(
            "  ".join(
                c.rjust(w) if j in right else c.ljust(w)
                for j, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    if comparison.rows and comparison.rows[0].note:
        out += ["", f"Every row: {comparison.rows[0].note}."]
    return "\n".join(out) + "\n"


def write_outputs(
    comparison: Comparison, markdown: Path | None = None, table: Path | None = None
) -> None:
    if markdown is not None:
        write_text_atomic(Path(markdown), comparison_markdown(comparison))
    if table is not None:
        write_text_atomic(Path(table), comparison_csv(comparison))


def fresh_comparison(run_dir: Path) -> Path | None:
    """comparison.csv of a results directory if it was written for its current run index.

    A comparison left from an earlier run with a baseline is older than the manifest.
    """
    table, index = Path(run_dir) / "comparison.csv", Path(run_dir) / "manifest.json"
    if table.is_file() and index.is_file() and table.stat().st_mtime >= index.stat().st_mtime:
        return table
    return None


def read_comparison(path: Path) -> tuple[list[str], list[list[str]]]:
    """The columns and rows of a comparison.csv (for the W&B table)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise UserError(f"{path}: empty; expected the comparison table with its header")
    return rows[0], rows[1:]
