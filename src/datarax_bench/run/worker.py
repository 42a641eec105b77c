"""The measuring process of one cell: `python -m datarax_bench.run.worker ...`.

Started by `datarax_bench.run.runner`, which enforces the timeout and turns crashes into `failed`
results. It imports exactly one framework, so frameworks never interfere with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from datarax_bench import accelerator
from datarax_bench.adapters import get_adapter
from datarax_bench.results import write_result
from datarax_bench.run.cell import CellClock, make_result
from datarax_bench.run.supervision import guard_worker
from datarax_bench.workload.catalog import load_catalog, load_profile
from datarax_bench.workload.data import materialize


class WrongBackend(RuntimeError):
    """JAX runs elsewhere than the profile's accelerator: a failure, never a number."""


def _log(message: str) -> None:
    print(f"[worker] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datarax_bench.run.worker")
    for name in ("profile", "scenario", "variant", "adapter", "output"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--style", default="plain")
    # Which of the cell's worker processes this is (datarax_bench.run.processes), from 0.
    parser.add_argument("--process", type=int, default=0)
    # For a later process of a tuned cell: the first process's choice (JSON), measured again.
    parser.add_argument("--tuned-choice", type=json.loads)
    # Given by the runner: the worker (and its group) must not outlive that process.
    parser.add_argument("--supervisor-pid", type=int)
    parser.add_argument("--lifeline-fd", type=int)
    args = parser.parse_args(argv)
    if args.supervisor_pid is not None and args.lifeline_fd is not None:
        guard_worker(args.supervisor_pid, args.lifeline_fd)

    clock = CellClock()
    catalog = load_catalog()
    profile = load_profile(args.profile, catalog)
    workload = catalog.get(args.scenario).resolve(args.variant, profile.size)
    adapter = get_adapter(args.adapter).styled(args.style)
    # JAX may start only the profile's platform: no probing for accelerators a CPU profile does
    # not measure, and no silent CPU fallback on a GPU or TPU profile.
    accelerator.pin_jax_platform(profile.backend)
    if profile.backend == "cpu":
        if workload.measure == "sharding":
            # N host devices for this cell's process only; must be set before jax is imported.
            flag = f"--xla_force_host_platform_device_count={workload.options['devices']}"
            os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), flag]))

    from datarax_bench.measures import measure_cell
    from datarax_bench.measures.harness import UnsupportedHere
    from datarax_bench.run.processes import worker_profile

    try:
        if problem := accelerator.backend_problem(profile.backend, profile.name):
            raise WrongBackend(problem)
        dataset = materialize(workload, profile.seed)
        _log(f"data {dataset.directory} ({'generated' if dataset.generated else 'cached'})")
        started = time.perf_counter()
        adapter.prepare(workload, dataset)
        _log(f"prepared in {time.perf_counter() - started:.1f} s (before anything is timed)")
        measured = worker_profile(profile, workload.measure, args.process, args.tuned_choice)
        body = measure_cell(adapter, workload, dataset, measured, progress=_log)
        result = make_result("ok", None, profile, workload, adapter, clock, **body)
        result["workload"]["data_digest"] = dataset.digest
    except UnsupportedHere as exc:
        _log(str(exc))
        result = make_result("unsupported", str(exc), profile, workload, adapter, clock)
    except ImportError as exc:
        # A missing or broken framework makes this adapter's cells unsupported, not the run.
        reason = f"{adapter.display_name} could not be imported: {type(exc).__name__}: {exc}"
        _log(reason)
        result = make_result("unsupported", reason[:500], profile, workload, adapter, clock)
    except Exception as exc:  # a failure is data: record it, never only print it
        first_line = (str(exc).strip().splitlines() or [""])[0]
        reason = f"{type(exc).__name__}: {first_line}"[:500]
        _log(f"failed: {reason}")
        result = make_result(
            "failed", reason, profile, workload, adapter, clock, error=traceback.format_exc()
        )
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
