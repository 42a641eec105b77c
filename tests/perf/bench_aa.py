"""A/A: how often does `datarax-bench compare` call a change between identical runs? (a benchmark)

Runs the same profile N times back to back through `datarax-bench run` (same commit, same
machine, nothing changed in between) and compares every pair of runs as `datarax-bench compare`
does. Prints per pair the cells compared, the cells called changed at each threshold, and the
smallest threshold at which that pair calls nothing: the drift between identical runs that a
threshold must stay above on this machine. With `--runs-from DIR...` it only compares runs
already measured.

    python tests/perf/bench_aa.py [--profile ci_cpu] [--runs 3] [--scenarios CV-1 NLP-1]
        [--keep DIR] [--json FILE]
    python tests/perf/bench_aa.py --runs-from DIR1 DIR2 [DIR3 ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from datarax_bench.provenance import cpu_info
from datarax_bench.report import compare
from datarax_bench.stats import group_by_process

THRESHOLDS = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.50)
TIMED_VERDICTS = ("slower", "faster", "same")


def measure(profile: str, scenarios: list[str] | None, out: Path) -> float:
    cmd = [sys.executable, "-m", "datarax_bench.cli", "run", "--profile", profile]
    cmd += ["--output-dir", str(out)]
    if scenarios:
        cmd += ["--scenarios", *scenarios]
    start = time.monotonic()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode not in (0, 1):  # 1: some cell failed, which is data
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    return time.monotonic() - start


def needed_threshold(row: compare.Row, alpha: float) -> float:
    """The threshold above which this row is `same` (0 when it is never called)."""
    if row.p_value is None or row.p_value >= alpha:
        return 0.0
    if row.ci95_high < 1:
        return 1 / row.ci95_high - 1
    if row.ci95_low > 1:
        return row.ci95_low - 1
    return 0.0


def spreads(run: compare.Run) -> tuple[float | None, float | None]:
    """Median over the run's ok cells of the CV between its processes' medians and of the CV of
    one process's windows (None where no cell had several processes)."""
    between, within = [], []
    for result in run.results.values():
        if result["status"] != "ok":
            continue
        reps = result["repetitions"]
        groups = group_by_process([r["elements_per_s"] for r in reps], reps)
        within += [float(g.std(ddof=1) / g.mean()) for g in groups if g.size > 1]
        if result["statistics"].get("between_process_cv") is not None:
            between.append(result["statistics"]["between_process_cv"])
    return (
        float(np.median(between)) if between else None,
        float(np.median(within)) if within else None,
    )


def analyse(base_dir: Path, new_dir: Path, alpha: float) -> dict:
    base, new = compare.load_run(base_dir), compare.load_run(new_dir)
    rows = compare.compare_runs(base, new, alpha=alpha).rows
    timed = [r for r in rows if r.verdict in TIMED_VERDICTS and r.ratio is not None]
    busy = [r for r in rows if r.verdict == "incomparable" and "busy" in r.reason]
    flags = [r for r in rows if r.verdict in ("regressed", "improved")]
    called = {
        f"{t:.0%}": sorted(
            (
                f"{compare.cell_label(r)} {r.adapter_name} {r.ratio:.2f} "
                f"[{r.ci95_low:.2f}, {r.ci95_high:.2f}]"
            )
            for r in timed
            if needed_threshold(r, alpha) > t
        )
        for t in THRESHOLDS
    }
    worst = max(timed, key=lambda r: needed_threshold(r, alpha), default=None)
    return {
        "base": str(base_dir),
        "new": str(new_dir),
        "compared": len(timed),
        "busy": len(busy),
        "flags_flipped": [compare.cell_label(r) for r in flags],
        "called": called,
        "zero_at": needed_threshold(worst, alpha) if worst else 0.0,
        "worst": f"{compare.cell_label(worst)} {worst.adapter_name}" if worst else None,
        "ratios": sorted(r.ratio for r in timed),
        # (between processes, within a process) median CVs of each run
        "spreads": [spreads(base), spreads(new)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci_cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", nargs="*")
    parser.add_argument("--alpha", type=float, default=compare.DEFAULT_ALPHA)
    parser.add_argument("--keep", type=Path, help="measure into this directory and keep it")
    parser.add_argument("--runs-from", nargs="+", type=Path, help="compare these runs only")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.runs_from:
            runs = args.runs_from
        else:
            root = args.keep or Path(tmp)
            runs = [root / f"run-{i + 1}" for i in range(args.runs)]
            for run in runs:
                started = datetime.now(UTC)
                walls.append(measure(args.profile, args.scenarios, run))
                print(f"{run}: {started:%H:%M}-{datetime.now(UTC):%H:%M} UTC", flush=True)
        pairs = [analyse(a, b, args.alpha) for a, b in itertools.combinations(runs, 2)]
    cpu = cpu_info()
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu['model']}, {cpu['usable_cores']} usable "
        f"cores, {platform.node()}"
    )
    print(f"profile {args.profile}, alpha {args.alpha:g}, run walls {[round(w) for w in walls]} s")
    print("pair | compared | busy | " + " | ".join(f"{t:.0%}" for t in THRESHOLDS) + " | zero at")
    for p in pairs:
        counts = " | ".join(str(len(p["called"][f"{t:.0%}"])) for t in THRESHOLDS)
        print(
            f"{Path(p['base']).name}/{Path(p['new']).name} | {p['compared']} | {p['busy']} | "
            f"{counts} | {p['zero_at']:.1%} ({p['worst']})"
        )
        for line in p["called"]["5%"]:
            print(f"    {line}")
        for name, (between, within) in zip(("base", "new"), p["spreads"], strict=True):
            if between is not None:
                print(f"    {name}: median CV between processes {between:.3f}, within {within:.3f}")
        if p["flags_flipped"]:
            print(f"    flags flipped: {p['flags_flipped']}")
    if args.json:
        args.json.write_text(json.dumps(pairs, indent=1))


if __name__ == "__main__":
    main()
