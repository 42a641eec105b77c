"""The reference's randomness: counter-based draws that are the same bits in every framework.

Every random op draws from Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers:
as easy as 1, 2, 3", SC 2011; JAX's own PRNG), a pure function of a key and a counter:

    key     = (seed mod 2³², epoch mod 2³²)
    counter = (element index, step << 24 | draw)

`step` numbers the steps of an element's walk in order (`reference.apply_step` asks for one key
per step, chains expanded, a branch merge before its branches' steps), `draw` the op's draws.
Each draw is the pair of 32-bit words the function returns. So every draw is a pure function of
(seed, epoch, index, step, draw): independent of batch size, worker count, process count and
evaluation order, and cheap to compute for a whole batch or epoch chunk at once.

Conversions from words to parameters are integer-first, so that NumPy, PyTorch, TensorFlow and
XLA land on the same value (measured exact in all four):
- an integer in [0, n): the multiply-high `(y * n) >> 32` (bias at most n / 2³²);
- a Bernoulli(p): `(y >> 8) < round(p * 2²⁴)`;
- a uniform float32 in [0, 1): `float32(y >> 8) * 2⁻²⁴` (never `y / 2³²`, which can round to 1);
- a symmetric offset in [-a, a): `(float32(y >> 8) * 2⁻²³ - 1) * float32(a)`, whose first part
  is exact; the product is exact when a is a power of two (the catalog's are), else one rounding
  that XLA on the CPU may fuse with a following add (an FMA, one ulp);
- the random-resized-crop box: an integer target area by multiply-high, the aspect ratio from a
  float32 table of `ASPECT_TABLE_SIZE` log-uniform values, then IEEE `*`, `/`, `sqrt` and
  round-half-even in float32;
- Gaussian noise: a table of 2¹⁶ float32 standard-normal quantiles indexed by `y >> 16`, times
  float32(std) (inverse transforms such as Box–Muller differ by an ulp between libraries).

`SCHEME` names this scheme; results record it and runs of different schemes are incomparable.
"""

from __future__ import annotations

from functools import cache, lru_cache
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

#: The randomness scheme's name and version: part of every result's provenance and of the
#: settings that decide whether a kept result is still valid.
SCHEME = "threefry2x32-20/v1"

MASK32 = 0xFFFFFFFF
#: Bits of the counter's second word that number draws; the step takes the bits above.
DRAW_BITS = 24
MAX_STEPS = 1 << (32 - DRAW_BITS)
MAX_DRAWS = 1 << DRAW_BITS
#: Threefry-2x32's rotation constants (Random123), four per group of rounds, alternating.
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
#: Threefish's key-schedule parity constant.
KEY_PARITY = 0x1BD11BDA
ASPECT_TABLE_BITS = 12
ASPECT_TABLE_SIZE = 1 << ASPECT_TABLE_BITS
NORMAL_TABLE_BITS = 16
#: Draws of one random-resized-crop box: an area and an aspect per try, then top and left.
CROP_TRIES = 10
CROP_DRAWS = 2 * CROP_TRIES + 2
#: Elements whose words one cached computation covers (`element_words`).
CHUNK = 1024

U32 = np.uint32
F32 = np.float32


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << U32(r)) | (x >> U32(32 - r))


def threefry2x32(key0, key1, count0, count1) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32-20 of counters (count0, count1) under key (key0, key1), uint32, broadcast."""
    k0, k1 = U32(key0), U32(key1)
    ks = (k0, k1, k0 ^ k1 ^ U32(KEY_PARITY))
    with np.errstate(over="ignore"):
        x0 = np.asarray(count0, dtype=U32) + ks[0]
        x1 = np.asarray(count1, dtype=U32) + ks[1]
        for group in range(5):
            for r in ROTATIONS[group % 2]:
                x0 = x0 + x1
                x1 = _rotl(x1, r) ^ x0
            x0 = x0 + ks[(group + 1) % 3]
            x1 = x1 + ks[(group + 2) % 3] + U32(group + 1)
    return x0, x1


def counter_word(step: int, draws) -> np.ndarray:
    """The counter's second word for `draws` of step `step`."""
    if not 0 <= step < MAX_STEPS:
        raise ValueError(f"step {step} is outside the {MAX_STEPS} steps the counter numbers")
    return (U32(step) << U32(DRAW_BITS)) | np.asarray(draws, dtype=U32)


def batch_words(seed: int, epoch: int, indices, step: int, draws: int) -> np.ndarray:
    """uint32 words of shape (len(indices), draws, 2): every draw of step `step` for each index."""
    index = np.asarray(indices, dtype=np.int64).astype(U32)[:, None]
    y0, y1 = threefry2x32(
        seed & MASK32, epoch & MASK32, index, counter_word(step, np.arange(draws))[None, :]
    )
    return np.stack([y0, y1], axis=-1)


