"""What decides whether a cloud run loses money: status reading under CLI noise, teardown that
is verified (SkyPilot's `sky down` exits 0 when it fails), spot only where the cloud has it,
every `sky` call under a wall-clock limit. Against the loopback `sky` and SkyPilot's own code."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from loopback import node as loopback
from support import BIN, ROOT

from datarax_bench.cloud import billing, sky
from datarax_bench.cloud import cluster as cloud
from datarax_bench.errors import UserError
from datarax_bench.report.bill import billing_markdown_rows

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
    assert sky.json_records(noisy) == [{"name": "c1", "status": "UP"}]
    assert sky.json_records("Cluster(s) not found: c1.\n[]\n") == []
    with pytest.raises(ValueError):
        sky.json_records("Traceback ...\nsky.exceptions.ApiServerConnectionError")


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
    assert sky.cluster_status("c-unknown") is None
    launch(home, "c1")
    subprocess.run(["sky", "api", "stop"], check=True, capture_output=True)
    assert sky.cluster_status("c1") == "UP"  # noise again: the server starts anew
    node.stop()
    assert sky.cluster_status("c1") == "INIT"  # an unreachable node after a refresh


def test_an_unreadable_status_is_an_error_not_a_missing_cluster(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sky").write_text("#!/bin/sh\necho 'sky.exceptions.ApiServerConnectionError'\nexit 1\n")
    (fake / "sky").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setattr(cloud.time, "sleep", lambda s: None)
    with pytest.raises(RuntimeError, match="cannot read the status of c1"):
        sky.cluster_status("c1")


def test_a_sky_call_that_hangs_is_killed_at_its_limit(tmp_path):
    log = tmp_path / "log"
    started = time.monotonic()
    with pytest.raises(sky.SkyTimeout, match="ran past its limit of 1 s"):
        sky.run_sky(["sleep", "30"], log, timeout=1)
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
    ledger = billing.Ledger(tmp_path / "ledger.jsonl")
    record = cloud.teardown(["c1"], tmp_path / "log", ledger)
    assert record["verified"] is True and record["still_up"] == []
    assert [a["still_listed"] for a in record["attempts"]] == [["c1"], []]
    assert [a["down_exit_code"] for a in record["attempts"]] == [0, 0]
    assert [e["event"] for e in ledger.events("c1")] == ["teardown_verified"]
    assert sky.cluster_status("c1") is None


@needs_loopback
@pytest.mark.slow
def test_teardown_that_never_takes_fails_loudly_naming_the_cluster(loopback_home, tmp_path):
    node, home = loopback_home
    launch(home, "c1")
    loopback.set_faults(home, down_noop=10)
    ledger = billing.Ledger(tmp_path / "ledger.jsonl")
    with pytest.raises(RuntimeError, match=r"cluster\(s\) c1 still exist after 3 .*STILL BILL"):
        cloud.teardown(["c1"], tmp_path / "log", ledger)
    assert [e["event"] for e in ledger.events("c1")] == ["teardown_failed"]
    assert sky.cluster_status("c1") == "UP"


def test_spot_is_decided_by_skypilots_own_feature_checks():
    assert sky.resolve_use_spot("vast", "auto")[0] is True
    assert sky.resolve_use_spot("gcp/us-central1", "auto")[0] is True
    use, why = sky.resolve_use_spot("lambda", "auto")
    assert use is False and "Lambda" in why
    # A Kubernetes or SSH pool offers spot only with labelled nodes: on-demand unless checked.
    assert sky.resolve_use_spot("ssh/my-pool", "auto")[0] is False
    assert sky.resolve_use_spot("k8s/my-context", "auto")[0] is False
    assert sky.resolve_use_spot("vast", False) == (False, "use_spot: false")
    with pytest.raises(UserError, match="use_spot: true, but infra 'lambda': Lambda has no spot"):
        sky.resolve_use_spot("lambda", True)


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
    # The plan estimates the run's length against max_cluster_hours (default 12 h), from the
    # cells the cloud measures, in batches (past 75% of the ceiling it would be a warning).
    estimates = [line for line in auto.stderr.splitlines() if "the run is estimated at" in line]
    assert len(estimates) == 1, estimates
    assert estimates[0].removeprefix("warning: ").startswith("profile gpu_a100: "), estimates
    # (Snakemake prints its job table before and after the plan: the same count twice.) Every
    # cell has its job; the unsupported ones are written here, so the cloud measures fewer.
    (jobs,) = set(re.findall(r"^measure_remote\s+(\d+)$", auto.stdout, re.MULTILINE))
    found = re.search(r"\((\d+) cells in (\d+) remote calls x 30 s \+ ", estimates[0])
    assert found, estimates[0]
    remote, calls = int(found[1]), int(found[2])
    assert 0 < remote < int(jobs) and remote / 12 <= calls < remote
    assert "of max_cluster_hours 12" in estimates[0]


def test_a_plan_that_cannot_fit_max_cluster_hours_is_refused_in_one_line(tmp_path):
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    argv = [str(BIN / "snakemake"), "-n", "--snakefile", str(ROOT / "Snakefile")]
    argv += ["--directory", str(tmp_path), "--config", "profile=gpu_a100", "infra=vast"]
    proc = subprocess.run(
        [*argv, "max_cluster_hours=4"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    # The plan's own numbers (its cells grow with the adapters): the hours, what they add up.
    (line,) = errors
    found = re.fullmatch(
        r"error: max_cluster_hours: got 4, but profile gpu_a100: the run is estimated at "
        r"([0-9.]+) h \((\d+) cells in (\d+) remote calls x 30 s \+ (\d+) worker processes x "
        r"30 s \+ 15 min launch\); expected max_cluster_hours >= (\d+), or fewer scenarios",
        line,
    )
    assert found, line
    hours, _, calls, processes, needed = found.groups()
    exact = (int(calls) * 30 + int(processes) * 30 + 900) / 3600
    assert float(hours) == round(exact, 1) and int(needed) == math.ceil(exact) > 4
    assert "measure_remote" not in proc.stdout


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
    ledger = billing.Ledger(tmp_path / "ledger.jsonl")
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
    bill = billing.billing(tmp_path, "c1", [{"name": "c1", "total_cost": 0.19}])
    assert bill["billed_s"] == 600.0 and bill["cost_usd"] == pytest.approx(0.2)
    assert bill["cost_per_cell_usd"] == pytest.approx(0.1)
    assert bill["measuring_share"] == pytest.approx(150 / 600)
    assert bill["orchestration_s_per_cell"] == pytest.approx(10.0)
    assert bill["sky_cost_report_usd"] == 0.19 and bill["still_billing"] is False
    assert bill["billing_state"].startswith("ended: torn down (verified)")


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


def fake_sky(tmp_path: Path, monkeypatch, answers: dict[str, tuple[int, str]]) -> Path:
    """A `sky` on PATH that answers each verb (`exec`, `status`, ...) with (exit code, stdout)
    and logs every call; unknown verbs exit 0 silently."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    calls = tmp_path / "sky-calls.log"
    script = bin_dir / "sky"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"answers = json.loads({json.dumps(json.dumps(answers))})\n"
        f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "code, out = answers.get(sys.argv[1], (0, ''))\n"
        "print(out)\nsys.exit(code)\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(cloud.time, "sleep", lambda s: None)
    return calls


