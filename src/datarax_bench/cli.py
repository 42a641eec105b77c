"""`datarax-bench`: list, run, doctor, compare, export, persist, task-file (see `--help` of each)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from datarax_bench.errors import UserError


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line naming the problem, exit code 2 (not argparse's usage dump)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def check_output(option: str, value: str, kind: str) -> Path:
    """`value` can be written as a `kind` ("file" or "directory"), checked before anything runs.

    The nearest existing directory is tried with a file created and removed at once: permission
    bits say nothing for root or on a read-only mount, and the measurement must not be lost.
    """
    path = Path(value)
    if kind == "file" and path.is_dir():
        raise UserError(f"{option} {value}: is a directory; expected the path of a file")
    if kind == "directory" and path.exists() and not path.is_dir():
        raise UserError(f"{option} {value}: is a file; expected a directory")
    start = path if kind == "directory" else path.parent
    existing = next(p for p in (start.absolute(), *start.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(
            f"{option} {value}: {existing} is not a directory; expected a writable path"
        )
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".datarax-bench-write-check."):
            pass
    except OSError as exc:
        raise UserError(
            f"{option} {value}: cannot write in {existing} ({exc.strerror}); "
            "expected a writable location"
        ) from None
    return path


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds, more than 0 and at most 600")
    return value


def _process_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a process number, 1 or more")
    return int(text)


def _split(values: list[str] | None) -> list[str] | None:
    """`--scenarios A B`, `--scenarios A,B` and repeated flags all mean the same."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


# --- list ------------------------------------------------------------------------------------


_SUPPORT_CELL = {
    None: "yes",
    "unsupported": "unsupported: {reason}",
    "not_implemented": "not implemented",
}


def support_matrix(profile=None) -> dict[str, dict[str, str]]:
    """row -> adapter -> 'yes' | 'unsupported: ...' | 'not implemented', over the variants the
    profile selects (all variants without a profile). A row is a scenario, or, where its
    variants' support differs (IO-1's backends), one row per variant named 'scenario/variant'."""
    from datarax_bench.adapters import all_adapters
    from datarax_bench.measures import static_status
    from datarax_bench.workload.catalog import load_catalog

    catalog = load_catalog()
    ids = profile.scenarios if profile else list(catalog.scenarios)
    size = profile.size if profile else "full"
    matrix: dict[str, dict[str, str]] = {}
    for sid in ids:
        scenario = catalog.get(sid)
        variants = profile.variants_for(scenario) if profile else scenario.variants
        rows = {}
        for variant in variants:
            workload = scenario.resolve(variant, size)
            row = {}
            for adapter in all_adapters():
                decided = static_status(adapter, workload)
                row[adapter.id] = _SUPPORT_CELL[decided[0] if decided else None].format(
                    reason=decided and decided[1]
                )
            rows[f"{sid}/{variant}"] = row
        if len({tuple(row.items()) for row in rows.values()}) == 1:
            matrix[sid] = next(iter(rows.values()))
        else:
            matrix.update(rows)
    return matrix


def support_status(matrix: dict[str, dict[str, str]], scenario: str, variant: str, adapter: str):
    """A cell's entry in `support_matrix`."""
    row = matrix.get(f"{scenario}/{variant}") or matrix[scenario]
    return row[adapter]


