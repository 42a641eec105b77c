"""Each cell leaves the machine as soon as it is measured, and a run that nothing would keep is
refused before its first cell: `datarax-bench run --keep-each-cell` and
`datarax-bench persist --check`, with a real S3 API (moto's server), the real wandb library
(offline, and against a closed port), and the task files' run step in the script SkyPilot's own
`TaskCodeGen` makes of it."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from loopback import skypilot_job, storage
from support import BIN, CLI, ROOT
from support.wandb_offline import SENTINEL_KEY, _closed_port

from datarax_bench.cloud import standalone
from datarax_bench.report.wandb_export import key_problem
from datarax_bench.results import load_result

TASK_FILES = sorted((ROOT / "benchmarks" / "sky").glob("*-benchmark.yaml"))
# Three cells of about 5 s each on the smoke profile, measured in this order.
SCENARIOS = ["PC-1", "TAB-1"]
CELLS = ["PC-1/d1/numpy", "PC-1/d5/numpy", "TAB-1/small/numpy"]
WANDB_VARS = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_SERVICE")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in WANDB_VARS}
    return {**env, **extra}


def _nothing_measured(out: Path) -> None:
    assert not (out / "raw").exists() and not (out / "processes").exists()


# --- the pre-flight ----------------------------------------------------------------------------


WHY = {
    "no-key": {},
    "unreachable-wandb": {
        "WANDB_API_KEY": SENTINEL_KEY,
        "WANDB_BASE_URL": f"http://127.0.0.1:{_closed_port()}",
    },
}


@pytest.mark.parametrize("why", list(WHY))
def test_check_refuses_in_one_line_within_seconds(why, tmp_path):
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(CLI), "persist", "--check"], env=_env(**WHY[why]), capture_output=True, text=True
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == standalone.NOT_KEPT == 3, proc.stderr
    assert elapsed < 15, elapsed
    (line,) = proc.stderr.splitlines()
    assert line.startswith("persist --check: nothing would keep the results off this machine")
    assert "--secret WANDB_API_KEY" in line and "--results-bucket" in line
    assert SENTINEL_KEY not in proc.stdout + proc.stderr


@pytest.mark.parametrize("why", list(WHY))
def test_run_keep_each_cell_refuses_before_the_first_cell(why, tmp_path):
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(CLI), "run", "--profile", "smoke", "--scenarios", *SCENARIOS, "--adapters", "numpy"]
        + ["--output-dir", str(out), "--keep-each-cell"],
        env=_env(**WHY[why]),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - t0 < 20
    (line,) = proc.stderr.splitlines()
    assert "nothing would keep the results" in line
    _nothing_measured(out)


def test_check_passes_with_a_mounted_bucket_or_when_asked_to_keep_them_on_the_machine(tmp_path):
    mount = tmp_path / "mount"
    mount.mkdir()
    env = _env(**WHY["unreachable-wandb"])
    proc = subprocess.run(
        [str(CLI), "persist", "--check", "--bucket-dir", str(mount)], env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "kept in the bucket (not in W&B: W&B at http://127.0.0.1" in proc.stderr
    assert list(mount.iterdir()) == []  # the write check leaves nothing behind
    proc = subprocess.run(
        [str(CLI), "persist", "--check", "--bucket-dir", str(tmp_path / "absent")],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 3 and "does not exist" in proc.stderr
    proc = subprocess.run(
        [str(CLI), "persist", "--check", "--results-on-machine"], env=_env(), capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 0 and "copy them before the machine is deleted" in proc.stderr


class _Viewer(http.server.BaseHTTPRequestHandler):
    """W&B's GraphQL endpoint, as far as the pre-flight asks it: who is this key's user."""

    accepted = "Basic " + __import__("base64").b64encode(f"api:{SENTINEL_KEY}".encode()).decode()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/graphql" or self.headers.get("Authorization") != self.accepted:
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"data": {"viewer": {"id": "VXNlcjox"}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_key_problem_asks_wandb_whether_it_takes_the_key():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Viewer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert key_problem({"WANDB_API_KEY": SENTINEL_KEY, "WANDB_BASE_URL": url}) is None
        refused = key_problem({"WANDB_API_KEY": "f" * 40, "WANDB_BASE_URL": url})
        assert refused == f"W&B at {url} refused the key (HTTP 401)"
        offline = {"WANDB_API_KEY": SENTINEL_KEY, "WANDB_BASE_URL": url, "WANDB_MODE": "offline"}
        assert key_problem(offline) == "WANDB_MODE=offline uploads nothing"
    finally:
        server.shutdown()
    assert key_problem({}) == "WANDB_API_KEY is not set"


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.name)
def test_task_run_step_fails_before_measuring_when_nothing_would_keep_results(
    path, tmp_path, monkeypatch
):
    """The task file's whole run step (real `datarax-bench`, real doctor and run) in SkyPilot's
    own job script, launched without key or bucket: exit 3 in one line within seconds, the
    profile's doctor and run never started."""
    monkeypatch.setenv("HOME", str(tmp_path))  # importing sky writes ~/.sky
    home = tmp_path / "node-home"
    home.mkdir()
    (home / ".datarax-bench-env").write_text(f'export PATH="{BIN}:$PATH"\n')
    envs = {k: "" if v is None else str(v) for k, v in yaml.safe_load(path.read_text())["envs"].items()}  # fmt: skip
    script = skypilot_job.task_script(yaml.safe_load(path.read_text())["run"])
    env = {**_env(), **envs, "HOME": str(home), "PATH": "/usr/bin:/bin"}
    env["SKYPILOT_TASK_ID"] = "sky-2026-12-07-00-00-00-000000_dxb_1"
    t0 = time.monotonic()
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 20
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("persist --check:")]
    assert len(lines) == 1 and "nothing would keep the results" in lines[0], proc.stderr
    out = home / "datarax-bench-results" / envs["DATARAX_BENCH_PROFILE"]
    assert not (out / "doctor.json").exists()
    _nothing_measured(out)


