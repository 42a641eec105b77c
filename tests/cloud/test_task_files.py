"""The standalone task files' headers: every command they show is one SkyPilot 0.14.1 accepts
for that file. The commands are read from the headers themselves, so the two cannot drift: each
`sky` line parses with SkyPilot's own CLI, each `sky launch` of a task file passes a real
`sky launch --dryrun` on the seeded offline catalog (and lands on the hardware the file is for),
and the results-bucket variant made by the header's `datarax-bench task-file` line loads with
SkyPilot's loader and mounts the bucket the way the header says. The task a cloud run renders
passes the same dry run, on the same API server."""

from __future__ import annotations

import copy
import json
import re
import shlex
import time
from pathlib import Path

import pytest
import yaml
from support import ROOT
from support.sky_offline import offline_sky, sky

from datarax_bench import cli
from datarax_bench.cloud import sky as cloud_sky
from datarax_bench.cloud import standalone, tasks
from datarax_bench.workload.catalog import load_profile

TASK_FILES = sorted((ROOT / "benchmarks" / "sky").glob("*-benchmark.yaml"))
BUCKET = "dxb-test-results"
# What each file must land on in the dry run: (infra, instance, accelerator column).
EXPECTED = {
    "cpu-benchmark.yaml": ("GCP", "n2-standard-8", "-"),
    "gpu-benchmark.yaml": ("Vast", "1x-A100-80GB-16-64", "A100-80GB:1"),
    "tpu-benchmark.yaml": ("GCP", "TPU-VM", "tpu-v5litepod-4:1"),
}


def header_commands(path: Path) -> list[list[str]]:
    """The commands of the leading comment block (lines indented under `#`), as argv lists;
    `[--opt X]` means the option is shown as optional (kept here), `<bucket>` a name to fill in."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("#   "):
            text = re.sub(r"\[([^\]]*)\]", r"\1", line[4:]).replace("<bucket>", BUCKET)
            for part in text.split("&&"):
                commands.append(shlex.split(part))
    return commands


def launches(path: Path) -> list[list[str]]:
    return [c for c in header_commands(path) if c[:2] == ["sky", "launch"]]


def option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.name)
def test_header_shows_each_way_to_keep_results(path):
    commands = header_commands(path)
    rel = str(path.relative_to(ROOT))
    assert any(c[0] == "datarax-bench" and "--results-bucket" in c for c in commands)
    direct = [c for c in launches(path) if c[2] == rel]
    keyed = [c for c in direct if option(c, "--secret")]
    assert keyed and all(option(c, "--secret") == ["WANDB_API_KEY"] for c in keyed)
    assert all("--down" in c for c in keyed)
    # Without key or bucket: an idle limit, and the copy and teardown shown.
    kept = [c for c in direct if not option(c, "--secret")]
    assert kept and all(option(c, "-i") and option(c, "-c") for c in kept)
    # ... and said, or the run step's pre-flight refuses to measure (persist --check, exit 3).
    assert all("DATARAX_BENCH_RESULTS_ON_MACHINE=1" in option(c, "--env") for c in kept)
    # A stopped Vast machine may not start again (its GPU rented out): deleted, never stopped.
    assert all("--down" in c for c in kept if option(c, "--infra") == ["vast"])
    cluster = option(kept[0], "-c")[0]
    assert ["rsync", "-a", f"{cluster}:datarax-bench-results/", "./datarax-bench-results/"] in (
        commands
    )
    assert ["sky", "down", "-y", cluster] in commands
    text = path.read_text()
    assert "DATARAX_BENCH_GIT_COMMIT" not in text  # provenance comes from the synced .git
    assert "WANDB_API_KEY" not in (yaml.safe_load(text).get("envs") or {})


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.name)
def test_header_sky_commands_parse_with_the_real_cli(path, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "dummy-not-a-key")  # `--secret NAME` copies the value
    from sky.client.cli import command

    sky_lines = [c for c in header_commands(path) if c[0] == "sky"]
    assert {c[1] for c in sky_lines} == {"launch", "down", "jobs"}
    for argv in sky_lines:
        group = command.cli.commands[argv[1]]
        if argv[1] == "jobs":
            group.commands[argv[2]].make_context(f"sky jobs {argv[2]}", argv[3:])
        else:
            group.make_context(f"sky {argv[1]}", argv[2:])
    # A managed job resumes from the results bucket, so it runs the bucket variant with one.
    (managed,) = [c for c in sky_lines if c[:3] == ["sky", "jobs", "launch"]]
    (make,) = [c for c in header_commands(path) if c[0] == "datarax-bench"]
    assert managed[3] == option(make, "-o")[0]
    assert f"DATARAX_BENCH_BUCKET={BUCKET}" in option(managed, "--env")


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.name)
def test_plain_launches_are_on_demand_and_managed_jobs_ask_for_spot(path, tmp_path, monkeypatch):
    """`sky launch` recovers no preempted machine (and a Vast one outbid is stopped, billing
    on); `sky jobs launch` does, so spot is asked for there alone."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "dummy-not-a-key")
    import sky as sky_lib
    from sky.client.cli import command

    task = sky_lib.Task.from_yaml_config(yaml.safe_load(path.read_text()))
    assert task.resources and not any(r.use_spot for r in task.resources)
    asked = {}
    for argv in (c for c in header_commands(path) if c[0] == "sky" and "launch" in c[1:3]):
        group = command.cli.commands[argv[1]]
        if argv[1] == "jobs":
            ctx = group.commands[argv[2]].make_context(f"sky jobs {argv[2]}", argv[3:])
        else:
            ctx = group.make_context(f"sky {argv[1]}", argv[2:])
        asked.setdefault(argv[1], set()).add(ctx.params["use_spot"])
    assert asked == {"launch": {None}, "jobs": {True}}


