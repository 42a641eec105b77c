"""A trivial Snakemake workflow for measuring what Snakemake itself costs while jobs run.

`n` jobs that sleep, one at a time (each takes the one `bench_slot`, as the measuring rules do),
run with a copy of the repository's workflow profile (`profiles/default/config.yaml`), optionally
with overrides. Its `onstart:` drops Snakemake's job-rate limiter as the real workflow's does
(`datarax_bench.workflow.engine.drop_rate_limiter`), unless `drop_limiter=False`.

With `window_after=k`, a `window` job runs once the first k jobs are done, while the others still
wait for the slot (as measuring jobs wait while a cell measures): it reads the Snakemake process's
CPU time (with its reaped and live descendants, less the window job's own process chain) before
and after sleeping `window_s`, and writes the share of the machine's CPU that Snakemake used
meanwhile to `window.json`.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from support import BIN, ROOT

PROFILE = ROOT / "profiles" / "default" / "config.yaml"
#: The workflow profile's scheduling before the limiter was dropped (a 5 s timespan).
OLD_SETTING = {"max-jobs-per-timespan": "100/5s"}

SNAKEFILE = """\
import os
import sys

from datarax_bench.workflow.engine import drop_rate_limiter

N = int(config["jobs"])
WINDOW_AFTER = int(config["window_after"])
ENGINE = os.getpid()


onstart:
    if config["drop_limiter"]:
        drop_rate_limiter(workflow)


rule all:
    input:
        expand("done/{i}.txt", i=range(N)),
        ["window.json"] if WINDOW_AFTER else [],


rule job:
    output:
        "done/{i}.txt",
    # The jobs before the window first, so that the others still wait while it runs.
    priority: lambda wildcards: 10 if int(wildcards.i) < WINDOW_AFTER else 0
    resources:
        bench_slot=1,
    shell:
        "sleep {config[sleep]}; times > {output}"


rule window:
    input:
        expand("done/{i}.txt", i=range(WINDOW_AFTER)),
    output:
        "window.json",
    priority: 100
    resources:
        bench_slot=1,
    shell:
        "{sys.executable} window.py {ENGINE} {config[window_s]} {output}"
"""

WINDOW = '''\
"""Snakemake's share of the machine's CPU while this job sleeps (its own chain excluded)."""
import json
import sys
import time

import psutil

engine = psutil.Process(int(sys.argv[1]))
seconds = float(sys.argv[2])
me = psutil.Process()
mine = {me.pid} | {p.pid for p in me.parents()}


def engine_cpu_s():
    t = engine.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in engine.children(recursive=True):
        if child.pid in mine:
            continue
        try:
            c = child.cpu_times()
        except psutil.Error:
            continue
        total += c.user + c.system
    return total


t0, c0 = time.perf_counter(), engine_cpu_s()
time.sleep(seconds)
c1, t1 = engine_cpu_s(), time.perf_counter()
cpus = psutil.cpu_count() or 1
with open(sys.argv[3], "w") as f:
    json.dump(
        {
            "engine_cpu_s": round(c1 - c0, 3),
            "wall_s": round(t1 - t0, 3),
            "cpus": cpus,
            "share": (c1 - c0) / ((t1 - t0) * cpus),
            "engine_threads": engine.num_threads(),
        },
        f,
    )
'''


def profile_settings(**overrides: object) -> dict:
    """The repository's workflow profile, with `overrides` (a None value removes the key)."""
    settings = yaml.safe_load(PROFILE.read_text())
    for key, value in overrides.items():
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
    return settings


@dataclass
class Run:
    returncode: int
    output: str
    wall_s: float
    #: CPU seconds of Snakemake and everything it started and reaped (jobs included).
    tree_cpu_s: float
    #: CPU seconds the jobs' shells and their children reported themselves (bash `times`).
    jobs_cpu_s: float
    #: Most threads the Snakemake process had at once (sampled every 0.2 s).
    max_threads: int
    window: dict | None
    #: Seconds from the newest job output to Snakemake's exit (its wait after the last job).
    tail_s: float

    @property
    def engine_cpu_s(self) -> float:
        return self.tree_cpu_s - self.jobs_cpu_s


def _seconds(field: str) -> float:
    minutes, _, seconds = field.rstrip("s").partition("m")
    return 60 * float(minutes) + float(seconds)


def run_workflow(
    workdir: Path,
    n: int,
    *,
    sleep: float = 0.2,
    drop_limiter: bool = True,
    profile: dict | None = None,
    window_after: int = 0,
    window_s: float = 2.0,
    timeout: float = 600,
) -> Run:
    """Run the trivial workflow of `n` jobs in `workdir` (created) and account for its CPU."""
    workdir.mkdir(parents=True)
    (workdir / "Snakefile").write_text(SNAKEFILE)
    (workdir / "window.py").write_text(WINDOW)
    profile_dir = workdir / "profile"
    profile_dir.mkdir()
    settings = profile_settings() if profile is None else profile
    (profile_dir / "config.yaml").write_text(yaml.safe_dump(settings))
    config = [
        f"jobs={n}",
        f"sleep={sleep}",
        f"drop_limiter={drop_limiter}",
        f"window_after={window_after}",
        f"window_s={window_s}",
    ]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p
    )
    cmd = [str(BIN / "snakemake"), "--workflow-profile", str(profile_dir), "--config", *config]
    log = workdir / "snakemake.out"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    max_threads = 0
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        watched = psutil.Process(proc.pid)
        deadline = t0 + timeout
        while proc.poll() is None:
            try:
                max_threads = max(max_threads, watched.num_threads())
            except psutil.Error:
                pass
            if time.perf_counter() > deadline:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    ended = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    tree = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    jobs = 0.0
    for done in (workdir / "done").glob("*.txt"):
        jobs += sum(_seconds(f) for f in done.read_text().split())
    window_file = workdir / "window.json"
    window = json.loads(window_file.read_text()) if window_file.exists() else None
    outputs = [*(workdir / "done").glob("*.txt"), window_file]
    newest = max((f.stat().st_mtime for f in outputs if f.exists()), default=ended)
    return Run(
        proc.returncode, log.read_text(), wall, tree, jobs, max_threads, window, ended - newest
    )


def clean(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
