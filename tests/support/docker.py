"""A Docker daemon of the tests' own, a base image from Debian's archive and a local wheelhouse.

No image registry is reachable from the test machines, so the base image is built with
debootstrap and imported; the image's Python packages come from a wheelhouse served on
127.0.0.1 (built by this environment's pip, from its own index and cache) instead of PyPI.
The daemon runs without a bridge or firewall rules (`--network host` only) and is stopped by
its pid.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from support import ROOT

#: The release whose python3.11 the Dockerfiles install when the base image has no Python.
SUITE = "bookworm"


def unavailable_reason() -> str | None:
    """Why no daemon can run here, or None."""
    if os.geteuid() != 0:
        return "dockerd and debootstrap need root"
    for tool in ("dockerd", "debootstrap"):
        if shutil.which(tool) is None:
            return f"no {tool} (apt-get install docker.io debootstrap, as the README says)"
    return None


def daemon_cli() -> str:
    """The CLI of the daemon's own package (docker.io: /usr/sbin/dockerd, /usr/bin/docker): it
    drives that daemon's built-in BuildKit, where a newer CLI elsewhere on PATH wants buildx."""
    dockerd = Path(shutil.which("dockerd"))
    for candidate in (dockerd.with_name("docker"), dockerd.parent.parent / "bin" / "docker"):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("docker") or "docker"


class Daemon:
    """`dockerd` with its data, socket and state under `workdir`; `stop()` ends it by pid."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.socket = self.workdir / "docker.sock"
        self.cli = daemon_cli()
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_BUILDKIT": "1",
            "DOCKER_CONFIG": str(self.workdir / "cli-config"),
        }
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        log = open(self.workdir / "dockerd.log", "w")  # noqa: SIM115 - the daemon's for its life
        self.proc = subprocess.Popen(
            [
                "dockerd",
                "--host",
                f"unix://{self.socket}",
                "--data-root",
                str(self.workdir / "data"),
                "--exec-root",
                str(self.workdir / "exec"),
                "--pidfile",
                str(self.workdir / "dockerd.pid"),
                "--bridge=none",
                "--iptables=false",
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        try:
            self._wait_until_up(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.docker("info", check=False, timeout=10).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / "dockerd.log").read_text()[-2000:]
                raise RuntimeError(f"dockerd did not come up:\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM (dockerd stops its containers and its containerd), SIGKILL after 30 s."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # dockerd leaves its default network namespace mounted under the exec root.
        for mount_point in reversed(self._mounts()):
            subprocess.run(["umount", "--lazy", mount_point], check=False, capture_output=True)

    def _mounts(self) -> list[str]:
        root = str(self.workdir.resolve()) + "/"
        with open("/proc/mounts") as fh:
            points = [line.split()[1] for line in fh]
        return [p for p in points if p.startswith(root)]

    def docker(self, *args: str, check: bool = True, timeout: float = 600, **kwargs):
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.run(
            [self.cli, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args[:2])} failed ({proc.returncode}):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc


def import_debian_base(daemon: Daemon, workdir: Path, tag: str) -> str:
    """`debootstrap --variant=minbase` of Debian's archive, imported as image `tag`."""
    rootfs = Path(workdir) / "rootfs"
    subprocess.run(
        ["debootstrap", "--variant=minbase", SUITE, str(rootfs), "http://deb.debian.org/debian"],
        check=True,
        capture_output=True,
        timeout=900,
    )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    try:
        daemon.docker("import", "-", tag, stdin=tar.stdout)
    finally:
        tar.stdout.close()
        tar.wait(timeout=60)
    shutil.rmtree(rootfs)
    return tag


@functools.cache
def image_requirements(extras: tuple[str, ...]) -> list[str]:
    """What the Dockerfiles install, read by their own script."""
    script = ROOT / "benchmarks" / "docker" / "requirements.py"
    out = subprocess.run(
        [sys.executable, str(script), str(ROOT / "pyproject.toml"), *extras],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def build_wheelhouse(directory: Path, extras: tuple[str, ...]) -> Path:
    """Wheels of every pinned package the image installs, from this environment's pip."""
    directory = Path(directory)
    requirements = directory.parent / "image-requirements.txt"
    requirements.write_text("\n".join(image_requirements(extras)) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(directory)]
        + ["-c", str(ROOT / "constraints.txt"), "-r", str(requirements)],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    return directory


@contextlib.contextmanager
def served(directory: Path) -> Iterator[str]:
    """`directory` over HTTP on 127.0.0.1 (a find-links page) while the block runs."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


def build_image(
    daemon: Daemon, dockerfile: Path, tag: str, context: Path, *options: str, **build_args: str
) -> subprocess.CompletedProcess:
    argv = ["build", "--network", "host", "--progress", "plain", "-f", str(dockerfile), *options]
    for name, value in build_args.items():
        argv += ["--build-arg", f"{name}={value}"]
    return daemon.docker(*argv, "-t", tag, str(context), timeout=1800)
