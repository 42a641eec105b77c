"""Synthetic data: deterministic from (scenario, fields, element count, seed), cached once,
memory-mapped."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from datarax_bench.workload import data, reference
from datarax_bench.workload.catalog import load_catalog
from datarax_bench.workload.data import cache_key, materialize


def _workload(sid="CV-1", variant="small", size="tiny"):
    return load_catalog().get(sid).resolve(variant, size)


def test_same_inputs_give_byte_identical_data_in_separate_caches(tmp_path):
    a = materialize(_workload(), seed=0, root=tmp_path / "a")
    b = materialize(_workload(), seed=0, root=tmp_path / "b")
    assert a.generated and b.generated
    assert a.digest == b.digest
    for name in a.dense:
        np.testing.assert_array_equal(a.dense[name], b.dense[name])


def test_seed_and_variant_change_the_data(tmp_path):
    base = materialize(_workload(), seed=0, root=tmp_path)
    other_seed = materialize(_workload(), seed=1, root=tmp_path)
    other_size = materialize(_workload(size="full"), seed=0, root=tmp_path)
    assert len({base.digest, other_seed.digest, other_size.digest}) == 3
    assert cache_key(_workload(), 0) != cache_key(_workload(), 1)


def test_variants_that_change_only_the_measurement_read_the_same_records(tmp_path):
    """IO-1's backends (and IO-2's loadings, PC-1's depths) compare readers of one dataset."""
    io1 = [materialize(_workload("IO-1", v), seed=0, root=tmp_path) for v in ("memory", "tfds")]
    assert io1[0].directory == io1[1].directory and io1[0].digest == io1[1].digest
    assert not io1[1].generated
    pc1 = [materialize(_workload("PC-1", v), seed=0, root=tmp_path) for v in ("d1", "d50")]
    assert pc1[0].digest == pc1[1].digest
    # A variant with other dimensions is other data.
    imagenet = materialize(_workload("CV-1", "imagenet"), seed=0, root=tmp_path)
    assert imagenet.digest != materialize(_workload(), seed=0, root=tmp_path).digest


def test_a_dataset_pickles_its_memory_maps_by_file_name(tmp_path):
    """What a loader's worker process receives: file names to map again, not the bytes."""
    import pickle

    ds = materialize(_workload(), seed=0, root=tmp_path)
    shipped = pickle.dumps(ds)
    assert len(shipped) < 4096 < ds.dense["image"].nbytes
    back = pickle.loads(shipped)
    assert isinstance(back.dense["image"], np.memmap)
    np.testing.assert_array_equal(back[5]["image"], ds.element(5)["image"])
    in_memory = ds.load_into_memory()
    assert len(pickle.dumps(in_memory)) > in_memory.dense["image"].nbytes


def test_second_materialize_reuses_the_cache(tmp_path):
    first = materialize(_workload(), seed=0, root=tmp_path)
    second = materialize(_workload(), seed=0, root=tmp_path)
    assert first.generated and not second.generated
    assert second.directory == first.directory and second.digest == first.digest
    assert isinstance(second.dense["image"], np.memmap)
    assert not any(p.name.startswith(".tmp-") for p in first.directory.parent.iterdir())


def test_generated_values_follow_the_field_specs(tmp_path):
    w = _workload()
    ds = materialize(w, seed=0, root=tmp_path)
    image, label = ds.dense["image"], ds.dense["label"]
    assert image.shape == (w.num_elements, 20, 20, 3) and image.dtype == np.uint8
    assert label.shape == (w.num_elements,) and label.dtype == np.int32
    assert 0 <= label.min() and label.max() < 1000
    assert image.std() > 50, "uniform 0..255 bytes"
    volume = materialize(_workload("CV-2"), seed=0, root=tmp_path).dense["volume"]
    assert volume.dtype == np.int16
    assert abs(float(volume.mean()) - 40.0) < 30 and 250 < float(volume.std()) < 350


def test_ragged_fields_have_lengths_within_bounds(tmp_path):
    w = _workload("NLP-2")
    ds = materialize(w, seed=0, root=tmp_path)
    values, offsets = ds.ragged["tokens"]
    lengths = np.diff(offsets)
    assert len(lengths) == w.num_elements
    assert lengths.min() >= 2 and lengths.max() <= 40 and len(set(lengths.tolist())) > 5
    assert ds.element(3)["tokens"].shape == (lengths[3],)
    assert values.min() >= 1 and values.max() < 32000


