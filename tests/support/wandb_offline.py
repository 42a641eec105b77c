"""W&B offline, as the export tests and the tests that export along the way see it: a real
smoke run's results, a private wandb environment, and what wandb wrote to its offline run."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from support.smoke import smoke_view

SENTINEL_KEY = "0123456789abcdef" * 2 + "fedcba98"  # well-formed: 40 hex characters


SCENARIOS = ("CV-1", "TAB-1", "IO-1")  # IO-1 has cells the numpy adapter does not support


WANDB_ENV = ("HOME", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")


#: The cells of the shared smoke run this module reads (support/smoke.py).
SMOKE_RUN = {"numpy": SCENARIOS}


@pytest.fixture(scope="module")
def results_template(tmp_path_factory, smoke_results) -> Path:
    """A real `datarax-bench run --output-dir` (smoke, numpy adapter) of SCENARIOS, once per
    module (the session's shared run, support/smoke.py)."""
    return smoke_view(smoke_results, tmp_path_factory.mktemp("results") / "run", SCENARIOS)


@pytest.fixture
def results_dir(results_template, tmp_path) -> Path:
    copy = tmp_path / "downloaded"
    shutil.copytree(results_template, copy)
    return copy


@pytest.fixture
def wandb_env(tmp_path, monkeypatch) -> dict[str, Path]:
    """Every place wandb writes points into tmp_path; no key, no mode, no server override."""
    dirs = {}
    for name in WANDB_ENV:
        dirs[name] = tmp_path / "env" / name.lower()
        dirs[name].mkdir(parents=True)
        monkeypatch.setenv(name, str(dirs[name]))
    # WANDB_SERVICE: in-process tests start a wandb-core; subprocesses must start their own.
    unset = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY")
    for name in (*unset, "WANDB_SERVICE"):
        monkeypatch.delenv(name, raising=False)
    return dirs


def read_offline_run(run_dir: Path) -> dict:
    """config, summary, tags, group, job type, artifacts and logged table from the .wandb log."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    (log_file,) = run_dir.glob("run-*.wandb")
    store = datastore.DataStore()
    store.open_for_scan(str(log_file))
    out = {"config": {}, "summary": {}, "artifacts": [], "history": []}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(name=run.display_name, group=run.run_group, job_type=run.job_type)
            out.update(project=run.project, entity=run.entity)
            out["tags"] = list(run.tags)
            out["config"].update({u.key: json.loads(u.value_json) for u in run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "summary":
            for u in record.summary.update:
                if u.key:
                    out["summary"][u.key] = json.loads(u.value_json)
        elif kind == "history":
            out["history"].append(
                {
                    "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                    for i in record.history.item
                }
            )
        elif kind == "artifact":
            a = record.artifact
            out["artifacts"].append(
                {
                    "name": a.name,
                    "type": a.type,
                    "metadata": json.loads(a.metadata) if a.metadata else {},
                    "files": {c.path: c.local_path for c in a.manifest.contents},
                }
            )
    (history,) = [h for h in out["history"] if "cells/path" in h]
    table = json.loads((run_dir / "files" / history["cells/path"]).read_text())
    out["table"] = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    return out


def offline_run_dir(results_dir: Path) -> Path:
    (run_dir,) = (results_dir / "wandb").glob("offline-run-*")
    return run_dir


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_key_nowhere(key: str, roots: list[Path], proc: subprocess.CompletedProcess) -> None:
    assert key not in proc.stdout and key not in proc.stderr
    needle = key.encode()
    checked = 0
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert needle not in path.read_bytes(), f"API key written to {path}"
                checked += 1
    assert checked > 5
    assert not (Path(roots[1]) / ".netrc").exists()
