"""The accelerator a profile measures on, held to: JAX is pinned to the profile's platform before
it is imported, so that a machine without it fails instead of measuring the CPU, and what a GPU
machine's stack really loaded (driver, each framework's CUDA, pinned host memory) is reported.

JAX falls back to the CPU with a warning when its CUDA or TPU backend cannot start (an old
driver, a second CUDA runtime, a missing plugin): with `JAX_PLATFORMS` naming the platform it
raises instead, and a cell whose JAX runs elsewhere than its profile says is a failure, never a
number.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

#: `JAX_PLATFORMS` for each profile backend (JAX calls NVIDIA's platform "cuda", its backend "gpu").
JAX_PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}
#: The CUDA plugins jax may load; the lock installs only the one of torch's CUDA major.
JAX_CUDA_PLUGINS = ("jax-cuda13-plugin", "jax-cuda12-plugin")


def pin_jax_platform(backend: str) -> None:
    """Before jax is imported: JAX may start only the profile's platform. A value the user set
    (e.g. `JAX_PLATFORMS=cuda,cpu` to debug) is left alone."""
    os.environ.setdefault("JAX_PLATFORMS", JAX_PLATFORMS[backend])


def backend_problem(backend: str, profile_name: str) -> str | None:
    """Why JAX in this process does not run on `backend`, in one line; None when it does."""
    import jax

    try:
        running = jax.default_backend()
    except Exception as exc:  # RuntimeError, or jax 0.10's AssertionError for an unknown platform
        first = (str(exc).strip().splitlines() or [""])[0][:300] or type(exc).__name__
        if backend == "gpu" and not any(_version(name) for name in JAX_CUDA_PLUGINS):
            first += " (no jax CUDA plugin is installed: the `gpu` extra)"
        return (
            f"JAX cannot start platform {os.environ.get('JAX_PLATFORMS', '?')!r} that profile "
            f"{profile_name} needs (backend {backend!r}): {first}"
        )
    if running != backend:
        return (
            f"JAX backend is {running!r} but profile {profile_name} expects {backend!r}; JAX "
            "fell back or the wrong jax build is installed"
        )
    return None


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version from `nvidia-smi`, None without one."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        proc = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.split()
    return lines[0] if proc.returncode == 0 and lines else None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def torch_cuda() -> dict[str, Any]:
    """What torch loaded: its CUDA build, whether it sees a GPU, and whether `pin_memory` really
    pins (torch turns it off with a warning when CUDA is unavailable, e.g. a driver too old for
    its CUDA major)."""
    try:
        import torch
    except ImportError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    available = bool(torch.cuda.is_available())
    pinned = False
    if available:
        try:
            pinned = bool(torch.empty(8).pin_memory().is_pinned())
        except RuntimeError:
            pinned = False
    return {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": available,
        "device": torch.cuda.get_device_name(0) if available else None,
        "pin_memory": pinned,
    }


def jax_cuda() -> dict[str, Any]:
    """What JAX loaded: its CUDA plugin(s) and, on a GPU, the platform version XLA reports."""
    plugins = {name: v for name in JAX_CUDA_PLUGINS if (v := _version(name))}
    out: dict[str, Any] = {"plugins": plugins, "platform_version": None}
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            devices = jax.devices()
            if devices and devices[0].platform == "gpu":
                out["platform_version"] = devices[0].client.platform_version
        except Exception:  # a platform that could not start: backend_problem says why
            pass
    return out


def gpu_stack() -> dict[str, Any]:
    """The GPU stack as loaded here (doctor's report; all None/False on a machine without one)."""
    return {"nvidia_driver": nvidia_driver(), "torch": torch_cuda(), "jax": jax_cuda()}
