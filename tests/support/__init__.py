"""What the tests share: where the project's files are, and helpers by subsystem.

`tests/` is on `sys.path` (pytest puts the root conftest's folder there), so a test module
imports `from support import ROOT, BIN` and `from support.smoke import smoke_view`. Tests live
in folders that mirror the package (`tests/workload/`, `tests/adapters/`, ... `tests/workflow/`),
the root modules' tests at `tests/` itself; `tests/loopback/` is the stand-in for SkyPilot that
the cloud tests run against, `tests/plugins/` the test adapters loaded by path.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent  # the checkout: Snakefile, config/, workflow/, src/
BIN = Path(sys.executable).parent  # this interpreter's environment: datarax-bench, snakemake, sky
# The installed console script of this interpreter's environment, as a user types it.
CLI = (
    str(BIN / "datarax-bench")
    if (BIN / "datarax-bench").exists()
    else shutil.which("datarax-bench")
)
PLUGINS = TESTS / "plugins"  # test adapters and measures (DATARAX_BENCH_PLUGINS)
LOOPBACK = TESTS / "loopback"  # the stand-in for SkyPilot: its `sky`, its managed jobs, its bucket


def run_cli(*args: str, timeout: float = 300, env=None, cwd=None) -> subprocess.CompletedProcess:
    """`datarax-bench ARGS` in a process of its own, its output captured as text."""
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )
