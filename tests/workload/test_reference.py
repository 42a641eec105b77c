"""The reference semantics: shapes, dtypes, parameter effects and per-element determinism."""

from __future__ import annotations

import numpy as np
import pytest

from datarax_bench.workload import reference as ref
from datarax_bench.workload.catalog import load_catalog
from datarax_bench.workload.data import materialize


def _batch(sid, variant=None, seed=0, epoch=0, index=0, size="tiny"):
    scenario = load_catalog().get(sid)
    w = scenario.resolve(variant or scenario.default_variants[0], size)
    ds = materialize(w, seed=0)
    return ref.reference_batch(ds, w.transforms, seed, epoch, index, w.batch_size), w, ds


def test_cv1_batch_shapes_dtypes_and_normalisation():
    batch, w, _ = _batch("CV-1")
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (w.batch_size, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    # Uniform bytes normalised with ImageNet statistics are centred near 0.2 with a spread
    # near 1.3 before resizing; bilinear upsampling of small crops smooths that spread.
    pixels = np.concatenate([_batch("CV-1", index=i)[0]["image"].ravel() for i in range(4)])
    assert -0.1 < pixels.mean() < 0.5 and 0.6 < pixels.std() < 1.4


def test_same_seed_same_batch_other_seed_or_epoch_differs():
    a, _, _ = _batch("CV-1", seed=3)
    b, _, _ = _batch("CV-1", seed=3)
    c, _, _ = _batch("CV-1", seed=4)
    d, _, _ = _batch("CV-1", seed=3, epoch=1)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["image"], d["image"])
    np.testing.assert_array_equal(a["label"], c["label"])  # labels are not transformed


def test_randomness_is_per_element_not_per_batch():
    keys = [ref.element_key(0, 0, i).next_step() for i in range(64)]
    x = np.arange(4).reshape(1, 4, 1)
    flips = [
        ref._random_horizontal_flip(x, {"op": "random_horizontal_flip", "p": 0.5}, k) for k in keys
    ]
    flipped = sum(int(f[0, 0, 0] == 3) for f in flips)
    assert 16 < flipped < 48


def test_flip_probability_parameter_is_honoured():
    x = np.arange(6, dtype=np.float32).reshape(1, 6, 1)
    keys = [ref.element_key(0, 0, i).next_step() for i in range(50)]
    flip = {"op": "random_horizontal_flip"}
    never = [ref._random_horizontal_flip(x, {**flip, "p": 0.0}, k) for k in keys]
    always = [ref._random_horizontal_flip(x, {**flip, "p": 1.0}, k) for k in keys]
    assert all(np.array_equal(v, x) for v in never)
    assert all(np.array_equal(v, x[:, ::-1]) for v in always)


def test_resized_crop_box_respects_scale_and_ratio():
    areas, ratios = [], []
    for i in range(300):
        step = {"scale": (0.2, 0.5), "ratio": (0.75, 4 / 3)}
        top, left, h, w = ref.resized_crop_box(
            step, ref.element_key(0, 0, i).next_step(), (100, 100)
        )
        assert 0 <= top <= 100 - h and 0 <= left <= 100 - w
        areas.append(h * w / 10000)
        ratios.append(w / h)
    assert 0.18 < min(areas) and max(areas) < 0.53
    assert 0.7 < min(ratios) and max(ratios) < 1.4


def test_bilinear_resize_matches_known_values():
    img = np.array([[0.0, 10.0], [20.0, 30.0]], dtype=np.float32)[:, :, None]
    same = ref.resize_bilinear(img, 2, 2)
    np.testing.assert_allclose(same, img)
    up = ref.resize_bilinear(img, 4, 4)[:, :, 0]
    # half-pixel centres: the first output pixel maps to -0.25, clamped to the corner
    assert up[0, 0] == pytest.approx(0.0) and up[-1, -1] == pytest.approx(30.0)
    # output pixel 1 samples source position 0.25 on both axes
    assert up[1, 1] == pytest.approx(0.75 * 0.25 * 10 + 0.25 * 0.75 * 20 + 0.25 * 0.25 * 30)
    constant = np.full((7, 5, 3), 42, dtype=np.uint8)
    np.testing.assert_allclose(ref.resize_bilinear(constant, 3, 9), 42.0)


def test_cv2_crop_then_zscore():
    batch, w, _ = _batch("CV-2")
    vol = batch["volume"]
    assert vol.shape == (w.batch_size, 8, 8, 8, 1) and vol.dtype == np.float32
    for v in vol:
        assert abs(float(v.mean())) < 1e-4 and abs(float(v.std()) - 1) < 1e-3