# --- each cell as soon as it is measured, and a kill after N cells ---------------------------


def _run_until(argv: list[str], env: dict[str, str], started: str) -> str:
    """Start `argv` in its own process group, SIGKILL the group once a line matching `started`
    appears on stderr (the next cell has begun, so the ones before are done), return stderr."""
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if re.match(started, line):
                os.killpg(proc.pid, signal.SIGKILL)
                break
        else:
            raise AssertionError("the run ended before it was killed:\n" + "".join(seen))
    finally:
        proc.stderr.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return "".join(seen)


@pytest.mark.slow
def test_killing_the_run_after_two_cells_leaves_two_cells_in_the_bucket(tmp_path):
    out = tmp_path / "out"
    with storage.moto_server(tmp_path) as endpoint:
        client = storage.s3_client(endpoint)
        client.create_bucket(Bucket="dxb-results")
        env = _env(**storage.aws_env(endpoint))
        argv = [str(CLI), "run", "--profile", "smoke", "--scenarios", *SCENARIOS]
        argv += ["--adapters", "numpy", "--output-dir", str(out), "--keep-each-cell"]
        argv += ["--resume-bucket", "s3://dxb-results/smoke/cells"]
        log = _run_until(argv, env, r"^\[3/3\] TAB-1/small/numpy \.\.\.")
        listing = client.list_objects_v2(Bucket="dxb-results").get("Contents", [])
        keys = sorted(o["Key"] for o in listing)
        raw = [k for k in keys if k.startswith("smoke/cells/raw/")]
        assert raw == [
            "smoke/cells/raw/PC-1/d1/numpy.json",
            "smoke/cells/raw/PC-1/d5/numpy.json",
        ], log
        for key in raw:
            client.download_file("dxb-results", key, str(tmp_path / "kept.json"))
            assert load_result(tmp_path / "kept.json")["status"] == "ok"
    assert "each cell is kept in s3://dxb-results/smoke/cells" in log
    assert not (out / "manifest.json").exists()  # the run never finished


