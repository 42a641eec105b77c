"""What a workflow run will measure, how long that should take, and how far along it is.

Before the first job the workflow writes the run's plan (every worker process it will run, each
with the cost model's seconds) and prints what it will measure with an estimate; after each
measuring job it prints how many cells and processes are done and what is left.

The cost model of one worker process, in seconds:

    start (supervisor and worker, JAX's and the framework's imports, the data: per adapter)
    + windows x (min_seconds + WINDOW_EXTRA_S)          the windows it is expected to time
    + its share of the cold starts x a loader start (per adapter); fresh windows: one per window
    + feed: step times x feed min_seconds + a loader start    first process, fed scenarios only
    + sweep: grid points x (windows x tuning min_seconds + a loader start)    first process, tuned

and after the last cell FINISH_S plus FINISH_PER_SCENARIO_S per scenario for the table, plots and
export. With a precision target a process is expected to time the middle of its least and most
windows; a cell that runs no loader (unsupported) costs a bare start; the grid is the one the
sweep would measure on this machine's usable cores. The constants are fitted to the 2-core
development VM: its quick check measured its 30 cells in 193 s (the model: 232 s) and `ci_cpu` in
about 45 minutes (the model: 63), so the estimate errs long. A sweep already in the tuning cache
costs nothing, which the model does not know. Measures with cold starts from disk (IO-1) or
checkpoints are costed as windows: roughly. While the run goes, what is left is the model's
seconds for the jobs not done, scaled by how long the done ones took against the model, so the
estimate follows the machine's actual speed.

Reading the plan back (`python -m datarax_bench.workflow.progress PLAN`) imports nothing heavy: each job
prints its line in a fraction of a second.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: A worker process's start, from its launch to its first loader: the interpreter, JAX's and the
#: framework's imports, the synthetic data from the cache (2-core development VM).
START_S = {"numpy": 3.5, "datarax": 4.5, "grain": 4.5, "pytorch": 4.5, "tfdata": 5.5}
#: Opening a loader to its first batch (worker processes and threads started).
LOADER_START_S = {"numpy": 0.1, "datarax": 0.3, "grain": 0.8, "pytorch": 0.8, "tfdata": 0.5}
#: An adapter the table does not know (a plugin) is costed like the slowest known one.
UNKNOWN_START_S = max(START_S.values())
UNKNOWN_LOADER_START_S = max(LOADER_START_S.values())
#: A window's cost beyond its minimum duration: the warmup batches drawn before it, batches
#: beyond the minimum duration where the minimum batches take longer (CV-1), recording it.
WINDOW_EXTRA_S = 0.3
#: A sweep point a grid cannot be asked for (a plugin's grid that needs a loader context).
UNKNOWN_GRID_POINTS = 6
#: After the last cell: the table and the W&B export, and each scenario's plots.
FINISH_S = 30.0
FINISH_PER_SCENARIO_S = 10.0
#: The id the workflow gives each invocation (`cloud.INVOCATION_ENV`; not imported, to keep a
#: job's progress line light): a plan from another invocation is not this run's.
INVOCATION_ENV = "DATARAX_BENCH_INVOCATION"


@dataclass(frozen=True)
class PlannedProcess:
    """One measuring job of a run: worker process `process` of `processes` of a cell."""

    cell: str  # profile/scenario/variant/adapter/style
    process: int
    processes: int
    output: str  # the file the job writes: the process's own result, or the pooled cell's
    seconds: float  # the cost model's estimate


#: The workflow's rules that run a worker process: each of a cell's processes but its last, and
#: the last with the pooling.
PROCESS_RULE, CELL_RULE = "measure_process", "measure"


def planned_processes(jobs, profile_named, catalog, cores: int | None = None) -> list:
    """The worker processes among Snakemake's jobs to run (`dag.needrun_jobs()`), costed.
    `profile_named` loads a profile by name; `cores` defaults to this process's usable cores."""
    from datarax_bench.measures.tuning import usable_cores
    from datarax_bench.run.cell import resolve_cell
    from datarax_bench.run.runner import processes_of
    from datarax_bench.workflow.cells import cell_of

    cores = usable_cores() if cores is None else cores
    planned = []
    for job in jobs:
        if job.rule.name not in (PROCESS_RULE, CELL_RULE):
            continue
        w = job.wildcards
        cell = resolve_cell(profile_named(w.profile), catalog, *cell_of(w))
        total = processes_of(cell)
        number = int(w.process) if job.rule.name == PROCESS_RULE else total
        planned.append(planned_process(cell, number, total, job.output[0], cores))
    return planned


