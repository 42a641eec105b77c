"""Adapters and measures from outside the package: through the entry point groups of an installed
distribution (here a real `.dist-info` on the path, which importlib.metadata reads as an installed
one), and through DATARAX_BENCH_PLUGINS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ADAPTER = """
from datarax_bench.adapters import register
from datarax_bench.adapters.numpy_ref import NumpyReference


@register
class Plugged(NumpyReference):
    id = "plugged"
    display_name = "Plugged-in reference"
"""

MEASURE = """
from datarax_bench.measures import register
from datarax_bench.measures.throughput import measure_throughput

register("plugged_throughput", any_adapter=True)(measure_throughput)
"""


def _install(root: Path, entry_points: str) -> None:
    info = root / "plugged_bench-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugged-bench\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    (root / "plugged_adapter.py").write_text(ADAPTER)
    (root / "plugged_measure.py").write_text(MEASURE)


def _python(root: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": path, **env},
    )


def test_entry_points_add_an_adapter_and_a_measure(tmp_path):
    _install(
        tmp_path,
        "[datarax_bench.adapters]\nplugged = plugged_adapter\n\n"
        "[datarax_bench.measures]\nplugged = plugged_measure\n",
    )
    proc = _python(
        tmp_path,
        "import json; from datarax_bench import measures; from datarax_bench.adapters import "
        "all_adapters; print(json.dumps([[a.id for a in all_adapters()], "
        "sorted(measures.implemented())]))",
    )
    assert proc.returncode == 0, proc.stderr
    adapters, implemented = json.loads(proc.stdout)
    assert "plugged" in adapters and "numpy" in adapters
    assert "plugged_throughput" in implemented and "throughput" in implemented


def test_without_entry_points_nothing_is_added(tmp_path):
    (tmp_path / "plugged_adapter.py").write_text(ADAPTER)
    proc = _python(
        tmp_path,
        "from datarax_bench.adapters import all_adapters; print([a.id for a in all_adapters()])",
    )
    assert proc.returncode == 0, proc.stderr
    assert "plugged" not in proc.stdout
    named = _python(
        tmp_path,
        "from datarax_bench.adapters import all_adapters; print([a.id for a in all_adapters()])",
        DATARAX_BENCH_PLUGINS="plugged_adapter",
    )
    assert "'plugged'" in named.stdout, named.stderr


def test_a_broken_entry_point_is_one_line_naming_it(tmp_path):
    _install(tmp_path, "[datarax_bench.adapters]\nbroken = no_such_module_here\n")
    proc = subprocess.run(
        [sys.executable, "-m", "datarax_bench.cli", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])
            ),
        },
    )
    assert proc.returncode == 2
    assert "'broken'" in proc.stderr and "no_such_module_here" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
