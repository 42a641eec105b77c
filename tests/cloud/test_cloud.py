"""Cloud logic without a cloud: task files through SkyPilot's loader, names, command lines,
the launch estimate, pulls that validate (the real `sky launch --dryrun` of a rendered task is in
test_task_files.py, beside the headers' dry runs, on one API server)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from support import ROOT

from datarax_bench.cloud import billing, sky, tasks
from datarax_bench.cloud import cluster as cloud
from datarax_bench.errors import UserError
from datarax_bench.results import load_result
from datarax_bench.workload.catalog import load_catalog, load_profile, profile_names

#: Real results whose machine a relaunched cluster's cells are checked against.
SMOKE_RUN = {"numpy": ("TAB-1", "PR-2")}
SKY_DIR = ROOT / "benchmarks" / "sky"
TASK_FILES = sorted(SKY_DIR.glob("*.yaml"))
CLUSTER_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def test_three_task_files_exist():
    assert {p.name for p in TASK_FILES} == {
        "cpu-benchmark.yaml",
        "gpu-benchmark.yaml",
        "tpu-benchmark.yaml",
    }


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.name)
def test_static_task_files_pass_skypilot_loader(path):
    task = tasks.load_task(path)
    tasks.validate_task(task, path)
    profile = load_profile(task["envs"]["DATARAX_BENCH_PROFILE"])
    assert profile.cloud["template"] == path.name
    accelerators = task["resources"].get("accelerators")
    assert accelerators == profile.cloud["accelerator"]
    # On-demand: a plain `sky launch` recovers no preempted machine; spot is for managed jobs.
    assert task["resources"]["use_spot"] is False
    text = path.read_text()
    # Secrets by name only: no value of any kind in the file.
    assert "WANDB_API_KEY" not in yaml.safe_load(text).get("envs", {})
    assert "secrets" not in task
    assert "datarax-bench doctor" in task["run"] and "--output-dir" in task["run"]
    # The run's outcome is kept before the subshell ends with it: `persist` is the last
    # command but its `exit` (tests/cloud/test_skypilot_job_script.py runs it as SkyPilot does).
    run_lines = [line.strip() for line in task["run"].splitlines() if line.strip()]
    run_lines = [line for line in run_lines if not line.startswith("#")]
    assert run_lines[0] == "(" and run_lines[-1] == ")"
    assert run_lines[-3].startswith("datarax-bench persist --results-dir")
    assert run_lines[-2] == 'exit "$rc"'
    assert task["setup"].strip().splitlines()[-1] == "bash benchmarks/sky/setup.sh"
    assert "-c constraints.txt" in (SKY_DIR / "setup.sh").read_text()


def test_backend_specific_settings():
    cpu, gpu = (tasks.load_task(SKY_DIR / f"{k}-benchmark.yaml") for k in ("cpu", "gpu"))
    assert cpu["envs"]["JAX_PLATFORMS"] == "cpu"
    assert cpu["envs"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
    assert str(cpu["resources"]["cpus"]) == "8+" and str(cpu["resources"]["memory"]) == "32+"
    assert gpu["envs"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert gpu["envs"]["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert gpu["envs"]["DATARAX_BENCH_EXTRA"] == "gpu"  # CUDA jax, not a silent CPU fallback


def test_misspelled_field_is_rejected_by_skypilot():
    task = tasks.load_task(SKY_DIR / "gpu-benchmark.yaml")
    bad = copy.deepcopy(task)
    bad["resources"]["acceleratorz"] = bad["resources"].pop("accelerators")
    with pytest.raises(UserError, match="acceleratorz"):
        tasks.validate_task(bad, "gpu")


@pytest.mark.parametrize("name", profile_names())
def test_rendered_tasks_are_valid_and_only_run_doctor(name, tmp_path):
    profile = load_profile(name)
    task = tasks.render_provision_task(profile)
    assert task["envs"]["DATARAX_BENCH_PROFILE"] == name
    # Provenance is read on the cluster from the synced .git, never copied from here.
    assert "DATARAX_BENCH_GIT_COMMIT" not in task["envs"]
    assert task["setup"].rstrip().endswith(f"> {tasks.REMOTE_SETUP_DONE}")
    assert "doctor" in task["run"] and "datarax-bench run" not in task["run"]
    assert Path(task["workdir"]) == ROOT
    tasks.write_task(task, tmp_path / "task.yaml")
    tasks.validate_task(yaml.safe_load((tmp_path / "task.yaml").read_text()), "rendered")


def test_cluster_names_are_deterministic_valid_and_distinct():
    names = {
        cloud.cluster_name(p, infra, run)
        for p in ("smoke", "gpu_a100", "tpu_v5e")
        for infra in ("vast", "gcp/us-central1", "gcp/us-east1", "any", "k8s/my-context")
        for run in ("bench", "a-very-long-run-name-xyz")
    }
    assert len(names) == 30
    for name in names:
        assert CLUSTER_NAME.match(name) and len(name) <= 35, name
    assert cloud.cluster_name("smoke", "vast", "bench") == cloud.cluster_name(
        "smoke", "vast", "bench"
    )


def test_launch_and_exec_command_lines():
    argv = sky.launch_argv("c1", Path("t.yaml"), "vast", 30, True)
    assert argv == [
        "sky", "launch", "-c", "c1", "t.yaml", "-y", "--infra", "vast", "-i", "30", "--down",
        "--wait-for", "none", "--use-spot",
    ]  # fmt: skip
    assert "--infra" not in sky.launch_argv("c1", Path("t"), "any", 5, False)
    assert "--no-use-spot" in sky.launch_argv("c1", Path("t"), "gcp", 5, False)
    gpu = sky.exec_argv("c1", "A100-80GB:1", "echo", {"A": "1"}, Path("/w"))
    assert gpu == [
        "sky", "exec", "c1", "--workdir", "/w", "--gpus", "A100-80GB:1", "--env", "A=1", "--",
        "echo",
    ]  # fmt: skip
    assert "--gpus" not in sky.exec_argv("c1", None, "echo")
    assert sky.autostop_argv("c1", 19) == [
        "sky", "autostop", "c1", "-i", "19", "--down", "--wait-for", "none", "-y",
    ]  # fmt: skip


def test_command_lines_parse_with_the_real_sky_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    from sky.client.cli import command

    for argv in (
        sky.launch_argv("c1", Path("t.yaml"), "gcp/us-central1", 30, True),
        sky.exec_argv("c1", "A100-80GB:1", "echo hi", {"A": "1"}, tmp_path),
        sky.autostop_argv("c1", 19),
        ["sky", "cancel", "-y", "c1", "-a"],
        ["sky", "status", "--refresh", "-o", "json", "c1"],
        ["sky", "down", "-y", "c1"],
        ["sky", "cost-report", "--all", "-o", "json"],
    ):
        command.cli.commands[argv[1]].make_context(f"sky {argv[1]}", argv[2:])


def test_launch_estimate_parsing():
    text = """Considered resources (1 node):
