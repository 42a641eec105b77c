"""The measure registry: every module in this package that registers a function with
`@register` adds a measure (the catalog's `measure:` of a scenario). Adding a measure means
adding one file; the set of implemented measures is this table's keys.

Measures outside this package register the same way and load as plugins (`plugins`): from
the `datarax_bench.measures` entry point group, and from the modules named in
`DATARAX_BENCH_PLUGINS`.

A measure runs inside the worker, after its framework is imported; the registry itself is read
by the supervisor and `list`, so measure modules import JAX and frameworks only inside their
functions.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datarax_bench.adapters.base import Adapter
from datarax_bench.errors import UserError
from datarax_bench.measures.harness import MeasureBody
from datarax_bench.plugins import load_entry_points, load_named_modules
from datarax_bench.workload.catalog import Profile, Workload
from datarax_bench.workload.data import Dataset

Progress = Callable[[str], None] | None
Run = Callable[[Adapter, Workload, Dataset, Profile, Progress], MeasureBody]
Support = Callable[[Adapter, Workload], str | None]

ENTRY_POINT_GROUP = "datarax_bench.measures"


@dataclass(frozen=True)
class Measure:
    name: str
    run: Run
    #: True when the harness does all the work the same way for every loader (digests, a
    #: sharded delivery, more ops): an adapter supports it when it expresses the workload's ops.
    #: False when it needs a native API the adapter declares in `Adapter.measures`.
    any_adapter: bool = False
    #: Replaces the `Adapter.measures` check where support depends on the variant.
    support: Support | None = None
    #: True when its only timed numbers are its windows, so that the profile's
    #: `measurement.processes` may measure them in several worker processes and pool them
    #: (datarax_bench.run.processes). Special metrics come from the first process.
    pooled: bool = False


_TABLE: dict[str, Measure] = {}
_discovered = False


def register(
    name: str, *, any_adapter: bool = False, support: Support | None = None, pooled: bool = False
):
    def decorate(run: Run) -> Run:
        _TABLE[name] = Measure(name, run, any_adapter, support, pooled)
        return run

    return decorate


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    load_entry_points(ENTRY_POINT_GROUP)
    load_named_modules()


def table() -> dict[str, Measure]:
    _discover()
    return dict(_TABLE)


def implemented() -> frozenset[str]:
    """Measures that run; a scenario declaring another ends as `not_implemented` untimed."""
    return frozenset(table())


def support(adapter: Adapter, workload: Workload) -> str | None:
    """None when `adapter` runs `workload` as specified, else why not (one line)."""
    return (
        adapter.style_support()
        or measure_support(adapter, workload)
        or adapter.ops_support(workload)
    )


def measure_support(adapter: Adapter, workload: Workload) -> str | None:
    """Why the adapter cannot perform the workload's measurement, or None."""
    measure = table().get(workload.measure)
    if measure is not None and measure.support is not None:
        return measure.support(adapter, workload)
    if measure is not None and measure.any_adapter or workload.measure in adapter.measures:
        return None
    return adapter.measure_reasons.get(
        workload.measure,
        f"{adapter.display_name} has no native support for the {workload.measure!r} measurement",
    )


def static_status(adapter: Adapter, workload: Workload) -> tuple[str, str] | None:
    """(status, reason) for a cell that must not run a loader at all, else None."""
    if workload.measure not in implemented():
        return (
            "not_implemented",
            f"{workload.scenario} measures {workload.measure!r}, which the harness does not "
            "implement yet; nothing was timed",
        )
    reason = support(adapter, workload)
    return ("unsupported", reason) if reason else None


def measure_cell(
    adapter: Adapter,
    workload: Workload,
    dataset: Dataset,
    profile: Profile,
    progress: Progress = None,
) -> dict[str, Any]:
    """All repetitions of one cell (all kept), their statistics, the parallelism used and,
    for the special measurements, their own metrics under `special`."""
    measure = table().get(workload.measure)
    if measure is None:
        raise UserError(f"measure {workload.measure!r} is not implemented")
    return measure.run(adapter, workload, dataset, profile, progress).to_json()
