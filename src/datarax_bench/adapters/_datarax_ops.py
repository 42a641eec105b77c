"""The catalog's field ops in JAX, for the Datarax adapter's operators (`datarax.py`).

Each op is a pair: `sample(step, key, element_shape)` draws its random parameters (None for a
deterministic op) and `apply(step, value, params)` computes it, vmapped and compiled by Datarax.
Imported only when a Datarax pipeline is built (it imports JAX).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from .. import randomness, reference

f32 = jnp.float32


def resized_crop_sample(step, key, shape):
    height, width = shape[0], shape[1]
    scale, ratio = step["scale"], step["ratio"]
    k_area, k_aspect, k_top, k_left = jax.random.split(key, 4)
    # torchvision's 10 tries, drawn at once; the first that fits wins, else a centre crop.
    area = height * width * jax.random.uniform(k_area, (10,), minval=scale[0], maxval=scale[1])
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = jnp.exp(jax.random.uniform(k_aspect, (10,), minval=log_ratio[0], maxval=log_ratio[1]))
    w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits)
    fb_top, fb_left, fb_h, fb_w = randomness.centre_crop_box(height, width, ratio)
    found = fits.any()
    h = jnp.where(found, h[first], fb_h)
    w = jnp.where(found, w[first], fb_w)
    top = jnp.where(found, jax.random.randint(k_top, (), 0, height - h + 1), fb_top)
    left = jnp.where(found, jax.random.randint(k_left, (), 0, width - w + 1), fb_left)
    return jnp.stack([top, left, h, w]).astype(jnp.int32)


def resized_crop_apply(step, x, box):
    top, left, h, w = box[0], box[1], box[2], box[3]
    out_h, out_w = step["size"]
    img = x.astype(f32)

    def axis(start, n_in, n_out):
        # Half-pixel centres inside the crop, clamped to it (reference.resize_bilinear).
        scale = n_in.astype(f32) / f32(n_out)
        src = (jnp.arange(n_out, dtype=f32) + f32(0.5)) * scale - f32(0.5)
        src = jnp.clip(src, 0, (n_in - 1).astype(f32))
        lo = jnp.floor(src).astype(jnp.int32)
        hi = jnp.minimum(lo + 1, n_in - 1)
        return start + lo, start + hi, src - lo.astype(f32)

    y0, y1, wy = axis(top, h, out_h)
    x0, x1, wx = axis(left, w, out_w)
    wy = wy[:, None, None]
    wx = wx[None, :, None]
    rows = img[y0] * (1 - wy) + img[y1] * wy
    return rows[:, x0] * (1 - wx) + rows[:, x1] * wx


def flip_sample(step, key, shape):
    return jax.random.uniform(key) < step["p"]


def crop3d_sample(step, key, shape):
    keys = jax.random.split(key, 3)
    return jnp.stack(
        [jax.random.randint(k, (), 0, shape[i] - step["size"][i] + 1) for i, k in enumerate(keys)]
    )


def crop3d_apply(step, x, start):
    d, h, w = step["size"]
    zeros = (jnp.int32(0),) * (x.ndim - 3)
    return jax.lax.dynamic_slice(x, (start[0], start[1], start[2], *zeros), (d, h, w, *x.shape[3:]))


def zscore_apply(step, x, _):
    v = x.astype(f32)
    return (v - v.mean()) / (v.std() + f32(step["epsilon"]))


def window_sample(step, key, shape):
    return jax.random.randint(key, (), 0, shape[0] - step["length"] + 1)


def window_apply(step, x, start):
    return jax.lax.dynamic_slice_in_dim(x, start, step["length"], axis=0)


def hash_apply(step, x, _):
    # x holds id mod 2**32 as uint32, whose multiply wraps modulo 2**32 like the reference.
    h = x.astype(jnp.uint32) * jnp.uint32(reference.HASH_MULTIPLIER)
    h = h ^ (h >> 15)
    return (h % jnp.uint32(step["num_buckets"])).astype(jnp.int32)


def normalize_apply(step, x, _):
    mean = jnp.asarray(step["mean"], dtype=f32)
    std = jnp.asarray(step["std"], dtype=f32)
    return (x.astype(f32) - mean) / std


#: op -> (sample(step, key, element_shape) -> params or None, apply(step, value, params)).
JAX_OPS: dict[str, tuple[Callable | None, Callable]] = {
    "random_resized_crop": (resized_crop_sample, resized_crop_apply),
    "random_horizontal_flip": (flip_sample, lambda s, x, flip: jnp.where(flip, x[:, ::-1], x)),
    "normalize": (None, normalize_apply),
    "random_crop_3d": (crop3d_sample, crop3d_apply),
    "zscore": (None, zscore_apply),
    "random_window": (window_sample, window_apply),
    "truncate": (None, lambda s, x, _: x[: s["max_length"]]),
    "standardize": (None, lambda s, x, _: (x.astype(f32) - f32(s["mean"])) / f32(s["std"])),
    "log1p": (None, lambda s, x, _: jnp.log1p(jnp.maximum(x.astype(f32), f32(0)))),
    "hash_bucket": (None, hash_apply),
    "multiply": (None, lambda s, x, _: x.astype(f32) * f32(s["factor"])),
    "add": (None, lambda s, x, _: x.astype(f32) + f32(s["value"])),
    "random_brightness": (
        lambda s, key, shape: jax.random.uniform(
            key, minval=-s["max_delta"], maxval=s["max_delta"]
        ),
        lambda s, x, delta: x.astype(f32) + delta.astype(f32),
    ),
    "clip": (None, lambda s, x, _: jnp.clip(x.astype(f32), f32(s["low"]), f32(s["high"]))),
    "gaussian_noise": (
        lambda s, key, shape: jax.random.normal(key, shape, dtype=f32) * f32(s["std"]),
        lambda s, x, noise: x.astype(f32) + noise,
    ),
    "cast": (None, lambda s, x, _: x.astype(s["dtype"])),
}
