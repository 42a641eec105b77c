"""What every measure shares: open a loader, warm it up, time a window, deliver, digest, and
sample memory; a repetition's record and the statistics over repetitions.

One repetition is setup -> untimed warmup -> timed window -> teardown. Each batch is timed from the moment it is requested until every field is device-ready
(`jax.device_put` onto the profile's device, then blocked on). The harness adds two clock
reads and a few list appends per batch; tests/perf/bench_harness.py shows what that costs.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

from datarax_bench import stats
from datarax_bench.adapters.base import Adapter, Batch, CellContext
from datarax_bench.machine_load import WindowLoad
from datarax_bench.machine_load import summarize as summarize_load
from datarax_bench.workload.catalog import Profile, Workload
from datarax_bench.workload.data import Dataset
from datarax_bench.workload.reference import BATCH_OPS

Delivered = dict[str, Any]

RSS_SAMPLE_INTERVAL_S = 0.1


def batch_digest(batch: Mapping[str, Any]) -> str:
    """SHA-256 over every field in name order: name, dtype, shape, then the C-order bytes."""
    h = hashlib.sha256()
    for name in sorted(batch):
        arr = np.ascontiguousarray(np.asarray(batch[name]))
        h.update(name.encode())
        h.update(arr.dtype.str.encode())
        h.update(repr(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


class UnsupportedHere(Exception):
    """The cell cannot run on this machine (e.g. fewer devices than a sharding variant needs)."""


def make_delivery(adapter: Adapter, device=None) -> Callable[[Batch], Delivered]:
    """The delivery contract: every field put on `device` (default: JAX's first) and ready.

    `device` may also be a `jax.sharding.Sharding`: each field then becomes one global array
    split over the sharding's devices along the batch axis.
    """
    import jax

    target = device if device is not None else jax.devices()[0]
    to_host = adapter.to_host
    put = jax.device_put
    ready = jax.block_until_ready

    def deliver(batch: Batch) -> Delivered:
        # One put of the whole batch: JAX's per-call cost (~60 µs on a slow CPU) is paid once,
        # not once per field; the fields still arrive as separate device arrays.
        out = put({name: to_host(value) for name, value in batch.items()}, target)
        ready(out)
        return out

    return deliver


class RssSampler:
    """Peak resident memory of this process and its children (loader workers), sampled.

    Sampled between batches by the measuring loop itself (`maybe_sample`), at most every
    `interval` seconds: a sampling thread measurably slowed fast loops (the benchmark in
    tests/perf/bench_harness.py showed it). Listing children walks /proc (about a millisecond),
    so the list is refreshed at most every `CHILDREN_REFRESH_S`; a sample reads ~10 µs of RSS.
    """

    CHILDREN_REFRESH_S = 2.0

    def __init__(self, interval: float = RSS_SAMPLE_INTERVAL_S):
        self.interval = interval
        self.peak = 0
        self.next_sample = 0.0
        self._process = psutil.Process()
        self._children: list[psutil.Process] = []
        self._listed_at = -float("inf")

    def sample(self, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        if now - self._listed_at >= self.CHILDREN_REFRESH_S:
            self._children = self._process.children(recursive=True)
            self._listed_at = now
        total = self._process.memory_info().rss
        for child in self._children:
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)
        self.next_sample = now + self.interval

    def __enter__(self) -> RssSampler:
        self.sample()
        return self

    def __exit__(self, *exc) -> None:
        self._listed_at = -float("inf")
        self.sample()


def nbytes(batch: Delivered) -> int:
    return sum(v.nbytes for v in batch.values())


def stream(loader) -> Iterator[Batch]:
    """Batches across epoch boundaries, for as long as the caller asks."""
    epoch = 0
    while True:
        empty = True
        for batch in loader.epoch(epoch):
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the loader produced no batch in an epoch")
        epoch += 1


def _device_peak_bytes(device) -> int | None:
    try:
        memory = device.memory_stats() if device is not None else None
    except Exception:  # backends without memory stats raise or return None
        return None
    if not memory:
        return None
    peak = memory.get("peak_bytes_in_use")
    return int(peak) if peak is not None else None


@dataclass
class Repetition:
    """One repetition: its record as the result schema has it, and what the loader reported
    about itself (the result keeps the last repetition's)."""

    record: dict[str, Any]
    parallelism: dict[str, Any]
    source_info: dict[str, Any] | None = None
    #: On the last repetition of a loop: why the loop stopped (stats.stop_reason).
    stopped: str | None = None


@dataclass
class MeasureBody:
    """What a measure returns: its repetitions and, for the special measures, their metrics."""

    repetitions: list[Repetition]
    special: dict[str, Any] | None = None
    #: With warm repetitions: the loader starts measured on their own (start_loader records).
    cold_starts: list[dict[str, Any]] | None = None
    #: The throughput measure's feed section (feed.measure_feed), where the profile asks for it.
    feed: dict[str, Any] | None = None
    #: The tuned style's parallelism sweep (tuning.tune), kept out of the repetitions.
    tuning: dict[str, Any] | None = None

    @property
    def records(self) -> list[dict[str, Any]]:
        return [rep.record for rep in self.repetitions]

    def to_json(self) -> dict[str, Any]:
        statistics = summarize_repetitions(self.records, self.cold_starts)
        if self.repetitions[-1].stopped:
            statistics["stopped"] = self.repetitions[-1].stopped
        body = {
            "repetitions": self.records,
            "statistics": statistics,
            "parallelism": self.repetitions[-1].parallelism,
        }
        if self.cold_starts is not None:
            body["cold_starts"] = self.cold_starts
        if self.special is not None:
            body["special"] = self.special
        if self.feed is not None:
            body["feed"] = self.feed
        if self.tuning is not None:
            body["tuning"] = self.tuning
        return body


@dataclass
class LoaderStart:
    """An opened loader and what its start cost: setup, then the first batch delivered."""

    loader: Any
    batches: Iterator[Batch]
    record: dict[str, Any]
    first_bytes: int


def start_loader(index: int, adapter: Adapter, ctx: CellContext, deliver) -> LoaderStart:
    """Open a loader and deliver its first batch: one cold start's record."""
    clock = time.perf_counter
    setup_start = clock()
    loader = adapter.open(ctx)
    setup_s = clock() - setup_start
    try:
        batches = stream(loader)
        first = deliver(next(batches))
        time_to_first_batch = clock() - setup_start
        record = {
            "index": index,
            "setup_s": setup_s,
            "time_to_first_batch_s": time_to_first_batch,
            "first_batch_sha256": batch_digest(first),
        }
        return LoaderStart(loader, batches, record, nbytes(first))
    except BaseException:
        loader.close()
        raise


@dataclass
class Window:
    latencies: list[float]
    total_bytes: int
    window_s: float
    peak_rss: int
    #: The machine during the window (machine_load.WindowLoad), where it was taken.
    machine: dict[str, Any] | None


def untimed(batches: Iterator[Batch], deliver, count: int) -> None:
    for _ in range(max(0, count)):
        deliver(next(batches))


def timed_window(
    ctx: CellContext,
    batches: Iterator[Batch],
    deliver,
    first_bytes: int,
    min_batches: int | None = None,
    min_seconds: float | None = None,
    machine_load: bool = True,
) -> Window:
    """One timed window over `batches`: at least min_batches and min_seconds (the profile's
    measurement unless given)."""
    m = ctx.profile.measurement
    clock = time.perf_counter
    min_batches = m["min_batches"] if min_batches is None else min_batches
    min_seconds = m["min_seconds"] if min_seconds is None else min_seconds
    # Batches have one shape unless a batch-level op (dynamic padding) sizes each one; only
    # then is every batch's size added up inside the window.
    variable = any(op in BATCH_OPS for op in ctx.workload.ops())
    latencies: list[float] = []
    total_bytes = 0
    load = WindowLoad().start() if machine_load else None
    with RssSampler() as rss:
        window_start = now = clock()
        while len(latencies) < min_batches or now - window_start < min_seconds:
            requested = now
            # No reference to the delivered batch outlives this statement, as in a training
            # loop that consumes each batch: holding it would keep two batches' buffers alive
            # and change the allocator's behaviour (measurably, for large batches).
            if variable:
                total_bytes += nbytes(deliver(next(batches)))
            else:
                deliver(next(batches))
            now = clock()
            latencies.append(now - requested)
            if now >= rss.next_sample:
                rss.sample(now)
    window_s = now - window_start
    machine = load.stop() if load is not None else None
    if not variable:
        total_bytes = first_bytes * len(latencies)
    return Window(latencies, total_bytes, window_s, rss.peak, machine)


def measure_repetition(
    index: int,
    adapter: Adapter,
    ctx: CellContext,
    deliver: Callable[[Batch], Delivered],
    device=None,
) -> Repetition:
    """A fresh repetition: its own loader, warmed up, one window, closed."""
    started = start_loader(index, adapter, ctx, deliver)
    try:
        untimed(started.batches, deliver, ctx.profile.measurement["warmup_batches"] - 1)
        window = timed_window(ctx, started.batches, deliver, started.first_bytes)
        parallelism = dict(getattr(started.loader, "parallelism", {}))
        source_info = getattr(started.loader, "source_info", None)
    finally:
        started.loader.close()
    record = repetition_record(index, ctx, window, started.record, _device_peak_bytes(device))
    return Repetition(record, parallelism, source_info)


def repetition_record(
    index: int,
    ctx: CellContext,
    window: Window,
    start: dict[str, Any] | None,
    device_peak: int | None,
) -> dict[str, Any]:
    """One repetition as the result schema records it. `start` is the cold start of the
    window's own loader (a fresh repetition); a warm window, from a loader earlier windows
    used, has none."""
    latencies, window_s = window.latencies, window.window_s
    elements = len(latencies) * ctx.workload.batch_size
    record = {
        "index": index,
        "from": "fresh" if start is not None else "warm",
        "batches": len(latencies),
        "elements": elements,
        "bytes": int(window.total_bytes),
        "window_s": window_s,
        "epochs": elements / ctx.workload.num_elements,
        "elements_per_s": elements / window_s,
        "bytes_per_s": window.total_bytes / window_s,
        "latency_ms": stats.latency_summary_ms(latencies),
        "time_to_first_batch_s": start["time_to_first_batch_s"] if start else None,
        "setup_s": start["setup_s"] if start else None,
        "peak_rss_bytes": int(window.peak_rss),
        "device_peak_bytes": device_peak,
        "first_batch_sha256": start["first_batch_sha256"] if start else None,
    }
    if window.machine is not None:
        record["machine_load"] = window.machine
        # The measuring process and every worker process of the loader, per 1,000 elements.
        record["cpu_s_per_1k_elements"] = window.machine["own_cpu_s"] / elements * 1000
    return record


def report_repetition(progress, label: str, rep: Repetition, total: int, extra: str = "") -> None:
    """The progress line every repetition loop prints."""
    if progress:
        r = rep.record
        progress(
            f"{label}repetition {r['index'] + 1}/{total}: {r['elements_per_s']:.1f} elements/s "
            f"over {r['batches']} batches{extra}"
        )


#: Cold starts measured beside warm windows, where the profile does not say.
DEFAULT_COLD_STARTS = 3


def repeat(
    adapter: Adapter,
    ctx: CellContext,
    deliver: Callable[[Batch], Delivered],
    device,
    progress: Callable[[str], None] | None = None,
    after: Callable[[Repetition], str] | None = None,
    allow_warm: bool = True,
) -> MeasureBody:
    """The profile's repetitions of the timed window; `after` runs after each one (untimed)
    and returns what the progress line adds.

    A fixed `repetitions`, or with `precision` set, from `min_repetitions` (default
    `repetitions`) until the interval of the median is that tight or `max_repetitions` ran.
    With `repetitions_from: warm` (and `allow_warm`) the windows come back to back from one
    loader, and start-up is measured on its own cold starts.
    """
    warm = allow_warm and ctx.profile.measurement.get("repetitions_from", "fresh") == "warm"
    if warm:
        return _repeat_warm(adapter, ctx, deliver, device, progress, after)
    precision, minimum, maximum = stats.repetition_bounds(ctx.profile.measurement)
    reps: list[Repetition] = []
    while True:
        values = [rep.record["elements_per_s"] for rep in reps]
        stopped = stats.stop_reason(values, precision, minimum, maximum)
        if stopped:
            reps[-1].stopped = stopped
            return MeasureBody(reps)
        rep = measure_repetition(len(reps), adapter, ctx, deliver, device)
        reps.append(rep)
        report_repetition(progress, "", rep, maximum, after(rep) if after else "")


def _repeat_warm(adapter, ctx, deliver, device, progress, after) -> MeasureBody:
    """Windows back to back from one started loader, then the remaining cold starts.

    The loader the windows use is the first cold start. Between two windows the warmup's
    count of batches is drawn untimed, so that a prefetch buffer that filled while the
    previous window was recorded is emptied before the next one is timed.
    """
    m = ctx.profile.measurement
    precision, minimum, maximum = stats.repetition_bounds(m)
    count = m.get("cold_starts", DEFAULT_COLD_STARTS)
    started = start_loader(0, adapter, ctx, deliver)
    starts = [started.record]
    reps: list[Repetition] = []
    try:
        untimed(started.batches, deliver, m["warmup_batches"] - 1)
        while True:
            values = [rep.record["elements_per_s"] for rep in reps]
            stopped = stats.stop_reason(values, precision, minimum, maximum)
            if stopped:
                reps[-1].stopped = stopped
                break
            if reps:
                untimed(started.batches, deliver, max(1, m["warmup_batches"]))
            window = timed_window(ctx, started.batches, deliver, started.first_bytes)
            record = repetition_record(len(reps), ctx, window, None, _device_peak_bytes(device))
            rep = Repetition(
                record,
                dict(getattr(started.loader, "parallelism", {})),
                getattr(started.loader, "source_info", None),
            )
            reps.append(rep)
            report_repetition(progress, "warm ", rep, maximum, after(rep) if after else "")
    finally:
        started.loader.close()
    for index in range(1, count):
        again = start_loader(index, adapter, ctx, deliver)
        again.loader.close()
        starts.append(again.record)
        if progress:
            progress(
                f"cold start {index + 1}/{count}: first batch "
                f"{again.record['time_to_first_batch_s']:.3f} s"
            )
    return MeasureBody(reps, cold_starts=starts)


def summarize_repetitions(
    reps: list[dict[str, Any]], cold_starts: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Statistics over the windows; start-up and first-batch digests from each window's own
    loader, or from the cold starts where the windows were warm."""
    starts = cold_starts if cold_starts is not None else reps
    digests = {r["first_batch_sha256"] for r in starts}
    device_peaks = [r["device_peak_bytes"] for r in reps if r["device_peak_bytes"] is not None]

    def median(key):
        return float(np.median([r[key] for r in reps]))

    def latency_median(p):
        return float(np.median([r["latency_ms"][p] for r in reps]))

    throughput = stats.summarize([r["elements_per_s"] for r in reps])
    return {
        "repetitions": len(reps),
        "repetitions_from": "warm" if cold_starts is not None else "fresh",
        "precision": _finite(stats.relative_precision([r["elements_per_s"] for r in reps])),
        "elements_per_s": throughput,
        "unstable": stats.is_unstable(throughput["cv"]),
        "bytes_per_s_median": median("bytes_per_s"),
        "latency_ms_p50_median": latency_median("p50"),
        "latency_ms_p95_median": latency_median("p95"),
        "latency_ms_p99_median": latency_median("p99"),
        "time_to_first_batch_s_median": float(
            np.median([r["time_to_first_batch_s"] for r in starts])
        ),
        "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in reps),
        "device_peak_bytes_max": max(device_peaks) if device_peaks else None,
        "first_batch_sha256": starts[0]["first_batch_sha256"],
        "first_batch_consistent": len(digests) == 1,
        **_load_statistics(reps),
    }


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _load_statistics(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The cell's CPU cost and how busy the rest of the machine was, where every window's load
    was taken."""
    windows = [r.get("machine_load") for r in reps]
    if not windows or None in windows:
        return {}
    load = summarize_load(windows)
    return {
        "cpu_s_per_1k_elements_median": float(
            np.median([r["cpu_s_per_1k_elements"] for r in reps])
        ),
        "busy_cores_median": float(np.median([w["own_busy_cores"] for w in windows])),
        "busy": load.pop("busy"),
        "machine_load": load,
    }


def first_device():
    import jax

    return jax.devices()[0]


def cell_context(workload: Workload, dataset: Dataset, profile: Profile, **kw) -> CellContext:
    return CellContext(workload=workload, dataset=dataset, profile=profile, seed=profile.seed, **kw)


#: Writing 3 here drops the page cache (Linux, root only).
DROP_CACHES = "/proc/sys/vm/drop_caches"


def drop_page_cache(path: str = DROP_CACHES) -> tuple[bool, str]:
    """(dropped, note). Never raises: a machine that forbids it is measured warm, and says so."""
    try:
        os.sync()
        with open(path, "w") as fh:
            fh.write("3\n")
    except OSError as exc:
        return False, f"page cache could not be dropped ({exc.strerror or exc}): runs start warm"
    return True, "page cache dropped before each repetition: runs start cold"


def cold_start_repetitions(
    adapter: Adapter,
    workload: Workload,
    dataset: Dataset,
    profile: Profile,
    *,
    load_first: bool,
    label: str,
    source=None,
    progress=None,
) -> tuple[list[Repetition], list[float], str, str]:
    """The profile's repetitions, each after dropping the page cache where permitted and, with
    `load_first`, after reading the dataset into memory (timed on its own).

    Returns (repetitions, load times, "cold" or "warm", the page-cache note). Shared by the
    measures that start from files on disk (streaming, sources).
    """
    device = first_device()
    deliver = make_delivery(adapter, device)
    reps, loads, states = [], [], []
    note = ""
    for r in range(profile.measurement["repetitions"]):
        dropped, note = drop_page_cache()
        states.append("cold" if dropped else "warm")
        records, load_s = dataset, None
        if load_first:
            start = time.perf_counter()
            records = dataset.load_into_memory()
            load_s = time.perf_counter() - start
            loads.append(load_s)
        ctx = cell_context(workload, records, profile, source=source)
        reps.append(measure_repetition(r, adapter, ctx, deliver, device))
        del records, ctx
        if progress:
            rec = reps[-1].record
            extra = f", load {load_s:.3f} s" if load_s is not None else ""
            progress(
                f"{label} repetition {r + 1}: {rec['elements_per_s']:.1f} elements/s, "
                f"first batch {rec['time_to_first_batch_s']:.3f} s{extra} ({states[-1]})"
            )
    return reps, loads, "cold" if all(s == "cold" for s in states) else "warm", note
