"""PR-2: the same seed at least twice, then another seed, over several epochs; every batch
digested.

Deterministic means identical digest sequences for the same seed; a non-deterministic
adapter is a finding recorded in the result, not an error.
"""

from __future__ import annotations

import hashlib
import time

from datarax_bench.adapters.base import Adapter, CellContext
from datarax_bench.measures import register
from datarax_bench.measures.harness import (
    MeasureBody,
    Repetition,
    RssSampler,
    Window,
    batch_digest,
    first_device,
    make_delivery,
    nbytes,
    repetition_record,
)


def _digest_run(
    adapter: Adapter, ctx: CellContext, deliver, epochs: int, index: int
) -> tuple[Repetition, list[str]]:
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
                    sizes.append(nbytes(out))
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
    window = Window(
        latencies=steady,
        total_bytes=sum(sizes[1:] or sizes),
        window_s=sum(steady),
        peak_rss=rss.peak,
        machine=None,
    )
    start = {
        "setup_s": setup_s,
        "time_to_first_batch_s": setup_s + latencies[0],
        "first_batch_sha256": digests[0],
    }
    record = repetition_record(index, ctx, window, start, device_peak=None)
    return Repetition(record, parallelism), digests


def _sequence_digest(digests: list[str]) -> str:
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def _first_mismatch(sequences: list[list[str]]) -> dict[str, int] | None:
    for r, seq in enumerate(sequences[1:], 1):
        for b, (x, y) in enumerate(zip(sequences[0], seq, strict=False)):
            if x != y:
                return {"run": r, "batch": b}
        if len(seq) != len(sequences[0]):
            return {"run": r, "batch": min(len(seq), len(sequences[0]))}
    return None


@register("determinism", any_adapter=True)
def measure_determinism(adapter, workload, dataset, profile, progress=None) -> MeasureBody:
    deliver = make_delivery(adapter, first_device())
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
    mismatch = _first_mismatch(sequences)
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
    return MeasureBody(reps, special)
