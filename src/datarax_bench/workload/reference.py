"""The reference semantics of every catalog op, in plain NumPy.

This module *defines* what each transform does; the NumPy reference adapter runs it as is and
every framework adapter must reproduce it (conformance tests compare against it).

Randomness is per element and counter-based (`datarax_bench.workload.randomness`): step `s` of element
`i`'s walk in epoch `e` draws Threefry words keyed by (seed, e) at counter (i, s << 24 | draw),
so results do not depend on batching, worker count or iteration order, and every framework can
compute the same bits. Images are channel-last (H, W, C); volumes (D, H, W, C). Arithmetic ops
compute in float32. `decode_jpeg` turns a JPEG's bytes into (H, W, 3) uint8 RGB pixels, their
size the image's own.

The tuned styles apply a workload's trailing batchable steps (`split_for_batches`) to the stacked
batch where nothing is left per element (`tuned_split`): value-wise ops as they are, and the random ops whose draws are a fixed number of scalars
per element (`RANDOM_DRAWS`) with one parameter per row, computed for all rows at once from the
rows' element indices and the step's number in the plain walk, so every row gets the plain
pipeline's draws.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from datarax_bench.workload.randomness import (
    BatchKeys,
    ElementKey,
    StepKey,
    below,
    bernoulli,
    element_crop_box,
    element_words,
    normal_values,
    symmetric,
)

Element = dict[str, np.ndarray]
F32 = np.float32

# Ops that work on a whole batch (they need every element's shape); they come last.
BATCH_OPS = frozenset({"pad_batch"})
# Ops that decode an encoded field (a JPEG's bytes, a ragged uint8 field) into pixels: each
# framework decodes with its own documented decoder, whose pixels may differ from the
# reference's by the rounding of its inverse DCT and upsampling (the conformance suite's bound).
DECODE_OPS = frozenset({"decode_jpeg"})
# Ops that draw from the element's randomness.
RANDOM_OPS = frozenset(
    {"random_resized_crop", "random_horizontal_flip", "random_crop_3d", "random_window"}
    | {"random_brightness", "gaussian_noise"}
)
# Ops the walk (`apply_step`) implements over the leaf ops: structure, not arithmetic.
STRUCTURE_OPS = frozenset({"shift_targets", "embedding_lookup", "branch_merge"})
# 32-bit multiplicative hash constant (MurmurHash2's m): below 2**31, so the product of a
# 32-bit id and it fits in int64 in every framework.
HASH_MULTIPLIER = 0x5BD1E995
MASK32 = 0xFFFFFFFF


def chain_steps(step: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `depth` ops of a chain, drawn in order from its cycle, each on the chain's field."""
    cycle = step["cycle"]
    return [{**cycle[i % len(cycle)], "field": step["field"]} for i in range(step["depth"])]


def element_key(seed: int, epoch: int, index: int) -> ElementKey:
    """The randomness of element `index` of `epoch`, at the start of its walk."""
    return ElementKey(seed, epoch, index)


#: The key under which a tuned pipeline keeps an element's key with the element, from its
#: per-element steps to its batch's steps (taken out again before the batch is stacked).
ELEMENT_KEY = "__element_key__"


# --- random parameter draws: words -> parameters, shared so that frameworks can reuse them --


def resized_crop_box(p: Mapping[str, Any], key: StepKey, shape) -> tuple[int, int, int, int]:
    """(top, left, h, w) of random_resized_crop for one element (`randomness.crop_boxes`)."""
    return element_crop_box(key, shape[0], shape[1], p["scale"], p["ratio"])


def crop_3d_offsets(p: Mapping[str, Any], key: StepKey, shape) -> tuple[int, int, int]:
    """(z, y, x) where random_crop_3d's box starts: three integers, one draw each."""
    spans = [n - size + 1 for n, size in zip(shape[:3], p["size"], strict=True)]
    return tuple(int(v) for v in below(element_words(key, 3)[:, 0], spans))


