"""The whole cloud DAG against a loopback cluster: real Snakemake, ssh, rsync; a test-only `sky`
as harsh as SkyPilot (tests/loopback/sky: setup inside the first job, jobs that outlive the CLI,
autodown on the "cluster", `sky down` that can fail with exit 0, start-up noise, preemption).

Each workflow runs on a copy of this checkout with its own git history, so that a test can
change the code between two invocations and see which code ran on the cluster. Every `sky`
command line the workflow issued is parsed by the real SkyPilot CLI; a WANDB_API_KEY sentinel
must leave no trace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from loopback import node as loopback
from support import BIN, ROOT
from support.loopback_cluster import (
    INFRA,
    SENTINEL,
    assert_no_secret,
    check_against_real_sky_cli,
    checkout_copy,
    commit,
    raw_cells,
)
from support.smoke import smoke_view
from support.wandb_offline import read_offline_run

from datarax_bench.cloud import cluster as cloud
from datarax_bench.results import load_result

SCENARIOS = ["TAB-1", "CV-1"]
# The local run a loopback run is compared with: these cells of the session's one smoke run.
SMOKE_RUN = {"numpy": tuple(SCENARIOS)}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(loopback.missing_tools()),
        reason=f"loopback cluster needs {', '.join(loopback.missing_tools())}",
    ),
]


@pytest.fixture
def cluster_env(tmp_path):
    """A loopback node, a private HOME whose `sky` is the loopback, a checkout and a work dir."""
    node = loopback.make_node(tmp_path / "node")
    home = tmp_path / "home"
    home.mkdir()
    try:  # the node is stopped however the setup or the test ends
        env = loopback.loopback_env(home, node)
        env["WANDB_API_KEY"] = SENTINEL
        env["WANDB_MODE"] = "offline"
        repo = checkout_copy(tmp_path / "repo")
        work = tmp_path / "work"
        (work / "config").mkdir(parents=True)
        shutil.copy(ROOT / "config" / "config.yaml", work / "config" / "config.yaml")
        yield node, home, env, work, repo
    finally:
        loopback.stop_skylets(home)
        node.stop()


def snakemake_argv(repo: Path, work: Path, *extra: str, scenarios=SCENARIOS) -> list[str]:
    config = [
        "profile=smoke",
        f"infra={INFRA}",
        f"scenarios=[{','.join(scenarios)}]",
        "adapters=[numpy]",
        "idle_minutes=5",
    ]
    argv = [str(BIN / "snakemake"), "--snakefile", str(repo / "Snakefile")]
    return argv + ["--directory", str(work), "--config", *config, *extra]


def snakemake(repo, work, env, *extra, scenarios=SCENARIOS, timeout=900):
    argv = snakemake_argv(repo, work, *extra, scenarios=scenarios)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def verbs(calls: list[dict]) -> list[str]:
    return [c["argv"][0] for c in calls]


def ledger(run_dir: Path) -> list[dict]:
    path = run_dir / "cloud" / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def sky_status(env) -> list:
    proc = subprocess.run(
        ["sky", "status", "-o", "json"], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout[proc.stdout.index("[") :])


def test_loopback_run_matches_local_run_bills_and_tears_down(cluster_env, tmp_path, smoke_results):
    node, home, env, work, repo = cluster_env
    run_dir = work / "results" / "smoke" / "ssh_loopback"

    # First run keeps the cluster, so that a rerun can show it is reused.
    first = snakemake(repo, work, env, "keep_cluster=True")
    assert first.returncode == 0, first.stderr[-3000:]
    calls = loopback.calls(home)
    assert verbs(calls).count("launch") == 1 and verbs(calls).count("exec") == 2
    assert "down" not in verbs(calls)
    launch = next(c["argv"] for c in calls if c["argv"][0] == "launch")
    assert {"--infra", INFRA, "--down", "--wait-for", "none"} <= set(launch)
    # use_spot auto: SkyPilot's own check says SSH node pools have no spot here.
    assert "--no-use-spot" in launch and "--use-spot" not in launch
    assert "--secret" not in launch  # uploads happen here; the cluster never gets the key
    # autodown: launch timeout + idle before setup, then a cell's allowance + idle.
    assert launch[launch.index("-i") + 1] == str(60 + 5)
    autostop = next(c["argv"] for c in calls if c["argv"][0] == "autostop")
    assert autostop[autostop.index("-i") + 1] == str(int((120 * 2 + 600) / 60 + 5))
    hardware = json.loads((run_dir / "cloud" / "doctor.json").read_text())
    assert hardware["backend_ok"] is True
    assert json.loads((run_dir / "cloud" / "teardown.json").read_text())["kept"]
    events = [e["event"] for e in ledger(run_dir)]
    assert events[:5] == ["launch_requested", "up", "setup_done", "autodown_armed", "cell_started"]
    assert events.count("pulled") == 2

    # Change the code, then rerun one cell while the cluster is up: no second launch, the
    # cell runs the new code and says so; then teardown, verified.
    (repo / "src" / "datarax_bench" / "marker_of_new_code.py").write_text("# new\n")
    new_commit = commit(repo, "a change made between two invocations")
    cell = run_dir / "raw" / "TAB-1" / "small" / "numpy.json"
    second = snakemake(repo, work, env, "keep_cluster=False", "-R", str(cell.relative_to(work)))
    assert second.returncode == 0, second.stderr[-3000:]
    calls = loopback.calls(home)
    assert verbs(calls).count("launch") == 1 and verbs(calls).count("exec") == 3
    rerun = load_result(cell)
    assert stat.S_IMODE(cell.stat().st_mode) == 0o666 & ~current_umask()  # as a local result
    assert rerun["provenance"]["git_commit"] == new_commit
    assert rerun["provenance"]["git_dirty"] is False
    untouched = load_result(run_dir / "raw" / "CV-1" / "small" / "numpy.json")
    assert untouched["provenance"]["git_commit"] != new_commit
    teardown = json.loads((run_dir / "cloud" / "teardown.json").read_text())
    assert teardown["verified"] is True and teardown["still_up"] == []
    assert teardown["cost_report"][0]["name"] == teardown["clusters"][0]
    assert not list(node.home.iterdir()), "teardown left files on the node"
    assert sky_status(env) == []

    # The bill: in teardown.json, summary.md and the W&B run's summary.
    bill = teardown["billing"]
    assert bill["launches"] == 1 and bill["cells_pulled"] == 3 and bill["still_billing"] is False
    assert bill["cost_usd"] == 0.0 and bill["hourly_usd"] == 0.0
    assert 0 < bill["measuring_share"] < 1 and bill["billed_s"] > 0
    summary = (run_dir / "summary.md").read_text()
    assert "## Cloud cost" in summary and "share of billed time measuring" in summary
    marker = json.loads((run_dir / "wandb_export.json").read_text())
    wandb_summary = read_offline_run(Path(marker["run_dir"]))["summary"]
    assert wandb_summary["cloud/cells_pulled"] == 3
    assert wandb_summary["cloud/measuring_share"] == bill["measuring_share"]

    # Same cells, same statuses as a local run.
    local = smoke_view(smoke_results, tmp_path / "local", SCENARIOS)
    assert raw_cells(run_dir) == raw_cells(local)
    assert set(raw_cells(run_dir).values()) == {"ok"}
    assert rerun["provenance"]["environment"]["JAX_PLATFORMS"] == "cpu"

    check_against_real_sky_cli(loopback.calls(home))
    assert not any(SENTINEL in " ".join(c["argv"]) for c in loopback.calls(home))
    assert_no_secret(work, home / ".sky", node.home)


def test_preemption_costs_only_what_failed_and_a_plain_rerun_finishes(cluster_env):
    node, home, env, work, repo = cluster_env
    run_dir = work / "results" / "smoke" / "ssh_loopback"
    scenarios = ["TAB-1", "CV-1", "NLP-1"]
    loopback.set_faults(home, preempt_after_execs=1)  # the node dies during the second cell

    failed = snakemake(repo, work, env, scenarios=scenarios)
    assert failed.returncode != 0
    out = failed.stdout + failed.stderr
    logs = "\n".join(p.read_text() for p in (work / "logs").rglob("*.log"))
    cluster = ledger(run_dir)[0]["cluster"]
    assert f"cluster {cluster} is" in logs and "the cell was not measured" in logs
    assert "the cell was not measured" in out
    assert "onerror: tore down" in out and "verified" in out
    assert ledger(run_dir)[-1]["event"] == "teardown_verified"
    # The failed run's bill: billed until the verified teardown, nothing still billing.
    failed_bill = json.loads((run_dir / "cloud" / cloud.FAILED_RUN_BILL).read_text())["billing"]
    assert failed_bill["still_billing"] is False and failed_bill["launches"] == 1
    assert "min billed" in out and "ended: torn down (verified)" in out
    first_calls = loopback.calls(home)
    assert verbs(first_calls).count("launch") == 1, "a cell launched the cluster again"
    measured = raw_cells(run_dir)
    assert len(measured) == 1 and set(measured.values()) == {"ok"}
    kept = {p: p.read_bytes() for p in (run_dir / "raw").rglob("*.json")}
    assert sky_status(env) == []

    node.start()  # capacity is back: the same command provisions and measures what is missing
    rerun = snakemake(repo, work, env, scenarios=scenarios)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    calls = loopback.calls(home)[len(first_calls) :]
    assert verbs(calls).count("launch") == 1
    execs = [c["argv"][-1] for c in calls if c["argv"][0] == "exec"]
    missing = {s for s in scenarios if (s, "small", "numpy") not in measured}
    assert sorted(e.split("--scenario ")[1].split()[0] for e in execs) == sorted(missing)
    assert {p: p.read_bytes() for p in kept} == kept
    assert len(raw_cells(run_dir)) == 3
    assert verbs(calls)[-1] == "cost-report" and "down" in verbs(calls)
    bill = json.loads((run_dir / "cloud" / "teardown.json").read_text())["billing"]
    assert bill["launches"] == 2 and bill["cells_pulled"] == 3
    # Billed: each launch to its verified end (the preempted node still listed, INIT, until the
    # error handler's teardown; then the rerun's teardown), not the gap between runs.
    events = ledger(run_dir)
    launches = [e["t"] for e in events if e["event"] == "launch_requested"]
    # Every cell that found the node dead saw it still listed (INIT): never taken for gone.
    assert {e.get("status") for e in events if e["event"] == "not_up"} == {"INIT"}
    assert "gone" not in [e["event"] for e in events]
    downs = [e["t"] for e in events if e["event"] == "teardown_verified"]
    expected = downs[0] - launches[0] + downs[-1] - launches[1]
    assert bill["billed_s"] == pytest.approx(expected, abs=0.5)
    check_against_real_sky_cli(loopback.calls(home))


def test_a_killed_run_resumes_on_its_cluster_without_deleting_anything(cluster_env):
    node, home, env, work, repo = cluster_env
    run_dir = work / "results" / "smoke" / "ssh_loopback"
    scenarios = ["TAB-1", "CV-1", "NLP-1"]
    proc = subprocess.Popen(
        snakemake_argv(repo, work, scenarios=scenarios),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip

    def started() -> list[dict]:
        path = run_dir / "cloud" / "ledger.jsonl"
        return [e for e in ledger(run_dir) if e["event"] == "cell_started"] if path.exists() else []

    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(started()) < 2:
            time.sleep(0.1)
        time.sleep(3)  # the second cell is measuring; Snakemake has recorded the first
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # this machine "dies": no onerror handler runs
        proc.wait()
    assert len(started()) >= 2, "the second cell never started"
    first = started()[0]["cell"].replace("/", os.sep)
    before = {p: p.read_bytes() for p in (run_dir / "raw").rglob("*.json") if first in str(p)}
    assert len(before) == 1
    n_calls = len(loopback.calls(home))
    subprocess.run([str(BIN / "snakemake"), "--directory", str(work), "--snakefile",
                    str(repo / "Snakefile"), "--unlock"], env=env, capture_output=True)  # fmt: skip
    rerun = snakemake(repo, work, env, "--rerun-incomplete", scenarios=scenarios)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    calls = loopback.calls(home)[n_calls:]
    assert verbs(calls).count("launch") == 0, "the cluster was up: it must be reused"
    # The killed run's job was still measuring there: cancelled before any new cell ran.
    assert verbs(calls).index("cancel") < verbs(calls).index("exec")
    assert all(p.read_bytes() == data for p, data in before.items())
    assert len(raw_cells(run_dir)) == 3
    assert sky_status(env) == []


def test_a_hanging_setup_is_cut_by_the_launch_timeout_and_torn_down(cluster_env):
    node, home, env, work, repo = cluster_env
    loopback.set_faults(home, setup_hangs=True)
    started = time.monotonic()
    # 9 s: the loopback reaches the hung setup within a few seconds; the test waits the rest out.
    failed = snakemake(
        repo, work, env, "launch_timeout_minutes=0.15", scenarios=["TAB-1"], timeout=240
    )
    assert failed.returncode != 0
    assert time.monotonic() - started < 200
    log = work / "logs" / "smoke" / "ssh_loopback" / "cloud" / "measure" / "TAB-1" / "small"
    log = (log / "numpy.log").read_text()
    assert "ran past its limit of 9 s" in log
    assert "it was torn down (verified with `sky status`)" in log
    assert sky_status(env) == []
    assert not list(node.home.iterdir())


def test_the_cluster_autodowns_itself_when_this_machine_dies_during_a_hung_setup(cluster_env):
    node, home, env, work, repo = cluster_env
    loopback.set_faults(home, setup_hangs=True)
    env = {**env, "LOOPBACK_SKY_SECONDS_PER_MINUTE": "0.1"}  # its deadline waited out: 6 s
    # The launch limit (60 min) is far away; the cluster's own deadline is 60 + 1 "minutes".
    proc = subprocess.Popen(
        snakemake_argv(repo, work, "idle_minutes=1", scenarios=["TAB-1"]),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    clusters = home / ".sky" / "loopback" / "clusters"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
            json.loads(p.read_text()).get("autostop", -1) > 0 for p in clusters.glob("*.json")
        ):
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # nothing on this side tears anything down now
        proc.wait()
    assert list(clusters.glob("*.json")), "the cluster was never launched"
    deadline = time.monotonic() + 61 * 0.1 + 30
    while time.monotonic() < deadline and list(clusters.glob("*.json")):
        time.sleep(0.5)
    assert not list(clusters.glob("*.json")), "the hung cluster was never torn down"
    history = json.loads((home / ".sky" / "loopback" / "history.json").read_text())
    assert [r["reason"] for r in history.values()] == ["AUTODOWN"]
