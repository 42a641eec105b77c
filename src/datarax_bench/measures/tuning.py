"""Parallelism tuned by measurement, for the tuned style: a short sweep over the knobs the
adapter's framework has, within the cores this process may use, then the best point.

Each point of the adapter's grid (`Adapter.tuning_grid`) opens its own loader with those
settings over the profile's parallelism, warms it up and times `windows` short windows; the
point with the highest median throughput wins. A point whose first batch differs from the first
point's is left out: a knob may change how fast a loader delivers, never what it delivers.

The sweep costs seconds per cell and is kept out of the measured repetitions: the result records
the grid, each point's throughput, the choice and the sweep's own wall time. Its outcome is cached
under the data cache, keyed by this machine's hardware, the code (this package's and the
adapter's sources, the framework versions) and the cell, so a rerun on the same machine and code
measures the chosen setting without sweeping again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from datarax_bench import paths, provenance
from datarax_bench.adapters.base import Adapter, CellContext
from datarax_bench.files import write_text_atomic
from datarax_bench.results import describe_settings

#: Bumped when the cached record changes meaning.
CACHE_VERSION = 2

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TuningSettings:
    """The profile's `tuning` section: how long each point of the sweep is measured."""

    min_seconds: float = 0.25
    min_batches: int = 5
    windows: int = 3

    @classmethod
    def from_profile(cls, section: dict[str, Any] | None) -> TuningSettings:
        return cls(**(section or {}))


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    return int(provenance.cpu_info()["usable_cores"] or 1)


@cache
def _package_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def code_digest(adapter: Adapter) -> str:
    """This package's sources, the adapter's own module (a plugin lives elsewhere) and the
    versions of the framework it drives."""
    h = hashlib.sha256(_package_digest().encode())
    source = inspect.getsourcefile(type(adapter))
    if source:
        h.update(Path(source).read_bytes())
    versions = provenance.package_versions(adapter.distributions)
    h.update(json.dumps(versions, sort_keys=True).encode())
    return h.hexdigest()