def noise(p: Mapping[str, Any], key: StepKey, shape) -> np.ndarray:
    """gaussian_noise's float32 values for one element (`randomness.normal_values`)."""
    return normal_values(key, math.prod(shape), p["std"]).reshape(shape)


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and no antialiasing, float32 out.

    The same convention as `tf.image.resize(method='bilinear', antialias=False)`,
    `torch.nn.functional.interpolate(mode='bilinear', align_corners=False)` and
    `jax.image.resize(method='linear')` when upsampling.
    """
    in_h, in_w = image.shape[:2]
    img = image.astype(F32, copy=False)

    def axis(n_in: int, n_out: int):
        src = (np.arange(n_out, dtype=F32) + F32(0.5)) * F32(n_in / n_out) - F32(0.5)
        src = np.clip(src, 0, n_in - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo).astype(F32)

    y0, y1, wy = axis(in_h, out_h)
    x0, x1, wx = axis(in_w, out_w)
    wy = wy[:, None, None]
    wx = wx[None, :, None]
    rows = img[y0] * (1 - wy) + img[y1] * wy
    return (rows[:, x0] * (1 - wx) + rows[:, x1] * wx).astype(F32, copy=False)


@cache
def embedding_table(num_rows: int, dim: int, table_seed: int) -> np.ndarray:
    """The fixed embedding table of TAB-2: N(0, 0.01²) float32, read-only."""
    table = np.random.default_rng(table_seed).normal(0.0, 0.01, size=(num_rows, dim)).astype(F32)
    table.setflags(write=False)
    return table


def hash_ids(ids: np.ndarray, num_buckets: int) -> np.ndarray:
    """((id mod 2³²)·m mod 2³², xor-shifted by 15) mod num_buckets, all in int64."""
    h = ((ids.astype(np.int64) & MASK32) * HASH_MULTIPLIER) & MASK32
    h ^= h >> 15
    return h % num_buckets


# --- the draws of the random ops that batch: (step, words, element shape) -> parameters ------
# One function per op, vectorised over leading axes of `words` (..., draws, 2), used by the
# per-element op (one element's words) and by the batch step (every row's) alike, so that the
# two cannot draw differently.


def draw_flip(step: Mapping[str, Any], words: np.ndarray, element_shape) -> np.ndarray:
    """Whether random_horizontal_flip flips: a Bernoulli(p) per element."""
    return bernoulli(words[..., 0, 0], step["p"])


def draw_brightness(step: Mapping[str, Any], words: np.ndarray, element_shape) -> np.ndarray:
    """random_brightness's float32 delta, uniform in [-max_delta, max_delta)."""
    return symmetric(words[..., 0, 0], step["max_delta"])


def draw_window_start(step: Mapping[str, Any], words: np.ndarray, element_shape) -> np.ndarray:
    """Where random_window's window starts along the element's first axis."""
    return below(words[..., 0, 0], element_shape[0] - step["length"] + 1).astype(np.int64)


@dataclass(frozen=True)
class RandomDraw:
    """A random op whose parameters are a fixed number of draws per element."""

    draws: int
    convert: Callable[[Mapping[str, Any], np.ndarray, Any], np.ndarray]


RANDOM_DRAWS: dict[str, RandomDraw] = {
    "random_horizontal_flip": RandomDraw(1, draw_flip),
    "random_brightness": RandomDraw(1, draw_brightness),
    "random_window": RandomDraw(1, draw_window_start),
}


def draw(step: Mapping[str, Any], key: StepKey, element_shape):
    """One element's parameter of a `RANDOM_DRAWS` op."""
    spec = RANDOM_DRAWS[step["op"]]
    return spec.convert(step, element_words(key, spec.draws), element_shape)


# --- element ops: (array, params, key) -> array ---------------------------------------------


def jpeg_library() -> str:
    """The library behind the reference's JPEG codec, with the libjpeg it was built with."""
    import PIL
    from PIL import features

    if features.check_feature("libjpeg_turbo"):
        return f"Pillow {PIL.__version__} (libjpeg-turbo {features.version('libjpeg_turbo')})"
    return f"Pillow {PIL.__version__} (libjpeg {features.version('jpg')})"