def test_a_dataset_directory_without_meta_is_regenerated(tmp_path):
    w = _workload()
    ds = materialize(w, seed=0, root=tmp_path)
    (ds.directory / "meta.json").unlink()
    (ds.directory / "image.npy").write_bytes(b"garbage")
    again = materialize(w, seed=0, root=tmp_path)
    assert again.generated and again.digest == ds.digest
    assert again.dense["image"].shape == ds.dense["image"].shape


@pytest.mark.parametrize(
    "sid", ["CV-1", "CV-2", "CV-3", "NLP-1", "NLP-2", "TAB-1", "TAB-2", "PC-1"]
)
def test_every_throughput_scenario_materializes(sid, tmp_path):
    scenario = load_catalog().get(sid)
    ds = materialize(scenario.resolve(scenario.default_variants[0], "tiny"), 0, root=tmp_path)
    assert sorted(ds.field_names) == sorted(scenario.raw["fields"])


# --- JPEG files (CV-3) -------------------------------------------------------------------------


def _files(ds, name="image"):
    values, offsets = ds.ragged[name]
    return [bytes(values[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def test_jpeg_files_are_the_same_bytes_in_separate_caches_and_reused(tmp_path):
    """One encoder with fixed settings: the same files wherever the data is built, one blob
    with offsets, built once and then reused."""
    w = _workload("CV-3", "imagenet")
    a = materialize(w, seed=0, root=tmp_path / "a")
    b = materialize(w, seed=0, root=tmp_path / "b")
    assert a.generated and b.generated and a.digest == b.digest
    assert _files(a) == _files(b)
    again = materialize(w, seed=0, root=tmp_path / "a")
    assert not again.generated and again.directory == a.directory
    assert not any(p.name.startswith(".tmp-") for p in a.directory.parent.iterdir())
    meta = json.loads((a.directory / "meta.json").read_text())
    assert meta["data"]["jpeg_encoder"] == data.jpeg_encoder()
    assert meta["data"]["jpeg_encoder"]["library"].startswith("Pillow ")


def test_jpeg_files_are_baseline_jpegs_of_the_drawn_sizes(tmp_path):
    from PIL import Image

    w = _workload("CV-3", "imagenet")
    gen = w.fields["image"].generator
    files = _files(materialize(w, seed=0, root=tmp_path))
    assert len(files) == w.num_elements
    sizes = set()
    for f in files:
        assert f[:2] == b"\xff\xd8" and f[-2:] == b"\xff\xd9", "not a whole JPEG file"
        with Image.open(io.BytesIO(f)) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            # 4:2:0: the chroma planes sampled at half the luma's rate both ways.
            assert image.layer[0][1:3] == (2, 2) and image.layer[1][1:3] == (1, 1)
            width, height = image.size
        assert gen["min_side"] <= min(width, height) and max(width, height) <= gen["max_side"]
        sizes.add((height, width))
    assert len(sizes) > w.num_elements // 2, "sides are drawn per element"


def test_a_failed_jpeg_build_leaves_nothing_behind(tmp_path, monkeypatch):
    """The files appear whole or not at all: an encoder failing midway leaves no dataset (and
    no temporary directory), and the next build makes the complete one."""
    w = _workload("CV-3")
    calls = []
    encode = data.encode_jpeg

    def failing(pixels, quality):
        calls.append(1)
        if len(calls) == 10:
            raise RuntimeError("encoder failed")
        return encode(pixels, quality)

    monkeypatch.setattr(data, "encode_jpeg", failing)
    with pytest.raises(RuntimeError, match="encoder failed"):
        materialize(w, seed=0, root=tmp_path)
    scenario_dir = tmp_path / "data" / "CV-3"
    assert not any(scenario_dir.iterdir())
    monkeypatch.setattr(data, "encode_jpeg", encode)
    ds = materialize(w, seed=0, root=tmp_path)
    assert ds.generated and len(_files(ds)) == w.num_elements


def test_another_jpeg_encoder_is_other_data(monkeypatch):
    w = _workload("CV-3")
    key = cache_key(w, 0)
    monkeypatch.setattr(reference, "jpeg_library", lambda: "Pillow 0.0 (libjpeg 6b)")
    assert cache_key(w, 0) != key