def write_ledger(path: Path, cluster: str, events: list[tuple[str, float, dict]]) -> None:
    with open(path, "w") as fh:
        for event, t, extra in events:
            record = {"event": event, "cluster": cluster, "t": t, "at": f"t{t:g}", **extra}
            fh.write(json.dumps(record) + "\n")


UNREADABLE = (1, "sky.exceptions.ApiServerConnectionError: cannot reach the API server")


def test_a_failed_cell_whose_status_cannot_be_read_leaves_the_cluster_billing(
    tmp_path, monkeypatch
):
    from datarax_bench.workload.catalog import load_profile

    fake_sky(tmp_path, monkeypatch, {"exec": (1, "job failed"), "status": UNREADABLE})
    monkeypatch.setenv(cloud.INVOCATION_ENV, "this-run")
    work = tmp_path / "cloud"
    work.mkdir()
    (work / "task.yaml").write_text(yaml.safe_dump({"envs": {}}))
    launched = time.time() - 600
    write_ledger(work / "ledger.jsonl", "c1", [("launch_requested", launched, {})])
    record = {"invocation": "this-run", "autodown_minutes": 40, "task": str(work / "task.yaml")}
    (work / "cluster.json").write_text(json.dumps(record))
    spec = cloud.ClusterSpec(
        profile=load_profile("smoke"), infra="vast", name="c1", settings=cloud.CloudSettings(),
        work_dir=work, log=tmp_path / "log",
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="could not be read .* may still be up and billing"):
        cloud.measure_remote_cell(spec, "TAB-1", "small", "numpy", tmp_path / "out.json")
    events = [e["event"] for e in billing.ledger_for(work).events("c1")]
    assert "gone" not in events and events[-1] == "status_unreadable"
    bill = billing.billing(work, "c1")
    assert bill["still_billing"] is True and bill["billed_s"] >= 600
    assert bill["billing_state"].startswith("STILL BILLING: its status could not be read")
    summary = billing_markdown_rows(bill)
    assert ("billing", bill["billing_state"]) in summary


