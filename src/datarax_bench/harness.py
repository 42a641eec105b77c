"""Measuring one cell: setup -> untimed warmup -> timed window -> teardown, R times.

Each batch is timed from the moment it is requested until every field is device-ready
(`jax.device_put` onto the profile's device, then blocked on). The harness adds two clock
reads and a few list appends per batch; tests/perf/bench_harness.py shows what that costs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import psutil

from . import stats
from .adapters.base import HARNESS_MEASURES, Adapter, Batch, CellContext
from .catalog import Profile, Workload
from .data import Dataset
from .reference import BATCH_OPS

Delivered = dict[str, Any]

#: Measures the harness implements; any other a catalog declares ends as `not_implemented`
#: without running a loader.
IMPLEMENTED_MEASURES = (
    frozenset({"throughput", "streaming", "checkpoint", "source_backends"}) | HARNESS_MEASURES
)
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
        out = {name: put(to_host(value), target) for name, value in batch.items()}
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


def _nbytes(batch: Delivered) -> int:
    return sum(v.nbytes for v in batch.values())


def _stream(loader) -> Iterator[Batch]:
    """Batches across epoch boundaries, for as long as the harness asks."""
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


def measure_repetition(
    index: int,
    adapter: Adapter,
    ctx: CellContext,
    deliver: Callable[[Batch], Delivered],
    device=None,
) -> dict[str, Any]:
    m = ctx.profile.measurement
    clock = time.perf_counter

    setup_start = clock()
    loader = adapter.open(ctx)
    setup_s = clock() - setup_start
    try:
        batches = _stream(loader)
        first = deliver(next(batches))
        time_to_first_batch = clock() - setup_start
        first_digest = batch_digest(first)
        first_bytes = _nbytes(first)
        del first
        for _ in range(max(0, m["warmup_batches"] - 1)):
            deliver(next(batches))

        min_batches, min_seconds = m["min_batches"], m["min_seconds"]
        # Batches have one shape unless a batch-level op (dynamic padding) sizes each one; only
        # then is every batch's size added up inside the window.
        variable = any(op in BATCH_OPS for op in ctx.workload.ops())
        latencies: list[float] = []
        total_bytes = 0
        with RssSampler() as rss:
            window_start = now = clock()
            while len(latencies) < min_batches or now - window_start < min_seconds:
                requested = now
                # No reference to the delivered batch outlives this statement, as in a training
                # loop that consumes each batch: holding it would keep two batches' buffers alive
                # and change the allocator's behaviour (measurably, for large batches).
                if variable:
                    total_bytes += _nbytes(deliver(next(batches)))
                else:
                    deliver(next(batches))
                now = clock()
                latencies.append(now - requested)
                if now >= rss.next_sample:
                    rss.sample(now)
        window_s = now - window_start
        if not variable:
            total_bytes = first_bytes * len(latencies)
        parallelism = dict(getattr(loader, "parallelism", {}))
        source_info = getattr(loader, "source_info", None)
    finally:
        loader.close()

    return _repetition_record(
        index=index,
        ctx=ctx,
        latencies=latencies,
        total_bytes=total_bytes,
        window_s=window_s,
        time_to_first_batch=time_to_first_batch,
        setup_s=setup_s,
        peak_rss=rss.peak,
        device_peak=_device_peak_bytes(device),
        first_digest=first_digest,
        parallelism=parallelism,
        source_info=source_info,
    )


def _repetition_record(
    index,
    ctx,
    latencies,
    total_bytes,
    window_s,
    time_to_first_batch,
    setup_s,
    peak_rss,
    device_peak,
    first_digest,
    parallelism,
    source_info=None,
) -> dict[str, Any]:
    """One repetition as the result schema records it, plus what the loader reported about
    itself under private keys that `loader_reports` takes out."""
    elements = len(latencies) * ctx.workload.batch_size
    return {
        "index": index,
        "batches": len(latencies),
        "elements": elements,
        "bytes": int(total_bytes),
        "window_s": window_s,
        "epochs": elements / ctx.workload.num_elements,
        "elements_per_s": elements / window_s,
        "bytes_per_s": total_bytes / window_s,
        "latency_ms": stats.latency_summary_ms(latencies),
        "time_to_first_batch_s": time_to_first_batch,
        "setup_s": setup_s,
        "peak_rss_bytes": int(peak_rss),
        "device_peak_bytes": device_peak,
        "first_batch_sha256": first_digest,
        "_parallelism": parallelism,
        "_source_info": source_info,
    }


def loader_reports(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Remove the loader's own reports from every repetition; return the last one's
    (`parallelism`, `source_info`)."""
    reports = {}
    for rep in reps:
        reports = {key.removeprefix("_"): rep.pop(key) for key in [k for k in rep if k[0] == "_"]}
    return reports


