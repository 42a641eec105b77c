"""The Snakemake workflow run as users run it, in a temporary copy of Snakefile + config/ +
workflow/ (the package comes from the installed checkout; DATARAX_BENCH_ROOT points at the copy)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from support import BIN, ROOT

SMOKE = ["profile=smoke", "scenarios=[CV-1,PC-1]", "adapters=[numpy]"]


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True)
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    shutil.copytree(ROOT / "config", dest / "config")
    shutil.copytree(ROOT / "workflow", dest / "workflow")
    return dest


def snakemake(workdir: Path, *args: str, config=SMOKE, check=True, **kwargs):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DATARAX_BENCH_ROOT", None)
    cmd = [str(BIN / "snakemake"), *args]
    if config:
        cmd += ["--config", *config]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, **kwargs)
    output = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{output[-4000:]}")
    proc.output = output
    return proc


def planned(proc, rule: str) -> int:
    """Jobs of `rule` in a dry run's job stats (0 when nothing is to be done)."""
    match = re.search(rf"^{rule}\s+(\d+)\s*$", proc.output, re.MULTILINE)
    return int(match.group(1)) if match else 0
