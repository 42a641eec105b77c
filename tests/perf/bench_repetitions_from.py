"""Which repetitions reach a stated precision sooner: fresh loaders or warm windows?
(a benchmark, not a test)

Runs every throughput cell of a profile twice per round through `datarax-bench run`, once with
`repetitions_from: fresh` and once with `warm` (the order alternating from round to round),
everything else as the profile says. Reports per mode the median wall time of a cell, the
median precision reached, the share of cells that reached the profile's target, the
repetitions spent, and the median of the per-cell ratio of the two modes' throughput medians.

    python tests/perf/bench_repetitions_from.py [--profile ci_cpu] [--rounds 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from datarax_bench.provenance import cpu_info
from datarax_bench.workload.catalog import load_catalog, load_profile

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = ["numpy", "datarax", "grain", "pytorch", "tfdata"]


def _root(tmp: Path, profile: str) -> Path:
    root = tmp / "root"
    shutil.copytree(ROOT / "config", root / "config")
    shutil.copytree(ROOT / "workflow" / "schemas", root / "workflow" / "schemas")
    doc = yaml.safe_load((root / f"config/profiles/{profile}.yaml").read_text())
    doc.pop("feed", None)  # the repetitions alone
    for mode in ("fresh", "warm"):
        doc["measurement"]["repetitions_from"] = mode
        (root / f"config/profiles/bench-{mode}.yaml").write_text(yaml.safe_dump(doc))
    return root


def _cell(root: Path, out: Path, mode: str, scenario: str, variant: str, adapter: str) -> dict:
    cmd = [sys.executable, "-m", "datarax_bench.cli", "run", "--profile", f"bench-{mode}"]
    cmd += ["--scenario", scenario, "--variant", variant, "--adapter", adapter]
    cmd += ["--output", str(out)]
    start = time.monotonic()
    proc = subprocess.run(
        cmd, env={**os.environ, "DATARAX_BENCH_ROOT": str(root)}, capture_output=True, text=True
    )
    wall = time.monotonic() - start
    result = json.loads(out.read_text()) if out.exists() else {"status": "missing"}
    row = {"mode": mode, "scenario": scenario, "variant": variant, "adapter": adapter}
    row["wall_s"] = wall
    row["status"] = result["status"]
    if result["status"] == "ok" and proc.returncode == 0:
        s = result["statistics"]
        row.update(
            median=s["elements_per_s"]["median"],
            precision=s.get("precision"),
            repetitions=s["repetitions"],
            stopped=s.get("stopped"),
            busy=s.get("busy"),
            others=(s.get("machine_load") or {}).get("foreign_share"),
            windows_s=sum(r["window_s"] for r in result["repetitions"]),
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci_cpu")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--scenarios", nargs="*")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    profile = load_profile(args.profile)
    catalog = load_catalog()
    pairs = [
        (s, v)
        for s, v in profile.cells(catalog, args.scenarios)
        if catalog.get(s).measure == "throughput"
    ]
    target = profile.measurement.get("precision")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = _root(Path(tmp), args.profile)
        for round_ in range(args.rounds):
            for i, (scenario, variant) in enumerate(pairs):
                for j, adapter in enumerate(ADAPTERS):
                    modes = ["fresh", "warm"] if (round_ + i + j) % 2 == 0 else ["warm", "fresh"]
                    for mode in modes:
                        out = Path(tmp) / f"{mode}-{scenario}-{variant}-{adapter}.json"
                        out.unlink(missing_ok=True)
                        row = _cell(root, out, mode, scenario, variant, adapter)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu_info()}, {platform.node()}")
    print(f"profile {args.profile}, precision target {target}")
    for mode in ("fresh", "warm"):
        ok = [r for r in rows if r["mode"] == mode and "median" in r]
        prec = [r["precision"] for r in ok if r["precision"] is not None]
        reached = sum(1 for p in prec if target is not None and p <= target)
        print(
            f"{mode:5}: {len(ok)} ok cells, median wall {statistics.median(r['wall_s'] for r in ok):.1f} s "
            f"(total {sum(r['wall_s'] for r in ok):.0f} s), median precision "
            f"{statistics.median(prec) * 100:.1f}%, reached {reached}/{len(ok)}, repetitions "
            f"{sum(r['repetitions'] for r in ok)}, busy {sum(1 for r in ok if r['busy'])}, "
            f"inside windows {sum(r['windows_s'] for r in ok) / sum(r['wall_s'] for r in ok):.0%}"
        )
    by_key = {}
    for r in rows:
        if "median" in r:
            by_key.setdefault((r["scenario"], r["variant"], r["adapter"]), {})[r["mode"]] = r[
                "median"
            ]
    ratios = [v["warm"] / v["fresh"] for v in by_key.values() if len(v) == 2]
    if ratios:
        print(
            f"warm/fresh throughput ratio: median {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} cells)"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