def decode_jpeg_pillow(data) -> Any:
    """A JPEG file's bytes as a Pillow RGB image (for frameworks that take Pillow's images)."""
    from PIL import Image

    with Image.open(io.BytesIO(bytes(data)), formats=("JPEG",)) as image:
        return image.convert("RGB")


def _decode_jpeg(x, p, key):
    # Pillow's decoder with libjpeg's defaults (the accurate integer IDCT, fancy upsampling):
    # https://pillow.readthedocs.io/en/stable/handbook/image-file-formats.html#jpeg
    return np.asarray(decode_jpeg_pillow(np.asarray(x).data))


def _random_resized_crop(x, p, key):
    top, left, h, w = resized_crop_box(p, key, x.shape)
    return resize_bilinear(x[top : top + h, left : left + w], *p["size"])


def _random_horizontal_flip(x, p, key):
    return x[:, ::-1] if draw(p, key, x.shape) else x


def _normalize(x, p, key):
    mean = np.asarray(p["mean"], dtype=F32)
    std = np.asarray(p["std"], dtype=F32)
    return (x.astype(F32) - mean) / std


def _random_crop_3d(x, p, key):
    d, h, w = p["size"]
    z0, y0, x0 = crop_3d_offsets(p, key, x.shape)
    return x[z0 : z0 + d, y0 : y0 + h, x0 : x0 + w]


def _zscore(x, p, key):
    v = x.astype(F32)
    return (v - v.mean(dtype=F32)) / (v.std(dtype=F32) + F32(p["epsilon"]))


def _random_window(x, p, key):
    start = int(draw(p, key, x.shape))
    return x[start : start + p["length"]]


def _truncate(x, p, key):
    return x[: p["max_length"]]


def _standardize(x, p, key):
    return (x.astype(F32) - F32(p["mean"])) / F32(p["std"])


def _log1p(x, p, key):
    return np.log1p(np.maximum(x.astype(F32), F32(0)))


def _hash_bucket(x, p, key):
    return hash_ids(x, p["num_buckets"])


def _multiply(x, p, key):
    return x.astype(F32) * F32(p["factor"])


def _add(x, p, key):
    return x.astype(F32) + F32(p["value"])


def _random_brightness(x, p, key):
    return x.astype(F32) + draw(p, key, x.shape)


def _clip(x, p, key):
    return np.clip(x.astype(F32), F32(p["low"]), F32(p["high"]))


def _gaussian_noise(x, p, key):
    return x.astype(F32) + noise(p, key, x.shape)


def _cast(x, p, key):
    return x.astype(p["dtype"])


FIELD_OPS: dict[str, Callable[[np.ndarray, Mapping[str, Any], np.random.Generator], np.ndarray]] = {
    "decode_jpeg": _decode_jpeg,
    "random_resized_crop": _random_resized_crop,
    "random_horizontal_flip": _random_horizontal_flip,
    "normalize": _normalize,
    "random_crop_3d": _random_crop_3d,
    "zscore": _zscore,
    "random_window": _random_window,
    "truncate": _truncate,
    "standardize": _standardize,
    "log1p": _log1p,
    "hash_bucket": _hash_bucket,
    "multiply": _multiply,
    "add": _add,
    "random_brightness": _random_brightness,
    "clip": _clip,
    "gaussian_noise": _gaussian_noise,
    "cast": _cast,
}
ELEMENT_OPS = frozenset(FIELD_OPS) | STRUCTURE_OPS
ALL_OPS = ELEMENT_OPS | BATCH_OPS

# Element ops whose every output value depends only on the same input value (and the step's
# parameters): applied to a stacked batch they compute what they compute per element. They draw
# nothing, so taking them out of the per-element walk leaves every other step's draws unchanged.
VALUEWISE_OPS = frozenset(
    {"normalize", "standardize", "log1p", "hash_bucket", "multiply", "add", "clip", "cast"}
    | {"embedding_lookup"}
)
# Every op a tuned style may apply to a stacked batch with the bytes it computes per element:
# the value-wise ops, the random ops of `RANDOM_DRAWS` (a few scalars drawn per row, an output
# shape independent of them) and shift_targets (slicing the last axis of a dense batch).
BATCHABLE_OPS = VALUEWISE_OPS | frozenset(RANDOM_DRAWS) | {"shift_targets"}


