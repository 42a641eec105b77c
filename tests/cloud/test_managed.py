"""The managed-jobs path's parts that need no cloud: the shard split, reading SkyPilot's own
`sky jobs queue` table, the rendered task, the config checks, the hardware check across
shards, and `run --cells` with the attempts it records in a resume directory."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path

import pytest
from support import ROOT

from datarax_bench.adapters import all_adapters
from datarax_bench.cloud import cluster as cloud
from datarax_bench.cloud import managed, tasks
from datarax_bench.cloud.buckets import parse_bucket
from datarax_bench.errors import UserError
from datarax_bench.run.cell import CellId
from datarax_bench.workflow.cells import ShardPlan
from datarax_bench.workflow.config import check_config
from datarax_bench.workload.catalog import load_profile


def test_every_cell_goes_to_exactly_one_shard_and_each_shard_sees_every_scenario():
    ids = [CellId.parse(f"{s}/small/{a}/plain") for s in ("CV-1", "NLP-1", "TAB-1") for a in "abcd"]
    plan = ShardPlan.split(ids, 3).shards
    assert sorted(plan) == [1, 2, 3]
    flat = [cid for cells in plan.values() for cid in cells]
    assert sorted(flat) == sorted(ids) and len(flat) == len(ids)
    assert all(len(cells) == 4 for cells in plan.values())
    for cells in plan.values():
        assert {c.scenario for c in cells} == {"CV-1", "NLP-1", "TAB-1"}
    assert ShardPlan.split(ids, 3).shards == plan  # the split depends only on the matrix
    with pytest.raises(UserError, match="shards: got 0"):
        ShardPlan.split(ids, 0)


def test_the_queue_table_skypilot_prints_is_read_by_column(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # importing sky writes ~/.sky
    from sky.jobs import state, utils

    now = time.time()
    base = {
        "task_id": 0, "resources": "1x[A100-80GB:1]", "submitted_at": now - 600,
        "end_at": None, "pool": None, "workspace": "default", "user_name": "me",
        "user_hash": "abc", "last_recovered_at": now - 100, "schedule_state": None,
        "details": None, "failure_reason": None,
    }  # fmt: skip
    tasks = [
        base | {"job_id": 7, "task_name": "dxb-s1", "job_name": "dxb-s1", "job_duration": 3725,
                "recovery_count": 2, "status": state.ManagedJobStatus.RECOVERING},
        base | {"job_id": 8, "task_name": "dxb-s2", "job_name": "dxb-s2", "job_duration": 45,
                "recovery_count": 0, "status": state.ManagedJobStatus.SUCCEEDED, "end_at": now},
    ]  # fmt: skip
    table = utils.format_job_table(tasks, show_all=False, show_user=False)
    rows = managed.parse_queue("Fetching managed job statuses...\n" + table)
    assert rows[7]["status"] == "RECOVERING" and rows[7]["recoveries"] == 2
    assert rows[7]["name"] == "dxb-s1"
    assert managed.duration_s(rows[7]["job_duration"]) == 3725
    assert rows[8]["status"] == "SUCCEEDED" and rows[8]["recoveries"] == 0
    assert managed.duration_s(rows[8]["job_duration"]) == 45
    assert managed.parse_queue("No in-progress managed jobs.") == {}


def test_job_id_is_read_from_the_launch_output():
    out = "Launching a managed job 'dxb-s1'.\n\x1b[1mManaged Job ID: 12\x1b[0m\n📋 Useful Commands"
    assert managed.parse_job_id(out) == 12
    with pytest.raises(RuntimeError, match="no managed job id"):
        managed.parse_job_id("ValueError: something failed")


@pytest.mark.parametrize("profile", ["gpu_a100", "smoke"])
def test_rendered_task_mounts_the_bucket_and_measures_only_its_cells(
    profile, tmp_path, monkeypatch
):
    monkeypatch.setenv("HOME", str(tmp_path))
    task = managed.render_task(load_profile(profile))
    mounts = task["file_mounts"]
    assert mounts["~/datarax-bench-bucket"]["mode"] == "MOUNT_CACHED"
    # The per-shard values have no default: SkyPilot refuses a launch that omits one.
    for key in (managed.CELLS_ENV, managed.BUCKET_KEY_ENV, "DATARAX_BENCH_BUCKET"):
        assert key in task["envs"] and task["envs"][key] is None
    run = task["run"]
    assert "--cells $DATARAX_BENCH_CELLS" in run
    assert "--resume-dir $HOME/datarax-bench-bucket/${DATARAX_BENCH_BUCKET_KEY}" in run
    assert "datarax-bench doctor" in run.split("datarax-bench run")[0]
    assert "WANDB" not in json.dumps(task)
    # Recovery settings of the template stay: a preemption is recovered, an error retried once.
    if profile == "gpu_a100":
        assert task["resources"]["job_recovery"] == {"max_restarts_on_errors": 1}


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


@pytest.mark.parametrize("make", ["managed", "standalone"])
def test_a_managed_job_names_the_commit_its_uploaded_workdir_lacks(make, tmp_path, monkeypatch):
    """SkyPilot uploads a managed job's workdir without `.git`: the task carries the commit and
    the dirty flag, and the job's provenance reads them there."""
    import shutil

    import sky
    import yaml

    from datarax_bench import provenance
    from datarax_bench.cloud import standalone

    monkeypatch.setenv("HOME", str(tmp_path))
    provenance.git_info.cache_clear()
    commit, dirty = _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain", "-uno"))
    if make == "managed":
        task = managed.render_task(load_profile("gpu_a100"), bucket_scheme="s3")
        overrides = [(managed.CELLS_ENV, "TAB-1/small/numpy/plain"),
                     (managed.BUCKET_KEY_ENV, "k"), ("DATARAX_BENCH_BUCKET", "dxb-results")]  # fmt: skip
    else:  # `datarax-bench task-file`, for `sky jobs launch` of a standalone task file
        path = ROOT / "benchmarks" / "sky" / "gpu-benchmark.yaml"
        task = yaml.safe_load(
            standalone.write_bucket_task(path, tmp_path / "t.yaml", "s3").read_text()
        )
        overrides = [("DATARAX_BENCH_BUCKET", "dxb-results")]
    loaded = sky.Task.from_yaml_config(json.loads(json.dumps(task)), env_overrides=overrides)
    assert loaded.envs["DATARAX_BENCH_GIT_COMMIT"] == commit
    assert loaded.envs["DATARAX_BENCH_GIT_DIRTY"] == ("true" if dirty else "false")
    # On the job's machine: the synced tree without `.git`, the task's environment.
    synced = tmp_path / "sky_workdir"
    shutil.copytree(ROOT / "config", synced / "config")
    monkeypatch.setenv("DATARAX_BENCH_ROOT", str(synced))
    for key, value in loaded.envs.items():
        monkeypatch.setenv(key, value)
    provenance.git_info.cache_clear()
    try:
        assert provenance.git_info() == (commit, dirty)
    finally:
        provenance.git_info.cache_clear()


