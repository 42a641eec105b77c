"""The workflow engine must not measure itself: while a job runs, Snakemake idles.

Snakemake 9.21's job-rate limiter makes every job add a chain of scheduling passes, one per
timespan for as long as jobs wait (src/datarax_bench/workflow/engine.py); the workflow drops it at start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from support.engine import OLD_SETTING, ROOT, profile_settings, run_workflow

# Every test here measures how much CPU Snakemake takes during a window.
pytestmark = pytest.mark.alone

#: Jobs before the window (each adds a chain while the limiter exists) and after it (waiting for
#: the slot during the window, as measuring jobs wait during a cell).
BEFORE, AFTER = 60, 40


def test_snakemake_uses_no_cpu_while_a_job_measures(tmp_path):
    # A job that runs once 60 others have, while 40 more wait for the one bench slot, reads the
    # CPU time of the Snakemake process (and whatever it started, less the job itself) over 4 s.
    # With the profile's limiter of before (100/5s), Snakemake used 5.1-5.2% of this 2-core
    # machine in such a window (64 threads, most of them its timers) and exited 5.5 s after its
    # last job; without the limiter, 0.0% (3 threads) and 0.4-0.5 s. CPU time, not wall:
    # neighbours do not move it.
    run = run_workflow(
        tmp_path / "wf", BEFORE + AFTER, sleep=0.05, window_after=BEFORE, window_s=4.0
    )
    assert run.returncode == 0, run.output[-3000:]
    window = run.window
    assert window is not None, run.output[-3000:]
    assert window["share"] <= 0.01, window
    # No timer threads (the main thread and the local executor's), so nothing to wait for after
    # the last job; the exit's wall time is only a loose guard (under a load average of 12 on
    # this machine it took up to 2.3 s).
    assert window["engine_threads"] <= 6, window
    assert run.max_threads <= 6, run.max_threads
    assert run.tail_s < 10.0, run.tail_s


@pytest.mark.slow
def test_with_the_limiter_snakemake_loads_the_window(tmp_path):
    # The control: the same run with the limiter kept (the profile's old 100/5s) fails the bound
    # above. Should a Snakemake release stop arming the timers, this fails and the workaround can
    # go (src/datarax_bench/workflow/engine.py).
    run = run_workflow(
        tmp_path / "wf",
        BEFORE + AFTER,
        sleep=0.05,
        drop_limiter=False,
        profile=profile_settings(**OLD_SETTING),
        window_after=BEFORE,
        window_s=4.0,
    )
    assert run.returncode == 0, run.output[-3000:]
    assert run.window["share"] > 0.02 and run.window["engine_threads"] > 20, run.window


def test_the_workflows_onstart_drops_the_rate_limiter(tmp_path):
    # The real Snakefile's onstart handler, called as Snakemake calls it (after building its
    # scheduler, before the first pass), on a stand-in scheduler that has a limiter.
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from types import SimpleNamespace

        from snakemake.api import SnakemakeApi
        from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

        with SnakemakeApi(OutputSettings()) as api:
            workflow = api.workflow(
                ResourceSettings(cores=1),
                ConfigSettings(config={"profile": "smoke", "infra": "vast"}),
                snakefile=Path(sys.argv[1]) / "Snakefile",
                workdir=Path(sys.argv[2]),
            )._workflow
            workflow.scheduler = SimpleNamespace(
                job_rate_limiter=object(),
                resources={"_job_count": 7},
                global_resources={"_job_count": sys.maxsize},
            )
            workflow._onstart(None)
            assert workflow.scheduler.job_rate_limiter is None
            assert workflow.scheduler.resources["_job_count"] == sys.maxsize
        print("dropped")
        """
    )
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copy(ROOT / "Snakefile", work / "Snakefile")
    for folder in ("config", "workflow", "profiles", "benchmarks"):
        shutil.copytree(ROOT / folder, work / folder)
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("DATARAX_BENCH_ROOT", None)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(work), str(work)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and "dropped" in proc.stdout, proc.stderr[-3000:]
    assert "job-rate limiter" not in proc.stderr, proc.stderr[-3000:]
