"""How much does a cell's throughput move from one worker process to the next? (a benchmark)

Measures each chosen cell K times, each time in its own `datarax-bench run --output` (a fresh
worker process; where the profile measures several per cell, only the first one's windows
count), the cells taken in turn so that every cell's runs spread over the whole benchmark. Prints per cell the coefficient of
variation of the runs' median throughputs (between processes) beside the median coefficient of
variation of one run's windows (within a process): where the first is larger, one process's
windows understate how much a rerun moves.

    python tests/perf/bench_processes.py [--profile ci_cpu] [--rounds 5] [--keep DIR]
        [--cells PC-1/d2/numpy/tuned CV-1/small/datarax/plain ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from datarax_bench.provenance import cpu_info

CELLS = [
    "PC-1/d2/numpy/tuned",
    "CV-1/small/datarax/plain",
    "TAB-1/small/pytorch/tuned",
    "IO-1/memory/numpy/plain",
    "NLP-1/small/grain/plain",
]


def measure(profile: str, cell: str, out: Path) -> None:
    scenario, variant, adapter, style = cell.split("/")
    cmd = [sys.executable, "-m", "datarax_bench.cli", "run", "--profile", profile]
    cmd += ["--scenario", scenario, "--variant", variant, "--adapter", adapter]
    cmd += ["--style", style, "--output", str(out)]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci_cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cells", nargs="+", default=CELLS)
    parser.add_argument("--keep", type=Path, help="measure into this directory and keep it")
    args = parser.parse_args()
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for k in range(args.rounds):
            for cell in args.cells:
                out = root / f"{cell.replace('/', '_')}_{k}.json"
                if not out.exists():
                    measure(args.profile, cell, out)
        cpu = cpu_info()
        print(
            f"{started:%Y-%m-%d %H:%M}-{datetime.now(UTC):%H:%M} UTC, {cpu['model']}, "
            f"{cpu['usable_cores']} usable cores, {platform.node()}, profile {args.profile}"
        )
        print("cell | runs | between processes CV | within a process CV (median) | medians/mean")
        for cell in args.cells:
            medians, within = [], []
            for k in range(args.rounds):
                out = root / f"{cell.replace('/', '_')}_{k}.json"
                result = json.loads(out.read_text()) if out.exists() else {"status": "missing"}
                if result["status"] != "ok":
                    continue
                # One process's windows only, even where the profile measures several.
                values = np.array(
                    [r["elements_per_s"] for r in result["repetitions"] if not r.get("process")]
                )
                medians.append(np.median(values))
                within.append(values.std(ddof=1) / values.mean())
            if len(medians) < 2:
                print(f"{cell} | {len(medians)} | - | - | -")
                continue
            m = np.array(medians)
            print(
                f"{cell} | {len(m)} | {m.std(ddof=1) / m.mean():.3f} | {np.median(within):.3f} | "
                f"{np.round(m / m.mean(), 2).tolist()}"
            )


if __name__ == "__main__":
    main()
