"""What decides whether a cloud run loses money: status reading under CLI noise, teardown that
is verified (SkyPilot's `sky down` exits 0 when it fails), spot only where the cloud has it,
every `sky` call under a wall-clock limit. Against the loopback `sky` and SkyPilot's own code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from datarax_bench import cloud
from datarax_bench.errors import UserError

sys.path.insert(0, str(Path(__file__).parent / "loopback"))
import node as loopback  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
needs_loopback = pytest.mark.skipif(
    bool(loopback.missing_tools()),
    reason=f"loopback cluster needs {', '.join(loopback.missing_tools())}",
)


def test_json_records_ignore_the_noise_around_them():
    noisy = (
        "Failed to connect to SkyPilot API server at http://127.0.0.1:46580. Starting a local "
        "server.\n✓ SkyPilot API server started. [logs]\nCluster(s) not found: c9.\n"
        '[\n  {"name": "c1", "status": "UP"}\n]\n'
    )
    assert cloud.json_records(noisy) == [{"name": "c1", "status": "UP"}]
    assert cloud.json_records("Cluster(s) not found: c1.\n[]\n") == []
    with pytest.raises(ValueError):
        cloud.json_records("Traceback ...\nsky.exceptions.ApiServerConnectionError")


@pytest.fixture
def loopback_home(tmp_path, monkeypatch):
    """This process's `sky` is the loopback, with a fresh HOME; one launched cluster `c1`."""
    node = loopback.make_node(tmp_path / "node")
    home = tmp_path / "home"
    home.mkdir()
    try:  # the node is stopped however the setup or the test ends
        env = loopback.loopback_env(home, node)
        for key in ("HOME", "PATH", "LOOPBACK_SKY_NODE"):
            monkeypatch.setenv(key, env[key])
        yield node, home
    finally:
        loopback.stop_skylets(home)
        node.stop()


def launch(home: Path, cluster: str) -> None:
    task = home / "task.yaml"
    task.write_text(yaml.safe_dump({"run": "true", "workdir": str(home / "empty")}))
    (home / "empty").mkdir(exist_ok=True)
    subprocess.run(
        ["sky", "launch", "-c", cluster, str(task), "-y", "--infra", "ssh/loopback"],
        check=True, capture_output=True,
    )  # fmt: skip


@needs_loopback
@pytest.mark.slow
def test_status_reads_through_server_start_up_noise_and_not_found(loopback_home):
    node, home = loopback_home
    # The very first call prints the API server's start-up text before the JSON.
    assert cloud.cluster_status("c-unknown") is None
    launch(home, "c1")
    subprocess.run(["sky", "api", "stop"], check=True, capture_output=True)
    assert cloud.cluster_status("c1") == "UP"  # noise again: the server starts anew
    node.stop()
    assert cloud.cluster_status("c1") == "INIT"  # an unreachable node after a refresh