def read_cells_run(run_dir: Path) -> dict:
    """The run record, history rows and summary of one offline run, from its .wandb log."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    (log_file,) = run_dir.glob("run-*.wandb")
    store = datastore.DataStore()
    store.open_for_scan(str(log_file))
    out = {"summary": {}, "history": []}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(group=record.run.run_group, job_type=record.run.job_type)
        elif kind == "summary":
            for u in record.summary.update:
                out["summary"]["/".join(u.nested_key) or u.key] = json.loads(u.value_json)
        elif kind == "history":
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                   for i in record.history.item}  # fmt: skip
            out["history"].append({k: v for k, v in row.items() if not k.startswith("_")})
    return out


_KILLED_AFTER_TWO = """
import sys
from pathlib import Path
from datarax_bench.report.wandb_export import CellsRun
from datarax_bench.run.runner import run_matrix
from datarax_bench.workload.catalog import load_profile

out = Path(sys.argv[1])
keep = CellsRun(out, "smoke", mode="offline", run_id="cells-test")
run_matrix(load_profile("smoke"), out, ["PC-1", "TAB-1"], ["numpy"], on_cell=keep)
"""


@pytest.mark.slow
def test_killing_the_run_after_two_cells_leaves_two_cells_in_wandb(tmp_path):
    """Without a bucket each cell goes to W&B between measurements: the run of the cells,
    resumed once per cell (real wandb, offline: each resume is its own offline run here, which
    `wandb sync` uploads into the one run)."""
    out = tmp_path / "out"
    wandb_dirs = {n: str(tmp_path / n.lower()) for n in ("WANDB_DIR", "WANDB_CACHE_DIR")}
    env = _env(**wandb_dirs, WANDB_CONFIG_DIR=str(tmp_path / "cfg"))
    log = _run_until(
        [sys.executable, "-c", _KILLED_AFTER_TWO, str(out)], env, r"^\[3/3\] TAB-1/small/numpy"
    )
    runs = sorted((out / "wandb").glob("offline-run-*-cells-test"))
    assert len(runs) == 2, log
    logged = []
    for run_dir in runs:
        run = read_cells_run(run_dir)
        assert run["job_type"] == "cells" and run["group"] == "smoke"
        (row,) = run["history"]
        cell = row["cell"]
        logged.append(cell)
        assert run["summary"][f"{cell}/status"] == "ok"
        assert run["summary"][f"{cell}/elements_per_s_median"] > 0
        # The raw result itself, in the run's files (uploaded at once online, policy "now").
        saved = run_dir / "files" / "raw" / f"{cell}.json"
        assert json.loads(saved.read_text()) == json.loads(
            (out / "raw" / f"{cell}.json").read_text()
        )
    assert logged == ["PC-1/d1/numpy", "PC-1/d5/numpy"]
    record = json.loads((out / "wandb" / "cells-run.json").read_text())
    assert record["run_id"] == "cells-test" and record["mode"] == "offline"
    assert record["cells"] == [f"raw/{cell}.json" for cell in logged]


def test_persist_says_which_cells_wandb_has_when_the_complete_run_is_not_uploaded(tmp_path):
    results = tmp_path / "gpu_a100"
    (results / "wandb").mkdir(parents=True)
    record = {"run_id": "cells-x", "run_path": "me/datarax-benchmarks/cells-x", "mode": "online"}
    record["cells"] = ["raw/PC-1/d1/numpy.json", "raw/PC-1/d5/numpy.json"]
    (results / "wandb" / "cells-run.json").write_text(json.dumps(record))
    proc = subprocess.run(
        [str(CLI), "persist", "--results-dir", str(results)], env=_env(), capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "2 cells were kept in W&B run me/datarax-benchmarks/cells-x" in proc.stderr
    assert "ONLY on this machine" in proc.stderr