@lru_cache(maxsize=1024)
def _chunk_words(seed: int, epoch: int, step: int, draws: int, chunk: int) -> np.ndarray:
    words = batch_words(seed, epoch, np.arange(chunk * CHUNK, (chunk + 1) * CHUNK), step, draws)
    words.setflags(write=False)
    return words


class StepKey(NamedTuple):
    """The randomness of one step of one element's walk."""

    seed: int
    epoch: int
    index: int
    step: int


def element_words(key: StepKey, draws: int) -> np.ndarray:
    """The (draws, 2) words of one element's step, looked up in a chunk computed at once."""
    chunk, row = divmod(key.index, CHUNK)
    return _chunk_words(key.seed, key.epoch, key.step, draws, chunk)[row]


def rows_words(seed: int, epoch: int, indices: np.ndarray, step: int, draws: int) -> np.ndarray:
    """`batch_words` of `indices`, looked up in chunks computed at once (a batch's rows are
    usually one or two chunks): the same words, without a Threefry pass per batch."""
    chunks = indices // CHUNK
    first, last = int(chunks.min()), int(chunks.max())
    if first == last:
        return _chunk_words(seed, epoch, step, draws, first)[indices - first * CHUNK]
    out = np.empty((len(indices), draws, 2), dtype=U32)
    for chunk in range(first, last + 1):
        rows = chunks == chunk
        if rows.any():
            out[rows] = _chunk_words(seed, epoch, step, draws, chunk)[indices[rows] - chunk * CHUNK]
    return out


class ElementKey:
    """Where one element's walk stands: `next_step()` gives each step its key, in order."""

    __slots__ = ("seed", "epoch", "index", "step")

    def __init__(self, seed: int, epoch: int, index: int, step: int = 0):
        self.seed, self.epoch, self.index, self.step = seed, epoch, index, step

    def next_step(self) -> StepKey:
        key = StepKey(self.seed, self.epoch, self.index, self.step)
        self.step += 1
        return key


class BatchKey(NamedTuple):
    """The randomness of one step for every row of a batch: the rows' element indices."""

    seed: int
    epoch: int
    indices: np.ndarray
    step: int

    def words(self, draws: int) -> np.ndarray:
        """(rows, draws, 2) words, looked up in the chunks `element_words` uses."""
        return rows_words(self.seed, self.epoch, self.indices, self.step, draws)


class BatchKeys:
    """Where the walks of a batch's rows stand (each row at the same step): `next_step()`."""

    __slots__ = ("seed", "epoch", "indices", "step")

    def __init__(self, seed: int, epoch: int, indices, step: int = 0):
        self.seed, self.epoch, self.step = seed, epoch, step
        self.indices = np.asarray(indices, dtype=np.int64)

    @classmethod
    def of(cls, keys: list[ElementKey]) -> BatchKeys:
        """The batch of these elements' keys, which must stand at the same step."""
        steps = {k.step for k in keys}
        if len(steps) != 1:
            raise ValueError(f"the rows' walks stand at different steps: {sorted(steps)}")
        return cls(keys[0].seed, keys[0].epoch, [k.index for k in keys], steps.pop())

    def next_step(self) -> BatchKey:
        key = BatchKey(self.seed, self.epoch, self.indices, self.step)
        self.step += 1
        return key


# --- conversions: words -> parameters, the same arithmetic in every framework ----------------


def below(y, n):
    """Integers in [0, n) from uint32 words: the multiply-high (y * n) >> 32 (n ≤ 2³²)."""
    return (np.asarray(y, dtype=np.uint64) * np.asarray(n, dtype=np.uint64)) >> np.uint64(32)


def bernoulli_threshold(p: float) -> int:
    """round(p * 2²⁴): a draw is a success when its top 24 bits are below it."""
    return int(round(p * (1 << 24)))


def bernoulli(y, p: float):
    return (np.asarray(y, dtype=U32) >> U32(8)) < U32(bernoulli_threshold(p))


def unit_float(y):
    """Uniform float32 in [0, 1) on a 2⁻²⁴ grid."""
    return (np.asarray(y, dtype=U32) >> U32(8)).astype(F32) * F32(2.0**-24)


def symmetric(y, bound: float):
    """Uniform float32 in [-bound, bound): an exact grid value in [-1, 1) times float32(bound)."""
    grid = (np.asarray(y, dtype=U32) >> U32(8)).astype(F32) * F32(2.0**-23) - F32(1.0)
    return grid * F32(bound)