def cache_key(adapter: Adapter, ctx: CellContext, grid: list[dict], settings: TuningSettings):
    identity = {
        "version": CACHE_VERSION,
        "machine": provenance.this_hardware(),
        "code": code_digest(adapter),
        "adapter": adapter.id,
        "style": adapter.style,
        "workload": ctx.workload.to_dict(),
        "data": ctx.dataset.digest,
        "parallelism": ctx.profile.parallelism,
        "measurement": {k: ctx.profile.measurement.get(k) for k in ("warmup_batches",)},
        "tuning": settings.__dict__,
        "grid": grid,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(key: str) -> Path:
    return paths.cache_dir() / "tuning" / f"{key}.json"


def _read_cached(path: Path) -> dict[str, Any] | None:
    """A cached sweep, or None when there is none or it cannot be read (it is then redone)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("chosen"), dict):
        return None
    return record


def _measure_point(adapter, ctx, deliver, settings: TuningSettings) -> dict[str, Any]:
    """One point: its own loader, warmed up, `windows` short windows, closed."""
    from datarax_bench.measures.harness import start_loader, timed_window, untimed

    started = start_loader(0, adapter, ctx, deliver)
    try:
        untimed(started.batches, deliver, ctx.profile.measurement["warmup_batches"] - 1)
        rates = []
        for _ in range(settings.windows):
            window = timed_window(
                ctx,
                started.batches,
                deliver,
                started.first_bytes,
                min_batches=settings.min_batches,
                min_seconds=settings.min_seconds,
                machine_load=False,
            )
            rates.append(len(window.latencies) * ctx.workload.batch_size / window.window_s)
        used = dict(getattr(started.loader, "parallelism", {}))
    finally:
        started.loader.close()
    return {
        "elements_per_s": float(np.median(rates)),
        "windows_elements_per_s": rates,
        "first_batch_sha256": started.record["first_batch_sha256"],
        "parallelism": used,
    }


def sweep(
    adapter: Adapter,
    ctx: CellContext,
    deliver,
    grid: list[dict[str, Any]],
    settings: TuningSettings,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every point of `grid`; the record the result keeps (without cache fields)."""
    started = time.perf_counter()
    points = []
    for number, point in enumerate(grid, 1):
        try:
            measured = _measure_point(adapter, with_settings(ctx, point), deliver, settings)
        except Exception as exc:  # a setting the loader cannot run with is a finding, not the end
            lines = str(exc).strip().splitlines()
            reason = type(exc).__name__ + (f": {lines[0][:300]}" if lines else "")
            points.append({"settings": point, "excluded": f"failed: {reason}"})
            if progress:
                progress(f"tuning {number}/{len(grid)} {_describe(point)}: failed ({reason})")
            continue
        entry = {"settings": point, **measured}
        reference = next((p for p in points if "first_batch_sha256" in p), None)
        if reference and measured["first_batch_sha256"] != reference["first_batch_sha256"]:
            entry["excluded"] = "delivered a different first batch than the grid's first point"
        points.append(entry)
        if progress:
            progress(
                f"tuning {number}/{len(grid)} {_describe(point)}: "
                f"{measured['elements_per_s']:.1f} elements/s"
                + (f" (excluded: {entry['excluded']})" if "excluded" in entry else "")
            )
    eligible = [p for p in points if "excluded" not in p]
    if not eligible:
        reasons = "; ".join(f"{_describe(p['settings'])}: {p['excluded']}" for p in points)
        raise RuntimeError(f"no setting of the parallelism sweep could be measured ({reasons})")
    best = max(eligible, key=lambda p: p["elements_per_s"])
    return {
        "knobs": sorted({k for p in grid for k in p}),
        "cores": usable_cores(),
        "window": settings.__dict__,
        "grid": points,
        "chosen": best["settings"],
        "cost_s": time.perf_counter() - started,
    }


def with_settings(ctx: CellContext, point: dict[str, Any]) -> CellContext:
    return replace(ctx, parallelism_overrides={**ctx.parallelism_overrides, **point})


def _describe(point: dict[str, Any]) -> str:
    return describe_settings(point) or "defaults"


def tune(
    adapter: Adapter,
    ctx: CellContext,
    deliver,
    progress: Callable[[str], None] | None = None,
) -> tuple[CellContext, dict[str, Any] | None]:
    """(the context to measure with, the tuning record) for a tuned-style cell; a plain cell
    or an adapter without knobs is measured as the profile sets it (record None or a grid of
    one)."""
    if adapter.style != "tuned":
        return ctx, None
    settings = TuningSettings.from_profile(ctx.profile.tuning)
    grid = adapter.tuning_grid(ctx, usable_cores())
    if len(grid) <= 1:
        chosen = grid[0] if grid else {}
        note = f"{adapter.display_name} has no parallelism knob to tune"
        record = {"knobs": sorted(chosen), "grid": [], "chosen": chosen, "note": note}
        return with_settings(ctx, chosen), {**record, "cost_s": 0.0, "cached": False}
    given = ctx.profile.tuned_choice
    if given is not None:
        # A later process of the cell measures what the first chose: its windows are pooled
        # with the first's, which a sweep of its own (or a cache entry gone stale since, when
        # the code changed between rounds) could contradict.
        if given not in grid:
            raise RuntimeError(
                f"the first process chose {_describe(given)}, which is not a point of this "
                f"process's grid ({usable_cores()} usable cores)"
            )
        if progress:
            progress(f"tuning: the first process's choice {_describe(given)}")
        note = "the first process's choice"
        record = {"knobs": sorted(given), "grid": [], "chosen": given, "note": note}
        return with_settings(ctx, given), {**record, "cost_s": 0.0, "cached": False}
    key = cache_key(adapter, ctx, grid, settings)
    path = cache_path(key)
    cached = _read_cached(path)
    if cached is not None and cached.get("chosen") in grid:
        if progress:
            progress(f"tuning: cached choice {_describe(cached['chosen'])} ({path})")
        record = {**cached, "sweep_cost_s": cached["cost_s"], "cost_s": 0.0}
        return with_settings(ctx, cached["chosen"]), {**record, "cached": True, "cache_key": key}
    record = sweep(adapter, ctx, deliver, grid, settings, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=1))
    if progress:
        progress(f"tuning: chose {_describe(record['chosen'])} in {record['cost_s']:.1f} s")
    return with_settings(ctx, record["chosen"]), {**record, "cached": False, "cache_key": key}