def _make_index(path: Path) -> int:
    (index,) = [i for i, c in enumerate(header_commands(path)) if c[0] == "datarax-bench"]
    return index


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_the_standalone_bucket_is_mounted_by_its_uri_whatever_the_cloud(
    scheme, tmp_path, monkeypatch
):
    """An S3 bucket launched on GCP stays the S3 bucket: SkyPilot is given its URI."""
    monkeypatch.setenv("HOME", str(tmp_path))
    import sky as sky_lib

    path = ROOT / "benchmarks" / "sky" / "cpu-benchmark.yaml"
    output = tmp_path / "cpu-bucket.yaml"
    args = ["task-file", str(path), "--results-bucket", scheme, "-o", str(output)]
    assert cli.main(args) == 0
    config = yaml.safe_load(output.read_text())
    assert config["file_mounts"] == {
        "~/datarax-bench-bucket": {"source": f"{scheme}://${{DATARAX_BENCH_BUCKET}}",
                                   "mode": "MOUNT_CACHED"}
    }  # fmt: skip
    config["resources"]["infra"] = "gcp"
    task = sky_lib.Task.from_yaml_config(config, env_overrides=[("DATARAX_BENCH_BUCKET", BUCKET)])
    (store,) = task.storage_mounts.values()
    assert store.source == f"{scheme}://{BUCKET}" and store.name is None
    # The store must be named: there is no bare-name bucket.
    assert cli.main(["task-file", str(path), "--results-bucket", "-o", str(output)]) == 2
    assert cli.main(["task-file", str(path), "--results-bucket", "r2", "-o", str(output)]) == 2


def _bucket_variant(path: Path, tmp_path: Path, monkeypatch) -> tuple[Path, list[str]]:
    """Run the header's `datarax-bench task-file` line; return the new file and its launch."""
    monkeypatch.chdir(tmp_path)
    (make,) = [c for c in header_commands(path) if c[0] == "datarax-bench"]
    assert make[2] == str(path.relative_to(ROOT))
    make[2] = str(ROOT / make[2])
    assert cli.main(make[1:]) == 0
    output = tmp_path / option(make, "-o")[0]
    (launch,) = [c for c in launches(path) if c[2] == option(make, "-o")[0]]
    return output, launch


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.name)
def test_bucket_variant_loads_and_mounts_the_named_bucket(path, tmp_path, monkeypatch):
    import sky as sky_lib
    from sky import clouds
    from sky.data import data_utils
    from sky.data.storage import StorageMode
    from sky.utils import registry

    output, launch = _bucket_variant(path, tmp_path, monkeypatch)
    config = yaml.safe_load(output.read_text())
    assert Path(config["workdir"]) == ROOT
    base = tasks.load_task(path)
    assert {k: v for k, v in config.items() if k not in ("envs", "file_mounts", "workdir")} == {
        k: v for k, v in base.items() if k not in ("envs", "workdir")
    }
    envs = [tuple(e.split("=", 1)) for e in option(launch, "--env")]
    assert envs == [("DATARAX_BENCH_BUCKET", BUCKET)]
    task = sky_lib.Task.from_yaml_config(copy.deepcopy(config), env_overrides=envs)
    (mount,) = task.storage_mounts.items()
    assert mount[0] == standalone.BUCKET_MOUNT == "~/datarax-bench-bucket"
    # By its URI on the store the header names: SkyPilot connects to that existing bucket
    # (`Storage.construct` picks the store from the scheme) instead of creating one by name
    # on the store of the cloud the job lands on.
    scheme = option(header_commands(path)[_make_index(path)], "--results-bucket")[0]
    assert (mount[1].source, mount[1].mode) == (f"{scheme}://{BUCKET}", StorageMode.MOUNT_CACHED)
    assert mount[1].name is None and data_utils.is_cloud_store_url(mount[1].source)
    # Forgetting the --env is refused by SkyPilot before anything launches.
    with pytest.raises(ValueError, match="DATARAX_BENCH_BUCKET"):
        sky_lib.Task.from_yaml_config(copy.deepcopy(config))
    # The header's infra mounts buckets; Vast (the GPU file's other infra) does not.
    infra = option(launch, "--infra")[0]
    cloud_cls = registry.CLOUD_REGISTRY.from_str(infra)
    mounting = {clouds.CloudImplementationFeatures.STORAGE_MOUNTING}
    resources = sky_lib.Resources(infra=infra)
    cloud_cls.check_features_are_supported(resources, mounting)
    with pytest.raises(Exception, match="not supported on Vast"):
        clouds.Vast.check_features_are_supported(sky_lib.Resources(infra="vast"), mounting)