# --- the batch versions of the random ops: (batch, step, one draw per row) -> batch -----------


def _rows(values, batch) -> np.ndarray:
    """Per-row values shaped to broadcast against `batch`'s rows."""
    return np.asarray(values).reshape(-1, *([1] * (batch.ndim - 1)))


def _flip_rows(x, p, flips):
    # A stacked batch owns its memory: flip its rows in place rather than copy the whole batch.
    out = x if x.flags.owndata and x.flags.writeable else np.array(x)
    rows = np.flatnonzero(flips)
    out[rows] = x[rows, :, ::-1]
    return out


def _brightness_rows(x, p, deltas):
    return x.astype(F32) + _rows(np.asarray(deltas, dtype=F32), x)


def _window_rows(x, p, starts):
    columns = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(p["length"])
    return x[np.arange(len(x))[:, None], columns]


BATCH_FIELD_OPS: dict[str, Callable[[np.ndarray, Mapping[str, Any], list[Any]], np.ndarray]] = {
    "random_horizontal_flip": _flip_rows,
    "random_brightness": _brightness_rows,
    "random_window": _window_rows,
}


# --- each op's parameters: what the catalog must give (checked when it is loaded) -----------


@dataclass(frozen=True)
class Param:
    """One parameter of an op: its kind and allowed range.

    kind: "number", "integer" (either may name a dimension), "name" (a field the op creates),
    "choice", "steps" (a chain's cycle of ops) or "branches" (lists of ops). `count` makes it a
    list of exactly that many values; 0 a list of one or more.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    count: int | None = None
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "steps":
            return "a list of ops"
        if self.kind == "branches":
            return "a list of branches, each a list of ops"
        if self.kind == "choice":
            return "one of " + ", ".join(map(repr, self.choices))
        if self.kind == "name":
            what = "a field name"
        else:
            article = "an" if self.kind == "integer" else "a"
            what = {None: f"{article} {self.kind}", 0: f"a list of {self.kind}s"}.get(
                self.count, f"{self.count} {self.kind}s"
            )
            if self.low is not None and self.high is not None:
                what += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
            elif self.low is not None:
                what += f" {'>' if self.low_open else '≥'} {self.low:g}"
        return what

    def accepts(self, value: Any, dims_resolved: bool) -> bool:
        """Whether `value` fits; before dimensions are resolved a dimension's name fits a number."""
        if self.kind in ("steps", "branches"):
            return isinstance(value, list) and bool(value)
        if self.count is not None:
            if not isinstance(value, list) or not value:
                return False
            if self.count and len(value) != self.count:
                return False
            return all(self._accepts_one(v, dims_resolved) for v in value)
        return self._accepts_one(value, dims_resolved)

    def _accepts_one(self, value: Any, dims_resolved: bool) -> bool:
        if self.kind == "name":
            return isinstance(value, str) and bool(value)
        if self.kind == "choice":
            return value in self.choices
        if isinstance(value, str):
            return not dims_resolved
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "integer" and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


def _number(low=None, high=None, low_open=False, count=None) -> Param:
    return Param("number", low, high, low_open, count)


def _integer(low=None, count=None) -> Param:
    return Param("integer", low, None, False, count)


_SIZE = _integer(low=1)
_NAME = Param("name")