---------------------------------------------------------------------------------
 INFRA           INSTANCE      vCPUs   Mem(GB)   GPUS          COST ($)   CHOSEN
---------------------------------------------------------------------------------
 Vast (us-ca)    1x-A100-80GB  16      64        A100-80GB:1   0.85          ✔
 Vast (us-tx)    1x-A100-80GB  32      128       A100-80GB:1   0.97
---------------------------------------------------------------------------------
"""
    estimate = sky.parse_launch_estimate(text)
    assert estimate["hourly_usd"] == 0.85 and "us-ca" in estimate["chosen"]
    assert sky.parse_launch_estimate("nothing")["hourly_usd"] is None


def test_pull_rejects_a_corrupt_result_naming_the_cell(tmp_path, monkeypatch):
    def fake_fetch(cluster, remote, local, attempts=3, log=None):
        Path(local).write_text('{"schema_version": 1}')

    monkeypatch.setattr(cloud, "fetch", fake_fetch)
    out = tmp_path / "raw" / "TAB-1" / "small" / "numpy.json"
    with pytest.raises(RuntimeError, match="cell TAB-1/small/numpy: the result pulled"):
        cloud.pull_cell("c1", "smoke", "TAB-1", "small", "numpy", out, tmp_path / "log")
    assert not out.exists() and not list(out.parent.iterdir())


@pytest.mark.skipif(not shutil.which("rsync"), reason="needs rsync (apt-get install rsync)")
def test_fetch_missing_remote_is_an_error_without_retry_storm(tmp_path, monkeypatch):
    # rsync's exit 23 (file missing) is not transient: one attempt, a clear error.
    monkeypatch.setattr(sky, "ssh_command", lambda: ["ssh"])
    calls = []
    real_run = subprocess.run

    def counting_run(argv, **kw):
        calls.append(argv)
        return real_run(["rsync", "-a", str(tmp_path / "absent.json"), str(tmp_path / "x")], **kw)

    monkeypatch.setattr(sky.subprocess, "run", counting_run)
    with pytest.raises(RuntimeError, match=r"rsync c1:~/r.json failed \(23\)"):
        sky.fetch("c1", "~/r.json", tmp_path / "out.json")
    assert len(calls) == 1


def test_a_runs_length_is_estimated_from_its_cells_and_worker_processes():
    gpu = load_profile("gpu_a100")
    estimate = billing.estimate_run(gpu, [3, 3, 1, 1])
    assert (estimate.cells, estimate.processes, estimate.process_s) == (4, 8, 30.0)
    assert estimate.hours == pytest.approx((900 + 4 * 30 + 8 * 30) / 3600)
    # Managed shards run in parallel; the launch is paid once per machine, at the same time.
    assert billing.estimate_run(gpu, [3] * 100, machines=4).hours == pytest.approx(
        (900 + (100 * 30 + 300 * 30) / 4) / 3600
    )
    assert billing.estimate_run(load_profile("smoke"), [1]).process_s == 3.0
    # Cells measured in batches: one call's orchestration per batch.
    batched = billing.estimate_run(gpu, [3, 3, 1, 1], calls=2)
    assert batched.hours == pytest.approx((900 + 2 * 30 + 8 * 30) / 3600)
    assert batched.describe().startswith("4 cells in 2 remote calls x 30 s + 8 worker processes")


def test_a_run_that_cannot_fit_max_cluster_hours_is_refused_and_a_close_one_warned():
    estimate = billing.RunEstimate(cells=240, processes=572, process_s=30.0)
    assert estimate.hours == pytest.approx(7.0167, abs=1e-3)
    fits = billing.check_run_fits(estimate, "gpu_a100", 24)
    assert fits.startswith("profile gpu_a100: the run is estimated at 7.0 h (240 cells x 30 s")
    assert fits.endswith("of max_cluster_hours 24")
    assert billing.check_run_fits(estimate, "gpu_a100", 8).startswith("warning: profile gpu_a100")
    with pytest.raises(UserError, match=r"^max_cluster_hours: got 6, but .* >= 8, or fewer"):
        billing.check_run_fits(estimate, "gpu_a100", 6)


def test_an_unsupported_cell_is_written_here_and_never_sent_to_the_cluster(tmp_path, monkeypatch):
    # The loopback `sky` first on PATH, HOME a temp dir: any call would leave ~/.sky behind.
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{ROOT / 'tests' / 'loopback'}{os.pathsep}{os.environ['PATH']}")
    profile = load_profile("smoke")
    variant = next(v for s, v in profile.cells(load_catalog()) if s == "NLP-2")
    spec = cloud.ClusterSpec(
        profile=profile, infra="vast", name="unsupported-here", settings=cloud.CloudSettings(),
        work_dir=tmp_path / "cloud", log=tmp_path / "measure.log",
    )  # fmt: skip
    out = tmp_path / "raw" / "NLP-2" / variant / "datarax.json"
    result = cloud.measure_remote_cell(spec, "NLP-2", variant, "datarax", out)
    assert result["status"] == "unsupported" and "pad_batch" in result["reason"]
    assert load_result(out)["status"] == "unsupported"
    assert not (home / ".sky").exists(), "a `sky` call was made for an unsupported cell"
    assert not (tmp_path / "cloud").exists()  # no ledger entry: nothing was launched or billed


@pytest.mark.slow
def test_a_cell_from_other_hardware_is_refused_naming_both_machines(tmp_path, smoke_results):
    # A relaunch after a preemption lands on whatever the cloud offers next.
    raw = tmp_path / "raw"
    earlier_path = next((smoke_results / "raw" / "TAB-1").rglob("numpy.json"))
    (raw / "TAB-1" / "small").mkdir(parents=True)
    shutil.copy(earlier_path, raw / "TAB-1" / "small" / "numpy.json")
    arriving = load_result(next((smoke_results / "raw" / "PR-2").rglob("numpy.json")))
    output = raw / "PR-2" / arriving["cell"]["variant"] / "numpy.json"
    assert arriving["status"] == "ok"
    assert cloud.other_hardware(arriving, raw, output) is None  # the same machine
    moved = copy.deepcopy(arriving)
    moved["provenance"]["cpu"]["model"] = "AMD EPYC 7B13"
    moved["provenance"]["cpu"]["usable_cores"] = 64
    problem = cloud.other_hardware(moved, raw, output)
    ours = arriving["provenance"]["cpu"]["model"]
    assert problem and f"CPU model: {ours!r} vs 'AMD EPYC 7B13'" in problem
    assert "usable cores" in problem and f"remove {raw}" in problem
    moved["status"] = "failed"  # a failure measured nothing: kept, whatever the machine
    assert cloud.other_hardware(moved, raw, output) is None