def cmd_list(args) -> int:
    from datarax_bench.adapters import all_adapters
    from datarax_bench.workload.catalog import load_catalog, load_profile, profile_names

    catalog = load_catalog()
    profile = load_profile(args.profile, catalog) if args.profile else None
    matrix = support_matrix(profile)
    adapters = all_adapters()
    if args.json:
        doc = {
            "scenarios": {
                sid: {
                    "name": s.name,
                    "category": s.category,
                    "measure": s.measure,
                    "variants": s.variants,
                    "default_variants": s.default_variants,
                }
                for sid, s in catalog.scenarios.items()
            },
            "profiles": profile_names(),
            "adapters": {a.id: a.display_name for a in adapters},
            "support": matrix,
        }
        if profile:
            doc["cells"] = [{"scenario": s, "variant": v} for s, v in profile.cells(catalog)]
        print(json.dumps(doc, indent=2))
        return 0

    print("Scenarios:")
    for sid, s in catalog.scenarios.items():
        if profile and sid not in profile.scenarios:
            continue
        chosen = profile.variants_for(s) if profile else s.default_variants
        variants = ", ".join(f"{v}*" if v in chosen else v for v in s.variants)
        print(f"  {sid:7} {s.name} [{s.measure}]  variants: {variants}")
    print("  (* = measured by " + (f"profile {profile.name})" if profile else "default)"))
    print("\nProfiles:")
    for name in profile_names():
        p = load_profile(name, catalog)
        print(f"  {name:9} {p.backend:4} {p.description}")
    print("\nAdapters:")
    for a in adapters:
        print(f"  {a.id:8} {a.display_name}")
    print("\nSupport" + (f" (profile {profile.name})" if profile else "") + ":")
    width = max(len(a.id) for a in adapters) + 2
    label = max(8, *(len(row) + 1 for row in matrix))
    print("  " + " " * label + "".join(f"{a.id:>{width}}" for a in adapters))
    notes = []
    for sid, row in matrix.items():
        cells = []
        for a in adapters:
            status = row[a.id]
            mark = {"yes": "yes", "not implemented": "n/i"}.get(status, "no")
            if mark == "no":
                notes.append(f"  {sid} × {a.id}: {status}")
            cells.append(f"{mark:>{width}}")
        print(f"  {sid:{label}}" + "".join(cells))
    if notes:
        print("\n" + "\n".join(notes))
    return 0


# --- run -------------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from datarax_bench.results import load_result
    from datarax_bench.run.runner import describe, resolve_cell, run_cell, run_matrix, run_process
    from datarax_bench.workload.catalog import load_catalog, load_profile

    if bool(args.output) == bool(args.output_dir):
        raise UserError("run: pass exactly one of --output FILE (one cell) or --output-dir DIR")
    if args.output:
        check_output("run: --output", args.output, "file")
    else:
        check_output("run: --output-dir", args.output_dir, "directory")
    catalog = load_catalog()
    profile = load_profile(args.profile, catalog)
    scenarios = _split(args.scenarios)
    adapters = _split(args.adapters)
    for sid in scenarios or []:
        catalog.get(sid)

    if args.resume_dir and args.resume_bucket:
        raise UserError("run: pass one of --resume-dir (a mounted bucket) and --resume-bucket")
    if args.resume_bucket and not args.output_dir:
        raise UserError(
            "run: --resume-bucket keeps the cells of a matrix; use it with --output-dir"
        )
    if args.resume_dir and not args.output_dir:
        raise UserError("run: --resume-dir keeps the cells of a matrix; use it with --output-dir")
    if args.resume_dir and Path(args.resume_dir).resolve() == Path(args.output_dir).resolve():
        raise UserError(
            f"run: --resume-dir must not be the output directory ({args.output_dir}): it is "
            "where another machine's run kept its cells, e.g. a mounted bucket"
        )
    if (args.keep_each_cell or args.results_on_machine) and not args.output_dir:
        raise UserError(
            "run: --keep-each-cell keeps the cells of a matrix; use it with --output-dir"
        )
    if args.cells and not args.output_dir:
        raise UserError("run: --cells selects cells of a matrix; use it with --output-dir")
    if args.output_dir and (args.process is not None or args.earlier is not None):
        raise UserError(
            "run: --process and --earlier measure part of one cell; use them with --output, "
            "not --output-dir (a matrix measures its cells' processes in rounds itself)"
        )
    if args.output_dir:
        if args.variant:
            raise UserError(
                "run: --variant selects one cell; use it with --output, not --output-dir"
            )
        styles = [args.style] if args.style else None
        on_cell = None
        if args.keep_each_cell:
            on_cell, refused = _each_cell_keeper(args, profile.name)
            if refused is not None:
                return refused
        with _resume_directory(args) as (resume, keep):
            summary = run_matrix(
                profile, Path(args.output_dir), scenarios, adapters, catalog, styles, resume,
                _split(args.cells), keep, on_cell,
            )  # fmt: skip
        counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items())
        print(f"{len(summary['cells'])} cells in {args.output_dir}: {counts}")
        return 0

    if not scenarios or len(scenarios) != 1 or not adapters or len(adapters) != 1:
        raise UserError("run --output: pass exactly one --scenario and one --adapter")
    scenario = catalog.get(scenarios[0])
    if args.variant:
        variant = args.variant
        scenario.resolve(variant)  # validates the name
    else:
        options = profile.variants_for(scenario)
        if len(options) != 1:
            raise UserError(
                f"run: profile {profile.name} measures {scenario.id} in variants "
                f"{', '.join(options)}; pass --variant"
            )
        variant = options[0]
    cell = resolve_cell(profile, catalog, scenario.id, variant, adapters[0], args.style or "plain")
    earlier = [load_result(Path(p)) for p in args.earlier or []]
    if args.process is not None:
        result = run_process(cell, Path(args.output), args.process - 1, earlier)
    else:
        result = run_cell(cell, Path(args.output), earlier)
    print(f"{cell.label}: {describe(result)} -> {args.output}")
    return 0


