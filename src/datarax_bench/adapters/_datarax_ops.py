"""The catalog's field ops in JAX, for the Datarax adapter's operators (`datarax.py`).

Each op is a pair: `sample(step, key, element_shape)` draws the random parameters of a batch's
records from their `BatchKey`, one row per record (None for a deterministic op), and
`apply(step, value, params)` computes the op on one element with its row, vmapped and compiled by
Datarax. Imported only when a Datarax pipeline is built (it imports JAX).

The draws are the reference's (`datarax_bench.workload.randomness`): Threefry-2x32-20 words from JAX's own
threefry primitive, converted with the same integer-first arithmetic in uint32 and float32 (JAX
has no 64-bit types without x64 mode), so every parameter is the reference's bit for bit.

XLA on the CPU contracts a float32 `a*b + c` into one fused multiply-add (one rounding where
NumPy rounds twice), across ops and operators alike, and neither `optimization_barrier` nor
`reduce_precision` keeps it from doing so. Every product that an add may consume goes through
`rounded`, so that the pipeline computes what the reference computes; likewise every division by
a scalar goes through `divided`, which XLA would otherwise turn into a multiplication by the
scalar's reciprocal.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

from datarax_bench.workload import randomness, reference

f32 = jnp.float32
u32 = jnp.uint32
LOW16 = 0xFFFF


def rounded(x):
    """`x` itself, as a value no multiply-add can be fused into.

    `x <= |x|` holds for every number, so this selects `x` (a NaN stays a NaN); LLVM does not
    prove it, so the product feeding it is rounded to float32 on its own, as in NumPy. (It does
    prove `x == x` of a product it knows is not a NaN, which undoes `nextafter(x, x)` and
    `where(x == x, ...)`.)
    """
    return jnp.where(x <= jnp.abs(x), x, f32(jnp.nan))


def divided(x, d):
    """`x / d` with IEEE division, also where `d` is a broadcast scalar, which XLA would replace
    by a multiplication by its float32 reciprocal (one more rounding than NumPy's quotient).

    The divisor is made to depend on `x` (`d` for every number `x`, a NaN where `x` is one, whose
    quotient is a NaN either way), so XLA sees no broadcast to take the reciprocal of.
    """
    return x / jnp.where(x <= jnp.abs(x), d, f32(jnp.nan))


# --- the reference's words: Threefry-2x32-20 with JAX's primitive -----------------------------


def threefry2x32(key0, key1, count0, count1) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32-20 of counters (count0, count1) under key (key0, key1), uint32, broadcast:
    `randomness.threefry2x32` computed by JAX's own threefry primitive."""
    args = jnp.broadcast_arrays(*(jnp.asarray(a, dtype=u32) for a in (key0, key1, count0, count1)))
    y0, y1 = threefry2x32_p.bind(*args)
    return y0, y1


class BatchKey(NamedTuple):
    """The randomness of one step for every record of a batch (`randomness.BatchKey`), in JAX:
    the seed and epoch as uint32 scalars, the records' element indices as uint32 of shape
    (batch,), the step's number static."""

    seed: jax.Array
    epoch: jax.Array
    indices: jax.Array
    step: int

    def words(self, draws: int) -> jax.Array:
        """uint32 words of shape (batch, draws, 2): the step's draws for every record
        (`randomness.batch_words`)."""
        counter = randomness.counter_word(self.step, np.arange(draws))
        y0, y1 = threefry2x32(self.seed, self.epoch, self.indices[:, None], counter[None, :])
        return jnp.stack([y0, y1], axis=-1)


# --- conversions: words -> parameters, `randomness`'s arithmetic in uint32 and float32 --------


def below(y, n):
    """Integers in [0, n) from uint32 words (`randomness.below`): the multiply-high
    (y * n) >> 32 from 16-bit limbs, since JAX has no uint64 without x64 mode (n < 2³²)."""
    y, n = jnp.asarray(y, dtype=u32), jnp.asarray(n, dtype=u32)
    a, b = y >> 16, y & LOW16
    c, d = n >> 16, n & LOW16
    ad, bc, bd = a * d, b * c, b * d
    # y·n = ac·2³² + (ad + bc)·2¹⁶ + bd: the carry out of the low word from the middle terms'
    # low halves and bd's high half (each below 2¹⁶, so their sum cannot overflow).
    carry = ((bd >> 16) + (ad & LOW16) + (bc & LOW16)) >> 16
    return a * c + (ad >> 16) + (bc >> 16) + carry


def bernoulli(y, p: float):
    """A Bernoulli(p) per word (`randomness.bernoulli`): its top 24 bits below round(p·2²⁴)."""
    return (jnp.asarray(y, dtype=u32) >> 8) < u32(randomness.bernoulli_threshold(p))


def symmetric(y, bound: float):
    """Uniform float32 in [-bound, bound) (`randomness.symmetric`): an exact grid value in
    [-1, 1) times float32(bound)."""
    grid = (jnp.asarray(y, dtype=u32) >> 8).astype(f32) * f32(2.0**-23) - f32(1.0)
    return rounded(grid * f32(bound))


def crop_boxes(words, height: int, width: int, scale, ratio):
    """int32 (top, left, h, w) boxes of shape (..., 4) from words of shape (..., CROP_DRAWS, 2):
    `randomness.crop_boxes` (ten tries at once, the first that fits, else the centre crop)."""
    tries = randomness.CROP_TRIES
    y = jnp.asarray(words, dtype=u32)[..., 0]
    low, high = randomness.crop_area_bounds(height, width, scale)
    # Integer areas below 2²⁴: exact in float32.
    target = (u32(low) + below(y[..., 0 : 2 * tries : 2], high - low + 1)).astype(f32)
    table = jnp.asarray(randomness.aspect_table(ratio))
    aspect = table[y[..., 1 : 2 * tries : 2] >> (32 - randomness.ASPECT_TABLE_BITS)]
    # IEEE multiply, divide and sqrt, then round half to even, as NumPy's rint.
    ws = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    hs = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = jnp.argmax(fits, axis=-1)[..., None]
    found = fits.any(axis=-1)
    c_top, c_left, c_h, c_w = randomness.centre_crop_box(height, width, ratio)
    h = jnp.where(found, jnp.take_along_axis(hs, first, -1)[..., 0], c_h)
    w = jnp.where(found, jnp.take_along_axis(ws, first, -1)[..., 0], c_w)
    top = jnp.where(found, below(y[..., 2 * tries], height - h + 1).astype(jnp.int32), c_top)
    left = jnp.where(found, below(y[..., 2 * tries + 1], width - w + 1).astype(jnp.int32), c_left)
    return jnp.stack([top, left, h, w], axis=-1)


@functools.cache
def _normal_table() -> np.ndarray:
    return randomness.normal_table()


def normal_values(key: BatchKey, size: int, std: float):
    """(batch, size) float32 N(0, std²) values (`randomness.normal_values` per record): value j
    from draw j // 2's word j % 2, as a quantile of the reference's table (a constant of the
    computation)."""
    draws = -(-size // 2)
    if draws > randomness.MAX_DRAWS:
        raise ValueError(f"{size} noise values exceed the {2 * randomness.MAX_DRAWS} a step draws")
    words = key.words(draws)
    y = words.reshape(words.shape[0], -1)[:, :size]
    table = jnp.asarray(_normal_table())
    return rounded(table[y >> (32 - randomness.NORMAL_TABLE_BITS)] * f32(std))


# --- the ops ----------------------------------------------------------------------------------


def resized_crop_sample(step, key: BatchKey, shape):
    words = key.words(randomness.CROP_DRAWS)
    return crop_boxes(words, shape[0], shape[1], step["scale"], step["ratio"])


def resized_crop_apply(step, x, box):
    top, left, h, w = box[0], box[1], box[2], box[3]
    out_h, out_w = step["size"]
    img = x.astype(f32)

    def axis(start, n_in, n_out, n_max):
        # reference.resize_bilinear's scale is float32(n_in / n_out) of a float64 quotient: the
        # same values, looked up for every crop size the image admits.
        scales = jnp.asarray((np.arange(n_max + 1) / n_out).astype(np.float32))
        src = rounded((jnp.arange(n_out, dtype=f32) + f32(0.5)) * scales[n_in]) - f32(0.5)
        # Half-pixel centres inside the crop, clamped to it.
        src = jnp.clip(src, 0, (n_in - 1).astype(f32))
        lo = jnp.floor(src).astype(jnp.int32)
        hi = jnp.minimum(lo + 1, n_in - 1)
        return start + lo, start + hi, src - lo.astype(f32)

    y0, y1, wy = axis(top, h, out_h, x.shape[0])
    x0, x1, wx = axis(left, w, out_w, x.shape[1])
    wy = wy[:, None, None]
    wx = wx[None, :, None]
    rows = rounded(img[y0] * (1 - wy)) + rounded(img[y1] * wy)
    return rounded(rows[:, x0] * (1 - wx)) + rounded(rows[:, x1] * wx)


def flip_sample(step, key: BatchKey, shape):
    return bernoulli(key.words(1)[:, 0, 0], step["p"])


def crop3d_sample(step, key: BatchKey, shape):
    spans = [n - size + 1 for n, size in zip(shape[:3], step["size"], strict=True)]
    return below(key.words(3)[..., 0], np.asarray(spans, dtype=np.uint32)).astype(jnp.int32)


def crop3d_apply(step, x, start):
    d, h, w = step["size"]
    zeros = (jnp.int32(0),) * (x.ndim - 3)
    return jax.lax.dynamic_slice(x, (start[0], start[1], start[2], *zeros), (d, h, w, *x.shape[3:]))


def zscore_apply(step, x, _):
    # NumPy's float32 mean and std, spelled out: jnp.mean would divide the sum by the count
    # through its reciprocal (an ulp off the mean, which the subtraction amplifies near it), and
    # the sum of squares would take its products into fused multiply-adds. The sums keep XLA's
    # order (following NumPy's pairwise order exactly made this op up to four times slower).
    v = x.astype(f32)
    count = f32(v.size)
    centred = v - divided(jnp.sum(v), count)
    std = jnp.sqrt(divided(jnp.sum(rounded(centred * centred)), count))
    return divided(centred, std + f32(step["epsilon"]))


def window_sample(step, key: BatchKey, shape):
    return below(key.words(1)[:, 0, 0], shape[0] - step["length"] + 1).astype(jnp.int32)


def window_apply(step, x, start):
    return jax.lax.dynamic_slice_in_dim(x, start, step["length"], axis=0)


def brightness_sample(step, key: BatchKey, shape):
    return symmetric(key.words(1)[:, 0, 0], step["max_delta"])


def noise_sample(step, key: BatchKey, shape):
    values = normal_values(key, math.prod(shape), step["std"])
    return values.reshape(values.shape[0], *shape)


def hash_apply(step, x, _):
    # x holds id mod 2**32 as uint32, whose multiply wraps modulo 2**32 like the reference.
    h = x.astype(u32) * u32(reference.HASH_MULTIPLIER)
    h = h ^ (h >> 15)
    return (h % u32(step["num_buckets"])).astype(jnp.int32)


def normalize_apply(step, x, _):
    mean = jnp.asarray(step["mean"], dtype=f32)
    std = jnp.asarray(step["std"], dtype=f32)
    return divided(x.astype(f32) - mean, std)


#: op -> (sample(step, batch key, element_shape) -> a row of params per record, or None;
#:        apply(step, value, params)).
JAX_OPS: dict[str, tuple[Callable | None, Callable]] = {
    "random_resized_crop": (resized_crop_sample, resized_crop_apply),
    "random_horizontal_flip": (flip_sample, lambda s, x, flip: jnp.where(flip, x[:, ::-1], x)),
    "normalize": (None, normalize_apply),
    "random_crop_3d": (crop3d_sample, crop3d_apply),
    "zscore": (None, zscore_apply),
    "random_window": (window_sample, window_apply),
    "truncate": (None, lambda s, x, _: x[: s["max_length"]]),
    "standardize": (None, lambda s, x, _: divided(x.astype(f32) - f32(s["mean"]), f32(s["std"]))),
    "log1p": (None, lambda s, x, _: jnp.log1p(jnp.maximum(x.astype(f32), f32(0)))),
    "hash_bucket": (None, hash_apply),
    "multiply": (None, lambda s, x, _: rounded(x.astype(f32) * f32(s["factor"]))),
    "add": (None, lambda s, x, _: x.astype(f32) + f32(s["value"])),
    "random_brightness": (brightness_sample, lambda s, x, delta: x.astype(f32) + delta),
    "clip": (None, lambda s, x, _: jnp.clip(x.astype(f32), f32(s["low"]), f32(s["high"]))),
    "gaussian_noise": (noise_sample, lambda s, x, noise: x.astype(f32) + noise),
    "cast": (None, lambda s, x, _: x.astype(s["dtype"])),
}
