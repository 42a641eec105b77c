"""The suite runs in several processes; a test marked `alone` runs while no other test does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from support import ROOT

TESTS = """
import json, os, time
import pytest

def _record(name):
    start = time.time()
    time.sleep(0.5)
    with open(os.environ["RUN_LOG"], "a") as fh:
        fh.write(json.dumps([name, start, time.time()]) + "\\n")

@pytest.mark.parametrize("i", range(8))
def test_beside(i):
    _record(f"beside-{i}")

@pytest.mark.alone
def test_alone():
    _record("alone")
"""


def test_an_alone_test_shares_the_run_with_no_other_test_while_the_others_run_side_by_side(
    tmp_path,
):
    (tmp_path / "test_timed.py").write_text(TESTS)
    log = tmp_path / "run.jsonl"
    env = {**os.environ, "RUN_LOG": str(log), "PYTHONPATH": str(ROOT / "tests")}
    argv = [sys.executable, "-m", "pytest", "-p", "support.alone", "-p", "no:cacheprovider"]
    argv += ["-n", "3", "--dist", "load", "-q", "-W", "error::pytest.PytestUnknownMarkWarning"]
    proc = subprocess.run(
        [*argv, "test_timed.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    spans = {
        name: (start, end) for name, start, end in map(json.loads, log.read_text().split("\n")[:-1])
    }
    assert len(spans) == 9

    def overlap(a, b) -> bool:
        return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]

    others = [name for name in spans if name != "alone"]
    assert not [name for name in others if overlap("alone", name)]
    # The run did go on in several processes: without that, the check above could not fail.
    assert any(overlap(a, b) for a in others for b in others if a < b)
