"""The task files' setup, real install branch: on a fresh HOME (as a new machine has), in a copy
of the checkout (as SkyPilot syncs it), with a python3 that has no pip (as on PEP 668 images),
it fetches the pinned uv, builds the venv and installs `.[bench]` from PyPI under the lock.
Network to PyPI is needed (about 4 GB: torch's CUDA wheels), disk about 8 GB while it runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from support import ROOT

CPU_TASK = ROOT / "benchmarks" / "sky" / "cpu-benchmark.yaml"
NETWORK_ENV = {
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    *(p for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY") for p in (name, name.lower())),
}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_norm(name)] = version
    return pins


def synced_checkout(dest: Path) -> Path:
    """The files SkyPilot's workdir sync would send (tracked and not ignored)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    dest.mkdir(parents=True)
    subprocess.run(
        ["rsync", "-a", "--from0", "--files-from=-", f"{ROOT}/", f"{dest}/"],
        input=files,
        check=True,
    )
    return dest


def node_env(home: Path, tmp: Path, task: dict, **extra: str) -> dict[str, str]:
    """A new machine's environment: its own HOME, a python3 without pip, the task's envs."""
    bare = tmp / "bare-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    assert subprocess.run([str(bare / "bin" / "python3"), "-m", "pip", "--version"]).returncode
    env = {
        "HOME": str(home),
        "PATH": f"{bare / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        # Like the project's machines; the setup compiles bytecode itself.
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # This machine's own network settings (a TLS-inspecting proxy's CA), not the image's.
    env.update({k: v for k, v in os.environ.items() if k in NETWORK_ENV})
    env.update({k: str(v) for k, v in task["envs"].items()})
    env.update(extra)
    return env


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.skipif(not shutil.which("rsync"), reason="needs rsync (apt-get install rsync)")
def test_real_setup_installs_the_locked_stack_on_a_fresh_machine(tmp_path):
    task = yaml.safe_load(CPU_TASK.read_text())
    workdir = synced_checkout(tmp_path / "sky_workdir")
    home = tmp_path / "home"
    home.mkdir()
    env = node_env(home, tmp_path, task)
    try:
        started = time.monotonic()
        proc = subprocess.run(
            ["bash", "-c", task["setup"]],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        elapsed = time.monotonic() - started
        print(f"real setup (cold uv cache): {elapsed:.0f} s")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        assert "setup: done" in proc.stdout
        uv = home / ".datarax-bench" / "bin" / "uv"
        version = subprocess.run([str(uv), "--version"], capture_output=True, text=True).stdout
        assert version.split()[:2] == ["uv", "0.13.8"]
        assert not (home / ".local" / "bin" / "uv").exists()  # SkyPilot's place stays its own
        venv_python = home / "datarax-bench-venv" / "bin" / "python"
        freeze = subprocess.run(
            [str(uv), "pip", "freeze", "--python", str(venv_python)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        installed = dict(
            (_norm(line.split("==")[0]), line.split("==")[1])
            for line in freeze.splitlines()
            if "==" in line
        )
        lock = _lock()
        assert {"torch", "jax", "wandb", "datarax", "tensorflow"} <= set(installed)
        assert {n: v for n, v in installed.items() if lock.get(n) != v} == {}
        # The environment file the run step sources, and the package from the synced sources.
        check = "source ~/.datarax-bench-env && python -c 'import datarax_bench, wandb; print(datarax_bench.__file__)'"
        out = subprocess.run(
            ["bash", "-c", check], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == str(workdir / "src" / "datarax_bench" / "__init__.py")
    finally:
        shutil.rmtree(home, ignore_errors=True)  # ~8 GB: not left for pytest's retained tmp dirs


class _Stalling(BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(60)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_stalled_install_fails_the_setup_at_its_time_limit(tmp_path):
    task = yaml.safe_load(CPU_TASK.read_text())
    home = tmp_path / "home"
    (home / ".datarax-bench" / "bin").mkdir(parents=True)
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    version = subprocess.run([uv, "--version"], capture_output=True, text=True).stdout
    if version.split()[:2] != ["uv", "0.13.8"]:
        pytest.skip(f"needs the dev extra's uv 0.13.8, found {version.strip() or 'none'}")
    # The pinned uv is already in place; the index then never answers.
    shutil.copy(uv, home / ".datarax-bench" / "bin" / "uv")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = node_env(
            home,
            tmp_path,
            task,
            DATARAX_BENCH_SETUP_TIMEOUT_MIN="0.1",
            UV_DEFAULT_INDEX=f"http://127.0.0.1:{server.server_port}/simple",
            UV_CACHE_DIR=str(tmp_path / "uv-cache"),
        )
        started = time.monotonic()
        proc = subprocess.run(
            ["bash", "-c", task["setup"]],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 124, proc.stderr[-3000:]
    assert "did not finish within 0.1 min (DATARAX_BENCH_SETUP_TIMEOUT_MIN)" in proc.stderr
    assert 6 <= elapsed < 60, elapsed
    assert not (home / ".datarax-bench-env").exists()  # nothing claims a usable environment


@pytest.mark.parametrize("value", ["0", "0.0", "soon", "-5", "1e3"])
def test_a_bad_time_limit_is_refused(tmp_path, value):
    task = yaml.safe_load(CPU_TASK.read_text())
    env = node_env(tmp_path / "home", tmp_path, task, DATARAX_BENCH_SETUP_TIMEOUT_MIN=value)
    proc = subprocess.run(
        ["bash", "-c", task["setup"]], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "must be a positive number of minutes" in proc.stderr
