"""How long does the bare `snakemake` take, the README's quickstart run? (a benchmark)

Runs `snakemake` with no arguments, as a user does after installing, in a fresh copy of the
checkout (Snakefile, config/, workflow/ and the workflow profile profiles/default/) with a fresh
data cache, so that the data, the tuned sweeps and every cell are made from nothing. Prints the
wall time beside the run's own estimate (its `estimate:` line) and its last progress line, with
the machine, the date, the commit, and how busy the machine was: the load average before and
after, and the median share of the CPU other processes used during the cells' windows, with the
count of cells flagged `busy` (results.csv).

    python tests/perf/bench_default_run.py [--keep DIR] [--cache DIR] [--timeout-min M]
        [-- EXTRA SNAKEMAKE ARGS]

`--cache DIR` reuses a data cache (data made, sweeps cached) instead of a fresh one; extra
arguments go to snakemake, e.g. `-- --config profile=quick` times the installation check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from datarax_bench.provenance import cpu_info

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COPIED = ("Snakefile", "config", "workflow", "profiles")


def _copy(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name)
        else:
            shutil.copy(source, dest / name)
    return dest


def _commit() -> str:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return proc.stdout.strip() or "unknown"


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run here and keep it (default: a temp dir)")
    parser.add_argument("--cache", type=Path, help="data cache to reuse (default: a fresh one)")
    parser.add_argument(
        "--timeout-min", type=float, help="stop the run after this long and say how far it got"
    )
    parser.add_argument("extra", nargs="*", help="arguments for snakemake (after --)")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-default-run-"))
    work = _copy(base / "checkout")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DATARAX_BENCH_ROOT", None)
    env["DATARAX_BENCH_CACHE"] = str(args.cache or base / "cache")
    cpu = cpu_info()
    started = datetime.now(UTC)
    load_before = _load()
    t0 = time.perf_counter()
    log = base / "snakemake.log"
    with log.open("w") as out:
        # A session of its own: a run that overruns is stopped with every job it started.
        proc = subprocess.Popen(
            [str(BIN / "snakemake"), *args.extra],
            cwd=work,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=args.timeout_min * 60 if args.timeout_min else None)
        except subprocess.TimeoutExpired:
            # Snakemake 9 goes on scheduling after a SIGINT to it alone; the progress lines
            # say how far the run got.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            print(f"stopped after {args.timeout_min} min: not finished")
    wall = time.perf_counter() - t0
    load_after = _load()
    text = log.read_text(errors="replace")
    estimate = re.search(r"^estimate: .*$", text, re.MULTILINE)
    progress = re.findall(r"^progress: .*$", text, re.MULTILINE)
    print(f"command: snakemake {' '.join(args.extra)} (exit {proc.returncode}; log {log})")
    print(
        f"machine: {cpu.get('model')}, {cpu.get('usable_cores')} usable cores; "
        f"{started:%Y-%m-%d %H:%M} UTC to {datetime.now(UTC):%H:%M}; commit {_commit()}"
    )
    print(f"wall: {wall:.0f} s ({wall / 60:.1f} min)")
    print(f"run's {estimate.group(0) if estimate else 'estimate: none printed'}")
    print(f"run's last {progress[-1] if progress else 'progress: none printed'}")
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    tables = list((work / "results").glob("*/local/results.csv"))
    if tables:
        table = pd.read_csv(tables[0])
        share = table.get("others_cpu_share")
        busy = table.get("busy")
        print(
            f"cells: {len(table)}, {int((table['status'] == 'ok').sum())} ok; "
            f"others' CPU share during the windows: median "
            f"{share.median():.0%}, max {share.max():.0%}; "
            f"busy: {int(busy.eq(True).sum())} of {len(table)}"
            if share is not None and busy is not None
            else f"cells: {len(table)}"
        )
        stats = [
            json.loads(path.read_text()).get("statistics") or {}
            for path in tables[0].parent.glob("raw/**/*.json")
        ]
        # Cells measured to a target say whether they met it in `stopped`.
        targeted = [s for s in stats if "precision" in (s.get("stopped") or "")]
        reached = [s for s in targeted if s["stopped"].startswith("precision reached")]
        precision = [s["precision"] for s in targeted if s.get("precision") is not None]
        if precision:
            print(
                f"precision: {len(reached)} of {len(targeted)} cells met the target; median "
                f"precision reached {statistics.median(precision):.1%}, widest {max(precision):.1%}"
            )
    if proc.returncode:
        print(text[-3000:], file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
