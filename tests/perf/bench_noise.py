"""What does a busy machine do to a profile's numbers? (a benchmark, not a test)

Runs every throughput cell of a profile twice through `datarax-bench run`: once on the machine
as it is ("quiet") and once while a helper process burns one core ("burned"), alternating the
order from cell to cell, same commit, same profile. Reports per condition the median
coefficient of variation, the share of cells flagged `busy`, the repetitions spent (with the
profile's `precision`, if it has one) and the precision reached.

    python tests/perf/bench_noise.py [--profile ci_cpu] [--scenarios CV-1 NLP-1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from datarax_bench.provenance import cpu_info
from datarax_bench.workload.catalog import load_catalog, load_profile

ADAPTERS = ["numpy", "datarax", "grain", "pytorch", "tfdata"]
BURN = "while True:\n    pass\n"


def _cell(out: Path, profile: str, scenario: str, variant: str, adapter: str, burned: bool) -> dict:
    burner = subprocess.Popen([sys.executable, "-c", BURN]) if burned else None
    try:
        cmd = [sys.executable, "-m", "datarax_bench.cli", "run", "--profile", profile]
        cmd += ["--scenario", scenario, "--variant", variant, "--adapter", adapter]
        cmd += ["--output", str(out)]
        start = time.monotonic()
        subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        wall = time.monotonic() - start
    finally:
        if burner is not None:
            burner.send_signal(signal.SIGKILL)
            burner.wait()
    result = json.loads(out.read_text()) if out.exists() else {"status": "missing"}
    row = {"condition": "burned" if burned else "quiet", "scenario": scenario, "variant": variant}
    row["adapter"] = adapter
    row.update(status=result["status"], wall_s=wall)
    if result["status"] == "ok":
        s = result["statistics"]
        row.update(
            median=s["elements_per_s"]["median"],
            cv=s["elements_per_s"]["cv"],
            precision=s.get("precision"),
            repetitions=s["repetitions"],
            stopped=s.get("stopped"),
            busy=s.get("busy"),
            others=(s.get("machine_load") or {}).get("foreign_share"),
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci_cpu")
    parser.add_argument("--scenarios", nargs="*")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    catalog = load_catalog()
    profile = load_profile(args.profile, catalog)
    pairs = [
        (s, v)
        for s, v in profile.cells(catalog, args.scenarios)
        if catalog.get(s).measure == "throughput"
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (scenario, variant) in enumerate(pairs):
            for j, adapter in enumerate(ADAPTERS):
                for burned in (False, True) if (i + j) % 2 == 0 else (True, False):
                    out = Path(tmp) / f"{burned}-{scenario}-{variant}-{adapter}.json"
                    out.unlink(missing_ok=True)
                    rows.append(_cell(out, args.profile, scenario, variant, adapter, burned))
                    print(json.dumps(rows[-1]), flush=True)
    print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu_info()}, {platform.node()}")
    print(f"profile {args.profile}, measurement {profile.measurement}")
    for condition in ("quiet", "burned"):
        ok = [r for r in rows if r["condition"] == condition and r["status"] == "ok"]
        if not ok:
            continue
        prec = [r["precision"] for r in ok if r["precision"] is not None]
        print(
            f"{condition:6}: {len(ok)} ok cells, median CV {statistics.median(r['cv'] for r in ok):.1%}, "
            f"busy {sum(1 for r in ok if r['busy'])}/{len(ok)}, median others "
            f"{statistics.median(r['others'] or 0 for r in ok):.0%}, repetitions "
            f"{sum(r['repetitions'] for r in ok)} (median {statistics.median(r['repetitions'] for r in ok):g}), "
            f"median precision {statistics.median(prec):.1%}, wall {sum(r['wall_s'] for r in ok):.0f} s"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
