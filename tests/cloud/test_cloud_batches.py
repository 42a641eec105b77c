"""Remote cells in batches against the loopback cluster (real Snakemake, ssh, rsync; the test-only
`sky` of tests/loopback): one `sky exec` measures a batch, each cell is still pulled, validated
and failed on its own, and a job that dies keeps what it measured."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from loopback import node as loopback
from support import BIN, ROOT
from support.loopback_cluster import INFRA, check_against_real_sky_cli, checkout_copy, commit

from datarax_bench.results import load_result

ADAPTERS = ["numpy", "datarax", "grain"]  # one batch of TAB-1, in this order

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
        env["WANDB_MODE"] = "offline"
        repo = checkout_copy(tmp_path / "repo")
        work = tmp_path / "work"
        (work / "config").mkdir(parents=True)
        shutil.copy(ROOT / "config" / "config.yaml", work / "config" / "config.yaml")
        yield node, home, env, work, repo
    finally:
        loopback.stop_skylets(home)
        node.stop()


RUN = Path("results") / "smoke" / "ssh_loopback"


def snakemake(
    repo: Path, work: Path, env, *config: str, target: Path = RUN / "cloud" / "teardown.json"
) -> subprocess.CompletedProcess:
    """The cells of TAB-1 and the verified teardown (no aggregate, plots or export)."""
    argv = [str(BIN / "snakemake"), "--snakefile", str(repo / "Snakefile"), "--directory",
            str(work), str(target), "--config", "profile=smoke",
            f"infra={INFRA}", "scenarios=[TAB-1]", f"adapters=[{','.join(ADAPTERS)}]",
            "idle_minutes=5", *config]  # fmt: skip
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)


def execs(home: Path) -> list[str]:
    """The remote command of every `sky exec` the loopback ran."""
    return [c["argv"][-1] for c in loopback.calls(home) if c["argv"][0] == "exec"]


def cells_of(command: str) -> list[str]:
    if "--cells " in command:
        return command.split("--cells ")[1].rstrip(" )").split()
    words = command.split()
    named = [words[words.index(flag) + 1] for flag in ("--scenario", "--variant", "--adapter")]
    return ["/".join([*named, "plain"])]


def events(work: Path) -> list[dict]:
    path = work / RUN / "cloud" / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def statuses(work: Path) -> dict[str, str]:
    """Adapter -> status of every raw result, each loaded (and so validated) again."""
    raw = work / RUN / "raw" / "TAB-1" / "small"
    return {p.stem: load_result(p)["status"] for p in sorted(raw.glob("*.json"))}


def test_a_batch_is_one_exec_and_a_failing_cell_costs_only_itself(cluster_env):
    node, home, env, work, repo = cluster_env
    # Grain's loader raises on the cluster only: the checkout that runs there is changed.
    grain = repo / "src" / "datarax_bench" / "adapters" / "grain.py"
    grain.write_text(
        grain.read_text() + "\n\ndef _broken(self, epoch):\n"
        "    raise RuntimeError('broken on purpose by the test')\n\n\nGrainLoader.epoch = _broken\n"
    )
    commit(repo, "grain's loader raises")
    run = snakemake(repo, work, env)
    assert run.returncode == 0, run.stderr[-3000:]
    commands = execs(home)
    assert len(commands) == 1, commands
    assert cells_of(commands[0]) == [f"TAB-1/small/{a}/plain" for a in ADAPTERS]
    assert statuses(work) == {"numpy": "ok", "datarax": "ok", "grain": "failed"}
    grain_result = load_result(work / RUN / "raw" / "TAB-1" / "small" / "grain.json")
    assert "broken on purpose by the test" in json.dumps(grain_result)
    log = [e["event"] for e in events(work)]
    assert log.count("batch_started") == 1 and log.count("pulled") == 3
    assert log.count("taken_from_batch") == 2 and "cell_started" not in log
    assert not list((work / RUN / "cloud" / "batches").rglob("*.json")), "a result left behind"
    bill = json.loads((work / RUN / "cloud" / "teardown.json").read_text())["billing"]
    assert bill["cells_pulled"] == 3 and bill["still_billing"] is False
    assert bill["orchestration_s_per_cell"] is not None
    # The autodown deadline covers the whole batch: 3 cells' allowances + idle.
    autostop = next(c["argv"] for c in loopback.calls(home) if c["argv"][0] == "autostop")
    assert autostop[autostop.index("-i") + 1] == str(int(3 * (120 * 2 + 600) / 60 + 5))
    check_against_real_sky_cli(loopback.calls(home))


def test_an_exec_that_dies_keeps_what_it_measured_and_the_rerun_measures_the_rest(cluster_env):
    node, home, env, work, repo = cluster_env
    loopback.set_faults(home, exec_dies_after_cells=1)  # killed once numpy's result is written
    # Only grain's job: its batch is the three cells, the job dies after the first (numpy).
    first = snakemake(repo, work, env, target=RUN / "raw" / "TAB-1" / "small" / "grain.json")
    assert first.returncode != 0
    log = work / "logs" / "smoke" / "ssh_loopback" / "cloud" / "measure" / "TAB-1" / "small"
    log = (log / "grain.log").read_text()
    assert "exited with 100" in log and "1 of the batch's 3 cells were measured and kept" in log
    assert not (work / RUN / "raw").exists(), "a cell without a result was written"
    cached = work / RUN / "cloud" / "batches" / "raw" / "TAB-1" / "small" / "numpy.json"
    kept = cached.read_bytes()
    assert load_result(cached)["status"] == "ok"
    rerun = snakemake(repo, work, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    commands = execs(home)
    assert cells_of(commands[0]) == [f"TAB-1/small/{a}/plain" for a in ADAPTERS]
    # After the job died, only what it had not measured was measured again.
    later = [cell for command in commands[1:] for cell in cells_of(command)]
    assert sorted(later) == ["TAB-1/small/datarax/plain", "TAB-1/small/grain/plain"]
    assert statuses(work) == {"numpy": "ok", "datarax": "ok", "grain": "ok"}
    numpy = work / RUN / "raw" / "TAB-1" / "small" / "numpy.json"
    assert numpy.read_bytes() == kept  # the result of the job that died
    ledger = events(work)
    died = [e for e in ledger if e["event"] == "batch_finished"][0]
    assert died["exit"] != 0
    pulled = [e["cell"] for e in ledger if e["event"] == "pulled"]
    assert sorted(pulled) == sorted(f"TAB-1/small/{a}" for a in ADAPTERS), pulled


def test_one_cell_per_batch_is_one_exec_per_cell(cluster_env):
    node, home, env, work, repo = cluster_env
    run = snakemake(repo, work, env, "remote_batch_cells=1")
    assert run.returncode == 0, run.stderr[-3000:]
    commands = execs(home)
    assert len(commands) == 3 and not any("--cells" in c for c in commands)
    assert sorted(cells_of(c) for c in commands) == sorted(
        [f"TAB-1/small/{a}/plain"] for a in ADAPTERS
    )
    log = [e["event"] for e in events(work)]
    assert log.count("cell_started") == 3 and log.count("pulled") == 3
    assert "batch_started" not in log and "taken_from_batch" not in log
    assert statuses(work) == {a: "ok" for a in ADAPTERS}
    autostop = next(c["argv"] for c in loopback.calls(home) if c["argv"][0] == "autostop")
    assert autostop[autostop.index("-i") + 1] == str(int((120 * 2 + 600) / 60 + 5))
