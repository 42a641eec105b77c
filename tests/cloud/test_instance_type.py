"""A pinned machine type (`instance_type`): in every task the run launches, checked by the
config, and never mixed with a cluster of another type."""

from __future__ import annotations

import pytest

from datarax_bench.cloud import billing, managed, tasks
from datarax_bench.cloud import cluster as cloud
from datarax_bench.errors import UserError
from datarax_bench.workflow.config import check_config
from datarax_bench.workload.catalog import load_profile

PINNED = "1x-A100-80GB-32-128"


def test_a_pinned_type_is_in_the_cluster_task_and_the_managed_task():
    config = {"instance_type": PINNED}
    check_config(config)
    settings = cloud.CloudSettings.from_config({**_CLOUD_KEYS, **config})
    assert settings.instance_type == PINNED
    gpu = load_profile("gpu_a100")
    # Both are checked by SkyPilot's own task schema as they are rendered.
    provision = tasks.render_provision_task(gpu, "", settings.instance_type)
    job = managed.render_task(gpu, instance_type=settings.instance_type)
    for task in (provision, job):
        assert task["resources"]["instance_type"] == PINNED
        assert (
            task["resources"]["accelerators"]
            == tasks.load_task(tasks.task_template_path(gpu))["resources"]["accelerators"]
        )
    # Unpinned, SkyPilot picks the type: none is written.
    assert "instance_type" not in tasks.render_provision_task(gpu)["resources"]
    assert cloud.CloudSettings.from_config(_CLOUD_KEYS).instance_type == ""


@pytest.mark.parametrize("value", ["a b", "-x", "gcp/n2-standard-8"])
def test_a_malformed_instance_type_is_one_line(value):
    with pytest.raises(UserError) as info:
        check_config({"instance_type": value}, command_line={"instance_type": value})
    message = str(info.value)
    assert message.startswith(f"--config: instance_type: got {value!r}: ") and "\n" not in message


@pytest.mark.parametrize("launched", [None, "1x-A100-80GB-16-64"])
def test_an_up_cluster_of_another_type_is_not_reused(tmp_path, monkeypatch, launched):
    # The reuse decision is ours; SkyPilot's answer (`sky status`) is its input.
    monkeypatch.setattr(cloud, "cluster_status", lambda cluster, log=None: "UP")
    ledger = billing.ledger_for(tmp_path)
    ledger.add("launch_requested", "dxb-x", infra="vast", image=None, instance_type=launched)
    settings = cloud.CloudSettings(instance_type=PINNED)
    spec = cloud.ClusterSpec(
        load_profile("smoke"), "vast", "dxb-x", settings, tmp_path, tmp_path / "log"
    )
    with pytest.raises(RuntimeError) as info:
        cloud._provision_locked(spec)
    assert str(info.value) == (
        f"cluster dxb-x is up as {launched or 'the type SkyPilot picked'}, not the pinned "
        f"instance_type {PINNED}; tear it down (sky down dxb-x) first"
    )


_CLOUD_KEYS = {
    "idle_minutes": 30,
    "use_spot": "auto",
    "max_cluster_hours": 12,
    "launch_timeout_minutes": 60,
}
