"""Running cells: each in its own worker process, under the profile's timeout.

The supervisor never imports a loader framework. It decides `not_implemented` and
`unsupported` without starting a worker, kills a worker's whole process group when the cell
exceeds its timeout, and turns a crashed worker into a `failed` result: every cell ends with a
valid result file. A failed attempt is tried again (the profile's `retries`), and every attempt
is recorded in the result. A measurement holds the machine's bench lock, and its worker dies
with the supervisor (`supervision`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from datarax_bench import measures, provenance
from datarax_bench.console import say
from datarax_bench.errors import UserError
from datarax_bench.results import (
    ATTEMPTS_DIR,
    cell_label,
    cell_path,
    load_result,
    process_path,
    tries,
    utc_now,
    write_result,
    write_run_index,
)
from datarax_bench.run import processes, supervision
from datarax_bench.run.cell import (
    Cell,
    CellClock,
    CellId,
    cell_identity,
    make_result,
    matrix,
    measured_with,
    resolve_cell,
)
from datarax_bench.workload.catalog import Catalog, Profile, load_catalog

_LOG_TAIL_LINES = 40


def static_status(cell: Cell) -> tuple[str, str] | None:
    """(status, reason) for a cell that must not run a loader at all, else None."""
    return measures.static_status(cell.adapter, cell.workload)


def _log_tail(path: Path) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])


def _exit_description(returncode: int) -> tuple[int | None, str | None]:
    """(exit code, signal name) of a finished worker; Popen reports a signal as -N."""
    if returncode >= 0:
        return returncode, None
    try:
        return None, signal.Signals(-returncode).name
    except ValueError:
        return None, f"signal {-returncode}"


def _reap(proc: subprocess.Popen) -> None:
    """Wait for a killed worker without `Popen.wait`: an interrupt that lands inside
    `Popen.wait` can leave its lock held (a second `wait()` then blocks for ever) or the child
    reaped with no return code recorded."""
    if proc.returncode is not None:
        return
    try:
        _, status = os.waitpid(proc.pid, 0)
    except ChildProcessError:  # reaped by the interrupted wait: its status is lost
        proc.returncode = -signal.SIGKILL
        return
    proc.returncode = os.waitstatus_to_exitcode(status)


def worker_environment(profile: Profile, environ=None) -> dict[str, str]:
    """The environment a cell's worker starts with: the caller's, with the thread variables set
    from the profile (`threads_env`) and the rest of them removed, so that a run measures the
    same threads here as on a SkyPilot machine, whatever the caller's shell sets."""
    env = dict(os.environ if environ is None else environ)
    for name in provenance.THREAD_VARIABLES:
        env.pop(name, None)
    for name, value in profile.threads_env.items():
        if value is not None:
            env[name] = str(value)
    return env