def summarize_repetitions(reps: list[dict[str, Any]]) -> dict[str, Any]:
    digests = {r["first_batch_sha256"] for r in reps}
    device_peaks = [r["device_peak_bytes"] for r in reps if r["device_peak_bytes"] is not None]

    def median(key):
        return float(np.median([r[key] for r in reps]))

    def latency_median(p):
        return float(np.median([r["latency_ms"][p] for r in reps]))

    throughput = stats.summarize([r["elements_per_s"] for r in reps])
    return {
        "repetitions": len(reps),
        "elements_per_s": throughput,
        "unstable": stats.is_unstable(throughput["cv"]),
        "bytes_per_s_median": median("bytes_per_s"),
        "latency_ms_p50_median": latency_median("p50"),
        "latency_ms_p95_median": latency_median("p95"),
        "latency_ms_p99_median": latency_median("p99"),
        "time_to_first_batch_s_median": median("time_to_first_batch_s"),
        "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in reps),
        "device_peak_bytes_max": max(device_peaks) if device_peaks else None,
        "first_batch_sha256": reps[0]["first_batch_sha256"],
        "first_batch_consistent": len(digests) == 1,
    }


def _sharding_target(workload: Workload):
    """A NamedSharding over the first N devices on a 1-D mesh, batch axis split."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    wanted = workload.options["devices"]
    devices = jax.devices()
    if len(devices) < wanted:
        raise UnsupportedHere(
            f"{workload.variant} shards over {wanted} devices; this machine's JAX backend has {len(devices)}"
        )
    if workload.batch_size % wanted:
        raise ValueError(f"batch size {workload.batch_size} does not split over {wanted} devices")
    mesh = Mesh(np.array(devices[:wanted]), ("data",))
    return NamedSharding(mesh, PartitionSpec("data"))


def _sharding_report(adapter: Adapter, ctx: CellContext, target) -> dict[str, Any]:
    """Deliver one batch and record how it was really laid out."""
    loader = adapter.open(ctx)
    try:
        batch = make_delivery(adapter, target)(next(iter(loader.epoch(0))))
    finally:
        loader.close()
    fields = {}
    for name, arr in sorted(batch.items()):
        fields[name] = {
            "global_shape": list(arr.shape),
            "shard_shapes": sorted({tuple(s.data.shape) for s in arr.addressable_shards}),
            "devices": len(arr.sharding.device_set),
            "equivalent": bool(arr.sharding.is_equivalent_to(target, arr.ndim)),
        }
    wanted = ctx.workload.options["devices"]
    return {
        "devices": wanted,
        "mesh_shape": dict(target.mesh.shape),
        "partition_spec": str(target.spec),
        "fields": {
            k: {**v, "shard_shapes": [list(x) for x in v["shard_shapes"]]}
            for k, v in fields.items()
        },
        "sharded": all(f["devices"] == wanted and f["equivalent"] for f in fields.values()),
    }


def _digest_run(
    adapter: Adapter, ctx: CellContext, deliver, epochs: int, index: int
) -> tuple[dict[str, Any], list[str]]:
    """Every batch of `epochs` epochs from a fresh loader, each digested after it is timed."""
    clock = time.perf_counter
    digests: list[str] = []
    latencies: list[float] = []
    sizes: list[int] = []
    setup_start = clock()
    loader = adapter.open(ctx)
    setup_s = clock() - setup_start
    try:
        with RssSampler() as rss:
            for epoch in range(epochs):
                batches = iter(loader.epoch(epoch))
                while True:
                    requested = clock()
                    try:
                        out = deliver(next(batches))
                    except StopIteration:
                        break
                    now = clock()
                    latencies.append(now - requested)
                    if now >= rss.next_sample:
                        rss.sample(now)
                    sizes.append(_nbytes(out))
                    digests.append(batch_digest(out))
        parallelism = dict(getattr(loader, "parallelism", {}))
    finally:
        loader.close()
    if not latencies:
        raise RuntimeError("the loader produced no batch")
    # Throughput counts only the time spent waiting for batches, not the digests, and (as in
    # every other measurement) not the first batch, which pays the loader's start-up (worker
    # processes): that goes to time to first batch.
    steady = latencies[1:] or latencies
    record = _repetition_record(
        index=index,
        ctx=ctx,
        latencies=steady,
        total_bytes=sum(sizes[1:] or sizes),
        window_s=sum(steady),
        time_to_first_batch=setup_s + latencies[0],
        setup_s=setup_s,
        peak_rss=rss.peak,
        device_peak=None,
        first_digest=digests[0],
        parallelism=parallelism,
    )
    return record, digests


def _sequence_digest(digests: list[str]) -> str:
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def measure_determinism(
    adapter: Adapter, workload: Workload, dataset: Dataset, profile: Profile, progress=None
) -> dict[str, Any]:
    """Same seed at least twice, then another seed, over several epochs; every batch digested.

    Deterministic means identical digest sequences for the same seed; a non-deterministic
    adapter is a finding recorded in the result, not an error.
    """
    import jax

    deliver = make_delivery(adapter, jax.devices()[0])
    epochs = workload.options.get("epochs", 2)
    runs = max(2, profile.measurement["repetitions"])
    seed, other_seed = profile.seed, profile.seed + 1
    reps, sequences = [], []
    for r in range(runs):
        ctx = CellContext(workload=workload, dataset=dataset, profile=profile, seed=seed)
        rep, digests = _digest_run(adapter, ctx, deliver, epochs, r)
        reps.append(rep)
        sequences.append(digests)
        if progress:
            progress(f"determinism run {r + 1}/{runs} (seed {seed}): {len(digests)} batches")
    other_ctx = CellContext(workload=workload, dataset=dataset, profile=profile, seed=other_seed)
    _, other = _digest_run(adapter, other_ctx, deliver, epochs, runs)
    mismatch = None
    for r, seq in enumerate(sequences[1:], 1):
        for b, (x, y) in enumerate(zip(sequences[0], seq, strict=False)):
            if x != y:
                mismatch = {"run": r, "batch": b}
                break
        if mismatch is None and len(seq) != len(sequences[0]):
            mismatch = {"run": r, "batch": min(len(seq), len(sequences[0]))}
        if mismatch:
            break
    parallelism = loader_reports(reps)["parallelism"]
    special = {
        "epochs": epochs,
        "batches_per_run": len(sequences[0]),
        "runs_same_seed": runs,
        "seed": seed,
        "other_seed": other_seed,
        "deterministic": mismatch is None,
        "first_mismatch": mismatch,
        "seeds_differ": other != sequences[0],
        "sequence_sha256": [_sequence_digest(seq) for seq in sequences],
        "other_seed_sequence_sha256": _sequence_digest(other),
        "batch_sha256": sequences[0],
        "other_seed_batch_sha256": other,
    }
    return {
        "repetitions": reps,
        "statistics": summarize_repetitions(reps),
        "parallelism": parallelism,
        "special": special,
    }


def measure_cell(
    adapter: Adapter,
    workload: Workload,
    dataset: Dataset,
    profile: Profile,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """All repetitions of one cell (all kept), their statistics, the parallelism used and,
    for the special measurements, their own metrics under `special`."""
    import jax

    if workload.measure == "determinism":
        return measure_determinism(adapter, workload, dataset, profile, progress)
    if workload.measure == "streaming":
        from .streaming import measure_streaming

        return measure_streaming(adapter, workload, dataset, profile, progress)
    if workload.measure == "checkpoint":
        from .checkpoint import measure_checkpoint

        return measure_checkpoint(adapter, workload, dataset, profile, progress)
    if workload.measure == "source_backends":
        from .backends import measure_source_backends

        return measure_source_backends(adapter, workload, dataset, profile, progress)
    device = jax.devices()[0]
    target = _sharding_target(workload) if workload.measure == "sharding" else device
    deliver = make_delivery(adapter, target)
    ctx = CellContext(workload=workload, dataset=dataset, profile=profile, seed=profile.seed)
    reps = []
    for r in range(profile.measurement["repetitions"]):
        rep = measure_repetition(r, adapter, ctx, deliver, device)
        reps.append(rep)
        if progress:
            progress(
                f"repetition {r + 1}/{profile.measurement['repetitions']}: "
                f"{rep['elements_per_s']:.1f} elements/s over {rep['batches']} batches"
            )
    parallelism = loader_reports(reps)["parallelism"]
    body = {
        "repetitions": reps,
        "statistics": summarize_repetitions(reps),
        "parallelism": parallelism,
    }
    if workload.measure == "sharding":
        body["special"] = _sharding_report(adapter, ctx, target)
    elif workload.measure == "dag":
        merges = [t for t in workload.transforms if t["op"] == "branch_merge"]
        body["special"] = {
            "branches": [len(t["branches"]) for t in merges],
            "merge": [t["merge"] for t in merges],
            "ops": workload.ops(),
        }
    return body