def test_the_results_bucket_is_mounted_by_its_uri_as_skypilot_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    import sky
    import yaml
    from sky.data.storage import StorageMode

    for scheme in ("gs", "s3"):
        # Both by their URI: a bare name would let SkyPilot create a bucket on the job's cloud.
        task = managed.render_task(load_profile("gpu_a100"), bucket_scheme=scheme)
        mount = task["file_mounts"]["~/datarax-bench-bucket"]
        assert mount == {"source": f"{scheme}://${{DATARAX_BENCH_BUCKET}}", "mode": "MOUNT_CACHED"}
        path = tmp_path / f"shard-1-{scheme}.yaml"
        tasks.write_task(task, path)
        overrides = [(managed.CELLS_ENV, "TAB-1/small/numpy/plain"), (managed.BUCKET_KEY_ENV, "k"),
                     ("DATARAX_BENCH_BUCKET", "dxb-results")]  # fmt: skip
        config = yaml.safe_load(path.read_text())
        loaded = sky.Task.from_yaml_config(config, env_overrides=overrides)
        (store,) = loaded.storage_mounts.values()
        assert store.source == f"{scheme}://dxb-results"
        assert store.mode == StorageMode.MOUNT_CACHED


def test_where_buckets_cannot_be_mounted_the_task_uploads_each_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    import sky

    assert not managed.mounts_buckets("vast") and not managed.mounts_buckets("runpod/US")
    assert managed.mounts_buckets("gcp/us-central1") and managed.mounts_buckets("ssh/loopback")
    task = managed.render_task(load_profile("gpu_a100"), mounted=False)
    assert "file_mounts" not in task or not any(
        isinstance(v, dict) for v in task["file_mounts"].values()
    )
    kept = "s3://${DATARAX_BENCH_BUCKET}/${DATARAX_BENCH_BUCKET_KEY}"
    run = task["run"]
    assert f'--resume-bucket "{kept}" --cells $DATARAX_BENCH_CELLS' in run
    report = f'"{kept}/doctor/$SKYPILOT_TASK_ID/$(date -u +%Y%m%dT%H%M%S%N).json"'
    assert report in run.split("datarax-bench run")[0]  # one per attempt
    assert "AWS" not in json.dumps(task) and "WANDB" not in json.dumps(task)
    overrides = [(managed.CELLS_ENV, "TAB-1/small/numpy/plain"), (managed.BUCKET_KEY_ENV, "k"),
                 ("DATARAX_BENCH_BUCKET", "dxb-results")]  # fmt: skip
    loaded = sky.Task.from_yaml_config(json.loads(json.dumps(task)), env_overrides=overrides)
    assert not loaded.storage_mounts