def _run_worker(
    cell: Cell,
    output: Path,
    lock_fd: int,
    number: int,
    process: int = 0,
    tuned: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One attempt at the cell in a worker process: (its result, the record of the attempt).
    `tuned`: the first process's tuned choice, for a later process to measure again."""
    clock = CellClock()
    timeout = cell.profile.measurement["timeout_s"]
    output.parent.mkdir(parents=True, exist_ok=True)
    # The supervisor's pid in the names lets a later run tell stale files from a live run's.
    fd, tmp_name = tempfile.mkstemp(
        prefix=supervision.temp_name(output), suffix=".worker", dir=output.parent
    )
    os.close(fd)
    os.unlink(tmp_name)
    worker_output = Path(tmp_name)
    log_path = worker_output.with_suffix(".log")
    # The worker holds the read end; it sees end-of-file once this process is gone.
    lifeline_read, lifeline_write = os.pipe()
    cmd = [
        sys.executable,
        "-m",
        "datarax_bench.run.worker",
        "--profile",
        cell.profile.name,
        "--scenario",
        cell.workload.scenario,
        "--variant",
        cell.workload.variant,
        "--adapter",
        cell.adapter.id,
        "--style",
        cell.style,
        "--output",
        str(worker_output),
        "--supervisor-pid",
        str(os.getpid()),
        "--lifeline-fd",
        str(lifeline_read),
        "--process",
        str(process),
        *(["--tuned-choice", json.dumps(tuned)] if tuned is not None else []),
    ]
    timed_out = False
    try:
        with open(log_path, "w") as log:
            try:
                # A new session, so that killing its process group kills the worker's own
                # workers too; it inherits the bench lock, which it holds until it is gone.
                # Its death signal fires when the thread that starts it ends: call from a
                # thread that lives as long as the measurement (the CLI's main thread).
                proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    pass_fds=(lifeline_read, lock_fd),
                    env=worker_environment(cell.profile),
                )
            finally:
                os.close(lifeline_read)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # However the wait ended (exit, timeout, an interrupt of this process), nothing
                # of the worker's group survives it. The worker's guard keeps the group, and so
                # its id, in existence until this kill.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                _reap(proc)
        exit_code, signal_name = _exit_description(proc.returncode)
        if timed_out:
            result = make_result(
                "timeout",
                f"cell exceeded the profile's timeout of {timeout:g} s; its processes were killed",
                cell.profile,
                cell.workload,
                cell.adapter,
                clock,
            )
        elif worker_output.exists():
            try:
                result = load_result(worker_output)
            except UserError as exc:
                result = _failed(
                    cell, clock, f"the worker wrote an invalid result ({exc})", log_path
                )
        else:
            lines = [ln for ln in _log_tail(log_path).splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else "no output"
            how = f"was killed by {signal_name}" if signal_name else f"exited with code {exit_code}"
            result = _failed(cell, clock, f"the worker {how} without a result: {last}", log_path)
        attempt = {
            "attempt": number,
            "status": result["status"],
            "reason": result["reason"],
            "exit_code": exit_code,
            "signal": None if timed_out else signal_name,
            "started": clock.started,
            "duration_s": clock.stamps()["duration_s"],
        }
        return result, attempt
    finally:
        os.close(lifeline_write)
        if log_path.exists():
            sys.stderr.write(log_path.read_text(errors="replace"))
            log_path.unlink()
        worker_output.unlink(missing_ok=True)


def _failed(cell: Cell, clock: CellClock, detail: str, log_path: Path) -> dict[str, Any]:
    return make_result(
        "failed",
        detail[:500],
        cell.profile,
        cell.workload,
        cell.adapter,
        clock,
        error=_log_tail(log_path),
    )


def _measure(
    cell: Cell, output: Path, lock_fd: int, earlier: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The cell's worker processes (the profile's `measurement.processes` for a pooled measure)
    after the `earlier` ones, one after another, pooled into one result (`processes.pool`); the
    first that does not end `ok` ends the cell. Every attempt of every process is recorded."""
    total = processes_of(cell)
    results = list(earlier)
    for process in range(len(earlier), total):
        tuned = processes.tuned_choice(results[0]) if results else None
        result = _attempts(cell, output, lock_fd, process, total, tuned)
        results.append(result)
        if result["status"] != "ok":
            break
    return _pooled(cell, results, total)


def processes_of(cell: Cell) -> int:
    """How many worker processes measure the cell (1 for a cell that runs no loader)."""
    return 1 if static_status(cell) else processes.count(cell.profile, cell.workload.measure)


def _pooled(cell: Cell, results: list[dict[str, Any]], total: int) -> dict[str, Any]:
    return processes.pool(results, total, cell.profile.measurement.get("precision"))


def _attempts(
    cell: Cell,
    output: Path,
    lock_fd: int,
    process: int,
    total: int,
    tuned: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Attempts at one process until one does not fail, at most 1 + the profile's `retries`;
    the process's result, with the record of each attempt in `attempts`.

    A `failed` attempt (an exception in the loader, a crashed worker) is tried again; a timeout
    is not: a loader that hung once usually hangs again, and each try costs the whole timeout.
    Repetitions are never combined across attempts: a process's windows are one attempt's.
    """
    which = f" (process {process + 1} of {total})" if total > 1 else ""
    attempts = []
    for number in range(1, cell.profile.retries + 2):
        result, attempt = _run_worker(cell, output, lock_fd, number, process, tuned)
        if total > 1:
            attempt["process"] = process
        attempts.append(attempt)
        if result["status"] != "failed" or number > cell.profile.retries:
            break
        say(f"{cell.label}: attempt {number}{which} failed ({result['reason']}); trying again")
    result["attempts"] = attempts
    return result


def _sweep_roots(output: Path) -> list[Path]:
    """Where a killed run may have left temporary files: the `raw/` and `processes/` of the
    results directory that holds `output` (a cell's raw/S/V/A.json or a process's
    processes/S/V/A/K.json), else its folder."""
    parents = output.resolve().parents
    for depth, name in ((2, "raw"), (3, "processes")):
        if len(parents) > depth and parents[depth].name == name:
            return [parents[depth].parent / "raw", parents[depth].parent / "processes"]
    return [output.parent]


def run_cell(cell: Cell, output: Path, earlier: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Measure (or classify) one cell and write its result atomically to `output`.

    `earlier` are the results of the cell's first processes, measured before by `run_process`:
    only the processes after them are measured, and the cell's result pools them all (none is
    measured when one of them did not end `ok`). A measurement holds the machine's bench lock;
    SIGTERM and SIGHUP end it like Ctrl-C does, killing the worker's processes and removing
    temporary files.
    """
    output = Path(output)
    decided = static_status(cell)
    _check_earlier(cell, earlier, processes_of(cell) - 1)
    if decided:
        result = make_result(*decided, cell.profile, cell.workload, cell.adapter, CellClock())
    elif processes.ended_at(earlier) is not None:
        result = _pooled(cell, list(earlier), processes_of(cell))
    else:
        with _measuring(cell, output) as lock_fd:
            result = _measure(cell, output, lock_fd, earlier)
    write_result(output, result)
    return result


def _check_earlier(cell: Cell, earlier: Sequence[dict[str, Any]], most: int) -> None:
    """Earlier processes' results are this cell's, and no more than it has before the one run."""
    if len(earlier) > most:
        total = processes_of(cell)
        raise UserError(
            f"run --earlier: {len(earlier)} results given; {cell.label} is measured in "
            f"{total} process{'es' if total > 1 else ''}, so at most {most} can come before"
        )
    identity = cell_identity(cell.profile, cell.workload, cell.adapter)
    for index, result in enumerate(earlier):
        other = result["cell"]
        if other != identity:
            label = cell_label(
                other["scenario"], other["variant"], other["adapter"], other["style"]
            )
            raise UserError(
                f"run --earlier: result {index + 1} is of cell {label} (profile "
                f"{other['profile']}); expected one of {cell.label} (profile {cell.profile.name})"
            )


@contextlib.contextmanager
def _measuring(cell: Cell, output: Path):
    """The machine's bench lock, held while a worker measures; SIGTERM and SIGHUP end it like
    Ctrl-C does."""
    with supervision.signals_exit(), supervision.bench_lock(cell.label, say) as lock_fd:
        for root in _sweep_roots(output):
            supervision.sweep_stale_files(root)
        yield lock_fd


def run_process(
    cell: Cell, output: Path, process: int, earlier: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """Measure process `process` (from 0) of a cell measured in several processes and write its
    own result to `output` (`processes.pool` makes the cell's result of them all).

    `earlier` are the results of the cell's processes before it: when one of them did not end
    `ok`, the cell has ended and this process is not measured; its result then says so, with
    that status.
    """
    output = Path(output)
    total = processes_of(cell)
    if not 0 <= process < total:
        raise UserError(
            f"run --process {process + 1}: {cell.label} is measured in {total} process"
            f"{'es' if total > 1 else ''}; expected a number from 1 to {total}"
        )
    if len(earlier) != process:
        raise UserError(
            f"run --process {process + 1}: {len(earlier)} results given with --earlier; expected "
            f"the {process} of the processes before it"
        )
    _check_earlier(cell, earlier, process)
    decided = static_status(cell)
    ended = processes.ended_at(earlier)
    if decided:
        result = make_result(*decided, cell.profile, cell.workload, cell.adapter, CellClock())
    elif ended is not None:
        result = make_result(
            earlier[ended]["status"],
            f"not measured: process {ended + 1} of {total} ended {earlier[ended]['status']}",
            cell.profile,
            cell.workload,
            cell.adapter,
            CellClock(),
        )
    else:
        tuned = processes.tuned_choice(earlier[0]) if earlier else None
        with _measuring(cell, output) as lock_fd:
            result = _attempts(cell, output, lock_fd, process, total, tuned)
    write_result(output, result)
    return result


def describe(result: dict[str, Any]) -> str:
    count = tries(result)
    after = f" after {count} attempts" if count > 1 else ""
    if result["status"] == "ok":
        s = result["statistics"]["elements_per_s"]
        return f"ok {s['median']:.1f} elements/s (CV {s['cv'] * 100:.1f}%){after}"
    return f"{result['status']}{after}: {result['reason']}"


def run_matrix(
    profile: Profile,
    output_dir: Path,
    scenarios: list[str] | None = None,
    adapters: list[str] | None = None,
    catalog: Catalog | None = None,
    styles: list[str] | None = None,
    resume_dir: Path | None = None,
    only: Sequence[str] | None = None,
    keep: Callable[[Path], Any] | None = None,
    on_cell: Callable[[Path, dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Every (scenario, variant, adapter, style) cell of the profile, in rounds of their
    processes (`_Rounds`).

    Writes raw/S/V/A.json per cell (A.STYLE.json for styles other than plain), then
    manifest.json (what was run, file hashes) and summary.json (one row per cell). All names
    are checked before anything is written. With `resume_dir` (a mounted bucket) each result
    is also written there as soon as it is, and a cell whose result is already there, for the
    same workload, settings and commit, is taken from it instead of measured: a run restarted
    on a fresh machine costs at most the cell (or process) that was in flight; each measurement
    started is recorded there too (`attempts/`), so that a cell measured again after an
    interruption shows.
    `only` (cell ids, `S/V/A/STYLE`) keeps just those cells of the matrix: one shard's share.
    `keep` is called with each file written into `resume_dir` (where the directory stands for a
    bucket that is not mounted: it uploads the file).
    `on_cell` is called with each cell's raw result path and result as soon as it is written
    (not for a cell taken from `resume_dir`, which is kept already), between measurements:
    `run --keep-each-cell` sends it to W&B there.
    """
    catalog = catalog or load_catalog()
    cells = [
        resolve_cell(profile, catalog, *cid)
        for cid in matrix(profile, catalog, scenarios, adapters, styles)
    ]
    if only is not None:
        cells = select_cells(cells, only)
    output_dir = Path(output_dir)
    started = utc_now()
    run = _Rounds(cells, output_dir, Path(resume_dir) if resume_dir else None, keep, on_cell)
    for round_ in range(max((processes_of(c) for c in cells), default=0)):
        for i in range(len(cells)):
            if i not in run.results:
                run.step(i, round_)
    results = [run.results[i] for i in range(len(cells))]
    return write_run_index(profile, output_dir, results, started)


class _Rounds:
    """A matrix measured in rounds: the first process of every cell, then the second of every
    cell still measuring, and so on. A cell's processes are then spread over the whole run, so
    that the spread between them includes the machine's drift over the run, which processes
    back to back do not sample (docs/comparing.md). A cell measured in one process, or not at
    all, is done in the first round; a cell whose process does not end `ok` ends there.

    A process's own result is kept at processes/S/V/A[.STYLE]/K.json until its cell is pooled
    into raw/; with a resume directory each is written there too, and taken from there when a
    restarted run finds it (so a restart loses at most the process in flight).
    """

    def __init__(
        self, cells: list[Cell], output_dir: Path, resume_dir: Path | None, keep, on_cell=None
    ):
        self.cells, self.output_dir = cells, output_dir
        self.resume_dir, self.keep, self.on_cell = resume_dir, keep, on_cell
        self.results: dict[int, dict[str, Any]] = {}
        self.measured: dict[int, list[dict[str, Any]]] = {}

    def _prefix(self, i: int) -> str:
        return f"[{i + 1}/{len(self.cells)}] {self.cells[i].label}"

    def _path(self, cell: Cell, process: int | None = None) -> Path:
        w = cell.workload
        where = (w.scenario, w.variant, cell.adapter.id, cell.style)
        if process is None:
            return cell_path(self.output_dir, *where)
        return process_path(self.output_dir, *where, process + 1)

    def _kept(self, path: Path, cell: Cell) -> dict[str, Any] | None:
        if self.resume_dir is None:
            return None
        return kept_result(self.resume_dir / path.relative_to(self.output_dir), cell)

    def _keep(self, path: Path, result: dict[str, Any] | None = None) -> None:
        """Copy a written result (or a marker already written there) into the resume directory."""
        if self.resume_dir is None:
            return
        there = self.resume_dir / path.relative_to(self.output_dir)
        if result is not None:
            write_result(there, result)
        if self.keep:
            self.keep(there)

    def _started(self, path: Path) -> None:
        if self.resume_dir is not None:
            marker = record_attempt(self.resume_dir, path.relative_to(self.output_dir))
            if self.keep:
                self.keep(marker)

    def step(self, i: int, round_: int) -> None:
        """Round `round_` (from 0) of cell `i`: its whole measurement when it has one process
        (or none), else its process `round_`, pooled once it is the cell's last."""
        cell = self.cells[i]
        path = self._path(cell)
        if round_ == 0:
            kept = self._kept(path, cell)
            if kept is not None:
                write_result(path, kept)
                say(f"{self._prefix(i)}: {describe(kept)} (kept in the resume directory)")
                self.results[i] = kept
                return
        total = processes_of(cell)
        t0 = time.monotonic()
        if total <= 1:
            say(f"{self._prefix(i)} ...")
            self._started(path)
            result = run_cell(cell, path)
        else:
            part = self._path(cell, round_)
            which = f"process {round_ + 1} of {total}"
            measured = self.measured.setdefault(i, [])
            result = self._kept(part, cell)
            if result is not None:
                write_result(part, result)
                say(f"{self._prefix(i)} {which}: {describe(result)} (kept in the resume directory)")
            else:
                say(f"{self._prefix(i)} {which} ...")
                self._started(part)
                result = run_process(cell, part, round_, measured)
                self._keep(part, result)
                say(
                    f"{self._prefix(i)} {which}: {describe(result)} ({time.monotonic() - t0:.1f} s)"
                )
            measured.append(result)
            if result["status"] == "ok" and round_ + 1 < total:
                return
            result = _pooled(cell, measured, total)
            write_result(path, result)
        say(f"{self._prefix(i)}: {describe(result)} ({time.monotonic() - t0:.1f} s)")
        self._keep(path, result)
        if self.on_cell:
            self.on_cell(path, result)
        self.results[i] = result


def cell_id(scenario: str, variant: str, adapter: str, style: str = "plain") -> str:
    """A cell as a command line names it (`run --cells`): `S/V/A/STYLE` (`CellId`'s format)."""
    return str(CellId(scenario, variant, adapter, style))


def select_cells(cells: list[Cell], wanted: Sequence[str]) -> list[Cell]:
    """The cells named by id, in the matrix's order; an id not in the matrix is a UserError."""
    by_id = {str(c.id): c for c in cells}
    unknown = [w for w in wanted if w not in by_id]
    if unknown:
        raise UserError(
            f"run --cells: {unknown[0]!r} is not a cell of this run; expected "
            f"SCENARIO/VARIANT/ADAPTER/STYLE, one of {', '.join(list(by_id)[:6])}"
            + (", ..." if len(by_id) > 6 else "")
        )
    chosen = set(wanted)
    return [c for key, c in by_id.items() if key in chosen]


def record_attempt(resume_dir: Path, rel: Path) -> Path:
    stamp = utc_now().replace(":", "-")
    marker = resume_dir / ATTEMPTS_DIR / rel / f"{stamp}-{os.getpid()}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(os.environ.get("SKYPILOT_TASK_ID", "") + "\n")
    return marker


def _commit_name(commit: str | None) -> str:
    return f"commit {commit[:12]}" if commit else "an unknown commit"


def kept_result(path: Path, cell: Cell) -> dict[str, Any] | None:
    """The result kept at `path` by an earlier run if it is this cell's, measured with the
    same workload, settings and commit; None (saying why, unless it is simply absent) if not."""
    if not path.is_file():
        return None
    try:
        result = load_result(path)
    except UserError as exc:
        say(f"{exc}; measuring it again")
        return None
    expected = json.loads(json.dumps({
        "cell": cell_identity(cell.profile, cell.workload, cell.adapter),
        **measured_with(cell.profile, cell.workload),
    }))  # fmt: skip
    # The data digest is the data's, generated from the workload and the seed (in settings).
    stored = {**result, "workload": {k: v for k, v in result["workload"].items()
                                     if k != "data_digest"}}  # fmt: skip
    for key, what in (("cell", "another cell's result"), ("workload", "another workload"),
                      ("settings", "measured with other settings")):  # fmt: skip
        if stored.get(key) != expected[key]:
            say(f"{path}: {what}; measuring it again")
            return None
    commit, _ = provenance.git_info()
    kept = result["provenance"].get("git_commit")
    # Only a known, equal commit counts: unknown on either side, it may be old code's result.
    if not (kept and commit and kept == commit):
        say(f"{path}: measured by {_commit_name(kept)}, this checkout is "
             f"{_commit_name(commit)}; measuring it again")  # fmt: skip
        return None
    return result
