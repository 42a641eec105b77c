"""The standalone task files (benchmarks/sky/*.yaml): keeping a machine's results, and the
variant of a task file that mounts a results bucket.

`persist --check` is the run step's first command: before anything is measured it fails in
seconds (exit 3, one line) when nothing would keep the results. `run --keep-each-cell` keeps each
cell as soon as it is measured (the bucket mount, else W&B: `cell_keeper`). `persist` is the run
step's last command on the machine. `sky launch ... --down` deletes the
machine when the job ends, so results must be somewhere else by then: in a bucket mounted by
SkyPilot (`MOUNT_CACHED`: the job ends only after the bucket has the files), and/or in W&B
(`WANDB_API_KEY` forwarded with `--secret`). When neither holds them it exits non-zero, saying
where the only copy is, so the job is marked failed rather than succeeding with nothing kept.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from datarax_bench import paths, provenance
from datarax_bench.cloud.buckets import SCHEMES
from datarax_bench.cloud.tasks import load_task
from datarax_bench.console import say
from datarax_bench.files import write_text_atomic

BUCKET_ENV = "DATARAX_BENCH_BUCKET"
# Where SkyPilot mounts the bucket on the machine (`~/` paths are home-relative there).
BUCKET_MOUNT = "~/datarax-bench-bucket"
RECORD = "PERSISTED.json"
# Exit status when no copy outside the machine exists (or a requested one failed).
NOT_KEPT = 3
#: `--env DATARAX_BENCH_RESULTS_ON_MACHINE=1`: you copy the results off the machine yourself
#: (the task files turn it into `--results-on-machine`), so nothing else need keep them.
ON_MACHINE_ENV = "DATARAX_BENCH_RESULTS_ON_MACHINE"
_ADVICE = (
    "pass --secret WANDB_API_KEY or a results bucket (datarax-bench task-file --results-bucket), "
    f"or copy them yourself (--env {ON_MACHINE_ENV}=1, the task file's header says how)"
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def copy_to_bucket(results_dir: Path, bucket_dir: Path, stamp: str) -> Path:
    """Copy the results into `bucket_dir/<results dir name>/<stamp>/`, check every file read back,
    and write PERSISTED.json (files and sha256) last, so a complete copy is recognisable."""
    if not bucket_dir.is_dir():
        raise RuntimeError(
            f"the bucket mount {bucket_dir} does not exist (was the task file made with "
            f"`datarax-bench task-file --results-bucket` and {BUCKET_ENV} passed with --env?)"
        )
    dest = bucket_dir / results_dir.name / stamp
    dest.mkdir(parents=True, exist_ok=False)
    files: dict[str, str] = {}
    for src in sorted(p for p in results_dir.rglob("*") if p.is_file()):
        rel = src.relative_to(results_dir).as_posix()
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        files[rel] = _sha256(src)
        if _sha256(target) != files[rel]:
            raise RuntimeError(f"{target} differs from {src} after copying")
    record = {"schema_version": 1, "source": str(results_dir), "files": files}
    (dest / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return dest


def bucket_problem(bucket_dir: Path) -> str | None:
    """None when the bucket mount is there and takes a file; else why not."""
    bucket_dir = Path(bucket_dir).expanduser()
    if not bucket_dir.is_dir():
        return (
            f"the bucket mount {bucket_dir} does not exist (was the task file made with "
            f"`datarax-bench task-file --results-bucket` and {BUCKET_ENV} passed with --env?)"
        )
    try:
        fd, name = tempfile.mkstemp(prefix=".datarax-bench-check.", dir=bucket_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return f"cannot write in the bucket mount {bucket_dir} ({exc.strerror})"
    return None


def check(
    bucket_dir: Path | None = None,
    environ: dict[str, str] | None = None,
    on_machine: bool = False,
) -> int:
    """`persist --check`, before anything is measured: 0 when the bucket mount takes files or W&B
    takes the key, else NOT_KEPT; one line either way, within seconds (W&B's answer is awaited
    `PROBE_TIMEOUT_S` at most). With `on_machine` (you copy the results yourself) nothing need
    keep them."""
    from datarax_bench.report.wandb_export import key_problem

    environ = os.environ if environ is None else environ
    if bucket_dir is not None:
        problem = bucket_problem(bucket_dir)
        if problem:
            say(f"{problem}; refusing to measure", prefix="persist --check")
            return NOT_KEPT
    wandb = key_problem(environ)
    kept = ([] if bucket_dir is None else ["the bucket"]) + ([] if wandb else ["W&B"])
    if kept:
        also = f" (not in W&B: {wandb})" if wandb and environ.get("WANDB_API_KEY") else ""
        say(f"each cell will be kept in {' and '.join(kept)}{also}", prefix="persist --check")
        return 0
    if on_machine:
        say(
            f"nothing keeps the results off this machine ({wandb}); as asked "
            f"({ON_MACHINE_ENV}), copy them before the machine is deleted",
            prefix="persist --check",
        )
        return 0
    return refuse(wandb)


def refuse(wandb_problem: str) -> int:
    """Nothing would keep the results: say why in one line; NOT_KEPT."""
    say(
        f"nothing would keep the results off this machine ({wandb_problem}; no results bucket), "
        f"so nothing is measured: {_ADVICE}",
        prefix="persist --check",
    )
    return NOT_KEPT


def cell_keeper(
    results_dir: Path, profile: str, environ: dict[str, str] | None = None
) -> tuple[Callable[[Path, dict[str, Any]], None] | None, str | None]:
    """(what `run --keep-each-cell` calls with each cell's result when no bucket keeps the
    cells, why W&B cannot): a W&B run resumed per cell (`CellsRun`) if W&B takes the key now,
    else (None, the reason). A cell that fails to upload is said in one line and left to the
    final `persist`."""
    from datarax_bench.report.wandb_export import CellsRun, key_problem

    problem = key_problem(os.environ if environ is None else environ)
    if problem is not None:
        return None, problem
    run = CellsRun(results_dir, profile)

    def keep(path: Path, result: dict[str, Any]) -> None:
        t0 = time.monotonic()
        try:
            run(path, result)
        except Exception as exc:  # the cell is on disk; the final persist tries again
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            say(
                f"{Path(path).name}: not kept in W&B ({type(exc).__name__}: {first}); the final "
                "`persist` tries again",
                prefix="keep",
            )
        else:
            say(f"kept in W&B run {run.run_id} ({time.monotonic() - t0:.1f} s)", prefix="keep")

    return keep, None


def persist(
    results_dir: Path,
    bucket_dir: Path | None = None,
    environ: dict[str, str] | None = None,
    stamp: str | None = None,
    on_machine: bool = False,
) -> int:
    """Keep `results_dir` outside the machine; the exit status of `datarax-bench persist`.
    With `on_machine` (you copy the results yourself) a run kept nowhere else exits 0."""
    environ = os.environ if environ is None else environ
    results_dir = Path(results_dir).expanduser()
    stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if not results_dir.is_dir():
        say(
            f"no results directory {results_dir}: nothing was measured, nothing to keep",
            prefix="persist",
        )
        return NOT_KEPT
    kept: list[str] = []
    failed: list[str] = []

    # W&B first: an offline fallback run lands inside the results directory, and the bucket
    # copy below then carries it too (`wandb sync` it later).
    if environ.get("WANDB_API_KEY"):
        try:
            from datarax_bench.report.wandb_export import export_results

            report = export_results(results_dir, mode="auto")
        except Exception as exc:  # an incomplete run's results still go to the bucket
            say(
                f"W&B export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                prefix="persist",
            )
        else:
            if report.get("mode") == "online":
                kept.append(f"W&B run {report.get('run_path')}")
            else:
                say(
                    f"W&B upload failed; an offline run is in {report.get('run_dir')}",
                    prefix="persist",
                )
    else:
        say(
            "WANDB_API_KEY was not forwarded (--secret WANDB_API_KEY): no W&B upload",
            prefix="persist",
        )
    if not any(where.startswith("W&B") for where in kept):
        _say_cells_in_wandb(results_dir)

    if bucket_dir is not None:
        try:
            dest = copy_to_bucket(results_dir, Path(bucket_dir).expanduser(), stamp)
        except (OSError, RuntimeError) as exc:
            failed.append(f"bucket: {exc}")
            say(f"copy to the bucket failed: {exc}", prefix="persist")
        else:
            name = environ.get(BUCKET_ENV) or "the bucket"
            kept.append(f"bucket {name} at {results_dir.name}/{stamp}/ (mounted at {dest})")

    for where in kept:
        say(f"results kept in {where}", prefix="persist")
    if kept and not failed:
        return 0
    if on_machine and not failed:
        say(
            f"the results are only on this machine, in {results_dir}, as asked "
            f"({ON_MACHINE_ENV}): copy them before it is deleted: "
            "rsync -a <cluster>:datarax-bench-results/ ./datarax-bench-results/",
            prefix="persist",
        )
        return 0
    say(
        f"the results are ONLY on this machine, in {results_dir}; a cluster launched with --down "
        "deletes them when this job ends. Next time pass --secret WANDB_API_KEY or a results "
        "bucket, or launch without --down and copy them first: "
        "rsync -a <cluster>:datarax-bench-results/ ./datarax-bench-results/",
        prefix="persist",
    )
    return NOT_KEPT


def _say_cells_in_wandb(results_dir: Path) -> None:
    """When the complete W&B run was not uploaded: which cells `run --keep-each-cell` did keep
    in W&B as they were measured."""
    from datarax_bench.report.wandb_export import CELLS_RECORD

    path = results_dir / CELLS_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if record.get("run_path"):
        say(
            f"{len(record.get('cells') or [])} cells were kept in W&B run {record['run_path']} as "
            "they were measured; the complete run (table, manifest) was not uploaded",
            prefix="persist",
        )


def with_results_bucket(task: dict[str, Any], scheme: str) -> dict[str, Any]:
    """A task file's config with the results bucket: the existing bucket `<scheme>://<name>`
    (s3, gs), the name given with `--env DATARAX_BENCH_BUCKET=<name>`, mounted with
    MOUNT_CACHED at BUCKET_MOUNT.

    By its URI, because SkyPilot mounts a URI from that store on whichever cloud the job lands,
    and refuses the launch if the bucket does not exist; a bare name unknown to SkyPilot's state
    makes it pick, or create, a bucket of that name on the job's own cloud (GCS on GCP), where
    the results would not be looked for.

    A separate file, because SkyPilot 0.14.1 constructs every storage mount at launch (dry runs
    included) and rejects an empty name, so one file cannot leave the bucket optional.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"bucket scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    task = copy.deepcopy(task)
    envs = dict(task.get("envs") or {})
    # null: SkyPilot refuses the launch until `--env DATARAX_BENCH_BUCKET=...` names it.
    envs[BUCKET_ENV] = None
    task["envs"] = envs
    mounts = dict(task.get("file_mounts") or {})
    mounts[BUCKET_MOUNT] = {"source": f"{scheme}://${{{BUCKET_ENV}}}", "mode": "MOUNT_CACHED"}
    task["file_mounts"] = mounts
    return task


def write_bucket_task(template: Path, output: Path, scheme: str) -> Path:
    template = Path(template).resolve()
    task = with_results_bucket(load_task(template), scheme)
    # An absolute workdir (the checkout): the new file may live anywhere.
    task["workdir"] = str(paths.project_root())
    # As a managed job (`sky jobs launch`) the workdir reaches the machine through a storage
    # upload without `.git`: its results name the commit, and a recovered job reuses the cells
    # in the bucket, only by these (`sky launch` syncs `.git`, which then wins).
    task["envs"].update(provenance.commit_envs())
    output = Path(output)
    header = (
        f"# {template.name} with the results bucket {scheme}://$DATARAX_BENCH_BUCKET; made by "
        f"`datarax-bench task-file --results-bucket {scheme}`.\n# It names the commit of the "
        "checkout when it was made: make it again after changing the code.\n"
        "# sky launch THIS_FILE --env DATARAX_BENCH_BUCKET=<bucket> ... (see the header of the "
        "original)\n"
    )
    write_text_atomic(
        output, header + yaml.safe_dump(task, sort_keys=False, default_flow_style=False)
    )
    return output