def test_uploads_take_the_s3_keys_by_name_and_refuse_what_cannot_work():
    bucket = parse_bucket("s3://dxb-results/bench")
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://x"}
    assert managed.upload_credentials(bucket, "gcp", env) == ([], [])
    secrets, settings = managed.upload_credentials(bucket, "vast", env)
    assert secrets == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert settings == ["AWS_ENDPOINT_URL"]
    with_token = managed.upload_credentials(bucket, "vast", {**env, "AWS_SESSION_TOKEN": "t"})
    assert with_token[0][-1] == "AWS_SESSION_TOKEN"
    with pytest.raises(UserError, match="AWS_SECRET_ACCESS_KEY not set here"):
        managed.upload_credentials(bucket, "runpod", {"AWS_ACCESS_KEY_ID": "k"})
    with pytest.raises(UserError, match="expected an s3:// bucket there"):
        managed.upload_credentials(parse_bucket("gs://dxb-results"), "vast", env)
    argv = managed.launch_argv(Path("t.yaml"), "n", "vast", True, {"A": "1"}, (secrets, settings))
    assert argv[-6:] == ["--env", "AWS_ENDPOINT_URL", "--secret", "AWS_ACCESS_KEY_ID",
                         "--secret", "AWS_SECRET_ACCESS_KEY"]  # fmt: skip
    assert not any(v in argv for v in ("k", "s", "http://x"))


def test_launch_argv_passes_settings_by_value_and_no_secret():
    argv = managed.launch_argv(Path("t.yaml"), "dxb-s1", "gcp", True, {"A": "1 2"})
    assert argv[:8] == ["sky", "jobs", "launch", "t.yaml", "-n", "dxb-s1", "-y", "-d"]
    assert argv[8:] == ["--infra", "gcp", "--use-spot", "--env", "A=1 2"]
    assert "--infra" not in managed.launch_argv(Path("t.yaml"), "n", "any", False, {})


def test_command_lines_parse_with_the_real_sky_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    from sky.client.cli import command

    # SkyPilot copies a value passed by name from here, and refuses a name that is not set.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "by-name")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    jobs = command.cli.commands["jobs"]
    for argv in (
        managed.launch_argv(Path("t.yaml"), "dxb-s1", "gcp/us-central1", True, {"A": "1 2"}),
        managed.launch_argv(
            Path("t.yaml"),
            "dxb-s1",
            "vast",
            True,
            {"A": "1"},
            (["AWS_ACCESS_KEY_ID"], ["AWS_ENDPOINT_URL"]),
        ),
        ["sky", "jobs", "queue", "--limit", str(managed.QUEUE_LIMIT)],
        ["sky", "jobs", "cancel", "-y", "3", "4"],
        ["sky", "jobs", "logs", "--no-follow", "3"],
    ):
        jobs.commands[argv[2]].make_context(f"sky jobs {argv[2]}", argv[3:])