def test_the_base_task_files_load_without_a_bucket(tmp_path, monkeypatch):
    import sky as sky_lib

    monkeypatch.setenv("HOME", str(tmp_path))
    for path in TASK_FILES:
        task = sky_lib.Task.from_yaml_config(yaml.safe_load(path.read_text()))
        assert not task.storage_mounts and "--bucket-dir" in task.run
        assert "DATARAX_BENCH_BUCKET" not in task.envs  # set by --env only with the variant


def _chosen_row(out: str) -> list[str]:
    for line in out.splitlines():
        if "✔" in line:
            return re.sub(r"\x1b\[[0-9;]*m", "", line).split()
    raise AssertionError(f"no chosen resources in:\n{out[-3000:]}")


@pytest.fixture(scope="module")
def offline_sky_env(tmp_path_factory):
    """One private offline SkyPilot (its API server, the seeded catalog) for the module's real
    dry runs: the server's start and boot check are most of a first `sky` call."""
    started = time.monotonic()
    with offline_sky(tmp_path_factory.mktemp("offline-sky")) as env:
        print(f"{time.monotonic() - started:5.1f} s  API server up, boot check done")
        yield env


@pytest.mark.slow
def test_header_launches_pass_real_sky_dryrun_on_the_seeded_catalog(offline_sky_env):
    env = {**offline_sky_env, "WANDB_API_KEY": "dummy-not-a-key"}
    runs = []
    for path in TASK_FILES:
        for argv in launches(path):
            if argv[2] != str(path.relative_to(ROOT)):
                continue  # the bucket variant: its storage is created even in a dry run
            argv = [str(ROOT / a) if a == argv[2] else a for a in argv]
            started = time.monotonic()
            proc = sky(env, *argv[1:], "--dryrun", "-y")
            runs.append((path.name, argv, proc))
            print(f"{time.monotonic() - started:5.1f} s  {shlex.join(argv[1:])}")
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"{shlex.join(argv)}\n{out[-3000:]}"
            assert "Dryrun finished" in out
            row = _chosen_row(out)
            infra, instance, gpus = EXPECTED[path.name]
            assert row[0] == infra and instance in row and gpus in row, row
    assert {name for name, _, _ in runs} == set(EXPECTED) and len(runs) >= 6
    # What the TPU header used to say is refused: the check above can fail.
    tpu = str(ROOT / "benchmarks" / "sky" / "tpu-benchmark.yaml")
    proc = sky(env, "launch", tpu, "--infra", "vast", "--down", "--dryrun", "-y")
    assert proc.returncode != 0
    assert "Cloud must be GCP or Kubernetes for TPU" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_real_sky_dryrun_of_rendered_gpu_task_on_seeded_vast_catalog(offline_sky_env, tmp_path):
    task = tasks.render_provision_task(load_profile("gpu_a100"))
    task_file = tmp_path / "task.yaml"
    tasks.write_task(task, task_file)
    env = {k: v for k, v in offline_sky_env.items() if k != "WANDB_API_KEY"}
    # Pinned (`instance_type`), SkyPilot rents that type, not the cheapest that fits.
    pinned = "1x-A100-80GB-32-128"
    pinned_file = tmp_path / "pinned.yaml"
    tasks.write_task(tasks.render_provision_task(load_profile("gpu_a100"), "", pinned), pinned_file)
    outs = []
    for file in (task_file, pinned_file):
        argv = cloud_sky.launch_argv("dxb-dryrun", file, "vast", 10, True)
        proc = sky(env, *argv[1:], "--dryrun")
        outs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, outs[-1][-3000:]
    estimate = cloud_sky.parse_launch_estimate(outs[0])
    assert "A100-80GB" in (estimate["chosen"] or ""), outs[0][-3000:]
    assert estimate["hourly_usd"] == pytest.approx(0.62)
    assert pinned not in estimate["chosen"]
    estimate = cloud_sky.parse_launch_estimate(outs[1])
    assert pinned in (estimate["chosen"] or ""), outs[1][-3000:]
    assert estimate["hourly_usd"] == pytest.approx(0.80)
    print(json.dumps(estimate))
