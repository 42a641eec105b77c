"""The commands the README promises, typed as a user types them: no --cores, no profile flag.

Snakemake finds profiles/default next to the root Snakefile; it sets `cores: all`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import BIN, ROOT

from datarax_bench.adapters import all_adapters
from datarax_bench.workload.catalog import load_profile

#: The earlier run the README's `baseline=` command compares with (conftest's smoke_results).
SMOKE_RUN = {"numpy": ("TAB-1",)}


def checkout(dest: Path) -> Path:
    dest.mkdir(parents=True)
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    for folder in ("config", "workflow", "profiles", "benchmarks"):
        shutil.copytree(ROOT / folder, dest / folder)
    return dest


def bare_snakemake(workdir: Path, *args: str, timeout: float = 600):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DATARAX_BENCH_ROOT", None)
    return subprocess.run(
        ["snakemake", *args], cwd=workdir, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_bare_cloud_plan_uses_the_workflow_profile(tmp_path):
    workdir = checkout(tmp_path / "checkout")
    proc = bare_snakemake(workdir, "-n", "--config", "profile=gpu_a100", "infra=vast")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Using workflow specific profile profiles/default" in proc.stdout + proc.stderr
    assert "measure_remote" in proc.stdout and "teardown" in proc.stdout


@pytest.mark.slow
def test_bare_snakemake_runs_the_smoke_profile(tmp_path):
    workdir = checkout(tmp_path / "checkout")
    proc = bare_snakemake(
        workdir, "--config", "profile=smoke", "scenarios=[TAB-1]", "adapters=[numpy]"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cores have to be specified" not in proc.stderr
    assert (workdir / "results" / "smoke" / "local" / "summary.md").exists()
    # What it measures and how long that takes before the cell, what is left after it.
    out = proc.stdout + proc.stderr
    plan = out.index("plan: profile smoke: 1 cell (TAB-1/small x numpy x plain)")
    assert plan < out.index("estimate: about ") < out.index("progress: 1 of 1 cell, 1 of 1 ")


@pytest.mark.slow
def test_bare_plan_is_the_first_look_profile_and_announces_nothing(tmp_path):
    workdir = checkout(tmp_path / "checkout")
    proc = bare_snakemake(workdir, "-n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    # CV-1, NLP-1, TAB-1 x the profile's adapters x 2 styles, each cell in two processes in
    # rounds.
    adapters = load_profile("first_look").adapters
    assert set(adapters) < {a.id for a in all_adapters()}
    cells = 3 * len(adapters) * 2
    assert re.search(rf"^measure\s+{cells}$", out, re.MULTILINE)
    assert re.search(rf"^measure_process\s+{cells}$", out, re.MULTILINE)
    assert "results/first_look/local/summary.md" in out
    assert "estimate:" not in out and not (workdir / "logs").exists()


def _readme_workflow_commands() -> list[str]:
    """The `snakemake` lines of the README's workflow block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command.startswith("snakemake ") or command == "snakemake":
                commands.append(command)
    return commands


def test_the_readme_lists_its_workflow_commands():
    commands = _readme_workflow_commands()
    assert "snakemake" in commands and len(commands) >= 10, commands


@pytest.mark.slow
@pytest.mark.parametrize("command", _readme_workflow_commands())
def test_every_readme_workflow_command_plans_as_written(command, tmp_path, smoke_results):
    # Typed as written on a fresh checkout, planned with -n (a real run is measured elsewhere:
    # the bare run above, the report in test_report_browser); offline and instant.
    workdir = checkout(tmp_path / "checkout")
    if "baseline=" in command:  # an earlier run's results directory (the shared smoke run's)
        shutil.copytree(smoke_results, workdir / "results-before" / "first_look" / "local")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DATARAX_BENCH_ROOT", None)
    if command.startswith("snakemake --report"):
        pytest.skip("--report renders a finished run: tests/test_report_browser.py runs it")
    # --dag only prints the graph: as written (with -n, Snakemake's log lines would reach `dot`).
    argv = command if "--dag" in command else command.replace("snakemake", "snakemake -n", 1)
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {argv}"], cwd=workdir, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"{command}: {proc.stderr[-2000:]}"
