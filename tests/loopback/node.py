"""A loopback "cloud node" for tests: an sshd on 127.0.0.1 with its own keys and home.

The node's HOME is a temporary directory (sshd's `SetEnv`), so that what a task writes under
`~` stays inside the test. `DATARAX_BENCH_PREINSTALLED_VENV` tells the task's setup that the
pinned stack is already installed (this interpreter's environment): the node has no network.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LOOPBACK_DIR = Path(__file__).resolve().parent
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def missing_tools() -> list[str]:
    """What the loopback needs and this machine lacks (apt: openssh-server, openssh-client, rsync)."""
    missing = [] if SSHD else ["sshd (apt-get install openssh-server)"]
    for tool, package in (
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("rsync", "rsync"),
    ):
        if not shutil.which(tool):
            missing.append(f"{tool} (apt-get install {package})")
    return missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LoopbackNode:
    root: Path
    port: int

    @property
    def home(self) -> Path:
        return self.root / "node-home"

    @property
    def pid_file(self) -> Path:
        return self.root / "sshd.pid"

    @property
    def description(self) -> Path:
        return self.root / "node.json"

    def start(self) -> None:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
        venv = Path(sys.executable).parent.parent
        path = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
        config = self.root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\n"
            f"HostKey {self.root / 'host_key'}\n"
            f"AuthorizedKeysFile {self.root / 'user_key.pub'}\n"
            f"PidFile {self.pid_file}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"SetEnv HOME={self.home} PATH={path} DATARAX_BENCH_PREINSTALLED_VENV={venv} "
            f"DATARAX_BENCH_CACHE={os.environ.get('DATARAX_BENCH_CACHE', self.root / 'cache')} "
            "PYTHONDONTWRITEBYTECODE=1\n"
        )
        subprocess.run(
            [SSHD, "-f", str(config), "-E", str(self.root / "sshd.log")], check=True, timeout=30
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"loopback sshd did not listen on port {self.port}")

    def stop(self) -> None:
        """Kill the sshd (by its PidFile), every session and every job on it: the node dies."""
        for job_pid in (self.home / ".sky-loopback" / "jobs").glob("*.pid"):
            try:
                os.killpg(int(job_pid.read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError, PermissionError):
                pass
        if not self.pid_file.exists():
            return
        pid = int(self.pid_file.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)


def make_node(root: Path) -> LoopbackNode:
    root.mkdir(parents=True, exist_ok=True)
    for key in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True
        )
    node = LoopbackNode(root, _free_port())
    node.home.mkdir()
    node.description.write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "port": node.port,
                "user": pwd.getpwuid(os.getuid()).pw_name,
                "identity_file": str(root / "user_key"),
                "home": str(node.home),
                "pid_file": str(node.pid_file),
            }
        )
    )
    node.start()
    return node


def loopback_env(home: Path, node: LoopbackNode, base: dict | None = None) -> dict[str, str]:
    """An environment whose `sky` is the loopback and whose HOME is a temporary directory."""
    env = dict(os.environ if base is None else base)
    env["HOME"] = str(home)
    env["PATH"] = f"{LOOPBACK_DIR}:{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["LOOPBACK_SKY_NODE"] = str(node.description)
    return env


def stop_skylets(home: Path) -> None:
    """Stop the loopback's per-cluster autostop processes (they also exit with their cluster)."""
    for state in (home / ".sky" / "loopback" / "clusters").glob("*.json"):
        try:
            os.kill(json.loads(state.read_text())["skylet_pid"], signal.SIGKILL)
        except (KeyError, ValueError, ProcessLookupError, json.JSONDecodeError):
            pass


def stop_managed_jobs(home: Path) -> None:
    """Kill every managed job's controller and its attempt's process group (the job, its
    bucket uploader), by the pids the loopback recorded."""
    for record in (home / ".sky" / "loopback" / "managed").glob("*.json"):
        try:
            job = json.loads(record.read_text())
        except json.JSONDecodeError:
            continue
        for pid, kill in (
            (job.get("controller_pid"), os.kill),
            (job.get("attempt_pid"), os.killpg),
        ):
            if pid:
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def set_faults(home: Path, **faults) -> None:
    """Faults the loopback `sky` applies (see its docstring): down_noop, setup_hangs, ..."""
    path = home / ".sky" / "loopback" / "faults.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(faults))


def calls(home: Path) -> list[dict]:
    log = home / ".sky" / "loopback" / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