def test_an_unreadable_status_is_an_error_not_a_missing_cluster(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sky").write_text("#!/bin/sh\necho 'sky.exceptions.ApiServerConnectionError'\nexit 1\n")
    (fake / "sky").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setattr(cloud.time, "sleep", lambda s: None)
    with pytest.raises(RuntimeError, match="cannot read the status of c1"):
        cloud.cluster_status("c1")


def test_a_sky_call_that_hangs_is_killed_at_its_limit(tmp_path):
    log = tmp_path / "log"
    started = time.monotonic()
    with pytest.raises(cloud.SkyTimeout, match="ran past its limit of 1 s"):
        cloud.run_sky(["sleep", "30"], log, timeout=1)
    assert time.monotonic() - started < 10
    assert "timed out after 1 s, killed" in log.read_text()


@needs_loopback
@pytest.mark.slow
def test_the_loopback_reports_job_status_with_skypilots_exit_codes(loopback_home):
    node, home = loopback_home
    launch(home, "c1")
    subprocess.run(["sky", "exec", "c1", "--", "exit 3"], capture_output=True)
    codes = [
        subprocess.run(["sky", "logs", "c1", job, "--status"], capture_output=True).returncode
        for job in ("1", "2", "9")
    ]
    assert codes == [0, 100, 102]
    subprocess.run(["sky", "exec", "-d", "c1", "--", "sleep 60"], check=True, capture_output=True)
    assert subprocess.run(["sky", "logs", "c1", "3", "--status"]).returncode == 101
    subprocess.run(["sky", "cancel", "-y", "c1", "-a"], check=True, capture_output=True)
    assert subprocess.run(["sky", "logs", "c1", "3", "--status"]).returncode == 103


@needs_loopback
@pytest.mark.slow
def test_teardown_retries_a_down_that_failed_with_exit_0(loopback_home, tmp_path):
    node, home = loopback_home
    launch(home, "c1")
    loopback.set_faults(home, down_noop=1)
    ledger = cloud.Ledger(tmp_path / "ledger.jsonl")
    record = cloud.teardown(["c1"], tmp_path / "log", ledger)
    assert record["verified"] is True and record["still_up"] == []
    assert [a["still_listed"] for a in record["attempts"]] == [["c1"], []]
    assert [a["down_exit_code"] for a in record["attempts"]] == [0, 0]
    assert [e["event"] for e in ledger.events("c1")] == ["teardown_verified"]
    assert cloud.cluster_status("c1") is None


@needs_loopback
@pytest.mark.slow
def test_teardown_that_never_takes_fails_loudly_naming_the_cluster(loopback_home, tmp_path):
    node, home = loopback_home
    launch(home, "c1")
    loopback.set_faults(home, down_noop=10)
    ledger = cloud.Ledger(tmp_path / "ledger.jsonl")
    with pytest.raises(RuntimeError, match=r"cluster\(s\) c1 still exist after 3 .*STILL BILL"):
        cloud.teardown(["c1"], tmp_path / "log", ledger)
    assert [e["event"] for e in ledger.events("c1")] == ["teardown_failed"]
    assert cloud.cluster_status("c1") == "UP"


def test_spot_is_decided_by_skypilots_own_feature_checks():
    assert cloud.resolve_use_spot("vast", "auto")[0] is True
    assert cloud.resolve_use_spot("gcp/us-central1", "auto")[0] is True
    use, why = cloud.resolve_use_spot("lambda", "auto")
    assert use is False and "Lambda" in why
    # A Kubernetes or SSH pool offers spot only with labelled nodes: on-demand unless checked.
    assert cloud.resolve_use_spot("ssh/my-pool", "auto")[0] is False
    assert cloud.resolve_use_spot("k8s/my-context", "auto")[0] is False
    assert cloud.resolve_use_spot("vast", False) == (False, "use_spot: false")
    with pytest.raises(UserError, match="use_spot: true, but infra 'lambda': Lambda has no spot"):
        cloud.resolve_use_spot("lambda", True)


@pytest.mark.slow
def test_explicit_spot_on_a_cloud_without_it_stops_the_plan_with_one_line(tmp_path):
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    argv = [str(BIN / "snakemake"), "-n", "--snakefile", str(ROOT / "Snakefile")]
    argv += ["--directory", str(tmp_path), "--config", "profile=gpu_a100", "infra=lambda"]
    proc = subprocess.run([*argv, "use_spot=True"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "use_spot" in line]
    assert errors == [
        "error: use_spot: true, but infra 'lambda': Lambda has no spot instances (SkyPilot's "
        "feature check); expected use_spot: auto or false"
    ]
    assert "measure_remote" not in proc.stdout
    auto = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert auto.returncode == 0, auto.stderr[-2000:]
    assert "measure_remote" in auto.stdout


@needs_loopback
@pytest.mark.slow
def test_the_loopback_refuses_spot_where_skypilot_does(loopback_home):
    node, home = loopback_home
    task = home / "task.yaml"
    task.write_text(yaml.safe_dump({"run": "true"}))
    proc = subprocess.run(
        ["sky", "launch", "-c", "c1", str(task), "-y", "--infra", "ssh/pool", "--use-spot"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0 and "Spot instances are not supported in SSH" in proc.stderr


def test_billing_from_the_ledger(tmp_path):
    ledger = cloud.Ledger(tmp_path / "ledger.jsonl")
    events = [
        ("launch_requested", 1000.0, {}),
        ("up", 1300.0, {"hourly_usd": 1.2}),
        ("pulled", 1400.0, {"measured_s": 60.0, "job_s": 70.0}),
        ("pulled", 1500.0, {"measured_s": 90.0, "job_s": 100.0}),
        ("teardown_verified", 1600.0, {}),
    ]
    with open(ledger.path, "w") as fh:
        for event, t, extra in events:
            fh.write(json.dumps({"event": event, "cluster": "c1", "t": t, **extra}) + "\n")
    bill = cloud.billing(tmp_path, "c1", [{"name": "c1", "total_cost": 0.19}])
    assert bill["billed_s"] == 600.0 and bill["cost_usd"] == pytest.approx(0.2)
    assert bill["cost_per_cell_usd"] == pytest.approx(0.1)
    assert bill["measuring_share"] == pytest.approx(150 / 600)
    assert bill["orchestration_s_per_cell"] == pytest.approx(10.0)
    assert bill["sky_cost_report_usd"] == 0.19 and bill["still_up"] is False


@needs_loopback
@pytest.mark.slow
def test_the_loopback_refuses_what_skypilot_refuses_before_launching(loopback_home):
    node, home = loopback_home
    task = home / "task.yaml"
    task.write_text(yaml.safe_dump({"run": "true", "envs": {"BUCKET": None}}))
    base = ["sky", "launch", "-c", "c1", str(task), "-y", "--infra", "ssh/pool"]
    unset = subprocess.run(base, capture_output=True, text=True)
    assert unset.returncode != 0 and "Environment variable 'BUCKET' is None" in unset.stderr
    assert subprocess.run([*base, "--env", "BUCKET=b"], capture_output=True).returncode == 0
    mounted = home / "mounted.yaml"
    mounted.write_text(
        yaml.safe_dump({"run": "true", "file_mounts": {"~/b": {"name": "b", "mode": "MOUNT"}}})
    )
    vast = ["sky", "launch", "-c", "c2", str(mounted), "-y", "--infra", "vast"]
    refused = subprocess.run(vast, capture_output=True, text=True)
    assert "Mounting object stores is not supported on Vast" in refused.stderr


@needs_loopback
@pytest.mark.slow
def test_two_loopback_clusters_on_one_node_keep_their_jobs_apart(loopback_home):
    node, home = loopback_home
    launch(home, "c1")
    launch(home, "c2")
    subprocess.run(["sky", "exec", "c1", "--", "exit 3"], capture_output=True)
    subprocess.run(["sky", "exec", "c2", "--", "true"], check=True, capture_output=True)
    status = [
        subprocess.run(["sky", "logs", c, "2", "--status"], capture_output=True).returncode
        for c in ("c1", "c2")
    ]
    assert status == [100, 0]
