"""Helpers of the cross-adapter conformance suite (tests/adapters/test_conformance.py).

`claimed_cells()` is every (adapter, scenario, variant) of the smoke profile whose workload the
adapter claims (`measures.support(adapter, workload) is None`), so a new adapter is checked as soon as it
registers. `run_loader` drives an adapter in-process exactly as the harness does (open, epochs,
`to_host`, close). `CHECKERS` holds, per scenario, what the reference's random transforms must
visibly do to each element; they compare an adapter's output with the reference's on the same
elements and fail when a transform is missing, weakened, or randomised per batch.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from datarax_bench import paths
from datarax_bench.adapters import Adapter, CellContext, all_adapters
from datarax_bench.adapters.numpy_ref import NumpyLoader, NumpyReference
from datarax_bench.measures import implemented, support
from datarax_bench.measures.harness import batch_digest
from datarax_bench.measures.sources import source_files
from datarax_bench.workload import reference
from datarax_bench.workload.catalog import Workload, load_catalog, load_profile
from datarax_bench.workload.data import Dataset, materialize

PROFILE = "smoke"
RANDOM_OPS = reference.RANDOM_OPS
# Ops whose results are correctly rounded (or pure data movement) in every framework, so that a
# deterministic pipeline of them must match the reference bit for bit. Transcendental functions
# (log1p) and reductions (zscore's mean/std) legitimately differ in the last bits.
BIT_EXACT_OPS = frozenset(
    {"truncate", "pad_batch", "standardize", "multiply", "add", "clip", "cast", "hash_bucket"}
    | {"embedding_lookup", "shift_targets", "normalize", "random_horizontal_flip"}
    | {"random_window", "random_crop_3d", "random_brightness", "gaussian_noise", "branch_merge"}
    | {"random_resized_crop"}
    | {"chain"}
)
# The float ops that may differ from the reference in the last bits, and by how many units in the
# last place: transcendental functions and reductions, whose order of summation the frameworks
# choose (XLA's zscore reaches 4 on CV-2). Every other op, the random ones and the resize
# included, must match the reference bit for bit.
ULP_BOUNDS = {"log1p": 4, "zscore": 4}
# Decoded JPEG pixels: each framework decodes with its own decoder, whose inverse DCT and chroma
# upsampling may round differently from the reference's (Pillow's libjpeg-turbo, accurate
# integer IDCT). Its pixels may differ by at most DECODE_MAX_DIFF levels, and by at least
# DECODE_MIN_PSNR_DB over a batch; everything after the decode (the crop box, the flip, the
# resize, the normalisation) is the reference's, so a batch may differ only by what the
# decoder's difference becomes through them: at most DECODE_MAX_DIFF / std after normalize.
# Measured here on the catalog's synthetic JPEGs (docs/scenarios.md: "Decoded JPEG files").
DECODE_MAX_DIFF = 2
DECODE_MIN_PSNR_DB = 45.0
# Several epochs so that the statistics rest on a few hundred elements.
EPOCHS = 3
# Two-sample tests reject at this p-value: about one false alarm in 10⁵ runs per test.
P_REJECT = 1e-5
Z_REJECT = 5.0


def profile():
    return load_profile(PROFILE)


def workload(scenario: str, variant: str) -> Workload:
    return load_catalog().get(scenario).resolve(variant, profile().size)


def claimed_cells() -> list[tuple[str, str, str]]:
    catalog, prof = load_catalog(), profile()
    cells = []
    for adapter in all_adapters():
        for sid, variant in prof.cells(catalog):
            w = catalog.get(sid).resolve(variant, prof.size)
            if w.measure in implemented() and support(adapter, w) is None:
                cells.append((adapter.id, sid, variant))
    return cells


def is_random(w: Workload) -> bool:
    return bool(RANDOM_OPS & set(w.ops()))


def is_bit_exact(w: Workload) -> bool:
    return set(w.ops()) <= BIT_EXACT_OPS


def run_loader(
    adapter: Adapter,
    w: Workload,
    dataset: Dataset,
    seed: int = 0,
    epochs: tuple[int, ...] = (0,),
    prof=None,
    parallelism: dict[str, Any] | None = None,
) -> list[list[dict[str, np.ndarray]]]:
    """Every batch of the given epochs, as host NumPy arrays, one list per epoch; `parallelism`
    overrides the profile's (workers, threads, ...).

    IO-1 cells read their backend's files (built from `dataset`) as the harness has them do."""
    source = None
    if w.measure == "source_backends":
        source, _ = source_files(adapter, w, dataset)
        if w.options["backend"] == "memory":
            dataset = dataset.load_into_memory()
    ctx = CellContext(
        workload=w,
        dataset=dataset,
        profile=prof or profile(),
        seed=seed,
        source=source,
        parallelism_overrides=dict(parallelism or {}),
    )
    loader = adapter.open(ctx)
    try:
        return [
            [{k: np.asarray(adapter.to_host(v)) for k, v in b.items()} for b in loader.epoch(e)]
            for e in epochs
        ]
    finally:
        loader.close()


