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
import socket
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


# --- SkyPilot's node setup on Vast, where the image is the machine ---------------------------
#
# `image_id: docker:X` on Vast makes X the instance itself (sky/clouds/vast.py): Vast's SSH
# launch mode replaces the image's entrypoint and starts its ssh server, SkyPilot's onstart
# puts its public key in root's authorized_keys (sky/provision/vast/utils.py), and SkyPilot then
# logs in as root (`auth.ssh_user` of templates/vast-ray.yml.j2), rsyncs its file mounts and
# runs the template's `setup_commands`. `node_setup` below does those last two steps with
# SkyPilot's own runner and functions, against a container of the image; it runs as a script
# (`python -m support.docker node-setup ...`, tests/ on the path) so that `import sky` uses a temporary HOME.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_setup(cluster_yaml: str, port: int, log_path: str) -> dict:
    """SkyPilot 0.14.1's provisioning steps 1-2 ('initializing', 'dependencies' in
    sky/provision/provisioner.py) on 127.0.0.1:`port`: `_internal_file_mounts` of the cluster
    YAML's file mounts, then each of its `setup_commands` through `run_setup` with the
    arguments `instance_setup.setup_runtime_on_cluster` passes."""
    import yaml
    from sky.provision import instance_setup
    from sky.utils import command_runner

    config = yaml.safe_load(Path(cluster_yaml).read_text())
    auth = config["auth"]
    runner = command_runner.SSHCommandRunner(
        ("127.0.0.1", port), ssh_user=auth["ssh_user"], ssh_private_key=auth["ssh_private_key"]
    )
    # Cloud credentials SkyPilot would copy only where they exist on this machine.
    mounts = {
        dst: src
        for dst, src in config["file_mounts"].items()
        if os.path.exists(os.path.expanduser(src))
    }
    result: dict = {"file_mounts": sorted(mounts), "setup": []}
    try:
        instance_setup._internal_file_mounts(mounts, runner, log_path)
        for cmd in config["setup_commands"]:
            started = time.monotonic()
            rc, stdout, stderr = runner.run_setup(
                cmd, stream_logs=False, log_path=log_path, require_outputs=True, source_bashrc=True
            )
            result["setup"].append(
                {"returncode": rc, "seconds": round(time.monotonic() - started, 1),
                 "stdout": stdout[-4000:], "stderr": stderr[-4000:]}
            )  # fmt: skip
            if rc:
                break
    finally:
        runner.close_cached_connection()
    return result


if __name__ == "__main__":
    import json

    if sys.argv[1:2] != ["node-setup"] or len(sys.argv) != 5:
        sys.exit("usage: python -m support.docker node-setup CLUSTER_YAML PORT LOG_PATH")
    print(json.dumps(node_setup(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
