"""The reference's counter-based randomness: Threefry-2x32-20 pinned by its known answers, draws
that are pure functions of (seed, epoch, index, step, draw), and conversions whose values are
what their docstrings promise."""

from __future__ import annotations

import numpy as np
import pytest

from datarax_bench.workload import randomness as r
from datarax_bench.workload import reference as ref

# Random123's known-answer vectors for threefry2x32 with 20 rounds: (key, counter, result).
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize("key,counter,want", KNOWN_ANSWERS)
def test_threefry_gives_random123_known_answers(key, counter, want):
    got = r.threefry2x32(*key, np.uint32(counter[0]), np.uint32(counter[1]))
    assert tuple(int(v) for v in got) == want


def test_threefry_is_jax_s_own_function():
    from jax.extend.random import threefry2x32_p

    gen = np.random.default_rng(0)
    x0, x1 = (gen.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32) for _ in "ab")
    k0, k1 = np.full_like(x0, 7), np.full_like(x0, 0xDEADBEEF)
    want = threefry2x32_p.bind(k0, k1, x0, x1)
    got = r.threefry2x32(7, 0xDEADBEEF, x0, x1)
    np.testing.assert_array_equal(got[0], np.asarray(want[0]))
    np.testing.assert_array_equal(got[1], np.asarray(want[1]))


def test_an_element_s_words_are_its_batch_s_row_whatever_the_chunk():
    indices = np.array([0, 1, r.CHUNK - 1, r.CHUNK, 5 * r.CHUNK + 3])
    batch = r.batch_words(9, 2, indices, 4, 3)
    for row, index in enumerate(indices):
        np.testing.assert_array_equal(
            r.element_words(r.StepKey(9, 2, int(index), 4), 3), batch[row]
        )


def test_a_batch_s_rows_across_chunks_are_its_words():
    indices = np.array([3, r.CHUNK - 1, r.CHUNK, 3 * r.CHUNK + 2, 7], dtype=np.int64)
    np.testing.assert_array_equal(
        r.rows_words(9, 2, indices, 4, 3), r.batch_words(9, 2, indices, 4, 3)
    )
    np.testing.assert_array_equal(
        r.rows_words(9, 2, indices[:1], 4, 3), r.batch_words(9, 2, indices[:1], 4, 3)
    )


def test_every_coordinate_of_a_draw_changes_its_words():
    base = r.batch_words(1, 0, [5], 2, 2)[0]
    for other in (
        r.batch_words(2, 0, [5], 2, 2)[0],  # seed
        r.batch_words(1, 1, [5], 2, 2)[0],  # epoch
        r.batch_words(1, 0, [6], 2, 2)[0],  # index
        r.batch_words(1, 0, [5], 3, 2)[0],  # step
    ):
        assert not np.array_equal(base, other)
    assert not np.array_equal(base[0], base[1])  # draw


def test_steps_and_draws_outside_the_counter_are_refused():
    with pytest.raises(ValueError, match="step 256"):
        r.counter_word(r.MAX_STEPS, [0])
    with pytest.raises(ValueError, match="noise values exceed"):
        r.normal_values(r.StepKey(0, 0, 0, 0), 2 * r.MAX_DRAWS + 1, 1.0)


def test_keys_number_an_element_s_steps_and_a_batch_s_rows():
    key = r.ElementKey(3, 1, 7)
    assert [key.next_step().step for _ in range(3)] == [0, 1, 2]
    keys = r.BatchKeys.of([r.ElementKey(3, 1, i, step=2) for i in (4, 5)])
    step = keys.next_step()
    assert (step.step, list(step.indices), keys.step) == (2, [4, 5], 3)
    np.testing.assert_array_equal(step.words(1), r.batch_words(3, 1, [4, 5], 2, 1))


def test_below_is_the_multiply_high_and_covers_its_range():
    y = np.array([0, 1, 2**31, 2**32 - 1], dtype=np.uint32)
    assert r.below(y, 10).tolist() == [0, 0, 5, 9]
    words = r.batch_words(0, 0, np.arange(20000), 0, 1)[:, 0, 0]
    counts = np.bincount(r.below(words, 7).astype(np.int64), minlength=7)
    assert len(counts) == 7 and counts.min() > 20000 / 7 * 0.9