# --- doctor ----------------------------------------------------------------------------------


def hardware_report(profile) -> dict[str, Any]:
    from datarax_bench import accelerator, provenance
    from datarax_bench.adapters import all_adapters

    accelerator.pin_jax_platform(profile.backend)
    problem = accelerator.backend_problem(profile.backend, profile.name)
    distributions = [d for a in all_adapters() for d in a.distributions]
    report = provenance.collect(distributions)
    report["profile"] = profile.name
    report["expected_backend"] = profile.backend
    report["backend_problem"] = problem
    report["backend_ok"] = problem is None
    report["gpu_stack"] = accelerator.gpu_stack()
    return report


def cmd_doctor(args) -> int:
    from datarax_bench import machine_load
    from datarax_bench.results import write_json_atomic
    from datarax_bench.workload.catalog import load_profile

    profile = load_profile(args.profile)
    if args.json:
        check_output("doctor: --json", args.json, "file")
    report = hardware_report(profile)
    jax_info = report["jax"] or {}
    print(f"profile:      {profile.name} (expects backend {profile.backend})")
    print(f"jax backend:  {jax_info.get('backend', 'did not start')}")
    if jax_info:
        print(f"devices:      {jax_info['device_count']} x {jax_info['device_kind']}")
        for d in jax_info["devices"]:
            print(f"              {d}")
    stack = report["gpu_stack"]
    torch_info = stack["torch"]
    print(f"nvidia driver: {stack['nvidia_driver'] or 'none'}")
    print(
        f"torch cuda:   build {torch_info.get('cuda_build') or 'none'}, "
        f"{'sees ' + str(torch_info.get('device')) if torch_info.get('cuda_available') else 'no GPU'}, "
        f"pin_memory {'on' if torch_info.get('pin_memory') else 'off'}"
    )
    jax_cuda = stack["jax"]
    plugins = ", ".join(f"{n} {v}" for n, v in jax_cuda["plugins"].items()) or "none"
    print(f"jax cuda:     {plugins}; {jax_cuda['platform_version'] or 'no GPU backend'}")
    print(f"cpu:          {report['cpu']['model']} ({report['cpu']['usable_cores']} usable cores)")
    print(f"memory:       {report['memory_bytes'] / 2**30:.1f} GiB")
    print(f"git commit:   {report['git_commit']}")
    for name, version in report["packages"].items():
        print(f"  {name:22} {version or 'not installed'}")
    machine = machine_load.preflight(
        args.watch_seconds, machine_load.cores_assumed(profile.parallelism)
    )
    report["preflight"] = machine
    print(
        f"machine:      others used {machine['foreign_share']:.0%} of the CPU over "
        f"{args.watch_seconds:g} s; load {machine['loadavg_1m']}; "
        f"governor {machine['governor'] or 'not readable'}"
    )
    for warning in machine["warnings"]:
        print(f"doctor: warning: {warning}", file=sys.stderr)
    if args.json:
        write_json_atomic(Path(args.json), report)
    if args.strict and machine["warnings"]:
        print(
            "doctor: --strict: this machine is a poor place to measure right now "
            "(warnings above); refusing",
            file=sys.stderr,
        )
        return machine_load.UNFIT_EXIT_CODE
    if not report["backend_ok"]:
        print(f"doctor: {report['backend_problem']}", file=sys.stderr)
        return 1
    print("doctor: ok")
    return 0