def planned_process(cell, process: int, processes: int, output: str, cores: int):
    """The job that runs worker process `process` of `processes` of `cell` and writes `output`."""
    return PlannedProcess(
        cell=f"{cell.profile.name}/{cell.id}",
        process=int(process),
        processes=int(processes),
        output=str(output),
        seconds=process_seconds(cell, process, processes, cores),
    )


def process_seconds(cell, process: int, processes: int, cores: int) -> float:
    """The cost model's seconds for worker process `process` of `processes` of `cell` (a
    `cell.Cell`) on a machine with `cores` usable cores (the tuned sweep's grid depends on them)."""
    from datarax_bench.measures.harness import DEFAULT_COLD_STARTS
    from datarax_bench.run.runner import static_status
    from datarax_bench.stats import repetition_bounds

    adapter = cell.adapter.id
    start = START_S.get(adapter, UNKNOWN_START_S)
    if static_status(cell):
        return start
    loader = LOADER_START_S.get(adapter, UNKNOWN_LOADER_START_S)
    profile, m = cell.profile, cell.profile.measurement
    precision, least, most = repetition_bounds(m)
    windows = least if precision is None else (least + most) / 2
    seconds = start + windows * (m["min_seconds"] + WINDOW_EXTRA_S)
    if m.get("repetitions_from", "fresh") == "warm":
        cold_starts = math.ceil(m.get("cold_starts", DEFAULT_COLD_STARTS) / processes)
        seconds += cold_starts * loader
    else:
        seconds += windows * loader
    if process > 1:
        return seconds
    if profile.feeds(cell.workload.scenario, cell.workload.measure):
        feed = profile.feed
        seconds += len(feed["step_ms"]) * feed.get("min_seconds", 1.0) + loader
    if cell.adapter.style == "tuned":
        tuning = {"min_seconds": 0.25, "windows": 3, **(profile.tuning or {})}
        point = tuning["windows"] * tuning["min_seconds"] + loader
        seconds += grid_points(cell.adapter, cores) * point
    return seconds


def grid_points(adapter, cores: int) -> int:
    """How many settings the tuned sweep measures on `cores` cores (0 or 1: no sweep)."""
    try:
        points = len(adapter.tuning_grid(None, cores))
    except Exception:  # a grid that reads the loader context: a guess beats no estimate
        return UNKNOWN_GRID_POINTS
    return points if points > 1 else 0


def duration(seconds: float) -> str:
    """`seconds` as a person says it: 45 s, 3 min, 1 h 20 min."""
    if seconds < 90:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def plan_lines(steps: list[PlannedProcess], finish_s: float) -> list[str]:
    """What the run will measure and how long it should take (names in sorted order: Snakemake
    hands the jobs over in no particular one)."""
    lines = []
    steps = sorted(steps, key=lambda p: (p.cell, p.process))
    for profile in _unique(_cell(p)[0] for p in steps):
        mine = [p for p in steps if _cell(p)[0] == profile]
        cells = [_cell(p)[1] for p in mine]
        variants = _unique(f"{c.scenario}/{c.variant}" for c in cells)
        adapters = _unique(c.adapter for c in cells)
        styles = _unique(c.style for c in cells)
        per_cell = " or ".join(_unique(str(p.processes) for p in mine))
        lines.append(
            f"plan: profile {profile}: {_count(len(_unique(p.cell for p in mine)), 'cell')} "
            f"({', '.join(variants)} x {', '.join(adapters)} x {', '.join(styles)}), "
            f"{per_cell} worker process{'' if per_cell == '1' else 'es'} each"
        )
    rounds = max(p.processes for p in steps) > 1
    lines.append(
        f"plan: {_count(len(steps), 'worker process')}, one at a time"
        + (
            ", in rounds (every cell's first process, then every cell's second, ...)"
            if rounds
            else ""
        )
    )
    total = sum(p.seconds for p in steps)
    lines.append(
        f"estimate: about {duration(total + finish_s)} ({duration(total)} measuring, "
        f"{duration(finish_s)} for the table, plots and export), from a cost model per worker "
        "process timed on a 2-core VM (datarax_bench/workflow/progress.py); every measuring job that "
        "ends says how much is left"
    )
    return lines