#: Every op's parameters besides `op` and `field`, each declared once; the semantics above use
#: exactly these.
OP_PARAMS: dict[str, dict[str, Param]] = {
    "decode_jpeg": {},
    "random_resized_crop": {
        "scale": _number(0, 1, low_open=True, count=2),
        "ratio": _number(0, low_open=True, count=2),
        "size": _integer(1, count=2),
    },
    "random_horizontal_flip": {"p": _number(0, 1)},
    "normalize": {"mean": _number(count=0), "std": _number(0, low_open=True, count=0)},
    "random_crop_3d": {"size": _integer(1, count=3)},
    "zscore": {"epsilon": _number(0)},
    "random_window": {"length": _SIZE},
    "shift_targets": {"inputs": _NAME, "targets": _NAME},
    "truncate": {"max_length": _SIZE},
    "pad_batch": {"multiple": _SIZE, "pad_value": _integer(), "mask": _NAME},
    "standardize": {"mean": _number(), "std": _number(0, low_open=True)},
    "log1p": {},
    "hash_bucket": {"num_buckets": _SIZE},
    "embedding_lookup": {
        "output": _NAME,
        "num_rows": _SIZE,
        "dim": _SIZE,
        "table_seed": _integer(low=0),
    },
    "chain": {"depth": _SIZE, "cycle": Param("steps")},
    "multiply": {"factor": _number()},
    "add": {"value": _number()},
    "random_brightness": {"max_delta": _number(0)},
    "clip": {"low": _number(), "high": _number()},
    "gaussian_noise": {"std": _number(0)},
    "branch_merge": {"merge": Param("choice", choices=("mean",)), "branches": Param("branches")},
    "cast": {"dtype": Param("choice", choices=("uint8", "int16", "int32", "int64", "float32"))},
}


# --- the one walk over a scenario's steps ---------------------------------------------------


@dataclass(frozen=True)
class LeafOps:
    """A framework's implementation of the leaf ops; `apply_step` does the walking.

    `fields[op](value, step, key)` computes one field op; `embedding_lookup(step, ids)` looks
    ids up in `embedding_table`; `mean(outputs)` merges a branch_merge's branch outputs (float32).
    `step_key(keys)` is the randomness one step receives (called once per step, in step order:
    the reference numbers the element's steps, `ElementKey.next_step`; a framework keeps its own
    form of (seed, epoch, index, step)). `batch_fields[op](batch, step, params)` applies a random
    op of `RANDOM_DRAWS` to a stacked batch, with one parameter per row (`apply_batch_step`).
    """

    fields: Mapping[str, Callable[[Any, Mapping[str, Any], Any], Any]]
    embedding_lookup: Callable[[Mapping[str, Any], Any], Any]
    mean: Callable[[list[Any]], Any]
    step_key: Callable[[Any], Any] = ElementKey.next_step
    batch_fields: Mapping[str, Callable[[Any, Mapping[str, Any], Any], Any]] = field(
        default_factory=dict
    )


def apply_step(step: Mapping[str, Any], element: dict[str, Any], ops: LeafOps, keys) -> None:
    """One catalog step on `element` (a dict, changed in place) with `ops`' leaf ops; `keys` is
    the element's randomness, which `ops.step_key` advances by one step per leaf step."""
    op, name = step["op"], step["field"]
    if op == "chain":
        for sub in chain_steps(dict(step)):
            apply_step(sub, element, ops, keys)
        return
    key = ops.step_key(keys)
    if op == "shift_targets":
        tokens = element.pop(name)
        element[step["inputs"]] = tokens[:-1]
        element[step["targets"]] = tokens[1:]
    elif op == "embedding_lookup":
        element[step["output"]] = ops.embedding_lookup(step, element.pop(name))
    elif op == "branch_merge":
        outputs = []
        for branch in step["branches"]:
            scratch = {name: element[name]}
            for sub in branch:
                apply_step({**sub, "field": name}, scratch, ops, keys)
            outputs.append(scratch[name])
        # `mean` is the only merge the catalog schema admits.
        element[name] = ops.mean(outputs)
    else:
        element[name] = ops.fields[op](element[name], step, key)


