"""The whole cloud DAG against a loopback cluster: real Snakemake, ssh, rsync; a test-only `sky`.

provision -> run_remote -> pull (rsync over the ssh alias) -> aggregate -> teardown, compared
with a local run of the same cells; every `sky` command line the workflow issued is parsed by
the real SkyPilot CLI; a WANDB_API_KEY sentinel must leave no trace; a node that dies mid-run
fails the workflow, keeps pulled results, tears down, and a rerun redoes only what is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datarax_bench.results import load_result

sys.path.insert(0, str(Path(__file__).parent / "loopback"))
import node as loopback  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SENTINEL = "wandb-sentinel-0123456789abcdef0123456789abcdef"
SCENARIOS = ["TAB-1", "CV-1"]
INFRA = "ssh/loopback"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(loopback.missing_tools()),
        reason=f"loopback cluster needs {', '.join(loopback.missing_tools())}",
    ),
]


@pytest.fixture
def cluster_env(tmp_path):
    """A loopback node, a private HOME whose `sky` is the loopback, and a workflow directory."""
    node = loopback.make_node(tmp_path / "node")
    home = tmp_path / "home"
    home.mkdir()
    env = loopback.loopback_env(home, node)
    env["WANDB_API_KEY"] = SENTINEL
    env["WANDB_MODE"] = "offline"
    work = tmp_path / "work"
    (work / "config").mkdir(parents=True)
    shutil.copy(ROOT / "config" / "config.yaml", work / "config" / "config.yaml")
    yield node, home, env, work
    node.stop()


def snakemake(
    work: Path, env: dict, *extra: str, scenarios=SCENARIOS
) -> subprocess.CompletedProcess:
    config = [
        "profile=smoke",
        f"infra={INFRA}",
        f"scenarios=[{','.join(scenarios)}]",
        "adapters=[numpy]",
        "idle_minutes=5",
    ]
    argv = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile")]
    argv += ["--directory", str(work), "--cores", "2", "--config", *config, *extra]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)


def raw_cells(run_dir: Path) -> dict[tuple[str, str, str], str]:
    out = {}
    for path in sorted((run_dir / "raw").rglob("*.json")):
        result = load_result(path)
        c = result["cell"]
        out[(c["scenario"], c["variant"], c["adapter"])] = result["status"]
    return out


def check_against_real_sky_cli(calls: list[dict]) -> None:
    """Each recorded argv must parse with SkyPilot's own click command (options, types)."""
    from sky.client.cli import command

    for call in calls:
        argv = call["argv"]
        cmd = command.cli.commands[argv[0]]
        if argv[0] == "api":
            continue
        cmd.make_context(f"sky {argv[0]}", list(argv[1:]))  # raises on a bad option


def assert_no_secret(*roots: Path) -> None:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert SENTINEL.encode() not in path.read_bytes(), f"secret leaked into {path}"


