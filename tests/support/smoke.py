"""One real `datarax-bench run --output-dir` of the smoke profile for the modules that read
smoke results (aggregate, W&B export, compare, results, plots), instead of one run each.

Each such module names the cells it reads in a module constant `SMOKE_RUN` (adapter ->
scenarios); the `smoke_results` session fixture (conftest.py) measures the union over the
modules of the session in one `run --output-dir` (`run_smoke_matrix`), so that running one file
measures only its own cells. `smoke_view` gives a module the directory its own `run
--output-dir` would have written: the cells of its scenarios and adapter, in the run's order,
under raw/, with the run index (manifest.json, summary.json) written by the function the run
uses. A view is a copy: tests that change files change only their own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

from datarax_bench.results import cell_path, load_result, write_run_index
from datarax_bench.run.runner import cell_id
from datarax_bench.workload.catalog import load_catalog, load_profile
from support import CLI


def union_of(modules: Iterable[ModuleType]) -> dict[str, tuple[str, ...]]:
    """adapter -> scenarios: every cell the modules' `SMOKE_RUN` names, once."""
    union: dict[str, dict[str, None]] = {}
    for module in modules:
        for adapter, scenarios in getattr(module, "SMOKE_RUN", {}).items():
            union.setdefault(adapter, {}).update(dict.fromkeys(scenarios))
    return {adapter: tuple(scenarios) for adapter, scenarios in union.items()}


def _cells(matrix: Mapping[str, Sequence[str]]) -> list[tuple[str, str, str]]:
    """(scenario, variant, adapter) in `run --output-dir`'s order: scenarios as given, each
    variant of the profile, then the adapters as given (the smoke profile's one style)."""
    profile, catalog = load_profile("smoke"), load_catalog()
    scenarios = list(dict.fromkeys(s for names in matrix.values() for s in names))
    return [
        (scenario, variant, adapter)
        for scenario, variant in profile.cells(catalog, scenarios)
        for adapter in matrix
        if scenario in matrix[adapter]
    ]


def run_smoke_matrix(out: Path, matrix: Mapping[str, Sequence[str]]) -> Path:
    """The cells of `matrix` measured by one `datarax-bench run --profile smoke --output-dir`."""
    scenarios = list(dict.fromkeys(s for names in matrix.values() for s in names))
    cells = [cell_id(s, v, a) for s, v, a in _cells(matrix)]
    cmd = [CLI, "run", "--profile", "smoke", "--scenarios", *scenarios]
    cmd += ["--adapters", *matrix, "--cells", *cells, "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


def smoke_view(source: Path, dest: Path, scenarios: Sequence[str], adapter: str = "numpy") -> Path:
    """`dest` as `run --profile smoke --scenarios SCENARIOS --adapters ADAPTER --output-dir
    dest` writes it, from the shared run `source` (a copy; more scenarios or adapters are added
    by calling it again, as a second run into the same directory would)."""
    profile = load_profile("smoke")
    results = []
    for scenario, variant, _ in _cells({adapter: scenarios}):
        src = cell_path(source, scenario, variant, adapter)
        assert src.exists(), f"{src}: not measured; name {scenario} in the module's SMOKE_RUN"
        target = cell_path(dest, scenario, variant, adapter)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        results.append(load_result(target))
    started = json.loads((source / "manifest.json").read_text())["started"]
    write_run_index(profile, dest, results, started)
    return dest
