"""Orchestration's share of billed time for the gpu_a100 plan, one cell per `sky exec` against
batches (a script, not a test):

  .venv/bin/python tests/perf/bench_remote_batches.py [--call-latency 20] [--repeats 1]

What is measured, on the loopback cluster with every `sky exec`, `launch` and `status` call
slowed by `--call-latency` seconds (LOOPBACK_SKY_CALL_LATENCY_S, standing in for a real cloud's
round trip: CLI start, API server, ssh through a gateway, the job's scheduling): per round, one
cell measured alone through `cloud.measure_remote_cell` (TAB-1 smoke, NumPy), then a batch of
three cells (NumPy, datarax, Grain) whose first job measures all three and whose two other jobs
take theirs from the batch cache. A job's orchestration is its time minus what its results say
they measured; from these come a job's fixed orchestration (the one-cell job's) and what each
further cell of a batch adds to it.

What is computed, not run: the gpu_a100 plan's remote cells (the workflow's matrix with every
scenario, adapter and style; unsupported cells are written locally and cost nothing), its
batches for each `remote_batch_cells`, each cell's measuring time as its worker processes x the
profile's `cloud.process_estimate_s`, and the 15 min launch estimate. Orchestration share =
orchestration / (launch + measuring + orchestration). Running 288 A100 cells is what this avoids.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "loopback"))
import node as loopback  # noqa: E402

from datarax_bench.cloud import batches, billing  # noqa: E402
from datarax_bench.cloud import cluster as cloud  # noqa: E402
from datarax_bench.run.cell import CellId  # noqa: E402
from datarax_bench.workflow.cells import Matrix  # noqa: E402
from datarax_bench.workload.catalog import load_catalog, load_profile  # noqa: E402

BATCH = [CellId("TAB-1", "small", a) for a in ("numpy", "datarax", "grain")]


def job(spec, cell: CellId, run_dir: Path, batch=()) -> tuple[float, float]:
    """(the job's wall time, what its result says it measured)."""
    t0 = time.perf_counter()
    out = cell.path(run_dir)
    result = cloud.measure_remote_cell(spec, *cell[:3], out, cell.style, batch=batch)
    return time.perf_counter() - t0, result["timestamps"]["duration_s"]


def measure(call_latency: float, repeats: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        node = loopback.make_node(tmp / "node")
        home = tmp / "home"
        home.mkdir()
        env = loopback.loopback_env(home, node)
        os.environ.update({k: env[k] for k in ("HOME", "PATH", "LOOPBACK_SKY_NODE")})
        os.environ["LOOPBACK_SKY_CALL_LATENCY_S"] = str(call_latency)
        os.environ["DATARAX_BENCH_CACHE"] = str(tmp / "cache")
        os.environ[cloud.INVOCATION_ENV] = "bench"
        try:
            profile = load_profile("smoke")
            run_dir = tmp / "results" / "smoke" / "ssh_loopback"
            work, log = run_dir / "cloud", tmp / "log"
            settings = cloud.CloudSettings(use_spot=False)
            spec = cloud.ClusterSpec(profile, "ssh/loopback", "dxb-bench", settings, work, log, 3)
            # Launch, setup and each adapter's first data generation and import: not timed.
            job(spec, BATCH[0], run_dir, BATCH)
            for cell in BATCH[1:]:
                job(spec, cell, run_dir, BATCH)
            for _ in range(repeats):
                shutil.rmtree(run_dir / "raw")
                wall, measured = job(spec, BATCH[0], run_dir)
                samples.setdefault("one-cell job", []).append(wall)
                samples.setdefault("one-cell job orchestration", []).append(wall - measured)
                shutil.rmtree(run_dir / "raw")
                timed = [job(spec, cell, run_dir, BATCH) for cell in BATCH]
                samples.setdefault("batch job (3 cells)", []).append(timed[0][0])
                samples.setdefault("batch job orchestration", []).append(
                    timed[0][0] - sum(m for _, m in timed)  # the job measured all three
                )
                takes = [wall for wall, _ in timed[1:]]
                samples.setdefault("cell taken from the batch cache", []).extend(takes)
            cloud.teardown([spec.name], log)
        finally:
            loopback.stop_skylets(home)
            node.stop()
    return samples


def plan_share(fixed_s: float, per_extra_cell_s: float, sizes: list[int]) -> dict:
    """Orchestration's share of the gpu_a100 plan's billed time at each batch size."""
    catalog = load_catalog()
    config = {"scenarios": [], "adapters": [], "styles": []}
    matrix = Matrix.from_config(config, catalog)
    profile = matrix.profile("gpu_a100")
    cells = matrix.cells("gpu_a100")
    process_s = float(profile.cloud["process_estimate_s"])
    out = {"cells": len(cells)}
    for size in sizes:
        plan = batches.remote_plan(profile, catalog, cells, size)
        measuring = sum(matrix.processes("gpu_a100", c) * process_s for b in plan for c in b)
        orchestration = sum(fixed_s + (len(b) - 1) * per_extra_cell_s for b in plan)
        billed = billing.LAUNCH_ESTIMATE_S + measuring + orchestration
        out[size] = {
            "remote_cells": sum(map(len, plan)),
            "sky_exec_jobs": len(plan),
            "orchestration_min": round(orchestration / 60, 1),
            "billed_h": round(billed / 3600, 2),
            "orchestration_share": round(orchestration / billed, 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--call-latency", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 12])
    args = parser.parse_args()
    samples = measure(args.call_latency, args.repeats)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(json.dumps({"machine": os.uname().nodename, "date": time.strftime("%Y-%m-%d"),
                      "commit": commit, "call_latency_s": args.call_latency}))  # fmt: skip
    for name, values in samples.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:34} median {statistics.median(values):6.2f} s   [{shown}]")
    fixed = statistics.median(samples["one-cell job orchestration"])
    extra = max(0.0, (statistics.median(samples["batch job orchestration"]) - fixed) / 2)
    print(f"a job's orchestration {fixed:.2f} s, each further cell of a batch {extra:.2f} s")
    print(json.dumps(plan_share(fixed, extra, args.sizes), indent=1))


if __name__ == "__main__":
    main()