# --- export (W&B; logic in export.py) --------------------------------------------------------


def cmd_export(args) -> int:
    from datarax_bench.report.wandb_export import DEFAULT_PROJECT, export_results

    report = export_results(
        Path(args.results_dir),
        project=DEFAULT_PROJECT if args.project is None else args.project,
        entity=args.entity,
        mode="offline" if args.offline else "auto",
        infra=args.infra,
        skip_without_key=args.skip_without_key,
    )
    if report["mode"] in ("online", "offline"):
        mode, name = report["mode"], report["run_name"]
        print(f"{report['cells']} cells exported to W&B run {name} ({mode})")
        print(f"sync: {report['sync_command']}")
    return 0


# --- compare two runs (logic in compare.py) ---------------------------------------------------


def cmd_compare(args) -> int:
    from datarax_bench.report import compare

    threshold = (
        compare.DEFAULT_THRESHOLD
        if args.threshold is None
        else compare.parse_threshold(args.threshold)
    )
    alpha = compare.parse_alpha(args.alpha)
    outputs = [("--markdown", args.markdown), ("--csv", args.csv), ("--plot", args.plot)]
    for option, value in outputs:
        if value:
            check_output(f"compare: {option}", value, "file")
    result = compare.compare_runs(
        compare.load_run(args.base),
        compare.load_run(args.new),
        threshold,
        alpha,
        allow_different_hardware=args.allow_different_hardware,
    )
    print(compare.comparison_text(result), end="")
    compare.write_outputs(
        result, Path(args.markdown) if args.markdown else None, Path(args.csv) if args.csv else None
    )
    if args.plot:
        from datarax_bench.report.compare_plot import plot_comparison

        plot_comparison(result, args.plot)
    return 1 if result.regressions else 0


@contextlib.contextmanager
def _resume_directory(args):
    """(the resume directory, what to call with each file written there) for `run`: the
    --resume-dir as it is, or a local copy of --resume-bucket that uploads what is written."""
    if not args.resume_bucket:
        yield (Path(args.resume_dir) if args.resume_dir else None), None
        return
    import shutil

    from datarax_bench.cloud.buckets import MirroredDirectory, parse_bucket

    bucket = parse_bucket(args.resume_bucket, "run: --resume-bucket")
    # Beside the output directory, on the machine's own disk; emptied first, so that the copy
    # holds what the bucket holds and nothing an earlier run left there.
    output = Path(args.output_dir).resolve()
    local = output.parent / f".{output.name}.resume-bucket"
    shutil.rmtree(local, ignore_errors=True)
    mirror = MirroredDirectory(bucket, local)
    print(f"resume: {mirror.pull()} files from {bucket.uri}", file=sys.stderr, flush=True)
    yield mirror.local, mirror.push


def _each_cell_keeper(args, profile: str):
    """(what to call with each cell's result, the exit status when nothing would keep the
    cells) for `run --keep-each-cell`, decided before the first cell: a bucket (--resume-dir,
    --resume-bucket) keeps each cell already; else W&B, if it takes the key now."""
    from datarax_bench.cloud.standalone import cell_keeper, refuse
    from datarax_bench.console import say

    if args.resume_dir or args.resume_bucket:
        if args.resume_dir:
            check_output("run: --resume-dir", args.resume_dir, "directory")
        where = args.resume_dir or args.resume_bucket
        say(f"each cell is kept in {where} as soon as it is measured", prefix="keep")
        return None, None
    keep, problem = cell_keeper(Path(args.output_dir), profile)
    if keep is not None:
        say("each cell goes to W&B as soon as it is measured", prefix="keep")
        return keep, None
    if args.results_on_machine:
        say("each cell stays on this machine only, as asked (--results-on-machine)", prefix="keep")
        return None, None
    return None, refuse(problem)


