"""Each loader plain and at its best: the two styles side by side (a benchmark, not a test)

Runs the throughput cells of a profile (default `ci_cpu`: CV-1, NLP-1, TAB-1) for every adapter
in both styles through `datarax-bench run`, the two styles of one cell back to back with their
order alternating from cell to cell, everything else as the profile says (its repetitions,
precision, feed). The tuned cells sweep their parallelism first; `--keep-sweeps` reuses the
cached sweeps instead of clearing them. Single-thread memcpy bandwidth is measured at the start,
between scenarios and at the end of the same run, as the ceiling a loader that only copied bytes
would approach. Prints per cell the median elements/s with its 95% CI, tuned/plain, the chosen
parallelism and the sweep's cost, CPU seconds per 1,000 elements, busy cores and accelerator
utilisation per step time; then the issue's targets against what was measured.

    python tests/perf/bench_styles.py [--profile ci_cpu] [--scenarios CV-1 NLP-1 TAB-1] [--json FILE]
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

import numpy as np

from datarax_bench import paths
from datarax_bench.provenance import cpu_info
from datarax_bench.results import result_row
from datarax_bench.workload.catalog import load_catalog, load_profile

ADAPTERS = ["numpy", "datarax", "grain", "pytorch", "tfdata"]
STYLES = ("plain", "tuned")


def memcpy_gb_s(mib: int = 256, trials: int = 9) -> float:
    """Median bytes copied per second by one thread (`np.copyto` of a large array)."""
    src = np.ones(mib * 2**20, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault in both buffers
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        np.copyto(dst, src)
        rates.append(src.nbytes / (time.perf_counter() - start))
    return statistics.median(rates) / 1e9


def _cell(out: Path, profile: str, scenario: str, variant: str, adapter: str, style: str):
    cmd = [sys.executable, "-m", "datarax_bench.cli", "run", "--profile", profile]
    cmd += ["--scenario", scenario, "--variant", variant, "--adapter", adapter]
    cmd += ["--style", style, "--output", str(out)]
    start = time.monotonic()
    subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True)
    wall = time.monotonic() - start
    if not out.exists():
        return {"scenario": scenario, "variant": variant, "adapter": adapter, "style": style,
                "status": "missing", "wall_s": wall}  # fmt: skip
    row = result_row(json.loads(out.read_text()), str(out))
    row["wall_s"] = wall
    return row


def _k(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x / 1e3:,.0f}k" if x >= 1e5 else f"{x / 1e3:.1f}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci_cpu")
    parser.add_argument("--scenarios", nargs="*", default=["CV-1", "NLP-1", "TAB-1"])
    parser.add_argument("--adapters", nargs="*", default=ADAPTERS)
    parser.add_argument("--keep-sweeps", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    profile = load_profile(args.profile)
    catalog = load_catalog()
    pairs = list(profile.cells(catalog, args.scenarios))
    if not args.keep_sweeps:
        shutil.rmtree(paths.cache_dir() / "tuning", ignore_errors=True)
    memcpy = [memcpy_gb_s()]
    rows = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        n = 0
        for scenario, variant in pairs:
            for adapter in args.adapters:
                styles = STYLES if n % 2 == 0 else STYLES[::-1]
                n += 1
                for style in styles:
                    out = Path(tmp) / f"{scenario}-{variant}-{adapter}-{style}.json"
                    row = _cell(out, args.profile, scenario, variant, adapter, style)
                    rows.append(row)
                    print(json.dumps({k: row.get(k) for k in (
                        "scenario", "adapter", "style", "status", "elements_per_s_median",
                        "tuned_parallelism", "tuning_cost_s", "wall_s")}), flush=True)  # fmt: skip
            memcpy.append(memcpy_gb_s())
    total = time.monotonic() - began

    bandwidth = statistics.median(memcpy)
    print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu_info()}, {platform.node()}")
    print(f"profile {args.profile}; {len(rows)} cells in {total:.0f} s")
    print(
        f"single-thread memcpy: median {bandwidth:.1f} GB/s over {len(memcpy)} measurements "
        f"({', '.join(f'{m:.1f}' for m in memcpy)})"
    )
    by = {(r["scenario"], r["adapter"], r["style"]): r for r in rows}
    steps = sorted(
        {int(k.split("_")[2][:-2]) for r in rows for k in r if k.startswith("feed_utilisation_")}
    )
    print(
        "\n| scenario | adapter | plain elements/s (95% CI) | tuned elements/s (95% CI) | "
        "tuned/plain | tuned parallelism (sweep s) | CPU s/1k plain / tuned | busy cores "
        "plain / tuned | " + " | ".join(f"AU {t} ms tuned" for t in steps) + " |"
    )
    print("|---|---|---:|---:|---:|---|---:|---:|" + "---:|" * len(steps))
    for scenario, variant in pairs:
        for adapter in args.adapters:
            p, t = (
                by.get((scenario, adapter, "plain"), {}),
                by.get((scenario, adapter, "tuned"), {}),
            )

            def cell(r):
                if r.get("status") != "ok":
                    return r.get("status", "–")
                flag = " †" if r.get("unstable") else ""
                flag += " busy" if r.get("busy") else ""
                return (
                    f"{_k(r['elements_per_s_median'])} ({_k(r['elements_per_s_ci95_low'])}–"
                    f"{_k(r['elements_per_s_ci95_high'])}){flag}"
                )

            ratio = (
                f"{t['elements_per_s_median'] / p['elements_per_s_median']:.2f}"
                if p.get("status") == t.get("status") == "ok"
                else "–"
            )

            def num(r, key, fmt):
                v = r.get(key)
                return format(v, fmt) if isinstance(v, int | float) else "–"

            au = [num(t, f"feed_utilisation_{s}ms", ".0%") for s in steps]
            print(
                f"| {scenario} {variant} | {adapter} | {cell(p)} | {cell(t)} | {ratio} | "
                f"{t.get('tuned_parallelism') or '–'} ({num(t, 'tuning_cost_s', '.0f')}) | "
                f"{num(p, 'cpu_s_per_1k_elements_median', '.3f')} / "
                f"{num(t, 'cpu_s_per_1k_elements_median', '.3f')} | "
                f"{num(p, 'busy_cores_median', '.2f')} / {num(t, 'busy_cores_median', '.2f')} | "
                + " | ".join(au)
                + " |"
            )

    print("\nTargets (tuned style):")
    for scenario in ("NLP-1", "TAB-1"):
        for adapter in args.adapters:
            r = by.get((scenario, adapter, "tuned"), {})
            v = r.get("elements_per_s_median")
            if v is not None or r:
                verdict = "met" if v is not None and v >= 150e3 else "MISSED"
                print(f"  {scenario} {adapter}: {_k(v)} elements/s against 150k: {verdict}")
    nlp = [r for r in rows if r["scenario"] == "NLP-1" and r.get("elements_per_s_median")]
    if nlp:
        best = max(nlp, key=lambda r: r["elements_per_s_median"])
        element_bytes = best["bytes_per_s_median"] / best["elements_per_s_median"]
        ceiling = bandwidth * 1e9 / element_bytes
        share = best["elements_per_s_median"] / ceiling
        print(
            f"  NLP-1 best: {best['adapter']} {best['style']} {_k(best['elements_per_s_median'])} "
            f"elements/s of {element_bytes:.0f} bytes = {share:.1%} of memcpy "
            f"({_k(ceiling)} elements/s) against 5%: {'met' if share >= 0.05 else 'MISSED'}"
        )
    if args.json:
        args.json.write_text(json.dumps({"memcpy_gb_s": memcpy, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