def test_only_a_verified_absence_stops_the_bill(tmp_path):
    cluster_events = {
        "gone": ("gone", {}),
        "stopped": ("not_up", {"status": "STOPPED"}),
        "unreadable": ("status_unreadable", {"error": "exit 1"}),
        "teardown failed": ("teardown_failed", {}),
    }
    still = {}
    for name, (event, extra) in cluster_events.items():
        work = tmp_path / name
        work.mkdir()
        write_ledger(work / "ledger.jsonl", "c1", [("launch_requested", 1000.0, {}),
                                                    (event, 1600.0, extra)])  # fmt: skip
        bill = billing.billing(work, "c1")
        still[name] = bill["still_billing"]
        if not bill["still_billing"]:
            assert bill["billed_s"] == 600.0
    assert still == {"gone": False, "stopped": True, "unreadable": True, "teardown failed": True}


def test_a_failed_run_writes_its_bill_with_a_verified_teardown(tmp_path, monkeypatch):
    calls = fake_sky(tmp_path, monkeypatch, {"status": (0, "[]"), "cost-report": (0, "[]")})
    work = tmp_path / "cloud"
    work.mkdir()
    write_ledger(work / "ledger.jsonl", "c1", [
        ("launch_requested", time.time() - 900, {}),
        ("up", time.time() - 600, {"hourly_usd": 2.0}),
    ])  # fmt: skip
    record, line = cloud.end_failed_run(work, "c1", tmp_path / "log", keep_cluster=False)
    written = json.loads((work / cloud.FAILED_RUN_BILL).read_text())
    assert written == record and "down --async -y c1" in calls.read_text()
    bill = record["billing"]
    assert bill["still_billing"] is False and bill["billing_state"].startswith("ended: torn down")
    assert bill["billed_s"] == pytest.approx(900, abs=30) and bill["cost_usd"] > 0.49
    assert line.startswith("tore down c1 (verified") and "min billed" in line


def test_a_failed_run_whose_teardown_cannot_be_verified_says_it_still_bills(tmp_path, monkeypatch):
    fake_sky(tmp_path, monkeypatch, {"status": UNREADABLE, "cost-report": UNREADABLE})
    work = tmp_path / "cloud"
    work.mkdir()
    write_ledger(work / "ledger.jsonl", "c1", [("launch_requested", time.time() - 60, {})])
    record, line = cloud.end_failed_run(work, "c1", tmp_path / "log", keep_cluster=False)
    assert record["still_up"] == ["c1"] and "STILL BILL" in line
    bill = json.loads((work / cloud.FAILED_RUN_BILL).read_text())["billing"]
    assert bill["still_billing"] is True
    assert bill["billing_state"].startswith("STILL BILLING: its teardown failed")


def test_a_kept_cluster_after_a_failure_is_billed_as_still_billing(tmp_path, monkeypatch):
    calls = fake_sky(tmp_path, monkeypatch, {"cost-report": (0, "[]")})
    work = tmp_path / "cloud"
    work.mkdir()
    write_ledger(work / "ledger.jsonl", "c1", [("launch_requested", time.time() - 60, {})])
    record, line = cloud.end_failed_run(work, "c1", tmp_path / "log", keep_cluster=True)
    assert "down" not in calls.read_text() and "stays up (and bills)" in line
    assert record["billing"]["billing_state"].startswith("STILL BILLING: it was kept")


def test_the_bill_says_what_its_price_covers_and_what_was_launched(tmp_path):
    write_ledger(tmp_path / "ledger.jsonl", "c1", [
        ("launch_requested", 1000.0, {}), ("up", 1100.0, {"hourly_usd": 1.5}),
        ("teardown_verified", 4600.0, {}),
    ])  # fmt: skip
    resources = {"cloud": "vast", "instance_type": "1x-A100-80GB", "use_spot": True}
    report = [{"name": "c1", "total_cost": 1.4, "resources": resources}]
    bill = billing.billing(tmp_path, "c1", report)
    assert bill["price_source"] == billing.PRICE_SOURCE
    assert "catalog" in bill["price_source"] and "compute only" in bill["price_source"]
    assert "not the rented offer" in bill["price_source"]
    assert bill["launched_resources"] == resources
    rows = dict(billing_markdown_rows(bill))
    assert rows["price source"] == billing.PRICE_SOURCE


def test_sky_reports_no_price_of_the_rented_offer(tmp_path, monkeypatch):
    """What the bill's price source claims, read from SkyPilot 0.14.1 itself: the status JSON
    carries no price, and the cost report prices the launched resources from the catalog."""
    import inspect

    monkeypatch.setenv("HOME", str(tmp_path))  # importing sky writes under ~/.sky

    from sky import core
    from sky.schemas.api.responses import StatusResponse

    assert not [f for f in StatusResponse.model_fields if "price" in f or "cost" in f]
    assert "launched_resources.get_cost(duration)" in inspect.getsource(core.cost_report)