def cmd_upload(args) -> int:
    from datarax_bench.cloud.buckets import BucketURI, parse_bucket, upload

    src = Path(args.file)
    if not src.is_file():
        raise UserError(f"upload: {args.file!r} is not a file; expected the file to copy")
    bucket = parse_bucket(args.destination, "upload: destination")
    if not bucket.prefix:
        raise UserError(
            f"upload: destination: got {args.destination!r}, expected the object's whole URI "
            "(s3://BUCKET/KEY or gs://BUCKET/KEY)"
        )
    print(upload(src, BucketURI(bucket.name, "", bucket.scheme), bucket.prefix))
    return 0


# --- standalone task files (logic in standalone.py) -----------------------------------------


def cmd_persist(args) -> int:
    from datarax_bench.cloud.standalone import check, persist

    bucket = Path(args.bucket_dir) if args.bucket_dir else None
    if args.check:
        return check(bucket, on_machine=args.results_on_machine)
    if not args.results_dir:
        raise UserError("persist: --results-dir is required (or --check, before measuring)")
    return persist(Path(args.results_dir), bucket, on_machine=args.results_on_machine)


def cmd_task_file(args) -> int:
    from datarax_bench.cloud.standalone import write_bucket_task

    print(write_bucket_task(Path(args.template), Path(args.output), args.results_bucket))
    return 0


