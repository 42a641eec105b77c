"""`datarax-bench run` of one cell with the counting loaders (tests/plugins/counting_loaders.py)
loaded, as a user would type it: shared by the warm-repetition and worker-process tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import PLUGINS


def run_counted(root: Path, tmp_path: Path, profile: str, scenario: str, adapter: str, **env):
    """(the finished command, its result file, how many loaders the cell opened)."""
    opens = tmp_path / f"{profile}-{scenario}-{adapter}.opens"
    environ = {
        **os.environ,
        "DATARAX_BENCH_ROOT": str(root),
        "DATARAX_BENCH_PLUGINS": "counting_loaders",
        "DATARAX_TEST_OPENS": str(opens),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])),
        **env,
    }
    out = tmp_path / f"{profile}-{scenario}-{adapter}.json"
    cmd = [sys.executable, "-m", "datarax_bench.cli", "run", "--profile", profile]
    cmd += ["--scenario", scenario, "--adapter", adapter, "--output", str(out)]
    proc = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=300)
    opened = len(opens.read_text().splitlines()) if opens.exists() else 0
    return proc, out, opened
