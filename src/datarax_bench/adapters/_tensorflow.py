"""TensorFlow for the adapters that load it (tf.data, Datarax's TFDS source): kept off
accelerators, which JAX owns, and imported once per process; and the reference's counter-based
draws (`datarax_bench.workload.randomness`) in TF ops, for tf.data."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from datarax_bench.workload import randomness
from datarax_bench.workload.randomness import KEY_PARITY

_STATE: dict[str, Any] = {}


def import_tensorflow():
    """TensorFlow with its GPUs hidden and Grappler's arithmetic optimizer off (before any op).

    The arithmetic optimizer reassociates float arithmetic (it flattens an add of adds into one
    AddN, and reorders chains of adds and multiplies by their operands' shapes), so a pipeline
    would round differently from the reference's op order: PC-1's add then random_brightness
    ((x + v) + delta) came out an ulp off, PC-2's mean of two branches several. Without it
    TensorFlow evaluates the ops as written, one IEEE rounding each.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if "visible_gpus" not in _STATE:
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:
            # TF was initialised earlier in this process; record what it can see.
            pass
        _STATE["visible_gpus"] = len(tf.config.get_visible_devices("GPU"))
        tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})
    return tf


def arithmetic_optimization() -> bool:
    """Whether Grappler's arithmetic optimizer is on (off after `import_tensorflow`)."""
    import tensorflow as tf

    return tf.config.optimizer.get_experimental_options().get("arithmetic_optimization", True)


def visible_gpus() -> int:
    """GPUs TensorFlow can see (0 unless it was initialised before `import_tensorflow`)."""
    return _STATE["visible_gpus"]


class StepKey(NamedTuple):
    """The randomness of one step (`randomness.StepKey`) as TF values: the key's words, the
    element index's word (a scalar, or one per row of a batch) and the step's number."""

    key0: Any
    key1: Any
    index: Any
    step: int
    #: The step's words (y0, y1), where they were computed ahead with other steps' (`plan`).
    words: Any = None


class ElementKey:
    """Where one element's walk stands (`randomness.ElementKey`): `next_step()` gives each step its
    key, in order. `epoch` and `index` are int64 tensors (scalars, or one per row of a batch)."""

    __slots__ = ("key0", "key1", "index", "step", "planned")

    def __init__(self, tf, seed: int, epoch, index, step: int = 0):
        self.key0 = tf.constant(seed & randomness.MASK32, tf.uint32)
        self.key1 = _word(tf, epoch)
        self.index = _word(tf, index)
        self.step = step
        self.planned: dict[int, Any] = {}

    def next_step(self) -> StepKey:
        key = StepKey(self.key0, self.key1, self.index, self.step, self.planned.get(self.step))
        self.step += 1
        return key


def _word(tf, value):
    """An int64 tensor mod 2³², as uint32."""
    return tf.cast(tf.bitwise.bitwise_and(tf.cast(value, tf.int64), randomness.MASK32), tf.uint32)


