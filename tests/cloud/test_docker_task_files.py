"""The workflow's `image` key: the rendered task runs in the image, skips the install, records
it; bad references are refused by the config schema. No daemon needed (test_docker_images.py
builds and runs the image itself)."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import ROOT

from datarax_bench.cloud import billing, tasks
from datarax_bench.cloud import cluster as cloud
from datarax_bench.errors import UserError
from datarax_bench.workflow.config import check_config
from datarax_bench.workload.catalog import load_profile, profile_names

IMAGE = "ghcr.io/example/datarax-bench:gpu-0123abc"
DOCKERFILES = sorted((ROOT / "benchmarks" / "docker").glob("Dockerfile.*"))


#: The profiles a benchmark image exists for (no TPU image).
IMAGE_PROFILES = [n for n in profile_names() if not n.startswith("tpu")]


@pytest.mark.parametrize("name", IMAGE_PROFILES)
def test_an_image_replaces_the_install_and_is_recorded(name, tmp_path):
    profile = load_profile(name)
    plain = tasks.render_provision_task(profile)
    task = tasks.render_provision_task(profile, IMAGE)
    assert "image_id" not in plain["resources"]
    assert not {"DATARAX_BENCH_IMAGE", "DATARAX_BENCH_PREINSTALLED_VENV"} & set(plain["envs"])
    assert task["resources"] == {**plain["resources"], "image_id": f"docker:{IMAGE}"}
    # setup.sh uses a preinstalled venv instead of installing; every cell inherits the envs
    # (recorded in each result's provenance).
    assert task["envs"]["DATARAX_BENCH_PREINSTALLED_VENV"] == tasks.IMAGE_VENV
    assert task["envs"]["DATARAX_BENCH_IMAGE"] == IMAGE
    # SkyPilot's setup of the container needs root (apt); the image's own user is `bench`.
    assert task["config"]["docker"]["run_options"] == ["--user", "root"]
    assert tasks.task_envs(task)["DATARAX_BENCH_IMAGE"] == IMAGE
    tasks.write_task(task, tmp_path / "task.yaml")
    tasks.validate_task(yaml.safe_load((tmp_path / "task.yaml").read_text()), "rendered")


def test_setup_skips_the_install_where_the_venv_is_preinstalled():
    setup = (ROOT / "benchmarks" / "sky" / "setup.sh").read_text()
    branch = setup[setup.index('if [ -n "${DATARAX_BENCH_PREINSTALLED_VENV:-}" ]') :]
    branch = branch[: branch.index("\nelse")]
    assert "install" not in branch.split("\n", 1)[1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_install_where_the_task_files_look(dockerfile):
    text = dockerfile.read_text()
    assert f"ENV VIRTUAL_ENV={tasks.IMAGE_VENV}\n" in text
    assert f"DATARAX_BENCH_PREINSTALLED_VENV={tasks.IMAGE_VENV}" in text
    assert re.search(r"^USER bench$", text, re.M)


#: What SkyPilot's node setup calls where the image is the machine (Vast: it logs in as root
#: over ssh, rsyncs, curls uv, calls sudo and patch); test_docker_images.py runs that setup.
NODE_SETUP_PACKAGES = {"curl", "sudo", "rsync", "patch", "openssh-server"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_install_what_skypilots_node_setup_needs(dockerfile):
    packages = re.search(r'^RUN packages="([^"]*)"', dockerfile.read_text(), re.M)
    assert packages and NODE_SETUP_PACKAGES <= set(packages.group(1).split())
    assert "install -d -m 0755 /run/sshd" in dockerfile.read_text()


def test_dockerfiles_cover_the_profiles_templates():
    flavours = {p.suffix.lstrip(".") for p in DOCKERFILES}
    assert {"cpu", "gpu"} <= flavours


@pytest.mark.parametrize(
    "image",
    [
        "",
        "datarax-bench:cpu",
        IMAGE,
        "localhost:5000/bench/datarax-bench",
        "us-docker.pkg.dev/proj/repo/datarax-bench@sha256:" + "a" * 64,
    ],
)
def test_config_accepts_docker_references(image):
    config = {"image": image}
    check_config(config)
    assert cloud.CloudSettings.from_config(config).image == image


@pytest.mark.parametrize(
    "image", ["docker:datarax-bench:cpu", "Datarax-Bench", "bench image", "x:y:z", "repo:"]
)
def test_config_refuses_what_is_no_docker_reference(image):
    with pytest.raises(UserError) as info:
        check_config({"image": image}, command_line={"image": image})
    message = str(info.value)
    assert message.startswith(f"--config: image: got {image!r}: ") and "\n" not in message


def test_an_up_cluster_started_for_another_environment_is_not_reused(tmp_path, monkeypatch):
    # The reuse decision is ours; SkyPilot's answer (`sky status`) is its input.
    monkeypatch.setattr(cloud, "cluster_status", lambda cluster, log=None: "UP")
    ledger = billing.ledger_for(tmp_path)
    ledger.add("launch_requested", "dxb-x", infra="gcp", image=None)
    settings = cloud.CloudSettings(image=IMAGE)
    with pytest.raises(RuntimeError) as info:
        cloud._provision_locked(
            cloud.ClusterSpec(
                load_profile("smoke"), "gcp", "dxb-x", settings, tmp_path, tmp_path / "log"
            )
        )
    assert str(info.value) == (
        f"cluster dxb-x is up with the setup's install, not the requested image {IMAGE}; "
        "tear it down (sky down dxb-x) first"
    )
