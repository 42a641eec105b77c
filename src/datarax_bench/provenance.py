"""Where and with what a result was measured. Never includes a secret."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from functools import cache
from importlib import metadata
from typing import Any

import psutil

from datarax_bench import paths
from datarax_bench.workload import randomness

#: Name the commit, and whether the tree had uncommitted changes ("true"/"false"), where a tree
#: has no `.git`: an image built from an export, or a managed job's workdir (SkyPilot's storage
#: uploads leave `.git` out). A cluster reads its own: `sky launch`/`sky exec` sync `.git`.
GIT_COMMIT_ENV = "DATARAX_BENCH_GIT_COMMIT"
GIT_DIRTY_ENV = "DATARAX_BENCH_GIT_DIRTY"
_ENV_RECORDED = re.compile(
    r"^(JAX_|XLA_|TF_|CUDA_|NVIDIA_|TPU_|LIBTPU_|NCCL_|OMP_|MKL_|OPENBLAS_|PYTORCH_|TORCH_|"
    r"GRAIN_|DATARAX_|PYTHONHASHSEED$|PYTHONDONTWRITEBYTECODE$|WANDB_MODE$|SKYPILOT_TASK_ID$)"
)
_ENV_SECRET = re.compile(
    r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|AUTH|PRIVATE|COOKIE|SESSION|CERT", re.I
)
BASE_DISTRIBUTIONS = ("numpy", "jax", "jaxlib", "datarax")
#: The variables that decide how many threads the numerical libraries under the loaders start:
#: OpenMP (which SkyPilot sets to 1 for every job), MKL, OpenBLAS and TensorFlow's two pools.
#: XLA's own thread flags live in XLA_FLAGS, which `environment` records whole.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
)


def recorded_environment(environ=None) -> dict[str, str]:
    """Variables that change what is measured, minus anything whose name suggests a secret."""
    environ = os.environ if environ is None else environ
    return {
        k: v
        for k, v in sorted(environ.items())
        if _ENV_RECORDED.match(k) and not _ENV_SECRET.search(k)
    }


def thread_environment(environ=None) -> dict[str, str | None]:
    """Every thread variable's value, None where it is unset (the library then picks, usually
    one thread per core): recorded whole, so that an unset variable is seen, not omitted."""
    environ = os.environ if environ is None else environ
    return {name: environ.get(name) for name in THREAD_VARIABLES}


@cache
def git_info() -> tuple[str | None, bool | None]:
    root = paths.project_root()
    if (root / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
            return commit, bool(dirty)
        except (OSError, subprocess.SubprocessError):
            pass
    dirty = {"true": True, "false": False}.get(os.environ.get(GIT_DIRTY_ENV, "").lower())
    return os.environ.get(GIT_COMMIT_ENV) or None, dirty


def commit_envs() -> dict[str, str]:
    """This checkout's commit and dirty flag as the variables `git_info` reads where a tree has
    no `.git`; empty where they are unknown here too."""
    commit, dirty = git_info()
    envs = {GIT_COMMIT_ENV: commit} if commit else {}
    if commit and dirty is not None:
        envs[GIT_DIRTY_ENV] = "true" if dirty else "false"
    return envs


def package_versions(names) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@cache
def cpu_info() -> dict[str, Any]:
    model = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable,
    }


def jax_info() -> dict[str, Any] | None:
    """JAX backend and devices, only if this process has already imported jax."""
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    try:
        devices = jax.devices()
    except Exception:  # its platform could not start (accelerator.backend_problem says why)
        return None
    return {
        "backend": jax.default_backend(),
        "device_count": len(devices),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind if devices else None,
    }


def gpu_name(jax_details: dict[str, Any] | None) -> str | None:
    if jax_details and jax_details["backend"] == "gpu":
        return jax_details["device_kind"]
    return None


def hardware(provenance: dict[str, Any]) -> dict[str, Any]:
    """From a result's provenance, what must match for two measurements to be comparable, or
    for a tuning choice to carry over: CPU, usable cores, RAM, GPU, JAX backend and device."""
    cpu, jax = provenance.get("cpu") or {}, provenance.get("jax") or {}
    gpu = provenance.get("gpu")
    return {
        "CPU model": cpu.get("model"),
        "usable cores": cpu.get("usable_cores"),
        # Total RAM, to the GiB: the same instance type reports a few MiB more or less.
        "RAM GiB": round(provenance.get("memory_bytes", 0) / 2**30),
        "GPU": gpu,
        "GPU count": jax.get("device_count") if gpu else 0,
        "JAX backend": jax.get("backend"),
        "JAX device kind": jax.get("device_kind"),
    }


def hardware_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two results' machines (`hardware` of each provenance), readably."""
    ha, hb = hardware(a), hardware(b)
    return [f"{k}: {ha.get(k)!r} vs {hb.get(k)!r}" for k in ha if ha.get(k) != hb.get(k)]


def this_hardware() -> dict[str, Any]:
    """`hardware` of this process's machine, without collecting the rest of the provenance."""
    jax_details = jax_info()
    return hardware(
        {
            "cpu": cpu_info(),
            "memory_bytes": psutil.virtual_memory().total,
            "jax": jax_details,
            "gpu": gpu_name(jax_details),
        }
    )


def collect(distributions=()) -> dict[str, Any]:
    commit, dirty = git_info()
    jax_details = jax_info()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "packages": package_versions(dict.fromkeys([*BASE_DISTRIBUTIONS, *distributions])),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": cpu_info(),
        "memory_bytes": psutil.virtual_memory().total,
        "jax": jax_details,
        "gpu": gpu_name(jax_details),
        "environment": recorded_environment(),
        "threads": thread_environment(),
        "randomness": randomness.SCHEME,
    }
