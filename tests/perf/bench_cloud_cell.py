"""Orchestration cost of one remote cell on the loopback cluster (a script, not a test):

  .venv/bin/python tests/perf/bench_cloud_cell.py [--repeats 5]

Launches the smoke profile's rendered task on a loopback node, then alternates, per round:
a bare `sky exec` (`true`), the same with the checkout synced (`--workdir`), an rsync pull of
one small file, a `sky status --refresh`, and a whole cell through `cloud.measure_remote_cell`
(TAB-1 smoke, NumPy). Prints medians and every sample. The cell's orchestration time is its
job time minus the time its own result says it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "loopback"))
import node as loopback  # noqa: E402

from datarax_bench.cloud import cluster as cloud  # noqa: E402
from datarax_bench.cloud import sky  # noqa: E402
from datarax_bench.workload.catalog import load_profile  # noqa: E402


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        node = loopback.make_node(tmp / "node")
        home = tmp / "home"
        home.mkdir()
        env = loopback.loopback_env(home, node)
        os.environ.update({k: env[k] for k in ("HOME", "PATH", "LOOPBACK_SKY_NODE")})
        os.environ["DATARAX_BENCH_CACHE"] = str(tmp / "cache")
        os.environ[cloud.INVOCATION_ENV] = "bench"
        try:
            profile = load_profile("smoke")
            work = tmp / "results" / "smoke" / "ssh_loopback" / "cloud"
            settings = cloud.CloudSettings(use_spot=False)
            cluster, log = "dxb-bench", tmp / "log"
            samples: dict[str, list[float]] = {}
            spec = cloud.ClusterSpec(profile, "ssh/loopback", cluster, settings, work, log)
            cloud.measure_remote_cell(
                spec, "TAB-1", "small", "numpy", tmp / "warm.json"
            )  # fmt: skip  # launch + setup + first data generation, not timed
            for i in range(args.repeats):
                samples.setdefault("sky exec (bare)", []).append(
                    timed(["sky", "exec", cluster, "--", "true"])
                )
                samples.setdefault("sky exec --workdir", []).append(
                    timed(["sky", "exec", cluster, "--workdir", str(ROOT), "--", "true"])
                )
                ssh = " ".join(sky.ssh_command())
                samples.setdefault("rsync pull", []).append(
                    timed(["rsync", "-a", "-e", ssh, f"{cluster}:~/.datarax-bench-env", str(tmp)])
                )
                samples.setdefault("sky status --refresh", []).append(
                    timed(["sky", "status", "--refresh", "-o", "json", cluster])
                )
                out = tmp / f"cell{i}.json"
                t0 = time.perf_counter()
                result = cloud.measure_remote_cell(spec, "TAB-1", "small", "numpy", out)
                job = time.perf_counter() - t0
                samples.setdefault("cell job", []).append(job)
                measured = result["timestamps"]["duration_s"]
                samples.setdefault("cell, measured by itself", []).append(measured)
                samples.setdefault("cell orchestration", []).append(job - measured)
            cloud.teardown([cluster], log)
        finally:
            loopback.stop_skylets(home)
            node.stop()
    print(json.dumps({"machine": os.uname().nodename, "date": time.strftime("%Y-%m-%d")}))
    for name, values in samples.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:28} median {statistics.median(values):6.2f} s   [{shown}]")


if __name__ == "__main__":
    main()
