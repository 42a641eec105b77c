"""The tuned styles' batch steps: which steps move to the batch, and that a batch step, random
ones included, delivers the per-element pipeline's bytes, drawing for every row with the row's
element index and the step's number in the plain walk."""

from __future__ import annotations

import numpy as np
import pytest

from datarax_bench.adapters import get_adapter
from datarax_bench.adapters.tfdata import TfData
from datarax_bench.measures.harness import batch_digest
from datarax_bench.run.cell import pipeline_steps
from datarax_bench.workload import reference as ref
from datarax_bench.workload.catalog import load_catalog
from datarax_bench.workload.data import materialize
from datarax_bench.workload.randomness import BatchKeys

NUMPY_BATCH_OPS = get_adapter("numpy").batch_ops
CATALOG = load_catalog()
TINY = [(sid, v) for sid, s in CATALOG.scenarios.items() for v in s.raw["variants"]]


def _workload(sid: str, variant: str):
    return CATALOG.get(sid).resolve(variant, "tiny")


def _ops(steps) -> list[str]:
    return [s["op"] for s in steps]


def _split(sid: str, variant: str, batch_ops) -> tuple[list[str], list[str]]:
    per_element, per_batch = ref.split_for_batches(_workload(sid, variant).transforms, batch_ops)
    return _ops(per_element), _ops(per_batch)


@pytest.mark.parametrize(
    "sid,variant,per_element,per_batch",
    [
        ("CV-1", "small", ["random_resized_crop"], ["random_horizontal_flip", "normalize"]),
        ("NLP-1", "small", [], ["random_window", "shift_targets"]),
        ("PR-2", "small", [], ["random_horizontal_flip", "random_brightness"]),
        ("CV-2", "small", ["random_crop_3d", "zscore"], []),
        ("PC-2", "small", ["branch_merge"], []),
        ("NLP-2", "small", ["truncate", "pad_batch"], []),
    ],
)
def test_numpy_split_moves_the_trailing_batchable_steps(sid, variant, per_element, per_batch):
    assert _split(sid, variant, NUMPY_BATCH_OPS) == (per_element, per_batch)


def test_a_chain_is_expanded_and_moves_whole_to_the_batch():
    per_element, per_batch = _split("PC-1", "d5", NUMPY_BATCH_OPS)
    assert per_element == []
    assert per_batch == ["multiply", "add", "random_brightness", "clip", "random_horizontal_flip"]
    assert len(_split("PC-1", "d50", NUMPY_BATCH_OPS)[1]) == 50


def test_nothing_moves_without_batch_ops_and_the_steps_come_back_as_given():
    w = _workload("PC-1", "d5")
    per_element, per_batch = ref.split_for_batches(w.transforms, frozenset())
    assert per_element == [dict(s) for s in w.transforms] and per_batch == []
    assert _ops(per_element) == ["chain"]


@pytest.mark.parametrize(
    "sid,variant,per_element,per_batch",
    [
        ("CV-1", "small", ["random_resized_crop"], ["random_horizontal_flip", "normalize"]),
        ("NLP-1", "small", [], ["random_window", "shift_targets"]),
        ("PR-2", "small", [], ["random_horizontal_flip", "random_brightness"]),
        (
            "PC-1",
            "d5",
            [],
            ["multiply", "add", "random_brightness", "clip", "random_horizontal_flip"],
        ),
        ("CV-2", "small", ["random_crop_3d", "zscore"], []),
        ("TAB-2", "small", ["log1p"], ["hash_bucket", "embedding_lookup"]),
    ],
)
def test_tfdata_moves_its_trailing_random_draws_but_log1p_stays(
    sid, variant, per_element, per_batch
):
    assert _split(sid, variant, TfData.batch_ops) == (per_element, per_batch)


def test_expanding_a_chain_leaves_a_keyed_walk_its_keys():
    """A walk that keys its steps by counting (`LeafOps.step_key`) gives each leaf step the key
    it had inside the chain: the chain itself takes none."""
    w = _workload("PC-1", "d5")
    seen: list[tuple[str, int]] = []

    def recording(op):
        return lambda x, step, key: seen.append((op, key)) or x

    counter = {"n": 0}

    def step_key(_):
        counter["n"] += 1
        return counter["n"]

    ops = ref.LeafOps(
        fields={op: recording(op) for op in ref.FIELD_OPS},
        embedding_lookup=lambda step, ids: ids,
        mean=lambda outputs: outputs[0],
        step_key=step_key,
    )
    for steps in (w.transforms, ref.flat_steps(w.transforms)):
        counter["n"] = 0
        element = {"image": np.zeros((2, 2, 3), np.float32)}
        for step in steps:
            ref.apply_step(step, element, ops, None)
    half = len(seen) // 2
    assert seen[:half] == seen[half:] and [k for _, k in seen[:half]] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("sid,variant", TINY, ids=[f"{s}-{v}" for s, v in TINY])
def test_the_batched_reference_is_the_reference(sid, variant):
    w = _workload(sid, variant)
    dataset = materialize(w, seed=0)
    for seed in (0, 1):
        for epoch in (0, 1):
            for b in range(min(3, w.num_batches)):
                want = ref.reference_batch(dataset, w.transforms, seed, epoch, b, w.batch_size)
                got = ref.batched_reference_batch(
                    dataset, w.transforms, seed, epoch, b, w.batch_size
                )
                assert batch_digest(got) == batch_digest(want), (seed, epoch, b)