def finish_seconds(steps: list[PlannedProcess]) -> float:
    """The model's seconds after the last cell: the table, each scenario's plots, the export."""
    scenarios = _unique((_cell(p)[0], _cell(p)[1].scenario) for p in steps)
    return FINISH_S + FINISH_PER_SCENARIO_S * len(scenarios)


def _cell(step: PlannedProcess):
    """(profile, `CellId`) of a planned process: its `cell` is PROFILE/SCENARIO/VARIANT/ADAPTER/STYLE."""
    from datarax_bench.run.cell import CellId

    profile, cell = step.cell.split("/", 1)
    return profile, CellId.parse(cell)


def _count(n: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{n} {noun if n == 1 else plural}"


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def write_plan(
    path: Path, steps: list[PlannedProcess], started: float, finish_s: float, invocation: str
) -> None:
    """Keep the plan for the jobs' progress lines (replaced atomically: jobs read it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "invocation": invocation,
        "started": started,
        "finish_s": finish_s,
        "processes": [asdict(p) for p in steps],
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def announce(path: Path, steps: list[PlannedProcess], now: float | None = None) -> list[str]:
    """The workflow's start: print the plan and its estimate, and keep the plan for the jobs.
    Nothing to measure (every cell up to date) prints nothing."""
    if not steps:
        return []
    started = time.time() if now is None else now
    finish_s = finish_seconds(steps)
    write_plan(path, steps, started, finish_s, os.environ.get(INVOCATION_ENV, ""))
    lines = plan_lines(steps, finish_s)
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    return lines


def progress_line(plan: dict[str, Any], done: set[str], now: float) -> str:
    """How far along the run is, given the outputs of the jobs `done` so far.

    What is left is the model's seconds of the jobs not done, times how long the done ones took
    against the model (elapsed / their model seconds): a slower machine than the model's, or a
    busy one, stretches it alike.
    """
    steps = plan["processes"]
    finished = [p for p in steps if p["output"] in done]
    cells = {p["cell"] for p in steps}
    cells_done = {p["cell"] for p in finished if p["process"] == p["processes"]}
    elapsed = max(0.0, now - plan["started"])
    modelled_done = sum(p["seconds"] for p in finished)
    modelled_left = sum(p["seconds"] for p in steps if p["output"] not in done)
    pace = elapsed / modelled_done if modelled_done > 0 else 1.0
    left = modelled_left * pace + (plan["finish_s"] if len(finished) < len(steps) else 0.0)
    if len(finished) == len(steps):
        tail = f"measuring done; about {duration(plan['finish_s'])} for the table, plots and export"
    else:
        tail = f"about {duration(left)} left"
    return (
        f"progress: {len(cells_done)} of {_count(len(cells), 'cell')}, {len(finished)} of "
        f"{_count(len(steps), 'worker process')} done in {duration(elapsed)}; {tail} "
        f"(the model's pace x{pace:.2f})"
    )


def finished_outputs(plan: dict[str, Any]) -> set[str]:
    """The planned jobs' outputs written since the run started (a file from an earlier run that
    this one measures again is older than the plan)."""
    done = set()
    for p in plan["processes"]:
        try:
            if os.path.getmtime(p["output"]) >= plan["started"]:
                done.add(p["output"])
        except OSError:
            continue
    return done


def report(path: Path, now: float | None = None) -> str | None:
    """The progress line of the run planned in `path`, or None without a plan of this
    invocation (a job run by hand, or a plan an earlier run left)."""
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if plan.get("invocation") != os.environ.get(INVOCATION_ENV, ""):
        return None
    return progress_line(plan, finished_outputs(plan), time.time() if now is None else now)


def main(argv: list[str] | None = None) -> int:
    """`python -m datarax_bench.workflow.progress PLAN`: a job's progress line. Never fails the job: a
    missing or unreadable plan (a job run without the workflow's start) prints nothing."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m datarax_bench.workflow.progress PLAN", file=sys.stderr)
        return 0
    try:
        line = report(Path(args[0]))
    except Exception as exc:  # progress is a courtesy; the measurement is done and written
        line = f"progress: unavailable ({type(exc).__name__}: {exc})"
    if line:
        print(line, file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