def test_bucket_uri():
    b = parse_bucket("s3://my-bucket/bench/runs")
    assert (b.scheme, b.name, b.prefix) == ("s3", "my-bucket", "bench/runs")
    assert b.key("smoke/gcp/cells", "raw/x.json") == "bench/runs/smoke/gcp/cells/raw/x.json"
    assert parse_bucket("s3://my-bucket").key("a") == "a"
    g = parse_bucket("gs://my_bucket.v2/bench/")
    assert (g.scheme, g.name, g.prefix, g.uri) == (
        "gs",
        "my_bucket.v2",
        "bench",
        "gs://my_bucket.v2/bench",
    )
    assert parse_bucket("gs://abc").uri == "gs://abc"
    bad_values = ("gs://b", "s3://UPPER", "s3://x", "my-bucket", "s3://under_score", "gs://Upper",
                  "gs://-dash-first", "gs://dot-last.", "gs://goog-bucket", "gs://my-google-x",
                  "gs://" + "a" * 64, "gcs://abc", "gs://")  # fmt: skip
    for bad in bad_values:
        with pytest.raises(UserError, match=r"expected s3://BUCKET\[/PREFIX\].* or gs://BUCKET"):
            parse_bucket(bad)


def _config(**changes):
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(changes)
    return config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"infra": "gcp", "cloud_mode": "managed"}, "results_bucket: got ''"),
        ({"infra": "local", "cloud_mode": "managed", "results_bucket": "s3://abc"},
         "cloud_mode: got 'managed' with infra local"),
        ({"infra": "vast", "cloud_mode": "managed", "results_bucket": "gs://abc"},
         "results_bucket: got 'gs://abc' with infra 'vast'; expected an s3:// bucket there"),
        ({"infra": "gcp", "shards": 2}, "shards: got 2, expected 1 unless cloud_mode is managed"),
        ({"infra": "gcp", "cloud_mode": "managed", "results_bucket": "gs://goog-abc"},
         "results_bucket: got 'gs://goog-abc', expected s3://BUCKET[/PREFIX]"),
        ({"infra": "gcp", "cloud_mode": "managed", "results_bucket": "gs://AB_c"},
         "gs://BUCKET[/PREFIX] (a Google Cloud Storage bucket name"),
        ({"infra": "runpod", "cloud_mode": "managed", "results_bucket": "gs://abc/p"},
         "SkyPilot cannot mount buckets on RunPod, so the job uploads each cell"),
        ({"infra": "gcp", "cloud_mode": "managed", "results_bucket": "s3://abc", "shards": 0},
         "shards"),
        ({"infra": "vast", "cloud_mode": "managed", "results_bucket": "s3://abc",
          "managed_controller": {"cpus": "four"}},
         "managed_controller: got {'cpus': 'four'}, which SkyPilot refuses"),
        ({"infra": "vast", "cloud_mode": "managed", "results_bucket": "s3://abc",
          "managed_controller": {"cpu": 2}}, "managed_controller"),
    ],
)  # fmt: skip
def test_managed_config_is_checked_before_anything_runs(changes, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_config(_config(**changes), changes, [])


@pytest.mark.parametrize(
    ("infra", "bucket"),
    [("gcp", "s3://abc/x"), ("gcp", "gs://dxb_results.v2/bench"), ("aws", "gs://abc"),
     ("vast", "s3://abc/x"), ("runpod/US", "s3://abc")],
)  # fmt: skip
def test_a_good_managed_config_passes(infra, bucket):
    config = _config(infra=infra, cloud_mode="managed", results_bucket=bucket, shards=4)
    check_config(config, {}, [])


@pytest.mark.parametrize("bucket", [[], ["results_bucket=gs://Bad_Bucket"]])
def test_bad_managed_config_on_the_command_line_is_one_line_and_exit_2(tmp_path, bucket):
    proc = subprocess.run(
        ["snakemake", "-n", "--config", "infra=gcp", "cloud_mode=managed", *bucket],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "results_bucket" in lines[0], proc.stderr[-2000:]
    assert "gs://BUCKET[/PREFIX]" in lines[0] and (not bucket or "gs://Bad_Bucket" in lines[0])


def test_the_plan_has_one_job_per_shard_and_one_pull_per_cell():
    proc = subprocess.run(
        ["snakemake", "-n", "--config", "infra=gcp", "cloud_mode=managed", "shards=3",
         "results_bucket=s3://dxb-test/p", "profile=smoke", "scenarios=[TAB-1,NLP-1]"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in out.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    cells = 2 * len(all_adapters()) * len(load_profile("smoke").styles)
    assert counts["managed_shard"] == 3 and counts["pull_cell"] == cells, out[-2000:]
    assert counts["managed_finish"] == 1 and "teardown" not in counts


def _result(tmp_path, run_smoke_cell) -> dict:
    out = tmp_path / "cell.json"
    proc = run_smoke_cell("TAB-1", "numpy", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_cells_from_shards_on_different_hardware_are_refused_naming_both(tmp_path, run_smoke_cell):
    result = _result(tmp_path, run_smoke_cell)
    other = copy.deepcopy(result)
    other["provenance"]["cpu"]["model"] = "Some Other CPU @ 2.0GHz"
    same = managed.check_hardware({1: [result], 2: [copy.deepcopy(result)]})
    assert same["CPU model"] == result["provenance"]["cpu"]["model"]
    with pytest.raises(UserError) as info:
        managed.check_hardware({1: [result], 2: [other]})
    message = str(info.value)
    assert "shard 1 vs shard 2" in message and "refusing to aggregate" in message
    assert result["provenance"]["cpu"]["model"] in message and "Some Other CPU" in message


def test_run_cells_measures_only_the_named_cells_and_records_each_attempt(tmp_path, cli_path):
    out, kept = tmp_path / "out", tmp_path / "bucket"
    variant = "small"
    cmd = [cli_path, "run", "--profile", "smoke", "--output-dir", str(out), "--scenarios",
           "TAB-1", "--resume-dir", str(kept), "--cells", f"TAB-1/{variant}/numpy/plain"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (out / "raw" / "TAB-1" / variant).iterdir()) == ["numpy.json"]
    assert (kept / "raw" / "TAB-1" / variant / "numpy.json").is_file()
    attempts = list((kept / "attempts" / "raw" / "TAB-1" / variant / "numpy.json").iterdir())
    assert len(attempts) == 1
    # Run again: the cell is taken from the resume directory; no new attempt.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "kept in the resume directory" in proc.stderr
    assert len(list(attempts[0].parent.iterdir())) == 1

    bad = subprocess.run(cmd[:-1] + ["TAB-1/small/nosuch/plain"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "'TAB-1/small/nosuch/plain'" in bad.stderr


def test_only_results_a_job_would_keep_count_as_done_before_a_launch(
    tmp_path, run_smoke_cell, monkeypatch
):
    """A result in the bucket from another commit or other settings does not spare its cell a
    job: the shard submits it, and `run --resume-dir` measures it again there."""
    from loopback import storage

    result = _result(tmp_path, run_smoke_cell)
    old_commit = copy.deepcopy(result)
    old_commit["provenance"]["git_commit"] = "0" * 40
    other_settings = copy.deepcopy(result)
    other_settings["settings"]["measurement"]["repetitions"] += 7
    cells = {
        "TAB-1/small/numpy/plain": ("raw/TAB-1/small/numpy.json", result),
        "TAB-1/small/grain/plain": ("raw/TAB-1/small/grain.json", old_commit),
        "TAB-1/small/pytorch/plain": ("raw/TAB-1/small/pytorch.json", other_settings),
        "TAB-1/small/tfdata/plain": ("raw/TAB-1/small/tfdata.json", None),  # not there
    }
    with storage.moto_server(tmp_path) as endpoint:
        for key, value in storage.aws_env(endpoint).items():
            monkeypatch.setenv(key, value)
        s3 = storage.s3_client(endpoint)
        s3.create_bucket(Bucket="dxb-results")
        bucket = parse_bucket("s3://dxb-results/bench")
        for rel, document in cells.values():
            if document is not None:
                key = bucket.key(managed.cells_key("smoke", "gcp/us-central1"), rel)
                s3.put_object(Bucket=bucket.name, Key=key, Body=json.dumps(document).encode())
        shard = managed.Shard(
            profile=load_profile("smoke"), infra="gcp/us-central1", index=1, total=1,
            name="dxb-s1", cells=list(cells), cell_files={c: r for c, (r, _) in cells.items()},
            bucket=bucket, settings=cloud.CloudSettings(), work_dir=tmp_path, log=tmp_path / "log",
        )  # fmt: skip
        assert managed.kept_cells(shard) == set(list(cells)[:3])
        assert managed.current_cells(shard) == {"TAB-1/small/numpy/plain"}