@cache
def _aspect_table(low: float, high: float) -> np.ndarray:
    centres = (np.arange(ASPECT_TABLE_SIZE, dtype=np.float64) + 0.5) / ASPECT_TABLE_SIZE
    table = np.exp(np.log(low) + centres * (np.log(high) - np.log(low))).astype(F32)
    table.setflags(write=False)
    return table


def aspect_table(ratio) -> np.ndarray:
    """ASPECT_TABLE_SIZE float32 aspect ratios, log-uniform over `ratio` (bin centres)."""
    return _aspect_table(float(ratio[0]), float(ratio[1]))


def crop_area_bounds(height: int, width: int, scale) -> tuple[int, int]:
    """[low, high] of the integer target area of a random-resized crop."""
    area = height * width
    if area >= 1 << 24:
        raise ValueError(f"an image of {height}x{width} has too many pixels for exact float32")
    low = max(1, int(np.ceil(area * float(scale[0]))))
    return low, max(low, int(np.floor(area * float(scale[1]))))


def centre_crop_box(height: int, width: int, ratio) -> tuple[int, int, int, int]:
    """The fallback box when no try fits: the centre crop, its aspect clamped to `ratio`."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_boxes(words, height: int, width: int, scale, ratio) -> np.ndarray:
    """int64 (top, left, h, w) boxes of shape (..., 4) from words of shape (..., CROP_DRAWS, 2).

    Try t draws its target area from word 2t and its aspect from word 2t + 1; the first try whose
    box fits wins (torchvision's RandomResizedCrop: ten tries, then the centre crop); the last
    two words place the box.
    """
    y = np.asarray(words, dtype=U32)[..., 0]
    low, high = crop_area_bounds(height, width, scale)
    target = (low + below(y[..., 0 : 2 * CROP_TRIES : 2], high - low + 1)).astype(F32)
    aspect = aspect_table(ratio)[y[..., 1 : 2 * CROP_TRIES : 2] >> U32(32 - ASPECT_TABLE_BITS)]
    ws = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    hs = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = np.argmax(fits, axis=-1)[..., None]
    found = fits.any(axis=-1)
    c_top, c_left, c_h, c_w = centre_crop_box(height, width, ratio)
    h = np.where(found, np.take_along_axis(hs, first, -1)[..., 0], c_h)
    w = np.where(found, np.take_along_axis(ws, first, -1)[..., 0], c_w)
    top = np.where(found, below(y[..., 2 * CROP_TRIES], height - h + 1), c_top)
    left = np.where(found, below(y[..., 2 * CROP_TRIES + 1], width - w + 1), c_left)
    return np.stack([top, left, h, w], axis=-1).astype(np.int64)


@lru_cache(maxsize=256)
def _chunk_crop_boxes(seed, epoch, step, chunk, height, width, scale, ratio) -> np.ndarray:
    words = _chunk_words(seed, epoch, step, CROP_DRAWS, chunk)
    return crop_boxes(words, height, width, scale, ratio)


def element_crop_box(key: StepKey, height: int, width: int, scale, ratio) -> tuple[int, ...]:
    """One element's `crop_boxes` box, looked up in a chunk's boxes computed at once (a box
    alone costs about as much numpy work as a chunk's)."""
    chunk, row = divmod(key.index, CHUNK)
    boxes = _chunk_crop_boxes(
        key.seed, key.epoch, key.step, chunk, height, width, tuple(scale), tuple(ratio)
    )
    return tuple(int(v) for v in boxes[row])


@cache
def normal_table() -> np.ndarray:
    """2¹⁶ float32 standard-normal quantiles at the bin centres (j + 0.5) / 2¹⁶."""
    inv = NormalDist().inv_cdf
    n = 1 << NORMAL_TABLE_BITS
    table = np.array([inv((j + 0.5) / n) for j in range(n)], dtype=np.float64).astype(F32)
    table.setflags(write=False)
    return table


def normal_values(key: StepKey, size: int, std: float) -> np.ndarray:
    """`size` float32 N(0, std²) values for one element's step: value j from draw j // 2's word
    j % 2, as quantiles of `normal_table`."""
    draws = -(-size // 2)
    if draws > MAX_DRAWS:
        raise ValueError(f"{size} noise values exceed the {2 * MAX_DRAWS} a step can draw")
    y0, y1 = threefry2x32(
        key.seed & MASK32,
        key.epoch & MASK32,
        U32(key.index & MASK32),
        counter_word(key.step, np.arange(draws)),
    )
    y = np.stack([y0, y1], axis=-1).reshape(-1)[:size]
    return normal_table()[y >> U32(32 - NORMAL_TABLE_BITS)] * F32(std)
