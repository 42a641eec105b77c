"""The CPU image, built and run for real on a daemon of the tests' own (tests/support/docker.py).

One build per test session (about 4 minutes here, most of it pip installing the stack); the
tests run last (tests/conftest.py), so a failure here never hides the rest of the suite's.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import ROOT, sky_offline
from support import docker as docker_support

from datarax_bench.adapters import all_adapters

pytestmark = [pytest.mark.docker, pytest.mark.slow]

_REASON = docker_support.unavailable_reason()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=f"no Docker daemon can run here: {_REASON}"))

DOCKERFILE = ROOT / "benchmarks" / "docker" / "Dockerfile.cpu"
IMAGE = "datarax-bench:cpu-test"
#: Every framework of the stack on one small scenario: five cells in about half a minute.
SCENARIO = "TAB-1"
#: A user that is neither root nor the image's own (uid 1000), as `--user "$(id -u):$(id -g)"`.
INVOKER = 4321


def _commit() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    work = tmp_path_factory.mktemp("docker")
    daemon = docker_support.Daemon(work)
    commit = _commit()  # once: other work may commit while the image builds
    # The wheelhouse (this environment's pip) is built while debootstrap downloads Debian's
    # archive: neither needs the other, and each mostly waits on its own disk or network.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        wheelhouse = pool.submit(docker_support.build_wheelhouse, work / "wheels", ("bench",))
        daemon.start()
        base = docker_support.import_debian_base(daemon, work, "local/debian-minbase")
        wheels = wheelhouse.result()
        with docker_support.served(wheels) as wheels_url:
            built = docker_support.build_image(
                daemon,
                DOCKERFILE,
                IMAGE,
                ROOT,
                BASE_IMAGE=base,
                WHEELS_URL=wheels_url,
                GIT_COMMIT=commit,
            )
            (work / "build.log").write_text(built.stdout + built.stderr)
            yield {"daemon": daemon, "base": base, "wheels_url": wheels_url, "commit": commit}
    finally:
        pool.shutdown(wait=True)  # a failed start still lets a running pip finish first
        daemon.stop()
        # Gigabytes of image layers and wheels; the daemon's and the build's logs stay.
        for name in ("data", "exec", "wheels", "rootfs"):
            shutil.rmtree(work / name, ignore_errors=True)


def _results_dir(path: Path) -> Path:
    path.mkdir()
    os.chown(path, INVOKER, INVOKER)
    return path


def _cells(results: Path) -> dict[str, dict]:
    return {
        str(p.relative_to(results / "raw")): json.loads(p.read_text())
        for p in sorted((results / "raw").rglob("*.json"))
    }


def _digests(result: dict) -> list:
    return [r.get("first_batch_sha256") for r in result.get("repetitions") or []]


def test_default_command_measures_and_exports_like_a_local_run(image, tmp_path, cli_path):
    mounted = _results_dir(tmp_path / "container")
    proc = image["daemon"].docker(
        "run", "--rm", "--network", "host", "--user", f"{INVOKER}:{INVOKER}",
        "-e", "DATARAX_BENCH_PROFILE=smoke", "-e", f"DATARAX_BENCH_SCENARIOS={SCENARIO}",
        "-v", f"{mounted}:/app/results", IMAGE,
        check=False, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    inside = mounted / "smoke"

    local = tmp_path / "local"
    here = subprocess.run(
        [
            cli_path,
            "run",
            "--profile",
            "smoke",
            "--scenarios",
            SCENARIO,
            "--output-dir",
            str(local),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert here.returncode == 0, here.stderr[-3000:]

    theirs, ours = _cells(inside), _cells(local)
    assert sorted(theirs) == sorted(ours) and len(ours) == len(all_adapters())
    for cell, result in ours.items():
        assert theirs[cell]["status"] == result["status"] == "ok", cell
        assert theirs[cell]["workload"]["data_digest"] == result["workload"]["data_digest"]
        assert _digests(theirs[cell]) == _digests(result), cell
        assert None not in _digests(result)
        provenance = theirs[cell]["provenance"]
        # The image has no .git: the commit is the build argument, its cleanliness unknown.
        assert provenance["git_commit"] == image["commit"] and provenance["git_dirty"] is None
        assert provenance["environment"]["DATARAX_BENCH_IMAGE"] == "datarax-bench:cpu"
        assert provenance["packages"] == result["provenance"]["packages"]

    # doctor, the run's manifest and summary, the offline W&B run: all the invoker's, and no
    # temporary file left beside them.
    assert json.loads((inside / "doctor.json").read_text())
    assert list((inside / "wandb").glob("offline-run-*"))
    files = list(inside.rglob("*"))
    assert {"manifest.json", "summary.json"} <= {p.name for p in files}
    # lstat: W&B's offline run links its core log to the container's home.
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in [inside, *files]}
    assert owners == {(INVOKER, INVOKER)}
    ours = [p for p in files if "wandb" not in p.relative_to(inside).parts]
    assert not [p for p in ours if ".tmp" in p.name or p.name.startswith(".")]


def test_results_dir_the_user_cannot_write_is_refused_before_measuring(image, tmp_path):
    foreign = tmp_path / "root-owned"
    foreign.mkdir(mode=0o755)
    proc = image["daemon"].docker(
        "run", "--rm", "--network", "host", "--user", f"{INVOKER}:{INVOKER}",
        "-v", f"{foreign}:/app/results", IMAGE,
        check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"datarax-bench: /app/results is not writable by uid {INVOKER}; mount a directory of "
        'yours there and run with --user "$(id -u):$(id -g)"'
    ]
    assert list(foreign.iterdir()) == []


def test_image_runs_as_a_non_root_user_with_datarax_bench_as_entrypoint(image):
    config = json.loads(image["daemon"].docker("image", "inspect", IMAGE).stdout)[0]["Config"]
    assert config["User"] == "bench"
    listed = image["daemon"].docker("run", "--rm", "--network", "host", IMAGE, "list", "--json")
    assert SCENARIO in json.loads(listed.stdout)["scenarios"]
    who = image["daemon"].docker("run", "--rm", "--entrypoint", "id", IMAGE, "-u").stdout
    assert who.strip() == "1000"


def test_a_code_change_rebuilds_without_reinstalling_the_stack(image, tmp_path):
    context = tmp_path / "context"
    for name in ("pyproject.toml", "constraints.txt", "README.md", ".dockerignore"):
        context.mkdir(exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    for name in ("src", "config", "workflow/schemas", "benchmarks/docker"):
        shutil.copytree(ROOT / name, context / name, ignore=shutil.ignore_patterns("__pycache__"))
    marker = "# changed after the image was built\n"
    with open(context / "src" / "datarax_bench" / "__init__.py", "a") as fh:
        fh.write(marker)

    built = docker_support.build_image(
        image["daemon"],
        context / "benchmarks" / "docker" / "Dockerfile.cpu",
        "datarax-bench:cpu-changed",
        context,
        BASE_IMAGE=image["base"],
        WHEELS_URL=image["wheels_url"],
        GIT_COMMIT=image["commit"],
    )
    log = (built.stdout + built.stderr).splitlines()
    # BuildKit's plain progress: `#N [stage k/n] RUN ...` then `#N CACHED` for a reused layer.
    steps = {line.split()[0]: line for line in log if line.startswith("#") and " RUN " in line}
    install = [n for n, line in steps.items() if "-r /opt/datarax-bench/requirements.txt" in line]
    project = [n for n, line in steps.items() if "-e /app" in line]
    assert install and project, "\n".join(log[-40:])
    assert f"{install[0]} CACHED" in log
    assert f"{project[0]} CACHED" not in log
    source = image["daemon"].docker(
        "run", "--rm", "--entrypoint", "cat", "datarax-bench:cpu-changed",
        "/app/src/datarax_bench/__init__.py",
    ).stdout  # fmt: skip
    assert source.endswith(marker)


def test_the_gpu_file_builds_its_stages_and_asks_for_the_gpu_extra(image):
    # The install itself needs PyPI's CUDA wheels (GBs) and the run a GPU: not on this machine.
    docker_support.build_image(
        image["daemon"],
        ROOT / "benchmarks" / "docker" / "Dockerfile.gpu",
        "datarax-bench:gpu-requirements",
        ROOT,
        "--target",
        "requirements",
        BASE_IMAGE=image["base"],
    )
    listed = image["daemon"].docker(
        "run", "--rm", "datarax-bench:gpu-requirements", "cat", "/tmp/requirements.txt"
    ).stdout.split()  # fmt: skip
    assert listed == docker_support.image_requirements(("bench", "gpu"))
    assert "jax[cuda13]==0.10.2" in listed


#: A Vast offer of the seeded catalog (tests/loopback/catalog); which one does not matter here.
VAST_GPUS = "A100-80GB:1"


@pytest.mark.network  # the setup installs Ray and SkyPilot's dependencies from PyPI
def test_skypilot_node_setup_for_vast_runs_in_the_image_as_the_machine(image, tmp_path):
    """On Vast the image is the instance (sky/clouds/vast.py): SkyPilot logs in as root over
    ssh, rsyncs its file mounts and runs templates/vast-ray.yml.j2's setup commands in it. The
    cluster YAML is SkyPilot's own, rendered by a real `sky launch --dryrun` on Vast with the
    image (backend_utils.write_cluster_config); its file mounts and setup commands then run
    through SkyPilot's own runner (tests/support/docker.py, `node_setup`)."""
    daemon, cluster = image["daemon"], "dxb-vast-image"
    started = time.monotonic()
    with sky_offline.offline_sky(tmp_path / "sky") as env:
        dry = sky_offline.sky(
            env, "launch", "--dryrun", "-y", "--infra", "vast", "--gpus", VAST_GPUS,
            "--image-id", f"docker:{IMAGE}", "-c", cluster, "true",
        )  # fmt: skip
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    cluster_yaml = Path(env["HOME"]) / ".sky" / "generated" / f"{cluster}.yml.tmp"
    config = yaml.safe_load(cluster_yaml.read_text())
    assert config["provider"]["module"] == "sky.provision.vast"
    assert config["available_node_types"]["ray_head_default"]["node_config"]["ImageId"] == IMAGE
    assert config["auth"]["ssh_user"] == "root"
    assert config["initialization_commands"] == [] and len(config["setup_commands"]) == 1
    print(f"{time.monotonic() - started:5.1f} s  SkyPilot's Vast cluster YAML rendered")

    # The instance as Vast's SSH launch mode starts it: the entrypoint replaced, an ssh server
    # on the container's port 22 (here a free port of the host network), run as root.
    port = docker_support.free_port()
    name = f"dxb-vast-{port}"
    daemon.docker(
        "run", "-d", "--name", name, "--network", "host", "--user", "root",
        "--entrypoint", "/usr/sbin/sshd", IMAGE,
        "-D", "-e", "-p", str(port), "-o", "ListenAddress=127.0.0.1",
    )  # fmt: skip
    try:
        public_key = Path(config["auth"]["ssh_private_key"] + ".pub").read_text().strip()
        # SkyPilot's onstart on Vast (provision/vast/utils.py, `launch`): its key for root.
        daemon.docker(
            "exec", name, "sh", "-c",
            "touch ~/.no_auto_tmux && mkdir -p ~/.ssh && chmod 700 ~/.ssh"
            f" && echo '{public_key}' >> ~/.ssh/authorized_keys"
            " && chmod 600 ~/.ssh/authorized_keys && mkdir -p ~/.local/bin",
        )  # fmt: skip
        # Stand-ins for the two downloads this machine cannot make (no GitHub, no astral.sh):
        # uv, which the setup would curl from astral.sh (into ~/.local/bin, where it looks
        # first), and the runtime venv, which it would create with a Python 3.10 that uv
        # fetches from GitHub: made with the same command on the image's Python 3.11.
        # Everything else (ray, SkyPilot's wheel and its dependencies) installs from PyPI,
        # trusting this machine's CA bundle (its route to PyPI may need it), given to the ssh
        # sessions by pam_env (/etc/environment).
        bundle = "/etc/ssl/certs/ca-certificates.crt"
        daemon.docker("cp", bundle, f"{name}:{bundle}")
        daemon.docker("exec", name, "sh", "-c", f"echo SSL_CERT_FILE={bundle} >> /etc/environment")
        uv = str(Path(sys.executable).with_name("uv"))
        daemon.docker("cp", uv, f"{name}:/root/.local/bin/uv")
        daemon.docker(
            "exec", "-e", "UV_LINK_MODE=copy", "-e", "UV_SYSTEM_PYTHON=false",
            "-e", f"SSL_CERT_FILE={bundle}", name,
            "/root/.local/bin/uv", "venv", "--seed", "/root/skypilot-runtime", "--python", "3.11",
            timeout=300,
        )  # fmt: skip

        started = time.monotonic()
        # The tests' helpers as a module of their own (support/ imports its package).
        tests_path = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
        proc = subprocess.run(
            [sys.executable, "-m", "support.docker", "node-setup",
             str(cluster_yaml), str(port), str(tmp_path / "provision.log")],
            env={**env, "PYTHONPATH": tests_path}, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{time.monotonic() - started:5.1f} s  file mounts and setup commands over ssh")
        # SkyPilot's own wheel and its cluster YAML went over rsync into root's home.
        wheel_hash = next(m.rsplit("/", 1)[1] for m in result["file_mounts"] if "/wheels/" in m)
        assert {"~/.sky/sky_ray.yml", f"~/.sky/wheels/{wheel_hash}"} <= set(result["file_mounts"])
        assert [s["returncode"] for s in result["setup"]] == [0], result["setup"]

        def inside(script: str) -> str:
            return daemon.docker("exec", name, "bash", "-c", script).stdout.strip()

        assert inside("cat ~/.sky/wheels/current_sky_wheel_hash") == wheel_hash
        assert inside("~/skypilot-runtime/bin/python -c 'import sky; print(sky.__version__)'") == (
            "0.14.1"
        )
        assert "2.9.3" in inside('"$(cat ~/.sky/ray_path)" --version')
        assert inside("ls ~/sky_templates | head -1")
        assert "MaxSessions 200" in inside("cat /etc/ssh/sshd_config")
        assert "* hard nofile 1048576" in inside("cat /etc/security/limits.conf")
        assert "StrictHostKeyChecking no" in inside("cat ~/.ssh/config")
    finally:
        logs = daemon.docker("logs", name, check=False)
        (tmp_path / "sshd.log").write_text(logs.stdout + logs.stderr)
        daemon.docker("rm", "-f", name, check=False)