# --- entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from datarax_bench.cloud.buckets import SCHEMES
    from datarax_bench.workload.catalog import STYLES

    parser = _Parser(prog="datarax-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="scenarios, variants, profiles, adapters and support")
    p.add_argument("--profile", help="show what this profile measures")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="measure one cell (--output) or a matrix (--output-dir)")
    p.add_argument("--profile", required=True)
    p.add_argument("--scenario", "--scenarios", dest="scenarios", nargs="+", action="extend")
    p.add_argument("--variant")
    p.add_argument("--adapter", "--adapters", dest="adapters", nargs="+", action="extend")
    p.add_argument(
        "--style",
        choices=STYLES,
        help="pipeline style: plain (every transform per element) or tuned (the framework's "
        "performance guide); default: the profile's styles for --output-dir, plain for --output",
    )
    p.add_argument("--output", help="result JSON of one cell")
    p.add_argument(
        "--process",
        type=_process_number,
        help="with --output: measure only this process (from 1) of a cell measured in several "
        "(the profile's measurement.processes) and write its own result; --earlier gives the "
        "processes before it",
    )
    p.add_argument(
        "--earlier",
        nargs="*",
        metavar="RESULT",
        help="with --output: the results of the cell's first processes, measured before with "
        "--process, in order; only the processes after them are measured, and --output is the "
        "cell pooled over all (nothing is measured when one of them did not end ok)",
    )
    p.add_argument("--output-dir", help="directory for a whole matrix")
    p.add_argument(
        "--resume-dir",
        help="with --output-dir: keep every cell's result here too as soon as it is written, "
        "and take a cell already here (same workload, settings and commit) instead of "
        "measuring it; a mounted results bucket makes a restarted job resume",
    )
    p.add_argument(
        "--resume-bucket",
        help="like --resume-dir for a bucket that is not mounted (s3://BUCKET/PREFIX or "
        "gs://...): its files are copied to .OUTPUT-DIR.resume-bucket beside the output "
        "directory first, and every file written there is uploaded at once",
    )
    p.add_argument(
        "--cells",
        nargs="+",
        action="extend",
        help="with --output-dir: only these cells of the matrix, as SCENARIO/VARIANT/ADAPTER/STYLE "
        "(one machine's share of a sharded run)",
    )
    p.add_argument(
        "--keep-each-cell",
        action="store_true",
        help="with --output-dir: keep each cell off this machine as soon as it is measured: in "
        "--resume-dir / --resume-bucket when given, else in W&B (WANDB_API_KEY); refuse before "
        "the first cell (exit 3, one line) when nothing would keep it",
    )
    p.add_argument(
        "--results-on-machine",
        action="store_true",
        help="with --keep-each-cell: let the cells stay on this machine when nothing else keeps "
        "them (you copy them off yourself)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("doctor", help="check that JAX sees the profile's backend")
    p.add_argument("--profile", required=True)
    p.add_argument("--json", help="also write the hardware report to this file")
    p.add_argument(
        "--watch-seconds",
        type=_positive_seconds,
        default=3.0,
        help="how long to watch other processes' CPU use (default 3)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 3 when the machine is a poor place to measure (busy, steal, scaling, cores)",
    )
    p.set_defaults(func=cmd_doctor)

    # export (W&B): see wandb_export.py
    p = sub.add_parser("export", help="export a results directory to Weights & Biases")
    p.add_argument("--results-dir", required=True, help="the --output-dir of a run")
    p.add_argument("--project", help="W&B project (default datarax-benchmarks)")
    p.add_argument("--entity", help="W&B entity (team or user)")
    p.add_argument("--offline", action="store_true", help="write an offline run; upload later")
    p.add_argument("--infra", help="infra label (default: from results/PROFILE/INFRA, else local)")
    p.add_argument(
        "--skip-without-key",
        action="store_true",
        help="without WANDB_API_KEY, export nothing and exit 0 (cloud machines)",
    )
    p.set_defaults(func=cmd_export)

    # compare two results directories: see compare.py
    p = sub.add_parser("compare", help="compare two results directories; exit 1 on a regression")
    p.add_argument("base", help="the earlier results directory (the baseline)")
    p.add_argument("new", help="the results directory to check against it")
    p.add_argument("--threshold", help="smallest change called (default 10%%)")
    p.add_argument("--alpha", default="0.01", help="significance level (default 0.01)")
    p.add_argument("--markdown", help="also write the table as Markdown to this file")
    p.add_argument("--csv", help="also write one row per cell and metric to this CSV file")
    p.add_argument("--plot", help="also draw the ratios with their intervals to this PNG")
    p.add_argument(
        "--allow-different-hardware",
        action="store_true",
        help="compare runs from different machines (every row then says so)",
    )
    p.set_defaults(func=cmd_compare)

    # standalone task files (benchmarks/sky): see standalone.py
    p = sub.add_parser("persist", help="keep a cloud machine's results (W&B and/or a bucket)")
    p.add_argument("--results-dir", help="the --output-dir of a run (not with --check)")
    p.add_argument("--bucket-dir", help="where the results bucket is mounted")
    p.add_argument(
        "--check",
        action="store_true",
        help="before measuring: exit 3 in one line, within seconds, when nothing would keep the "
        "results (no bucket mount that takes files, and no W&B that takes WANDB_API_KEY)",
    )
    p.add_argument(
        "--results-on-machine",
        action="store_true",
        help="the results may stay only on this machine (you copy them off yourself): exit 0",
    )
    p.set_defaults(func=cmd_persist)

    p = sub.add_parser("upload", help="copy one file to a results bucket (s3:// or gs://)")
    p.add_argument("file")
    p.add_argument("destination", help="the object's URI, s3://BUCKET/KEY or gs://BUCKET/KEY")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("task-file", help="a task file from benchmarks/sky with a results bucket")
    p.add_argument("template", help="benchmarks/sky/<name>.yaml")
    p.add_argument(
        "--results-bucket",
        required=True,
        choices=SCHEMES,
        help="the store of your existing bucket (s3 or gs), named at launch with --env "
        "DATARAX_BENCH_BUCKET=<name>",
    )
    p.add_argument("-o", "--output", required=True, help="the new task file")
    p.set_defaults(func=cmd_task_file)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
