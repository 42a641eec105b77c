"""The measurement harness: windows, repetitions, statistics and the delivery contract."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import pytest

from datarax_bench import stats
from datarax_bench.adapters import get_adapter
from datarax_bench.adapters.base import Adapter, Loader
from datarax_bench.measures import measure_cell
from datarax_bench.measures.harness import batch_digest
from datarax_bench.workload.catalog import load_catalog, load_profile
from datarax_bench.workload.data import materialize
from datarax_bench.workload.reference import reference_batch


def _profile(**measurement):
    base = load_profile("smoke")
    return dataclasses.replace(base, measurement={**base.measurement, **measurement})


def _cell(sid="TAB-1"):
    scenario = load_catalog().get(sid)
    w = scenario.resolve(scenario.default_variants[0], "tiny")
    return w, materialize(w, seed=0)


class _SlowLoader(Loader):
    """Pre-built reference batches, each taking a known time to produce."""

    parallelism = {"threads": 1}

    def __init__(self, ctx, delay):
        self.ctx, self.delay = ctx, delay
        self.epochs_started = 0

    def epoch(self, epoch):
        self.epochs_started += 1
        w = self.ctx.workload
        for b in range(w.num_batches):
            time.sleep(self.delay)
            yield reference_batch(
                self.ctx.dataset, w.transforms, self.ctx.seed, epoch, b, w.batch_size
            )


class _SlowAdapter(Adapter):
    id = "slow"
    display_name = "Slow"
    ops = frozenset({"standardize"})

    def __init__(self, delay):
        self.delay = delay
        self.loaders = []

    def open(self, ctx):
        self.loaders.append(_SlowLoader(ctx, self.delay))
        return self.loaders[-1]


def test_all_repetitions_are_kept_with_their_statistics():
    w, ds = _cell()
    body = measure_cell(get_adapter("numpy"), w, ds, _profile(repetitions=4, min_batches=3))
    reps = body["repetitions"]
    assert [r["index"] for r in reps] == [0, 1, 2, 3]
    assert all(r["batches"] >= 3 and r["elements"] == r["batches"] * w.batch_size for r in reps)
    s = body["statistics"]
    assert s["repetitions"] == 4
    values = [r["elements_per_s"] for r in reps]
    assert s["elements_per_s"]["median"] == pytest.approx(float(np.median(values)))
    assert (
        s["elements_per_s"]["ci95_low"]
        <= s["elements_per_s"]["median"]
        <= s["elements_per_s"]["ci95_high"]
    )
    assert s["elements_per_s"]["min"] == min(values) and s["elements_per_s"]["max"] == max(values)
    assert s["first_batch_consistent"] and s["first_batch_sha256"] == reps[0]["first_batch_sha256"]
    assert s["unstable"] == (s["elements_per_s"]["cv"] > 0.10)


def test_window_lasts_min_batches_and_min_seconds_across_epochs():
    w, ds = _cell()  # 8 batches per epoch in the tiny form
    adapter = _SlowAdapter(delay=0.01)
    body = measure_cell(
        adapter, w, ds, _profile(repetitions=1, warmup_batches=2, min_batches=3, min_seconds=0.25)
    )
    rep = body["repetitions"][0]
    assert rep["window_s"] >= 0.25
    assert rep["batches"] >= 0.25 / 0.02  # at most ~20 ms a batch on a loaded machine
    assert rep["epochs"] == pytest.approx(rep["elements"] / w.num_elements)
    assert adapter.loaders[0].epochs_started >= 2, "the window continued into the next epoch"
    lat = rep["latency_ms"]
    assert lat["p50"] >= 10 and lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert rep["time_to_first_batch_s"] >= 0.01 and rep["peak_rss_bytes"] > 10 * 2**20
    assert rep["elements_per_s"] == pytest.approx(rep["elements"] / rep["window_s"])


def test_first_batch_digest_is_the_delivered_reference_batch():
    w, ds = _cell("CV-1")
    body = measure_cell(get_adapter("numpy"), w, ds, _profile(repetitions=2))
    expected = batch_digest(reference_batch(ds, w.transforms, 0, 0, 0, w.batch_size))
    assert body["statistics"]["first_batch_sha256"] == expected
    assert body["repetitions"][1]["first_batch_sha256"] == expected


def test_batch_digest_covers_every_field_name_dtype_and_value():
    batch = {"a": np.arange(6, dtype=np.int32).reshape(2, 3), "b": np.ones(2, np.float32)}
    base = batch_digest(batch)
    assert batch_digest({**batch}) == base
    assert batch_digest({**batch, "b": np.zeros(2, np.float32)}) != base
    assert batch_digest({**batch, "a": batch["a"].astype(np.int64)}) != base
    assert batch_digest({**batch, "a": batch["a"].reshape(3, 2)}) != base
    assert batch_digest({"a": batch["a"]}) != base
    assert batch_digest({**batch, "a": jax.numpy.asarray(batch["a"])}) == base


def test_bootstrap_interval_and_cv():
    values = [100.0, 102.0, 98.0, 101.0, 99.0]
    s = stats.summarize(values)
    assert s["median"] == 100.0 and s["ci95_low"] <= 100.0 <= s["ci95_high"]
    assert 98.0 <= s["ci95_low"] and s["ci95_high"] <= 102.0
    assert s["cv"] == pytest.approx(np.std(values, ddof=1) / np.mean(values))
    assert stats.summarize([5.0]) == {
        "median": 5.0,
        "ci95_low": 5.0,
        "ci95_high": 5.0,
        "cv": 0.0,
        "min": 5.0,
        "max": 5.0,
    }
    assert stats.bootstrap_ci(values) == stats.bootstrap_ci(values), "deterministic"


def test_latency_percentiles():
    lat = stats.latency_summary_ms([0.001] * 98 + [0.010, 0.100])
    assert lat["p50"] == pytest.approx(1.0) and lat["max"] == pytest.approx(100.0)
    assert lat["p99"] > lat["p95"] >= 1.0
