"""The reference semantics of every catalog op, in plain NumPy.

This module *defines* what each transform does; the NumPy reference adapter runs it as is and
every framework adapter must reproduce it (conformance tests compare against it).

Randomness is per element: element `i` of epoch `e` draws from
`np.random.default_rng([seed, e, i])`, in op order, so results do not depend on batching,
worker count or iteration order. Images are channel-last (H, W, C); volumes (D, H, W, C).
Arithmetic ops compute in float32.

The tuned styles apply a workload's trailing batchable steps (`split_for_batches`) to the stacked
batch: value-wise ops as they are, and the random ops whose draws are a fixed number of scalars
per element (`RANDOM_DRAWS`) with one draw per row, each from that row's element generator carried
over from its per-element steps, so every generator sees the plain pipeline's draws in its order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

Element = dict[str, np.ndarray]
F32 = np.float32

# Ops that work on a whole batch (they need every element's shape); they come last.
BATCH_OPS = frozenset({"pad_batch"})
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


def element_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


#: The key under which a tuned pipeline keeps an element's generator with the element, from its
#: per-element steps to its batch's steps (taken out again before the batch is stacked).
ELEMENT_RNG_KEY = "__element_rng__"


# --- random parameter draws (shared so that frameworks can reuse the exact sampling) ---------


def sample_resized_crop_box(
    rng: np.random.Generator, height: int, width: int, scale, ratio
) -> tuple[int, int, int, int]:
    """(top, left, h, w) like torchvision's RandomResizedCrop: 10 tries, then a centre crop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return centre_crop_box(height, width, ratio)


def centre_crop_box(height: int, width: int, ratio) -> tuple[int, int, int, int]:
    """The fallback box of `sample_resized_crop_box`: the centre crop, its aspect clamped to
    `ratio`. It depends only on the shapes, so adapters that draw all tries at once reuse it."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


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


# --- the draws of the random ops that batch: (step, rng, element shape) -> parameter --------
# One function per op, used by the per-element op and by the batch step alike, so that the two
# cannot draw differently.


def draw_flip(step: Mapping[str, Any], rng: np.random.Generator, element_shape) -> bool:
    """Whether random_horizontal_flip flips this element."""
    return bool(rng.random() < step["p"])


def draw_brightness(step: Mapping[str, Any], rng: np.random.Generator, element_shape) -> F32:
    """random_brightness's delta for this element, as the float32 it adds."""
    return F32(rng.uniform(-step["max_delta"], step["max_delta"]))


def draw_window_start(step: Mapping[str, Any], rng: np.random.Generator, element_shape) -> int:
    """Where random_window's window starts along the element's first axis."""
    return int(rng.integers(0, element_shape[0] - step["length"] + 1))


RANDOM_DRAWS: dict[str, Callable[[Mapping[str, Any], np.random.Generator, Any], Any]] = {
    "random_horizontal_flip": draw_flip,
    "random_brightness": draw_brightness,
    "random_window": draw_window_start,
}


# --- element ops: (array, params, rng) -> array ---------------------------------------------


def _random_resized_crop(x, p, rng):
    top, left, h, w = sample_resized_crop_box(rng, x.shape[0], x.shape[1], p["scale"], p["ratio"])
    return resize_bilinear(x[top : top + h, left : left + w], *p["size"])


def _random_horizontal_flip(x, p, rng):
    return x[:, ::-1] if draw_flip(p, rng, x.shape) else x


def _normalize(x, p, rng):
    mean = np.asarray(p["mean"], dtype=F32)
    std = np.asarray(p["std"], dtype=F32)
    return (x.astype(F32) - mean) / std


def _random_crop_3d(x, p, rng):
    d, h, w = p["size"]
    z0 = int(rng.integers(0, x.shape[0] - d + 1))
    y0 = int(rng.integers(0, x.shape[1] - h + 1))
    x0 = int(rng.integers(0, x.shape[2] - w + 1))
    return x[z0 : z0 + d, y0 : y0 + h, x0 : x0 + w]


def _zscore(x, p, rng):
    v = x.astype(F32)
    return (v - v.mean(dtype=F32)) / (v.std(dtype=F32) + F32(p["epsilon"]))


def _random_window(x, p, rng):
    start = draw_window_start(p, rng, x.shape)
    return x[start : start + p["length"]]


def _truncate(x, p, rng):
    return x[: p["max_length"]]


def _standardize(x, p, rng):
    return (x.astype(F32) - F32(p["mean"])) / F32(p["std"])


def _log1p(x, p, rng):
    return np.log1p(np.maximum(x.astype(F32), F32(0)))


def _hash_bucket(x, p, rng):
    return hash_ids(x, p["num_buckets"])


def _multiply(x, p, rng):
    return x.astype(F32) * F32(p["factor"])


def _add(x, p, rng):
    return x.astype(F32) + F32(p["value"])


def _random_brightness(x, p, rng):
    return x.astype(F32) + draw_brightness(p, rng, x.shape)


def _clip(x, p, rng):
    return np.clip(x.astype(F32), F32(p["low"]), F32(p["high"]))


def _gaussian_noise(x, p, rng):
    return x.astype(F32) + rng.normal(0.0, p["std"], size=x.shape).astype(F32)


