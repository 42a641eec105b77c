"""Time the workflow as users run it (a script, not a test):

  .venv/bin/python tests/perf/bench_workflow.py [--repeats 3] [--adapters numpy]

1. `snakemake -n` over the largest matrix (every scenario of every profile x every adapter),
2. the whole `smoke` workflow (every smoke scenario; adapters as given, default all) from scratch,
in a temporary copy of the checkout with a temporary data cache. Prints medians and all samples.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _copy(dest: Path) -> Path:
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    shutil.copytree(ROOT / "config", dest / "config")
    shutil.copytree(ROOT / "workflow", dest / "workflow")
    return dest


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adapters", nargs="*", default=[], help="smoke run adapters (all)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from datarax_bench.workload.catalog import load_catalog, load_profile, profile_names

    catalog = load_catalog()
    everything = sorted({s for p in profile_names() for s in load_profile(p, catalog).scenarios})
    smk = str(BIN / "snakemake")
    with tempfile.TemporaryDirectory(prefix="bench-workflow-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        env.pop("DATARAX_BENCH_ROOT", None)
        env["DATARAX_BENCH_CACHE"] = str(tmp / "cache")
        scenarios = "scenarios=[" + ",".join(everything) + "]"
        dry = []
        for profile in profile_names():
            work = _copy(Path(tempfile.mkdtemp(dir=tmp)))
            cmd = [smk, "-n", "-q", "--config", f"profile={profile}", scenarios]
            dry.append((profile, [_timed(cmd, work, env) for _ in range(args.repeats)]))
        smoke = []
        adapters = "adapters=[" + ",".join(args.adapters) + "]"
        for _ in range(args.repeats):
            work = _copy(Path(tempfile.mkdtemp(dir=tmp)))
            cmd = [smk, "--cores", "2", "--config", "profile=smoke", adapters]
            smoke.append(_timed(cmd, work, env))
            shutil.rmtree(env["DATARAX_BENCH_CACHE"], ignore_errors=True)
    for profile, samples in dry:
        print(
            f"snakemake -n, profile {profile:8} all scenarios x all adapters: "
            f"median {statistics.median(samples):.2f} s  samples {[round(s, 2) for s in samples]}"
        )
    who = ",".join(args.adapters) or "all adapters"
    print(
        f"whole smoke workflow ({who}, --cores 2, cold data cache): "
        f"median {statistics.median(smoke):.1f} s  samples {[round(s, 1) for s in smoke]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