def test_nlp1_window_and_shift():
    batch, w, ds = _batch("NLP-1")
    assert set(batch) == {"input_ids", "targets"}
    assert batch["input_ids"].shape == (w.batch_size, 32)
    np.testing.assert_array_equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])
    doc = np.asarray(ds.dense["tokens"][0])
    row = np.concatenate([batch["input_ids"][0], batch["targets"][0, -1:]])
    starts = [s for s in range(len(doc) - 32) if np.array_equal(doc[s : s + 33], row)]
    assert starts, "the window is a contiguous slice of the document"


def test_nlp2_pads_to_bucket_multiple_with_mask():
    batch, w, ds = _batch("NLP-2")
    tokens, mask = batch["tokens"], batch["attention_mask"]
    assert tokens.shape == mask.shape and tokens.shape[1] % 8 == 0
    lengths = np.diff(ds.ragged["tokens"][1])[: w.batch_size]
    np.testing.assert_array_equal(mask.sum(axis=1), np.minimum(lengths, 40))
    assert tokens.shape[1] - lengths.max() < 8
    assert (tokens[mask == 0] == 0).all() and (tokens[mask == 1] > 0).all()


def test_tab1_standardize_uses_stated_statistics():
    batch, _, ds = _batch("TAB-1")
    raw = np.asarray(ds.dense["features"][: len(batch["features"])])
    np.testing.assert_allclose(batch["features"], (raw - 5.0) / 2.0, rtol=1e-6)


def test_tab2_hash_and_embedding_gather():
    batch, w, ds = _batch("TAB-2")
    assert set(batch) == {"dense", "embeddings", "label"}
    assert batch["embeddings"].shape == (w.batch_size, 6, 4)
    raw = np.asarray(ds.dense["categorical"][: w.batch_size])
    buckets = ref.hash_ids(raw, 97)
    assert buckets.min() >= 0 and buckets.max() < 97
    table = ref.embedding_table(97, 4, 7)
    np.testing.assert_array_equal(batch["embeddings"], table[buckets])
    np.testing.assert_allclose(
        batch["dense"], np.log1p(np.asarray(ds.dense["dense"][: w.batch_size])), rtol=1e-6
    )


def test_hash_is_stable_and_spreads():
    ids = np.arange(0, 4_000_000_000, 40_000_000, dtype=np.int64)
    buckets = ref.hash_ids(ids, 97)
    np.testing.assert_array_equal(buckets, ref.hash_ids(ids.copy(), 97))
    assert len(set(buckets.tolist())) > 50


def test_pc1_depth_changes_the_output_and_keeps_range():
    d1, _, _ = _batch("PC-1", "d1")
    d5, _, _ = _batch("PC-1", "d5")
    assert not np.allclose(d1["image"], d5["image"])
    assert d5["image"].min() >= 0.0 and d5["image"].max() <= 255.0
    assert d1["image"].dtype == np.float32


def test_every_catalog_op_has_a_reference_implementation():
    catalog = load_catalog()
    used = {op for s in catalog.scenarios.values() for op in s.resolve(s.variants[0]).ops()}
    assert used <= ref.ALL_OPS


def test_decode_jpeg_is_pillows_decode_of_the_file():
    import io

    from PIL import Image

    from datarax_bench.workload.data import JPEG_NOISE, encode_jpeg, jpeg_pixels

    pixels = jpeg_pixels(np.random.default_rng(0), 37, 53)
    file = encode_jpeg(pixels, 90)
    decoded = ref.FIELD_OPS["decode_jpeg"](np.frombuffer(file, np.uint8), {}, None)
    assert decoded.shape == (37, 53, 3) and decoded.dtype == np.uint8
    with Image.open(io.BytesIO(file)) as image:
        np.testing.assert_array_equal(decoded, np.asarray(image.convert("RGB")))
    # Lossy, but the same picture: what quality 90 loses on average is less than the pixels'
    # added noise.
    error = np.abs(decoded.astype(int) - pixels).mean()
    assert 0 < error < JPEG_NOISE, error


def test_cv3_decodes_then_crops_flips_and_normalises_images_of_any_size():
    batch, w, ds = _batch("CV-3", "imagenet")
    crop = w.transforms[1]["size"]
    assert batch["image"].shape == (w.batch_size, *crop, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    sides = {ref.FIELD_OPS["decode_jpeg"](ds.element(i)["image"], {}, None).shape for i in range(8)}
    assert len(sides) > 1, "the source images differ in size"
    assert -2.5 < batch["image"].mean() < 2.5 and batch["image"].std() > 0.3
    # The crop's draws follow the decode's step: the same element, the same batch.
    again, _, _ = _batch("CV-3", "imagenet")
    np.testing.assert_array_equal(batch["image"], again["image"])
