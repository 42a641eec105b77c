"""A managed job's recovery on other hardware: the loopback's managed jobs
(tests/loopback/managed.py) give every new machine of a job half the cores unless the task
pins `instance_type`."""

from __future__ import annotations

import os
import re

import pytest
from loopback import node as loopback
from test_stand_in_managed_jobs import (  # the stand-in's fixture and helpers
    INFRA,
    cluster,  # noqa: F401
    launched_id,
    sky,
    task_file,
    wait_for,
)

CORES = len(os.sched_getaffinity(0))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(loopback.missing_tools()),
        reason=f"loopback cluster needs {', '.join(loopback.missing_tools())}",
    ),
    pytest.mark.skipif(CORES < 2, reason="a recovery on other hardware needs 2 usable cores"),
]


def test_every_new_machine_of_a_job_has_other_hardware_unless_the_type_is_pinned(
    cluster,  # noqa: F811
):
    node, home, env, tmp_path = cluster
    ids = {}
    # A failing job restarted once: its second attempt is a new machine, as after a preemption.
    run = {"run": "echo cores $(nproc); exit 3"}
    restart = {"job_recovery": {"max_restarts_on_errors": 1}}
    for name, resources, flags in (
        ("drawn", restart, []),
        ("pinned", {**restart, "instance_type": "loopback-1"}, []),
        ("flag", restart, ["-t", "loopback-1"]),
    ):
        path = task_file(tmp_path, name, resources=resources, **run)
        launch = sky(env, tmp_path, "jobs", "launch", str(path), "-y", "-d", *INFRA, *flags)
        ids[name] = launched_id(launch)
    for name, job_id in ids.items():
        assert wait_for(env, tmp_path, job_id, {"FAILED"})["recovery_count"] == 1
        logs = sky(env, tmp_path, "jobs", "logs", "--no-follow", str(job_id)).stdout
        cores = re.findall(r"^cores (\d+)$", logs, re.MULTILINE)
        second = CORES // 2 if name == "drawn" else CORES
        assert cores == [str(CORES), str(second)], (name, logs)