def reference_epoch(w: Workload, dataset: Dataset, seed: int, epoch: int):
    return [
        reference.reference_batch(dataset, w.transforms, seed, epoch, b, w.batch_size)
        for b in range(w.num_batches)
    ]


def concatenated(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """An epoch's batches as one batch of all its elements, in order."""
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def elements(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Batches split back into elements, in order."""
    return [
        {k: v[i] for k, v in b.items()} for b in batches for i in range(len(next(iter(b.values()))))
    ]


# --- probe data --------------------------------------------------------------------------------


def probe_dataset(w: Workload, seed: int = 0) -> Dataset:
    """The scenario's cached data, with fields replaced where structure makes effects visible.

    Probes live on disk in the cache's layout, so adapters that reopen `dataset.directory` in
    their worker processes read the same bytes as those that use the arrays.
    """
    if w.scenario == "NLP-2":
        return _long_sequences(w, seed)
    base = materialize(w, seed)
    if w.scenario != "CV-1":
        return base
    target = paths.cache_dir() / "probes" / w.scenario / base.directory.name
    if not target.exists():
        n, (h, wd, c) = base.num_elements, w.fields["image"].shape
        # A ramp rising left to right (and slowly top to bottom): a flip reverses the horizontal
        # slope, the crop's width and height scale the horizontal and vertical spans.
        y, x = np.meshgrid(np.arange(h), np.arange(wd), indexing="ij")
        ramp = np.rint(x * (200 / (wd - 1)) + y * (50 / (h - 1))).astype(np.uint8)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base.directory, tmp)
        np.save(tmp / "image.npy", np.broadcast_to(ramp[None, :, :, None], (n, h, wd, c)))
        tmp.rename(target)
    image = np.load(target / "image.npy", mmap_mode="r")
    return dataclasses.replace(
        base, directory=target, dense={**base.dense, "image": image}, digest="probe"
    )


def _long_sequences(w: Workload, seed: int) -> Dataset:
    """NLP-2 data with sequences up to twice `max_length`, so that truncation visibly happens."""
    max_length = _step(w, "truncate")["max_length"]
    spec = w.fields["tokens"]
    longer = dataclasses.replace(spec, generator={**spec.generator, "max_length": 2 * max_length})
    return materialize(dataclasses.replace(w, fields={**w.fields, "tokens": longer}), seed)


# --- statistics helpers ------------------------------------------------------------------------


def assert_same_distribution(name: str, got, want) -> None:
    got, want = np.asarray(got, float), np.asarray(want, float)
    if np.ptp(want) == 0 and np.ptp(got) == 0:
        assert got[0] == want[0], f"{name}: constant {got[0]} instead of {want[0]}"
        return
    p = scipy_stats.ks_2samp(got, want).pvalue
    assert p > P_REJECT, (
        f"{name}: distribution differs from the reference's (KS p={p:.2g}; "
        f"mean {got.mean():.4g} vs {want.mean():.4g}, std {got.std():.4g} vs {want.std():.4g})"
    )


def assert_fraction(name: str, flags, p: float) -> None:
    flags = np.asarray(flags, bool)
    n = len(flags)
    se = np.sqrt(p * (1 - p) / n)
    assert abs(flags.mean() - p) <= Z_REJECT * se + 1e-12, (
        f"{name}: fraction {flags.mean():.3f} over {n} elements, expected {p} ± {Z_REJECT * se:.3f}"
    )


def assert_varies_within_batches(name: str, values_per_batch: list) -> None:
    """Per-element randomness: some batch holds different draws (per-batch draws never do)."""
    mixed = sum(
        len({tuple(np.round(np.atleast_1d(np.asarray(x, float)), 6)) for x in batch}) > 1
        for batch in values_per_batch
    )
    assert mixed > 0, f"{name}: every batch has one value for all its elements (drawn per batch?)"


def _per_batch(values, batch_size: int) -> list:
    return [values[i : i + batch_size] for i in range(0, len(values), batch_size)]


# --- per-scenario checks -----------------------------------------------------------------------
# Each takes the workload, the dataset, the adapter's batches and the reference's (same epochs,
# same seed, flattened across epochs) plus the element indices, and asserts.


def _step(w: Workload, op: str) -> dict[str, Any]:
    return next(s for s in w.transforms if s["op"] == op)


def check_cv1(w, dataset, got, want, indices) -> None:
    norm = _step(w, "normalize")
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)

    def features(batches):
        spans, heights, centres, flips = [], [], [], []
        for e in elements(batches):
            u = e["image"].astype(np.float64) * std + mean  # undo normalize: back to pixel units
            assert u.shape[-1] == 3
            assert np.allclose(u[..., 0], u[..., 1], atol=1e-2) and np.allclose(
                u[..., 0], u[..., 2], atol=1e-2
            ), "per-channel normalize parameters not applied as the catalog states"
            assert u.min() > -0.5 and u.max() < 250.5, f"pixel range {u.min()}..{u.max()}"
            horizontal = u[:, -1].mean() - u[:, 0].mean()
            spans.append(abs(horizontal))
            flips.append(horizontal < 0)
            heights.append(u[-1].mean() - u[0].mean())
            centres.append(u.mean())
        return np.array(spans), np.array(heights), np.array(centres), np.array(flips)

    g_span, g_height, g_centre, g_flip = features(got)
    r_span, r_height, r_centre, _ = features(want)
    assert (g_height >= -1e-3).all(), "image flipped vertically; only horizontal flips allowed"
    assert_fraction("horizontal flip", g_flip, _step(w, "random_horizontal_flip")["p"])
    assert_same_distribution("crop width (horizontal span)", g_span, r_span)
    assert_same_distribution("crop height (vertical span)", g_height, r_height)
    assert_same_distribution("crop position (mean value)", g_centre, r_centre)
    assert_varies_within_batches("crop width", _per_batch(g_span, w.batch_size))
    assert_varies_within_batches("flip", _per_batch(g_flip, w.batch_size))


def _zscore(v: np.ndarray, eps: float) -> np.ndarray:
    v = v.astype(np.float32)
    return (v - v.mean(dtype=np.float32)) / (v.std(dtype=np.float32) + np.float32(eps))


def check_cv2(w, dataset, got, want, indices) -> None:
    d, h, wd = _step(w, "random_crop_3d")["size"]
    eps = _step(w, "zscore")["epsilon"]
    offsets = []
    for e, index in zip(elements(got), indices, strict=True):
        vol = e["volume"]
        assert abs(vol.mean()) < 1e-3 and abs(vol.std() - 1) < 1e-3, "volume is not z-scored"
        src = np.asarray(dataset.dense["volume"][index])
        found = [
            (z, y, x)
            for z in range(src.shape[0] - d + 1)
            for y in range(src.shape[1] - h + 1)
            for x in range(src.shape[2] - wd + 1)
            if np.allclose(_zscore(src[z : z + d, y : y + h, x : x + wd], eps), vol, atol=1e-4)
        ]
        assert found, f"element {index}: not a z-scored {d}x{h}x{wd} crop of its source volume"
        offsets.append(found[0])
    offsets = np.array(offsets)
    src_shape = dataset.dense["volume"].shape[1:4]
    for axis, (size, crop) in enumerate(zip(src_shape, (d, h, wd), strict=True)):
        seen = set(offsets[:, axis].tolist())
        assert seen == set(range(size - crop + 1)), f"crop offsets on axis {axis}: only {seen}"
        _assert_uniform_int(f"crop offset axis {axis}", offsets[:, axis], size - crop + 1)
    assert_varies_within_batches("crop offset", _per_batch(offsets.tolist(), w.batch_size))


def _assert_uniform_int(name: str, values, count: int) -> None:
    values = np.asarray(values, float)
    sd = np.sqrt((count**2 - 1) / 12)
    tol = Z_REJECT * sd / np.sqrt(len(values))
    centre = (count - 1) / 2
    assert abs(values.mean() - centre) <= tol, (
        f"{name}: mean {values.mean():.3f}, expected {centre} ± {tol:.3f} (uniform draws)"
    )


def check_nlp1(w, dataset, got, want, indices) -> None:
    window = _step(w, "random_window")["length"]
    shift = _step(w, "shift_targets")
    starts = []
    for e, index in zip(elements(got), indices, strict=True):
        src = np.asarray(dataset.dense["tokens"][index])
        inputs, targets = e[shift["inputs"]], e[shift["targets"]]
        assert np.array_equal(inputs[1:], targets[:-1]), "targets are not inputs shifted by one"
        found = [
            s
            for s in range(len(src) - window + 1)
            if np.array_equal(src[s : s + window - 1], inputs)
        ]
        assert found, f"element {index}: inputs are not a window of its document"
        assert targets[-1] == src[found[0] + window - 1]
        starts.append(found[0])
    count = dataset.dense["tokens"].shape[1] - window + 1
    assert set(starts) == set(range(count)), f"window starts seen: {sorted(set(starts))}"
    _assert_uniform_int("window start", starts, count)
    assert_varies_within_batches("window start", _per_batch(starts, w.batch_size))


def check_replay(w, dataset, got, want, indices) -> None:
    """Element-wise pipelines (PC-1 chains, PR-1, PR-2): replay the reference's ops on each source
    element with the flip choice and brightness delta that fit; check those draws' statistics."""
    ops = w.ops()
    if ops.count("random_brightness") > 1 or ops.count("random_horizontal_flip") > 1:
        raise NotImplementedError(
            f"{w.scenario}: the replay handles one brightness, one flip: {ops}"
        )
    name = next(s["field"] for s in w.transforms)
    flat = [
        {**sub, "field": s["field"]}
        for s in w.transforms
        for sub in (reference.chain_steps(s) if s["op"] == "chain" else [s])
    ]
    deltas, flips = [], []
    for e, index in zip(elements(got), indices, strict=True):
        src = dataset.element(index)
        out = e[name]
        fits = []
        for flip in (False, True):
            for delta in _candidate_deltas(w.transforms, src, name, out, flip):
                if np.allclose(_replay(w.transforms, src, delta, flip)[name], out, atol=2e-3):
                    fits.append((delta, flip))
                    break
        assert fits, f"element {index}: output is not the pipeline applied to its source"
        deltas.append(fits[0][0])
        flips.append(fits[0][1])
    if "random_brightness" in ops:
        max_delta = next(s for s in flat if s["op"] == "random_brightness")["max_delta"]
        d = np.asarray(deltas)
        assert (np.abs(d) <= max_delta + 1e-3).all(), f"brightness delta beyond ±{max_delta}"
        p = scipy_stats.kstest(d, "uniform", args=(-max_delta, 2 * max_delta)).pvalue
        assert p > P_REJECT, f"brightness deltas not uniform on ±{max_delta} (KS p={p:.2g})"
        assert_varies_within_batches("brightness", _per_batch(deltas, w.batch_size))
    if "random_horizontal_flip" in ops:
        p_flip = next(s for s in flat if s["op"] == "random_horizontal_flip")["p"]
        assert_fraction("horizontal flip", flips, p_flip)
        assert_varies_within_batches("flip", _per_batch(flips, w.batch_size))


def check_pc2(w, dataset, got, want, indices) -> None:
    """Mean of (brightness, noise) branches: output - source = delta/2 + noise/2 per element."""

    def residuals(batches):
        means, stds = [], []
        for e, index in zip(elements(batches), indices, strict=True):
            r = e["image"].astype(np.float64) - dataset.element(index)["image"]
            means.append(r.mean())
            stds.append(r.std())
        return np.array(means), np.array(stds)

    g_mean, g_std = residuals(got)
    r_mean, r_std = residuals(want)
    assert_same_distribution("brightness branch (mean shift)", g_mean, r_mean)
    assert_same_distribution("noise branch (spread)", g_std, r_std)
    assert_varies_within_batches("brightness", _per_batch(g_mean, w.batch_size))


def _replay(transforms, src: dict, delta: float, flip: bool) -> dict:
    """The reference's ops on `src` with fixed draws: brightness adds `delta`, flips follow `flip`."""
    fields = {
        **reference.FIELD_OPS,
        "random_brightness": lambda x, p, key: x.astype(np.float32) + np.float32(delta),
        "random_horizontal_flip": lambda x, p, key: x[:, ::-1] if flip else x,
    }
    ops = dataclasses.replace(reference.REFERENCE_OPS, fields=fields)
    out = dict(src)
    keys = reference.element_key(0, 0, 0)
    for step in transforms:
        reference.apply_step(step, out, ops, keys)
    return out


def _candidate_deltas(transforms, src, name, out, flip) -> list[float]:
    if "random_brightness" not in [op for op in _ops_of(transforms)]:
        return [0.0]
    zero = _replay(transforms, src, 0.0, flip)[name]
    inside = (out > 1e-3) & (out < 255 - 1e-3) & (zero > 1e-3) & (zero < 255 - 1e-3)
    if not inside.any():
        return []
    # Ops after the brightness change are affine with slope 1 (clip, flip) in the cycle, so
    # the delta shows as a constant offset on unclipped pixels.
    return [float(np.median((out - zero)[inside]))]


def _ops_of(transforms) -> list[str]:
    return [
        sub["op"]
        for s in transforms
        for sub in (reference.chain_steps(s) if s["op"] == "chain" else [s])
    ]


def check_exact(w, dataset, got, want, indices) -> None:
    """Pipelines without random ops: every batch equals the reference's."""
    for g, r in zip(got, want, strict=True):
        assert_batches_equal(w, g, r)


def assert_batches_equal(w: Workload, got: dict, want: dict, where: str = "") -> None:
    from datarax_bench.measures.harness import batch_digest

    assert_same_structure(got, want)
    if is_bit_exact(w):
        assert batch_digest(got) == batch_digest(want), (
            f"{where}: batch differs from the reference's"
        )
        return
    if reference.DECODE_OPS & set(w.ops()):
        assert_decoded_batches_close(w, got, want, where)
        return
    maxulp = max(ULP_BOUNDS.get(op, 0) for op in w.ops())
    for name in want:
        if np.issubdtype(want[name].dtype, np.floating):
            np.testing.assert_array_max_ulp(got[name], want[name], maxulp=max(1, maxulp))
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{where}: {name}")


def _pixel_scale(w: Workload, name: str) -> np.ndarray:
    """What one level of a decoded pixel of field `name` becomes in the batch: 1 / std where the
    field is normalized after the decode (per channel), else 1."""
    steps = [s for s in reference.flat_steps(w.transforms) if s["field"] == name]
    scale = np.ones(1, dtype=np.float64)
    for step in steps:
        if step["op"] == "normalize":
            scale = scale / np.asarray(step["std"], dtype=np.float64)
    return scale


def assert_decoded_batches_close(w: Workload, got: dict, want: dict, where: str = "") -> None:
    """Batches of a workload that decodes JPEG files: integer fields (labels) equal, float
    fields within the decoders' bound (`DECODE_MAX_DIFF`, `DECODE_MIN_PSNR_DB`) of the
    reference's, counted back in pixel levels."""
    for name in want:
        if not np.issubdtype(want[name].dtype, np.floating):
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{where}: {name}")
            continue
        # Pixel levels: the difference divided by what one level becomes; float32 rounding of
        # the normalised values allowed on top.
        levels = np.abs(got[name].astype(np.float64) - want[name]) / _pixel_scale(w, name)
        worst = float(levels.max()) if levels.size else 0.0
        assert worst <= DECODE_MAX_DIFF + 1e-3, (
            f"{where}: {name} differs from the reference's by {worst:.3f} pixel levels "
            f"(decoders may differ by at most {DECODE_MAX_DIFF})"
        )
        mse = float(np.mean(levels**2))
        psnr = np.inf if mse == 0 else 10 * np.log10(255**2 / mse)
        assert psnr >= DECODE_MIN_PSNR_DB, (
            f"{where}: {name} at {psnr:.1f} dB PSNR from the reference's "
            f"(decoders must reach {DECODE_MIN_PSNR_DB} dB)"
        )


def check_decoded(w, dataset, got, want, indices) -> None:
    """Pipelines that decode JPEG files (CV-3): every batch within the decoders' bound of the
    reference's. A different crop box or flip moves whole rows and columns of pixels, which on
    these noisy images differ by far more than the bound: only the reference's draws pass."""
    for b, (g, r) in enumerate(zip(got, want, strict=True)):
        assert_decoded_batches_close(w, g, r, where=f"batch {b}")


def assert_same_structure(got: dict, want: dict) -> None:
    assert set(got) == set(want), f"fields {sorted(got)} instead of {sorted(want)}"
    for name in want:
        assert got[name].shape == want[name].shape, (
            f"{name}: shape {got[name].shape} instead of {want[name].shape}"
        )
        assert got[name].dtype == want[name].dtype, (
            f"{name}: dtype {got[name].dtype} instead of {want[name].dtype}"
        )


CHECKERS: dict[str, Callable] = {
    "CV-1": check_cv1,
    "CV-2": check_cv2,
    "CV-3": check_decoded,
    "NLP-1": check_nlp1,
    "PC-1": check_replay,
    "PC-2": check_pc2,
    "PR-1": check_replay,
    "PR-2": check_replay,
}


def check_effects(w: Workload, dataset: Dataset, got_epochs, want_epochs) -> None:
    """Fail unless the adapter's batches show every transform with the reference's effect."""
    got = [b for epoch in got_epochs for b in epoch]
    want = [b for epoch in want_epochs for b in epoch]
    assert len(got) == len(want), f"{len(got)} batches instead of {len(want)}"
    for g, r in zip(got, want, strict=True):
        assert_same_structure(g, r)
    n = w.num_batches * w.batch_size
    indices = [i for _ in got_epochs for i in range(n)]
    if not is_random(w):
        check_exact(w, dataset, got, want, indices)
        return
    checker = CHECKERS.get(w.scenario)
    if checker is None:
        raise AssertionError(f"no conformance check for the random transforms of {w.scenario}")
    checker(w, dataset, got, want, indices)


# --- deliberately broken adapters (the suite must catch each) --------------------------------


def _without(transforms, op: str) -> tuple:
    out = []
    for step in transforms:
        if step["op"] == op:
            continue
        if step["op"] == "chain":
            step = {**step, "cycle": [s for s in step["cycle"] if s["op"] != op]}
        out.append(step)
    return tuple(out)


class DroppingAdapter(NumpyReference):
    """Claims everything, silently leaves one transform out."""

    id = "test-dropping"

    def __init__(self, op: str):
        self.dropped = op

    def open(self, ctx):
        w = dataclasses.replace(
            ctx.workload, transforms=_without(ctx.workload.transforms, self.dropped)
        )
        return NumpyLoader(dataclasses.replace(ctx, workload=w))


class PerBatchRandomAdapter(NumpyReference):
    """Draws the random parameters once per batch instead of once per element."""

    id = "test-per-batch"

    def open(self, ctx):
        # Every element of batch b keyed as element b: the same draws for the whole batch.
        return _KeyedLoader(ctx, lambda epoch, batch, index: (epoch, batch))


class PositionKeyedAdapter(NumpyReference):
    """Keys each element's draws by its position in the batch instead of its index."""

    id = "test-position-keyed"

    def open(self, ctx):
        return _KeyedLoader(
            ctx, lambda epoch, batch, index: (epoch, index % ctx.workload.batch_size)
        )


class WorkerKeyedAdapter(NumpyReference):
    """Keys draws by the worker that reads the batch (two workers taking turns): each worker's
    epoch seen as its own, so the draws repeat from worker to worker."""

    id = "test-worker-keyed"

    def open(self, ctx):
        bs = ctx.workload.batch_size
        return _KeyedLoader(
            ctx, lambda epoch, batch, index: (epoch + batch % 2, index - (batch % 2) * bs)
        )


class _KeyedLoader(NumpyLoader):
    def __init__(self, ctx, key_of):
        super().__init__(ctx)
        self.key_of = key_of

    def epoch(self, epoch):
        w = self.ctx.workload
        for b in range(w.num_batches):
            elems = []
            for i in range(b * w.batch_size, (b + 1) * w.batch_size):
                keys = reference.element_key(self.ctx.seed, *self.key_of(epoch, b, i))
                elems.append(
                    reference.apply_element(w.transforms, self.ctx.dataset.element(i), keys)
                )
            yield reference.collate(w.transforms, elems)


def _draft_decode(x, p, key):
    """A JPEG decoded at half its size by libjpeg's DCT scaling (Pillow's `draft`), then scaled
    back up: the shortcut a loader might take to decode faster."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(np.asarray(x).tobytes())) as image:
        size = image.size
        image.draft("RGB", (size[0] // 2, size[1] // 2))
        return np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR))


class DraftDecodeAdapter(NumpyReference):
    """Decodes JPEG files with a shortcut (`_draft_decode`), everything else the reference's."""

    id = "test-draft-decode"

    def open(self, ctx):
        ops = dataclasses.replace(
            reference.REFERENCE_OPS,
            fields={**reference.FIELD_OPS, "decode_jpeg": _draft_decode},
        )
        return _OpsLoader(ctx, ops)


class _OpsLoader(NumpyLoader):
    def __init__(self, ctx, ops):
        super().__init__(ctx)
        self.ops = ops

    def epoch(self, epoch):
        w = self.ctx.workload
        for b in range(w.num_batches):
            elems = []
            for i in range(b * w.batch_size, (b + 1) * w.batch_size):
                out = dict(self.ctx.dataset.element(i))
                keys = reference.element_key(self.ctx.seed, epoch, i)
                for step in w.transforms:
                    reference.apply_step(step, out, self.ops, keys)
                elems.append(out)
            yield reference.collate(w.transforms, elems)


class WeakenedAdapter(NumpyReference):
    """Applies every op but with its randomness narrowed (scale range halved, p halved, ...)."""

    id = "test-weakened"

    def open(self, ctx):
        transforms = tuple(_weaken(s) for s in ctx.workload.transforms)
        w = dataclasses.replace(ctx.workload, transforms=transforms)
        return NumpyLoader(dataclasses.replace(ctx, workload=w))


def _weaken(step: dict) -> dict:
    op = step["op"]
    if op == "chain":
        return {**step, "cycle": [_weaken(s) for s in step["cycle"]]}
    if op == "random_horizontal_flip":
        return {**step, "p": step["p"] / 4}
    if op == "random_resized_crop":
        return {**step, "scale": [0.5, 1.0]}
    if op == "random_brightness":
        return {**step, "max_delta": step["max_delta"] / 4}
    return step


def written_before_the_measure(monkeypatch, tmp_path, adapter_id: str, complete) -> bool:
    """Whether the worker of a TAB-1 smoke cell of `adapter_id` has written the framework's own
    format (`complete(dataset, workload)`: its completion marker exists) when the measure
    starts: a one-off conversion is never inside a timed setup. The measure stops right there."""
    from datarax_bench import measures
    from datarax_bench.run import worker

    monkeypatch.setenv("DATARAX_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # what the worker would set, undone after
    seen = {}

    def measure_cell(adapter, workload, dataset, profile, progress=None):
        seen["complete"] = complete(dataset, workload)
        raise RuntimeError("stop after the check")

    monkeypatch.setattr(measures, "measure_cell", measure_cell)
    out = tmp_path / "cell.json"
    argv = ["--profile", "smoke", "--scenario", "TAB-1", "--variant", "small"]
    assert worker.main([*argv, "--adapter", adapter_id, "--output", str(out)]) == 0
    assert json.loads(out.read_text())["reason"] == "RuntimeError: stop after the check"
    return seen["complete"]


def smoke_context(
    scenario: str,
    variant: str,
    parallelism: dict[str, int],
    seed: int = 0,
    root=None,
    dataset: Dataset | None = None,
) -> CellContext:
    """A smoke-profile cell at the `tiny` size with `parallelism`, on the cache's data (under
    `root` where given) or on `dataset`: what an adapter is opened with in the test process."""
    catalog = load_catalog()
    profile = dataclasses.replace(load_profile("smoke", catalog), parallelism=parallelism)
    w = catalog.get(scenario).resolve(variant, "tiny")
    return CellContext(w, dataset or materialize(w, 0, root), profile, seed)


def assert_epochs_equal_reference(loader, ctx: CellContext, epochs, adapter=None) -> None:
    """Each of `epochs` delivers the reference's batches: their count, fields, dtypes, shapes
    and bytes. `adapter`'s `to_host` first, where its batches live elsewhere."""
    w = ctx.workload
    for epoch in epochs:
        batches = list(loader.epoch(epoch))
        assert len(batches) == w.num_batches, (epoch, len(batches))
        for index, batch in enumerate(batches):
            if adapter is not None:
                batch = {k: adapter.to_host(v) for k, v in batch.items()}
            batch = {k: np.asarray(v) for k, v in batch.items()}
            expected = reference.reference_batch(
                ctx.dataset, w.transforms, ctx.seed, epoch, index, w.batch_size
            )
            assert sorted(batch) == sorted(expected)
            for name, value in expected.items():
                assert batch[name].dtype == value.dtype, (name, batch[name].dtype)
                assert batch[name].shape == value.shape, (name, batch[name].shape)
            assert batch_digest(batch) == batch_digest(expected), (epoch, index)


def smoke_first_batch_digest(scenario: str, variant: str = "small") -> str:
    """The digest a smoke run of the cell records for its first batch (seed 0, epoch 0)."""
    w = load_catalog().get(scenario).resolve(variant, "tiny")
    first = reference.reference_batch(materialize(w, 0), w.transforms, 0, 0, 0, w.batch_size)
    return batch_digest(first)
