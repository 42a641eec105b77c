"""Reading a batch as slices of the cached arrays: the tuned styles' read where nothing is left to
do per element and every field is dense (NumPy, Grain, PyTorch, SPDL, Ray Data).

A batch of consecutive elements is one slice of each array. Where the first batch step is a
random window on a 2-D field (NLP-1), only the windows are read: each row's window is gathered
from the cached array through a strided window view (`numpy.lib.stride_tricks.
sliding_window_view`, one copy of the window's bytes per row), instead of reading whole rows and
gathering the windows from them afterwards. That is how token-stream loaders read their
training windows (nanoGPT's `get_batch`: `np.memmap`, then `data[i:i+block_size]` per row), and
gives the same bytes: the windows start where the reference's draws put them
(`reference.draw_window_start` of the rows' keys, the step's number in the plain walk).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from datarax_bench.workload import randomness, reference


def window_read(steps: Sequence[Mapping[str, Any]], dataset) -> bool:
    """Whether `sliced_batch` reads `steps`' first step (a random window) from the arrays."""
    if not steps or steps[0]["op"] != "random_window":
        return False
    array = dataset.dense.get(steps[0]["field"])
    return array is not None and array.ndim == 2


def sliced_batch(
    dataset, indices: np.ndarray, seed: int, epoch: int, steps: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, np.ndarray], randomness.BatchKeys, int]:
    """(the batch's fields read from `dataset`, the rows' keys, how many of `steps` the read
    already applied: 1 for a random window read as windows, else 0).

    `indices` are the rows' element indices, consecutive for a slice (any for a gather); the
    keys stand after the applied steps, for the rest of `steps` (`reference.apply_batch_steps`).
    """
    indices = np.asarray(indices, dtype=np.int64)
    keys = randomness.BatchKeys(seed, epoch, indices)
    first = int(indices[0])
    consecutive = len(indices) == int(indices[-1]) - first + 1
    picked = slice(first, first + len(indices)) if consecutive else indices
    if not window_read(steps, dataset):
        return {name: np.array(a[picked]) for name, a in dataset.dense.items()}, keys, 0
    step = steps[0]
    batch = {}
    for name, array in dataset.dense.items():
        if name != step["field"]:
            batch[name] = np.array(array[picked])
            continue
        starts = reference.draw_window_start(step, keys.next_step().words(1), array.shape[1:])
        windows = np.lib.stride_tricks.sliding_window_view(array, step["length"], axis=1)
        batch[name] = windows[indices, starts]
    return batch, keys, 1