def _cast(x, p, rng):
    return x.astype(p["dtype"])


FIELD_OPS: dict[str, Callable[[np.ndarray, Mapping[str, Any], np.random.Generator], np.ndarray]] = {
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
    out = np.array(x)
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
    `step_key(rng)` is the randomness one step receives (called once per step, in step order:
    the reference passes its element generator on; a framework with stateless keys folds in a
    counter). `batch_fields[op](batch, step, draws)` applies a random op of `RANDOM_DRAWS` to a
    stacked batch, with one draw per row (`apply_batch_step`).
    """

    fields: Mapping[str, Callable[[Any, Mapping[str, Any], Any], Any]]
    embedding_lookup: Callable[[Mapping[str, Any], Any], Any]
    mean: Callable[[list[Any]], Any]
    step_key: Callable[[Any], Any] = lambda rng: rng  # noqa: E731 - the reference's: as is
    batch_fields: Mapping[str, Callable[[Any, Mapping[str, Any], list[Any]], Any]] = field(
        default_factory=dict
    )


def apply_step(step: Mapping[str, Any], element: dict[str, Any], ops: LeafOps, rng) -> None:
    """One catalog step on `element` (a dict, changed in place) with `ops`' leaf ops."""
    op, name = step["op"], step["field"]
    if op == "chain":
        for sub in chain_steps(dict(step)):
            apply_step(sub, element, ops, rng)
        return
    key = ops.step_key(rng)
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
                apply_step({**sub, "field": name}, scratch, ops, rng)
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


def draws_per_row(steps: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any of these batch steps draws from the rows' element generators."""
    return any(s["op"] in RANDOM_DRAWS for s in steps)


def apply_batch_step(
    step: Mapping[str, Any],
    batch: dict[str, Any],
    ops: LeafOps,
    rngs: list[np.random.Generator] | None = None,
) -> None:
    """One batchable step on a whole batch (a dict, changed in place) with `ops`' leaf ops.

    A random step draws, for each row in batch order, from `rngs[row]`: that element's generator,
    carried over from its per-element steps, so it draws what the plain pipeline draws there.
    """
    op, name = step["op"], step["field"]
    if op not in BATCHABLE_OPS:
        raise ValueError(f"{op!r} cannot be applied to a whole batch")
    if op in RANDOM_DRAWS:
        if rngs is None:
            raise ValueError(f"{op!r} draws per element: it needs the batch's element generators")
        values = batch[name]
        element_shape = tuple(values.shape[1:])
        draws = [RANDOM_DRAWS[op](step, rng, element_shape) for rng in rngs]
        batch[name] = ops.batch_fields[op](values, step, draws)
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
    rngs: list[np.random.Generator] | None = None,
) -> dict[str, Any]:
    """`apply_batch_step` for each of `steps`, in order; returns `batch`."""
    for step in steps:
        apply_batch_step(step, batch, ops, rngs)
    return batch


def take_element_rngs(
    elements: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[np.random.Generator] | None]:
    """(the elements without their kept generators, the generators in order, or None when the
    elements keep none): what a tuned batch function does before it stacks."""
    if not elements or ELEMENT_RNG_KEY not in elements[0]:
        return elements, None
    rest = [{k: v for k, v in e.items() if k != ELEMENT_RNG_KEY} for e in elements]
    return rest, [e[ELEMENT_RNG_KEY] for e in elements]


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
    transforms: Iterable[Mapping[str, Any]], element: Mapping[str, np.ndarray], rng
) -> Element:
    """Every element-level transform, in catalog order, on a copy of the element's dict."""
    out = dict(element)
    for step in transforms:
        if step["op"] not in BATCH_OPS:
            apply_step(step, out, REFERENCE_OPS, rng)
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


def reference_batch(
    dataset, transforms, seed: int, epoch: int, batch_index: int, batch_size: int
) -> Element:
    """Batch `batch_index` of `epoch` exactly as the reference defines it (tests use this)."""
    start = batch_index * batch_size
    elements = [
        apply_element(transforms, dataset.element(i), element_rng(seed, epoch, i))
        for i in range(start, start + batch_size)
    ]
    return collate(transforms, elements)


def batched_reference_batch(
    dataset, transforms, seed: int, epoch: int, batch_index: int, batch_size: int
) -> Element:
    """`reference_batch`, with the trailing batchable steps applied once to the stacked batch.

    Each element's generator goes from its per-element steps to the batch's. With nothing left
    to do per element and only dense fields, the batch is read as one slice of each array (the
    bytes of stacking its elements).
    """
    per_element, per_batch = split_for_batches(transforms, BATCHABLE_OPS)
    start = batch_index * batch_size
    indices = range(start, start + batch_size)
    if not per_element and not dataset.ragged:
        batch = dataset.rows(list(indices))
        rngs = [element_rng(seed, epoch, i) for i in indices] if draws_per_row(per_batch) else None
    else:
        rngs = [element_rng(seed, epoch, i) for i in indices]
        elements = [
            apply_element(per_element, dataset.element(i), rng)
            for i, rng in zip(indices, rngs, strict=True)
        ]
        batch = collate(per_element, elements)
    return apply_batch_steps(per_batch, batch, REFERENCE_OPS, rngs)