def split_for_batches(
    transforms: Iterable[Mapping[str, Any]], batch_ops: frozenset[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per element, per batch): the tuned styles' split of a workload's element steps.

    The per-batch part is the longest run of steps at the end, chains expanded (`flat_steps`),
    whose ops are in `batch_ops` (the `BATCHABLE_OPS` a framework applies to a whole batch with
    the bytes it computes per element); everything before it stays per element, in order. When
    nothing moves the steps come back as given, chains unexpanded. Workloads with batch-level ops
    (dynamic padding of ragged fields) keep every element step per element.

    Expanding a chain changes no draw of a walk that keys its steps in order (`LeafOps.step_key`
    is called per leaf step, never for the chain itself), and the steps that move are the last.
    """
    given = [dict(s) for s in transforms]
    if any(s["op"] in BATCH_OPS for s in given):
        return given, []
    steps = flat_steps(given)
    cut = len(steps)
    while cut and steps[cut - 1]["op"] in batch_ops & BATCHABLE_OPS:
        cut -= 1
    if cut == len(steps):
        return given, []
    return steps[:cut], steps[cut:]


def tuned_split(
    transforms: Iterable[Mapping[str, Any]], batch_ops: frozenset[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per element, per batch): what every tuned style applies per element and per batch.

    `split_for_batches`, but only where nothing is left per element: with a step that stays per
    element (CV-1's crop) every step stays per element, so the trailing ones run on each element
    while it is in the cache. A second walk over the stacked batch measured slower on CV-1 in
    every framework that tried it (docs/measurements.md).
    """
    per_element, per_batch = split_for_batches(transforms, batch_ops)
    if per_element and per_batch:
        return split_for_batches(transforms, frozenset())
    return per_element, per_batch


def draws_per_row(steps: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any of these batch steps draws a parameter per row."""
    return any(s["op"] in RANDOM_DRAWS for s in steps)


def walk_length(steps: Iterable[Mapping[str, Any]]) -> int:
    """How many step keys a walk over `steps` takes: the number its next step gets."""
    count = 0
    for step in steps:
        if step["op"] == "chain":
            count += walk_length(chain_steps(dict(step)))
        elif step["op"] == "branch_merge":
            count += 1 + sum(walk_length(branch) for branch in step["branches"])
        elif step["op"] not in BATCH_OPS:
            count += 1
    return count


def apply_batch_step(
    step: Mapping[str, Any], batch: dict[str, Any], ops: LeafOps, keys: BatchKeys | None
) -> None:
    """One batchable step on a whole batch (a dict, changed in place) with `ops`' leaf ops.

    `keys` holds the rows' element indices and the step's number in the plain walk, which it
    advances: a random step draws every row's parameter at once, the plain pipeline's draws.
    """
    op, name = step["op"], step["field"]
    if op not in BATCHABLE_OPS:
        raise ValueError(f"{op!r} cannot be applied to a whole batch")
    key = keys.next_step() if keys is not None else None
    if op in RANDOM_DRAWS:
        if key is None:
            raise ValueError(f"{op!r} draws per element: it needs the batch's keys")
        values = batch[name]
        spec = RANDOM_DRAWS[op]
        params = spec.convert(step, key.words(spec.draws), tuple(values.shape[1:]))
        batch[name] = ops.batch_fields[op](values, step, params)
    elif op == "shift_targets":
        tokens = batch.pop(name)
        batch[step["inputs"]] = tokens[:, :-1]
        batch[step["targets"]] = tokens[:, 1:]
    elif op == "embedding_lookup":
        batch[step["output"]] = ops.embedding_lookup(step, batch.pop(name))
    else:
        batch[name] = ops.fields[op](batch[name], step, None)


def apply_batch_steps(
    steps: Iterable[Mapping[str, Any]],
    batch: dict[str, Any],
    ops: LeafOps,
    keys: BatchKeys | None = None,
) -> dict[str, Any]:
    """`apply_batch_step` for each of `steps`, in order; returns `batch`."""
    for step in steps:
        apply_batch_step(step, batch, ops, keys)
    return batch


def take_element_keys(
    elements: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], BatchKeys | None]:
    """(the elements without their kept keys, the batch's keys, or None when the elements keep
    none): what a tuned batch function does before it stacks."""
    if not elements or ELEMENT_KEY not in elements[0]:
        return elements, None
    rest = [{k: v for k, v in e.items() if k != ELEMENT_KEY} for e in elements]
    return rest, BatchKeys.of([e[ELEMENT_KEY] for e in elements])


def flat_steps(transforms: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The steps with every chain expanded into its sub-steps, in order."""
    out = []
    for step in transforms:
        out.extend(flat_steps(chain_steps(dict(step))) if step["op"] == "chain" else [dict(step)])
    return out


def _mean_f32(outputs: list[np.ndarray]) -> np.ndarray:
    outputs = [o.astype(F32) for o in outputs]
    return (sum(outputs[1:], outputs[0]) / F32(len(outputs))).astype(F32)


REFERENCE_OPS = LeafOps(
    fields=FIELD_OPS,
    embedding_lookup=lambda step, ids: embedding_table(
        step["num_rows"], step["dim"], step["table_seed"]
    )[ids],
    mean=_mean_f32,
    batch_fields=BATCH_FIELD_OPS,
)


def apply_element(
    transforms: Iterable[Mapping[str, Any]], element: Mapping[str, np.ndarray], keys: ElementKey
) -> Element:
    """Every element-level transform, in catalog order, on a copy of the element's dict."""
    out = dict(element)
    for step in transforms:
        if step["op"] not in BATCH_OPS:
            apply_step(step, out, REFERENCE_OPS, keys)
    return out


def pad_batch(sequences: list[np.ndarray], multiple: int, pad_value: int):
    """Pad to the batch's longest length rounded up to `multiple`; mask is 1 on real tokens."""
    longest = max(len(s) for s in sequences)
    length = max(multiple, -(-longest // multiple) * multiple)
    tokens = np.full((len(sequences), length), pad_value, dtype=sequences[0].dtype)
    mask = np.zeros((len(sequences), length), dtype=np.int32)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return tokens, mask


def collate(transforms: Iterable[Mapping[str, Any]], elements: list[Element]) -> Element:
    """Stack transformed elements into a batch, then apply the batch-level ops."""
    batch_steps = {s["field"]: s for s in transforms if s["op"] in BATCH_OPS}
    batch: Element = {}
    for name in elements[0]:
        column = [e[name] for e in elements]
        step = batch_steps.get(name)
        if step is not None:
            batch[name], batch[step["mask"]] = pad_batch(
                column, step["multiple"], step["pad_value"]
            )
        else:
            batch[name] = np.stack(column)
    return batch


class CollateWithBatchSteps:
    """A tuned pipeline's batch function (picklable for worker processes): the elements
    stacked as the reference does (`collate`, NLP-2's padding included), then the batch steps
    (`split_for_batches`) with every row's draws from the keys the elements kept."""

    def __init__(self, transforms: Iterable[Mapping[str, Any]], steps: list[dict[str, Any]]):
        self.transforms = list(transforms)
        self.steps = steps

    def __call__(self, elements: list[Element]) -> Element:
        elements, keys = take_element_keys(elements)
        batch = collate(self.transforms, elements)
        return apply_batch_steps(self.steps, batch, REFERENCE_OPS, keys)


def reference_batch(
    dataset, transforms, seed: int, epoch: int, batch_index: int, batch_size: int
) -> Element:
    """Batch `batch_index` of `epoch` exactly as the reference defines it (tests use this)."""
    start = batch_index * batch_size
    elements = [
        apply_element(transforms, dataset.element(i), element_key(seed, epoch, i))
        for i in range(start, start + batch_size)
    ]
    return collate(transforms, elements)


def batched_reference_batch(
    dataset, transforms, seed: int, epoch: int, batch_index: int, batch_size: int
) -> Element:
    """`reference_batch`, with the trailing batchable steps applied once to the stacked batch.

    The batch's random steps draw for every row at once (`BatchKeys`). With nothing left to do
    per element and only dense fields, the batch is read as one slice of each array (the bytes
    of stacking its elements).
    """
    per_element, per_batch = split_for_batches(transforms, BATCHABLE_OPS)
    start = batch_index * batch_size
    indices = range(start, start + batch_size)
    if not per_element and not dataset.ragged:
        batch = dataset.rows(list(indices))
    else:
        elements = [
            apply_element(per_element, dataset.element(i), element_key(seed, epoch, i))
            for i in indices
        ]
        batch = collate(per_element, elements)
    keys = BatchKeys(seed, epoch, np.arange(start, start + batch_size), walk_length(per_element))
    return apply_batch_steps(per_batch, batch, REFERENCE_OPS, keys)