def test_cv1_flip_draws_with_the_step_number_it_has_in_the_plain_walk():
    """Flipping with the keys of another step gives other batches: the batch step must draw
    with the step number the flip has in the plain walk (after the crop's)."""
    w = _workload("CV-1", "small")
    dataset = materialize(w, seed=0)
    per_element, per_batch = ref.split_for_batches(w.transforms, NUMPY_BATCH_OPS)
    assert _ops(per_element) == ["random_resized_crop"]
    assert ref.walk_length(per_element) == 1
    differs = 0
    for b in range(w.num_batches):
        want = ref.reference_batch(dataset, w.transforms, 0, 0, b, w.batch_size)
        got = ref.batched_reference_batch(dataset, w.transforms, 0, 0, b, w.batch_size)
        assert batch_digest(got) == batch_digest(want)
        indices = range(b * w.batch_size, (b + 1) * w.batch_size)
        cropped = ref.collate(
            per_element,
            [
                ref.apply_element(per_element, dataset.element(i), ref.element_key(0, 0, i))
                for i in indices
            ],
        )
        restarted = BatchKeys(0, 0, list(indices), step=0)
        wrong = ref.apply_batch_steps(per_batch, cropped, ref.REFERENCE_OPS, restarted)
        differs += batch_digest(wrong) != batch_digest(want)
    assert differs, "the crop's step number would have drawn the same flips: the check is blind"


def test_random_batch_steps_draw_one_value_per_row_in_batch_order():
    step = {"op": "random_window", "field": "tokens", "length": 4}
    tokens = np.arange(5 * 10).reshape(5, 10)
    keys = BatchKeys(3, 1, range(5))
    batch = ref.apply_batch_steps([step], {"tokens": tokens}, ref.REFERENCE_OPS, keys)
    starts = [int(ref.draw(step, ref.element_key(3, 1, i).next_step(), (10,))) for i in range(5)]
    np.testing.assert_array_equal(
        batch["tokens"], np.stack([tokens[i, s : s + 4] for i, s in enumerate(starts)])
    )
    assert len(set(starts)) > 1 and keys.step == 1


def test_a_random_batch_step_without_the_batch_keys_is_refused():
    step = {"op": "random_horizontal_flip", "field": "image", "p": 0.5}
    with pytest.raises(ValueError, match="batch's keys"):
        ref.apply_batch_step(step, {"image": np.zeros((2, 3, 3, 1))}, ref.REFERENCE_OPS, None)
    with pytest.raises(ValueError, match="whole batch"):
        ref.apply_batch_step(
            {"op": "gaussian_noise", "field": "image", "std": 1.0},
            {"image": np.zeros((2, 3, 3, 1))},
            ref.REFERENCE_OPS,
            BatchKeys(0, 0, range(2)),
        )


def test_taking_the_kept_keys_out_of_the_elements():
    keys = [ref.element_key(0, 0, i) for i in (4, 5, 6)]
    for key in keys:
        key.next_step()
    elements = [{"x": np.array([i]), ref.ELEMENT_KEY: k} for i, k in enumerate(keys)]
    rest, taken = ref.take_element_keys(elements)
    assert list(taken.indices) == [4, 5, 6] and taken.step == 1
    assert all(set(e) == {"x"} for e in rest)
    assert ref.take_element_keys(rest) == (rest, None)
    keys[0].next_step()
    with pytest.raises(ValueError, match="different steps"):
        ref.take_element_keys(elements)


TUNED_ADAPTERS = ["numpy", "grain", "pytorch", "tfdata", "webdataset", "spdl", "litdata"]


@pytest.mark.parametrize("adapter_id", TUNED_ADAPTERS)
def test_tuned_results_record_the_random_steps_per_batch(adapter_id):
    """What a result records is what the tuned pipeline does: the random steps move to the
    batch where nothing is left per element (PR-2), and with CV-1's crop left per element every
    step stays per element (`tuned_split`)."""
    adapter = get_adapter(adapter_id)
    cv1, pr2 = _workload("CV-1", "small"), _workload("PR-2", "small")
    assert pipeline_steps(adapter.styled("tuned"), cv1) == {
        "per_element": ["random_resized_crop", "random_horizontal_flip", "normalize"],
        "per_batch": [],
    }
    assert pipeline_steps(adapter.styled("tuned"), pr2)["per_batch"] == [
        "random_horizontal_flip",
        "random_brightness",
    ]
    assert pipeline_steps(adapter, cv1)["per_batch"] == []


@pytest.mark.parametrize(
    "sid,variant,batch_ops,per_element,per_batch",
    [
        (
            "CV-1",
            "small",
            NUMPY_BATCH_OPS,
            ["random_resized_crop", "random_horizontal_flip", "normalize"],
            [],
        ),
        ("TAB-2", "small", TfData.batch_ops, ["log1p", "hash_bucket", "embedding_lookup"], []),
        ("NLP-1", "small", TfData.batch_ops, [], ["random_window", "shift_targets"]),
        ("TAB-1", "small", NUMPY_BATCH_OPS, [], ["standardize"]),
    ],
)
def test_tuned_split_moves_steps_only_where_nothing_is_left_per_element(
    sid, variant, batch_ops, per_element, per_batch
):
    steps = ref.tuned_split(_workload(sid, variant).transforms, batch_ops)
    assert (_ops(steps[0]), _ops(steps[1])) == (per_element, per_batch)