def test_bernoulli_unit_and_symmetric_draws_keep_their_ranges():
    words = r.batch_words(0, 0, np.arange(50000), 0, 1)[:, 0, 0]
    extremes = np.array([0, 2**32 - 1], dtype=np.uint32)
    assert r.bernoulli(extremes, 0.0).tolist() == [False, False]
    assert r.bernoulli(extremes, 1.0).tolist() == [True, True]
    assert abs(r.bernoulli(words, 0.25).mean() - 0.25) < 0.01
    u = r.unit_float(np.concatenate([words, extremes]))
    assert u.dtype == np.float32 and u.min() == 0.0 and u.max() < 1.0
    d = r.symmetric(np.concatenate([words, extremes]), 16.0)
    assert d.dtype == np.float32 and d.min() == -16.0 and d.max() < 16.0
    assert abs(float(d.mean())) < 0.2


def test_crop_boxes_fit_follow_scale_and_ratio_and_fall_back_to_the_centre():
    words = r.batch_words(0, 0, np.arange(4000), 0, r.CROP_DRAWS)
    boxes = r.crop_boxes(words, 64, 48, (0.08, 1.0), (3 / 4, 4 / 3))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (top + h <= 64).all() and (left >= 0).all()
    assert (left + w <= 48).all() and (h > 0).all() and (w > 0).all()
    area = h * w / (64 * 48)
    assert 0.07 < area.min() and area.max() <= 1.0 and len(np.unique(area)) > 100
    # No try of a square box over 3x the image fits: every box is the centre crop.
    centre = r.crop_boxes(words[:10], 10, 10, (3.0, 4.0), (1.0, 1.0))
    assert (centre == r.centre_crop_box(10, 10, (1.0, 1.0))).all()
    with pytest.raises(ValueError, match="too many pixels"):
        r.crop_boxes(words[:1], 4096, 4096, (0.5, 1.0), (1.0, 1.0))


def test_an_element_s_crop_box_is_its_row_of_the_batch_s_boxes():
    indices = np.array([0, 5, r.CHUNK + 1])
    boxes = r.crop_boxes(r.batch_words(4, 1, indices, 2, r.CROP_DRAWS), 40, 30, (0.1, 1), (0.5, 2))
    for row, index in enumerate(indices):
        key = r.StepKey(4, 1, int(index), 2)
        assert r.element_crop_box(key, 40, 30, [0.1, 1], [0.5, 2]) == tuple(boxes[row])


def test_normal_noise_has_the_stated_distribution_and_is_per_element():
    table = r.normal_table()
    assert table.dtype == np.float32 and len(table) == 1 << 16
    np.testing.assert_array_equal(table, -table[::-1])  # symmetric quantiles
    values = r.normal_values(r.StepKey(0, 0, 3, 1), 100001, 4.0)
    assert values.dtype == np.float32 and values.shape == (100001,)
    assert abs(values.mean()) < 0.05 and abs(values.std() - 4.0) < 0.05
    again = r.normal_values(r.StepKey(0, 0, 3, 1), 7, 4.0)
    np.testing.assert_array_equal(again, values[:7])  # value j depends on j only
    other = r.normal_values(r.StepKey(0, 0, 4, 1), 7, 4.0)
    assert not np.array_equal(other, again)


def test_a_workload_s_step_numbers_are_the_walk_s():
    steps = [
        {"op": "random_horizontal_flip", "field": "x", "p": 0.5},
        {"op": "chain", "field": "x", "depth": 3, "cycle": [{"op": "add", "value": 1.0}]},
        {"op": "branch_merge", "field": "x", "merge": "mean", "branches": [[{"op": "clip"}], []]},
        {"op": "pad_batch", "field": "x"},
    ]
    assert ref.walk_length(steps) == 1 + 3 + 2
    key = ref.element_key(0, 0, 0)
    element = {"x": np.zeros((2, 2, 1), np.float32)}
    ref.apply_step(steps[0], element, ref.REFERENCE_OPS, key)
    ref.apply_step(steps[1], element, ref.REFERENCE_OPS, key)
    assert key.step == ref.walk_length(steps[:2])
