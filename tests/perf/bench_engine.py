"""What does Snakemake itself cost while jobs run? (a benchmark: the workflow engine
must not measure itself)

Runs a trivial workflow of N short jobs (`sleep`, one at a time on the one `bench_slot`, as the
measuring rules run) with the repository's workflow profile and its `onstart:` hook that drops
Snakemake's job-rate limiter ("now"), and with the profile's setting of before, a 100/5s limiter
kept ("old"), the two alternating. Per run: Snakemake's CPU seconds (the process and everything it
reaped, less what the jobs' shells report for themselves) per wall second, the share of the
machine Snakemake used while a job two thirds into the run slept 3 s with the rest waiting (a
measurement window), the most threads the Snakemake process had (its timers are threads) and how
long it lived after its last job. Prints medians per N and arm, the old/now ratio, and the
machine, date and commit.

    python tests/perf/bench_engine.py [--jobs 60 240] [--rounds 2] [--sleep 0.1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.engine import OLD_SETTING, ROOT, profile_settings, run_workflow  # noqa: E402

from datarax_bench.provenance import cpu_info  # noqa: E402

ARMS = {
    "old": {"drop_limiter": False, "profile": profile_settings(**OLD_SETTING)},
    "now": {"drop_limiter": True, "profile": profile_settings()},
}


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True
        ).stdout.strip()

    dirty = (
        " (with uncommitted changes)" if git("status", "--porcelain", "--", "src", "tests") else ""
    )
    return git("rev-parse", "--short", "HEAD") + dirty


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[60, 240])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=0.1, help="seconds each job sleeps")
    parser.add_argument("--keep", type=Path, help="keep the runs' directories here")
    args = parser.parse_args()
    started = datetime.now(UTC)
    rows: dict[tuple[int, str], list] = {}
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        root = args.keep or Path(tmp)
        for k in range(args.rounds):
            for n in args.jobs:
                # Alternate which arm goes first, so that a drift of the machine favours neither.
                order = ["old", "now"] if (k + args.jobs.index(n)) % 2 == 0 else ["now", "old"]
                for arm in order:
                    run = run_workflow(
                        root / f"{arm}-{n}-{k}",
                        n,
                        sleep=args.sleep,
                        window_after=2 * n // 3,
                        window_s=3.0,
                        **ARMS[arm],
                    )
                    if run.returncode or run.window is None:
                        sys.exit(f"{arm} N={n} failed:\n{run.output[-3000:]}")
                    rows.setdefault((n, arm), []).append(run)
                    print(
                        f"  round {k + 1} N={n:4} {arm}: wall {run.wall_s:6.1f} s, Snakemake "
                        f"{run.engine_cpu_s:6.2f} CPU s ({run.engine_cpu_s / run.wall_s:.3f}/s), "
                        f"window {run.window['share']:.2%} of the machine, "
                        f"{run.max_threads} threads at most, exit {run.tail_s:.1f} s after "
                        "the last job",
                        flush=True,
                    )
    cpu = cpu_info()
    print(
        f"\n{started:%Y-%m-%d %H:%M}-{datetime.now(UTC):%H:%M} UTC, {cpu['model']}, "
        f"{cpu['usable_cores']} usable cores, {platform.node()}, commit {_commit()}, "
        f"jobs sleep {args.sleep} s, {args.rounds} rounds"
    )
    print(
        "N | arm | Snakemake CPU s/wall s (median) | CPU s | wall s | window share of machine "
        "| threads | exit after last job s"
    )
    for n in args.jobs:
        medians = {}
        for arm in ("old", "now"):
            runs = rows[(n, arm)]
            per_s = statistics.median(r.engine_cpu_s / r.wall_s for r in runs)
            medians[arm] = per_s
            print(
                f"{n} | {arm} | {per_s:.3f} | "
                f"{statistics.median(r.engine_cpu_s for r in runs):.2f} | "
                f"{statistics.median(r.wall_s for r in runs):.1f} | "
                f"{statistics.median(r.window['share'] for r in runs):.2%} | "
                f"{max(r.max_threads for r in runs)} | "
                f"{statistics.median(r.tail_s for r in runs):.1f}"
            )
        print(f"{n} | old/now CPU per wall second: {medians['old'] / medians['now']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
