"""The lock covers cloud machines too: `.[bench]`, `.[bench,gpu]` and `.[bench,tpu]` resolved
for Linux x86_64 from PyPI (torch's CUDA wheels, the CUDA jax plugin, libtpu) pull nothing that
constraints.txt does not pin. Resolve-only, with the same uv the task files' setup uses: no GPU,
no install; needs PyPI (metadata only, a few seconds per set)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from support import ROOT

# libtpu's wheels need glibc 2.31; TPU VMs and the GPU images SkyPilot uses are newer.
PLATFORM = "x86_64-manylinux_2_31"


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _pins(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            out[_norm(name)] = version
    return out


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.skipif(not shutil.which("uv"), reason="needs uv (the dev extra installs it)")
@pytest.mark.parametrize("extras", [["bench"], ["bench", "gpu"], ["bench", "tpu"]], ids="+".join)
def test_cloud_install_resolves_within_the_lock(extras, tmp_path):
    argv = ["uv", "pip", "compile", "--quiet", "--no-header", "--no-annotate"]
    argv += ["--python-version", "3.11", "--python-platform", PLATFORM]
    argv += ["-c", str(ROOT / "constraints.txt"), str(ROOT / "pyproject.toml")]
    for extra in extras:
        argv += ["--extra", extra]
    # uv ignores pip's config, so this machine's local wheel directories play no part.
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = _pins(proc.stdout)
    locked = _pins((ROOT / "constraints.txt").read_text())
    unlocked = {n: v for n, v in resolved.items() if locked.get(n) != v}
    assert not unlocked, f"not pinned in constraints.txt: {unlocked}"
    if "gpu" in extras:
        assert {"jax-cuda13-plugin", "jax-cuda13-pjrt"} <= set(resolved)
    # One CUDA stack per machine: torch's wheels are CUDA 13, so JAX's plugin must be too (two
    # majors side by side load two runtimes, and the older one decides what the driver allows).
    other_major = sorted(n for n in resolved if re.search(r"cuda12|-cu12$", n))
    assert not other_major, f"a second CUDA stack: {other_major}"
    if "tpu" in extras:
        assert "libtpu" in resolved
    assert "nvidia-cudnn-cu13" in resolved  # torch 2.13.0 from PyPI is a CUDA build
