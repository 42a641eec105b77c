"""What the tests share: where the project's files are, and helpers by subsystem.

`tests/` is on `sys.path` (pytest puts the root conftest's folder there), so a test module
imports `from support import ROOT, BIN` and `from support.smoke import smoke_view`. Tests live
in folders that mirror the package (`tests/workload/`, `tests/adapters/`, ... `tests/workflow/`),
the root modules' tests at `tests/` itself; `tests/loopback/` is the stand-in for SkyPilot that
the cloud tests run against, `tests/plugins/` the test adapters loaded by path.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent  # the checkout: Snakefile, config/, workflow/, src/
BIN = Path(sys.executable).parent  # this interpreter's environment: datarax-bench, snakemake, sky
CLI = str(BIN / "datarax-bench")  # the installed console script, as a user types it
PLUGINS = TESTS / "plugins"  # test adapters and measures (DATARAX_BENCH_PLUGINS)
LOOPBACK = TESTS / "loopback"  # the stand-in for SkyPilot: its `sky`, its managed jobs, its bucket