class CounterDraws:
    """The reference's counter-based draws (`datarax_bench.workload.randomness`) in TensorFlow ops.

    Threefry-2x32-20 in uint32 `tf.bitwise` ops (TF's own `alg="threefry"` runs only under XLA
    and takes no counter of ours), then the same integer-first conversions, so every draw is the
    reference's bits. Each function works on a scalar key's words or on a batch's (one element
    index per row).
    """

    def __init__(self, tf):
        self.tf = tf
        # XLA fuses Threefry's ~120 small integer ops into one kernel: twice the elements per
        # second of running them one by one. Integer ops only, so the bits are the same.
        self._compiled = tf.function(self._threefry2x32, jit_compile=True)

    def threefry2x32(self, key0, key1, count0, count1):
        """Threefry-2x32-20 of counters (count0, count1) under key (key0, key1): uint32 tensors,
        broadcast."""
        tf = self.tf
        return self._compiled(*(tf.cast(v, tf.uint32) for v in (key0, key1, count0, count1)))

    def _threefry2x32(self, key0, key1, count0, count1):
        tf = self.tf
        u32 = tf.uint32
        bits = tf.bitwise
        k0, k1 = tf.cast(key0, u32), tf.cast(key1, u32)
        ks = (k0, k1, bits.bitwise_xor(bits.bitwise_xor(k0, k1), tf.constant(KEY_PARITY, u32)))
        x0 = tf.cast(count0, u32) + ks[0]
        x1 = tf.cast(count1, u32) + ks[1]
        for group in range(5):
            for r in randomness.ROTATIONS[group % 2]:
                x0 = x0 + x1
                rotated = bits.bitwise_or(
                    bits.left_shift(x1, tf.constant(r, u32)),
                    bits.right_shift(x1, tf.constant(32 - r, u32)),
                )
                x1 = bits.bitwise_xor(rotated, x0)
            x0 = x0 + ks[(group + 1) % 3]
            x1 = x1 + ks[(group + 2) % 3] + tf.constant(group + 1, u32)
        return x0, x1

    def plan(self, keys: ElementKey, draws: dict[int, int]) -> None:
        """Computes the words of several steps of a walk in one Threefry pass, `draws[step]` for
        each, and gives them to `keys`' steps: one pass per element instead of one per step."""
        if not draws:
            return
        tf = self.tf
        count1 = np.concatenate(
            [randomness.counter_word(step, np.arange(n)) for step, n in draws.items()]
        )
        y0, y1 = self.threefry2x32(
            keys.key0, keys.key1[..., None], keys.index[..., None], tf.constant(count1)
        )
        start = 0
        for step, n in draws.items():
            keys.planned[step] = (y0[..., start : start + n], y1[..., start : start + n])
            start += n

    def words(self, key: StepKey, draws):
        """(y0, y1): uint32 of shape (..., draws), the words of draws 0..draws-1 of `key`'s step
        (`randomness.batch_words`); `draws` may be a tensor."""
        tf = self.tf
        if key.words is not None and key.words[0].shape[-1] == draws:
            return key.words
        if not 0 <= key.step < randomness.MAX_STEPS:
            raise ValueError(f"step {key.step} is outside the {randomness.MAX_STEPS} steps")
        count1 = tf.bitwise.bitwise_or(
            tf.constant(key.step << randomness.DRAW_BITS, tf.uint32),
            tf.cast(tf.range(tf.cast(draws, tf.int64)), tf.uint32),
        )
        return self.threefry2x32(key.key0, key.key1[..., None], key.index[..., None], count1)

    def first_words(self, key: StepKey, draws):
        """The first word of each draw (the one the conversions of most ops read)."""
        return self.words(key, draws)[0]

    # --- conversions: words -> parameters (`randomness`), the same arithmetic ------------------

    def below(self, y, n):
        """int64 integers in [0, n): the multiply-high (y * n) >> 32, exact in int64 because
        n < 2³¹ here (an axis length or an image's area)."""
        tf = self.tf
        return tf.bitwise.right_shift(tf.cast(y, tf.int64) * tf.cast(n, tf.int64), 32)

    def bernoulli(self, y, p: float):
        tf = self.tf
        threshold = tf.constant(randomness.bernoulli_threshold(p), tf.uint32)
        return tf.bitwise.right_shift(y, tf.constant(8, tf.uint32)) < threshold

    def symmetric(self, y, bound: float):
        """float32 in [-bound, bound): the exact grid value in [-1, 1) times float32(bound)."""
        tf = self.tf
        top = tf.cast(tf.bitwise.right_shift(y, tf.constant(8, tf.uint32)), tf.float32)
        return (top * 2.0**-23 - 1.0) * tf.constant(np.float32(bound))

    def crop_box(self, y, height, width, scale, ratio):
        """int64 (top, left, h, w) of a random-resized crop from the first words y (...,
        CROP_DRAWS) (`randomness.crop_boxes`): ten tries at once, the first that fits wins,
        else the centre crop. `height` and `width` are ints, or int64 scalar tensors where the
        image's size is known only at run time (a decoded JPEG's)."""
        tf = self.tf
        tries = randomness.CROP_TRIES
        if isinstance(height, int) and isinstance(width, int):
            low, high = randomness.crop_area_bounds(height, width, scale)
            c_top, c_left, c_h, c_w = randomness.centre_crop_box(height, width, ratio)
        else:
            low, high = self.crop_area_bounds(height, width, scale)
            c_top, c_left, c_h, c_w = self.centre_crop_box(height, width, ratio)
        target = tf.cast(low + self.below(y[..., 0 : 2 * tries : 2], high - low + 1), tf.float32)
        table = tf.constant(randomness.aspect_table(ratio))
        shift = tf.constant(32 - randomness.ASPECT_TABLE_BITS, tf.uint32)
        bins = tf.cast(tf.bitwise.right_shift(y[..., 1 : 2 * tries : 2], shift), tf.int32)
        aspect = tf.gather(table, bins)
        ws = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int64)
        hs = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int64)
        fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
        # The first fitting try: the smallest index that fits (argmax leaves ties unspecified).
        first = tf.reduce_min(tf.where(fits, tf.range(tries, dtype=tf.int64), tries), axis=-1)
        found = first < tries
        pick = tf.minimum(first, tries - 1)[..., None]
        h = tf.where(found, tf.gather(hs, pick, batch_dims=pick.shape.rank - 1)[..., 0], c_h)
        w = tf.where(found, tf.gather(ws, pick, batch_dims=pick.shape.rank - 1)[..., 0], c_w)
        top = tf.where(found, self.below(y[..., 2 * tries], height - h + 1), c_top)
        left = tf.where(found, self.below(y[..., 2 * tries + 1], width - w + 1), c_left)
        return top, left, h, w

    def crop_area_bounds(self, height, width, scale):
        """`randomness.crop_area_bounds` of int64 tensors: the same float64 products, rounded
        the same way."""
        tf = self.tf
        area = tf.cast(height * width, tf.float64)
        low = tf.maximum(
            tf.constant(1, tf.int64), tf.cast(tf.math.ceil(area * float(scale[0])), tf.int64)
        )
        return low, tf.maximum(low, tf.cast(tf.math.floor(area * float(scale[1])), tf.int64))

    def centre_crop_box(self, height, width, ratio):
        """`randomness.centre_crop_box` of int64 tensors (tf.round rounds half to even, as
        Python's round does)."""
        tf = self.tf
        h64, w64 = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
        in_ratio = w64 / h64
        narrow, wide = in_ratio < float(ratio[0]), in_ratio > float(ratio[1])
        h = tf.where(narrow, tf.cast(tf.round(w64 / float(ratio[0])), tf.int64), height)
        w = tf.where(wide & ~narrow, tf.cast(tf.round(h64 * float(ratio[1])), tf.int64), width)
        return (height - h) // 2, (width - w) // 2, h, w

    def normal_values(self, key: StepKey, size, std: float):
        """`size` float32 N(0, std²) values of one element's step (`randomness.normal_values`):
        value j from draw j // 2's word j % 2, a quantile of `randomness.normal_table`."""
        tf = self.tf
        y0, y1 = self.words(key, (size + 1) // 2)
        y = tf.reshape(tf.stack([y0, y1], axis=-1), [-1])[:size]
        shift = tf.constant(32 - randomness.NORMAL_TABLE_BITS, tf.uint32)
        table = tf.constant(randomness.normal_table())
        quantiles = tf.gather(table, tf.cast(tf.bitwise.right_shift(y, shift), tf.int32))
        return quantiles * tf.constant(np.float32(std))