def test_loopback_run_matches_local_run_and_tears_down(cluster_env, tmp_path):
    node, home, env, work = cluster_env
    run_dir = work / "results" / "smoke" / "ssh_loopback"

    # First run keeps the cluster, so that a rerun can show it is reused.
    first = snakemake(work, env, "keep_cluster=True")
    assert first.returncode == 0, first.stderr[-3000:]
    calls = loopback.calls(home)
    verbs = [c["argv"][0] for c in calls]
    assert verbs.count("launch") == 1 and verbs.count("exec") == 2 and "down" not in verbs
    cluster = json.loads((run_dir / "cluster.json").read_text())
    assert cluster["action"] == "launched" and cluster["hardware"]["backend_ok"] is True
    assert cluster["estimate"]["hourly_usd"] == 0.0
    assert json.loads((run_dir / "cloud" / "teardown.json").read_text())["kept"] == [
        cluster["cluster"]
    ]
    launch = next(c["argv"] for c in calls if c["argv"][0] == "launch")
    assert {"--infra", INFRA, "-i", "5", "--down", "--use-spot"} <= set(launch)
    assert "--secret" not in launch  # uploads happen here; the cluster never gets the key

    # Rerun one cell while the cluster is up: no second launch; then teardown.
    job = run_dir / "cloud" / "jobs" / "TAB-1" / "small" / "numpy.json"
    second = snakemake(work, env, "keep_cluster=False", "-R", str(job.relative_to(work)))
    assert second.returncode == 0, second.stderr[-3000:]
    calls = loopback.calls(home)
    verbs = [c["argv"][0] for c in calls]
    assert verbs.count("launch") == 1 and verbs.count("exec") == 3
    assert verbs[-2:] == ["down", "cost-report"]
    teardown = json.loads((run_dir / "cloud" / "teardown.json").read_text())
    assert teardown["clusters"] == [cluster["cluster"]] and teardown["down_exit_code"] == 0
    assert teardown["cost_report"][0]["name"] == cluster["cluster"]
    assert not list(node.home.iterdir()), "teardown left files on the node"
    status = subprocess.run(
        ["sky", "status", "-o", "json"], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(status.stdout) == []

    # Same cells, same statuses as a local run; provenance carries the commit to the remote.
    local = tmp_path / "local"
    subprocess.run(
        [str(BIN / "datarax-bench"), "run", "--profile", "smoke", "--scenarios", *SCENARIOS,
         "--adapters", "numpy", "--output-dir", str(local)],
        check=True, capture_output=True, env={**os.environ, "HOME": str(home)},
    )  # fmt: skip
    assert raw_cells(run_dir) == raw_cells(local)
    assert set(raw_cells(run_dir).values()) == {"ok"}
    pulled = load_result(run_dir / "raw" / "TAB-1" / "small" / "numpy.json")
    # The synced tree has no .git: a commit here came through DATARAX_BENCH_GIT_COMMIT.
    # (HEAD may move between the two invocations, so only its form is checked.)
    assert re.fullmatch(r"[0-9a-f]{40}", pulled["provenance"]["git_commit"] or "")
    assert re.fullmatch(r"[0-9a-f]{40}", cluster["hardware"]["git_commit"] or "")
    assert pulled["provenance"]["environment"]["JAX_PLATFORMS"] == "cpu"
    assert (run_dir / "results.csv").exists()

    check_against_real_sky_cli(loopback.calls(home))
    assert not any(SENTINEL in " ".join(c["argv"]) for c in loopback.calls(home))
    assert_no_secret(work, home / ".sky", node.home)


def test_node_death_fails_clearly_tears_down_and_rerun_redoes_only_missing(cluster_env):
    node, home, env, work = cluster_env
    run_dir = work / "results" / "smoke" / "ssh_loopback"
    first = snakemake(work, env, "--until", "pull", scenarios=["TAB-1"])
    assert first.returncode == 0, first.stderr[-3000:]
    kept = run_dir / "raw" / "TAB-1" / "small" / "numpy.json"
    before = kept.read_bytes()

    node.stop()  # the machine disappears (preemption, host failure)
    failed = snakemake(work, env, scenarios=["TAB-1", "CV-1"])
    assert failed.returncode != 0
    log = "\n".join(p.read_text() for p in (work / "logs").rglob("*.log"))
    assert "ResourcesUnavailableError" in log or "not up" in log, log[-2000:]
    assert "onerror: tore down" in failed.stdout + failed.stderr
    assert kept.read_bytes() == before and load_result(kept)["status"] == "ok"
    assert not (run_dir / "raw" / "CV-1").exists()

    node.start()  # the node is back: the rerun provisions again and measures only CV-1
    n_exec = [c["argv"][0] for c in loopback.calls(home)].count("exec")
    rerun = snakemake(work, env, scenarios=["TAB-1", "CV-1"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    calls = loopback.calls(home)
    execs = [c["argv"] for c in calls if c["argv"][0] == "exec"][n_exec:]
    assert len(execs) == 1 and "CV-1" in execs[0][-1]
    assert kept.read_bytes() == before
    assert [c["argv"][0] for c in calls][-2:] == ["down", "cost-report"]
