"""Each loader plain and at its best: the two styles side by side (a benchmark, not a test)

Runs the throughput cells of a profile (default `ci_cpu`: CV-1, NLP-1, TAB-1) for every adapter
in both styles through `datarax-bench run`, the two styles of one cell back to back with their
order alternating from cell to cell, everything else as the profile says (its repetitions,
precision, feed). The tuned cells sweep their parallelism first; `--keep-sweeps` reuses the
cached sweeps instead of clearing them. Single-thread memcpy bandwidth is measured at the start,
between scenarios and at the end of the same run, as the ceiling a loader that only copied bytes
would approach. Prints per cell the median elements/s with its 95% CI, tuned/plain, the chosen
parallelism and the sweep's cost, CPU seconds per 1,000 elements, busy cores and accelerator
utilisation per step time; then the issue's targets against what was measured, beside the
elements/s of the harness's delivery alone (every field `jax.device_put`, no loader) measured
at the start and the end: the ceiling of a loader running in the consuming thread.

    python tests/perf/bench_styles.py [--profile ci_cpu] [--scenarios CV-1 NLP-1 TAB-1]
        [--adapters every registered one] [--json FILE]
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
from datarax_bench.adapters import all_adapters
from datarax_bench.provenance import cpu_info
from datarax_bench.results import result_row
from datarax_bench.workload.catalog import load_catalog, load_profile

ADAPTERS = [a.id for a in all_adapters()]
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


def delivery_ceilings(profile, catalog, pairs, trials: int = 7, batches: int = 100) -> dict:
    """Per scenario, the elements/s of the harness's delivery alone (`harness.make_delivery`:
    every field `jax.device_put` and blocked on), of the reference's first batch, trials
    alternating between scenarios: the most a loader running in the consuming thread could
    deliver, its own work aside (`tests/perf/bench_delivery.py` says more)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from datarax_bench.adapters import get_adapter
    from datarax_bench.measures.harness import make_delivery
    from datarax_bench.workload import reference
    from datarax_bench.workload.data import materialize

    deliver = make_delivery(get_adapter("numpy"))
    cases = {}
    for scenario, variant in pairs:
        w = catalog.get(scenario).resolve(variant, profile.size)
        batch = reference.reference_batch(
            materialize(w, seed=profile.seed), w.transforms, 0, 0, 0, w.batch_size
        )
        cases[scenario] = (batch, w.batch_size)
    rates: dict[str, list[float]] = {k: [] for k in cases}
    for trial in range(trials):
        for scenario in list(cases) if trial % 2 == 0 else list(reversed(cases)):
            batch, size = cases[scenario]
            start = time.perf_counter()
            for _ in range(batches):
                deliver(batch)
            rates[scenario].append(size * batches / (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in rates.items()}


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
    ceilings = [delivery_ceilings(profile, catalog, pairs)]
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
    ceilings.append(delivery_ceilings(profile, catalog, pairs))
    total = time.monotonic() - began
    ceiling = {k: statistics.median(c[k] for c in ceilings) for k in ceilings[0]}

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

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"\nTargets (tuned style), commit {commit}; the harness's delivery alone (every field "
          "device_put and blocked on, no loader) sets the ceiling of a loader in the consuming "
          "thread:")  # fmt: skip
    for scenario, c in ceiling.items():
        print(f"  {scenario} delivery alone: {_k(c)} elements/s (start {_k(ceilings[0][scenario])}, "
              f"end {_k(ceilings[-1][scenario])})")  # fmt: skip
    targets = {"NLP-1": 150e3, "TAB-1": 150e3}
    print("  | scenario | target | " + " | ".join(args.adapters) + " | best |")
    print("  |---|---|" + "---:|" * (len(args.adapters) + 1))
    for scenario, floor in targets.items():
        if scenario not in ceiling:
            continue
        values = [
            by.get((scenario, a, "tuned"), {}).get("elements_per_s_median") for a in args.adapters
        ]
        cells = [f"{_k(v)} {'met' if v is not None and v >= floor else 'MISSED'}" for v in values]
        best = max((v for v in values if v is not None), default=None)
        goal = 500e3 if scenario == "NLP-1" else floor
        verdict = "met" if best is not None and best >= goal else "MISSED"
        print(f"  | {scenario} tuned | ≥ {_k(floor)} each, best ≥ {_k(goal)} | "
              + " | ".join(cells) + f" | {_k(best)} {verdict} |")  # fmt: skip
    if "CV-1" in ceiling:
        cells = []
        for adapter in args.adapters:
            p = by.get(("CV-1", adapter, "plain"), {}).get("elements_per_s_median")
            t = by.get(("CV-1", adapter, "tuned"), {}).get("elements_per_s_median")
            ratio = t / p if p and t else None
            cells.append(
                "–" if ratio is None else f"{ratio:.2f} {'met' if ratio >= 1 else 'MISSED'}"
            )
        print("  | CV-1 tuned/plain | ≥ 1.00 each | " + " | ".join(cells) + " | |")
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
