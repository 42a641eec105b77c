"""IO-1: the same records read from memory and from each native on-disk format.

The files themselves (formats.py): every backend holds the cached records byte for byte, built
once in a child process, atomically. The measurement (measures/sources.py) through the CLI: each
framework reads its backends natively, delivers the reference's first batch, and the result
names the reader and the on-disk size of exactly the files it read.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datarax_bench.adapters import all_adapters, get_adapter
from datarax_bench.errors import UserError
from datarax_bench.measures import support
from datarax_bench.measures.harness import batch_digest, drop_page_cache
from datarax_bench.results import load_result
from datarax_bench.workload import formats, reference
from datarax_bench.workload.catalog import load_catalog
from datarax_bench.workload.data import materialize


def _workload(backend: str):
    return load_catalog().get("IO-1").resolve(backend, "tiny")


def _dataset():
    return materialize(_workload("memory"), 0)


def _cached_records(dataset):
    return [{k: np.asarray(v) for k, v in dataset.element(i).items()} for i in range(len(dataset))]


def _assert_records_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert sorted(g) == sorted(w), i
        for name in w:
            value = np.asarray(g[name])
            assert value.dtype == w[name].dtype and value.shape == w[name].shape, (i, name)
            assert np.array_equal(value, w[name]), (i, name)


@pytest.mark.slow
def test_array_record_and_tfrecord_files_hold_the_cached_records_in_order():
    import tensorflow as tf
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    dataset = _dataset()
    want = _cached_records(dataset)
    source = formats.prepare(dataset, "array_record")
    (path,) = source.array_record_paths()
    with ArrayRecordDataSource([path]) as records:
        _assert_records_equal(
            [formats.unpickle_record(records[i]) for i in range(len(records))], want
        )

    source = formats.prepare(dataset, "tfrecord")
    fields = _workload("tfrecord").fields
    got = []
    for raw in tf.data.TFRecordDataset(source.tfrecord_paths()).as_numpy_iterator():
        feature = tf.train.Example.FromString(raw).features.feature
        got.append(
            {
                name: np.frombuffer(feature[name].bytes_list.value[0], spec.dtype).reshape(
                    spec.shape
                )
                for name, spec in fields.items()
            }
        )
    _assert_records_equal(got, want)
    assert source.meta["records"] == len(dataset) and source.meta["backend"] == "tfrecord"


def _parquet_records(path: str) -> tuple[list[int], list[dict]]:
    """A Parquet file's index column, and its rows decoded with the fields its metadata gives."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    fields = json.loads(table.schema.metadata[formats.PARQUET_FIELDS_KEY])
    assert [table.schema.field(name).type for name in fields] == ["binary"] * len(fields)
    records = [
        {
            name: np.frombuffer(row[name], np.dtype(f["dtype"])).reshape(f["shape"])
            for name, f in fields.items()
        }
        for row in table.to_pylist()
    ]
    return table.column(formats.PARQUET_INDEX).to_pylist(), records


@pytest.mark.slow
def test_the_parquet_file_holds_the_cached_records_in_order_with_their_index():
    dataset = _dataset()
    want = _cached_records(dataset)
    source = formats.prepare(dataset, "parquet")
    (path,) = source.parquet_paths()
    indices, got = _parquet_records(path)
    assert indices == list(range(len(dataset)))
    _assert_records_equal(got, want)
    assert source.meta["records"] == len(dataset) and source.meta["backend"] == "parquet"
    assert list(source.meta["files"]) == ["records.parquet"]
    assert source.meta["fields"] == {
        "image": {"dtype": "|u1", "shape": [8, 8, 3]},
        "label": {"dtype": "<i4", "shape": []},
    }
    assert source.meta["versions"]["pyarrow"]


def test_parquet_row_groups_split_the_records_and_keep_them_in_order(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    dataset = materialize(_workload("memory"), 0, root=tmp_path)
    monkeypatch.setattr(formats, "PARQUET_ROW_GROUP", 40)
    root = formats.build(dataset.directory, "parquet")  # in this process, with 40-row groups
    path = root / "records.parquet"
    row_groups = pq.ParquetFile(path).metadata
    sizes = [row_groups.row_group(i).num_rows for i in range(row_groups.num_row_groups)]
    assert sizes == [40, 40, 16]
    indices, got = _parquet_records(str(path))
    assert indices == list(range(len(dataset)))
    _assert_records_equal(got, _cached_records(dataset))


@pytest.mark.slow
def test_the_tfds_dataset_holds_the_cached_records_in_both_file_formats():
    import tensorflow_datasets as tfds

    dataset = _dataset()
    want = _cached_records(dataset)
    source = formats.prepare(dataset, "tfds")
    decode = formats.TfdsElement(_workload("tfds").fields)
    by_index = tfds.data_source(
        formats.TFDS_NAME,
        split=formats.TFDS_SPLIT,
        data_dir=source.tfds_data_dir("array_record"),
        download=False,
    )
    _assert_records_equal([decode(by_index[i]) for i in range(len(by_index))], want)
    builder = tfds.builder_from_directory(source.tfds_builder_dir("tfrecord"))
    assert builder.info.file_format.value == "tfrecord"
    in_order = builder.as_dataset(split=formats.TFDS_SPLIT, shuffle_files=False)
    _assert_records_equal(list(tfds.as_numpy(in_order)), want)
    assert source.meta["file_formats"] == ["tfrecord", "array_record"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "module", "distribution"),
    [("tfrecord", "tensorflow", "tensorflow"), ("parquet", "pyarrow.parquet", "pyarrow")],
)
def test_files_are_built_once_by_a_child_process(tmp_path, backend, module, distribution):
    """The writers' frameworks never load into the process that measures."""
    code = (
        "import sys; from datarax_bench.workload import formats; from datarax_bench.workload.catalog import "
        "load_catalog; from datarax_bench.workload.data import materialize; "
        f"ds = materialize(load_catalog().get('IO-1').resolve('{backend}', 'tiny'), 0); "
        f"s = formats.prepare(ds, '{backend}'); "
        f"print(s.meta['build_s'], '{module}' in sys.modules)"
    )
    env = {**os.environ, "DATARAX_BENCH_CACHE": str(tmp_path)}  # an empty cache: it must build
    first = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    build_s, imported = first.stdout.split()
    assert imported == "False"
    again = formats.prepare(materialize(_workload("memory"), 0, root=tmp_path), backend)
    assert again.meta["build_s"] == float(build_s), "the files were built a second time"
    assert again.meta["versions"][distribution]
    leftovers = [p.name for p in again.root.parent.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["array_record", "parquet"])
def test_two_processes_building_the_same_files_end_with_one_complete_copy(tmp_path, backend):
    dataset = materialize(_workload("memory"), 0, root=tmp_path)
    cmd = [sys.executable, "-m", "datarax_bench.workload.formats", str(dataset.directory), backend]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    root = formats.source_dir(dataset.directory, backend)
    assert sorted(p.name for p in root.parent.iterdir()) == [backend]
    source = formats.prepare(dataset, backend)
    assert source.meta["records"] == len(dataset)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [*source.meta["files"], formats.COMPLETE]
    )


@pytest.mark.slow
def test_a_failed_build_is_one_clear_error_and_leaves_nothing(tmp_path):
    dataset = materialize(_workload("memory"), 0, root=tmp_path)
    (dataset.directory / "image.npy").write_bytes(b"not an npy file")
    with pytest.raises(RuntimeError, match=r"^building the array_record files failed: \w+Error"):
        formats.prepare(dataset, "array_record")
    formats_dir = dataset.directory / "formats"
    assert not [p for p in formats_dir.rglob("*") if p.is_file()]
    usage = subprocess.run(
        [sys.executable, "-m", "datarax_bench.workload.formats", str(dataset.directory), "hdf5"],
        capture_output=True,
        text=True,
    )
    assert usage.returncode == 2 and "array_record,tfrecord,tfds,parquet" in usage.stderr


def test_each_adapter_claims_the_backends_its_framework_reads():
    claims = {
        a.id: [b for b in formats.BACKENDS if support(a, _workload(b)) is None]
        for a in all_adapters()
    }
    assert claims == {
        "numpy": ["memory", "npy_mmap"],
        "datarax": ["memory", "tfds"],
        "grain": ["memory", "npy_mmap", "array_record", "tfds"],
        "pytorch": ["memory", "npy_mmap", "tfds"],
        "spdl": ["memory", "npy_mmap"],  # its load function reads the cached arrays
        "tfdata": ["memory", "tfrecord", "tfds"],
        "webdataset": ["webdataset"],  # its own tar shards only
        "litdata": ["litdata"],  # its own chunks only
        # cached arrays, read_tfrecords, read_parquet
        "raydata": ["memory", "npy_mmap", "tfrecord", "parquet"],
    }
    assert "TFRecordIterDataset" in support(get_adapter("grain"), _workload("tfrecord"))
    assert "from_tensor_slices" in support(get_adapter("tfdata"), _workload("npy_mmap"))
    assert "SPDL has no reader" in support(get_adapter("spdl"), _workload("array_record"))
    assert "ArrayRecord" in support(get_adapter("raydata"), _workload("array_record"))
    # Grain and LitData ship Parquet readers of their own; why neither reads this backend.
    assert "ParquetIterDataset" in support(get_adapter("grain"), _workload("parquet"))
    assert "polars" in support(get_adapter("litdata"), _workload("parquet"))
    for adapter in all_adapters():
        if adapter.id != "raydata":
            assert "parquet" in adapter.backend_reasons, adapter.id


# --- the measurement, through the CLI ------------------------------------------------------


def _reference_first_batch_digest() -> str:
    w = _workload("memory")
    return batch_digest(reference.reference_batch(_dataset(), w.transforms, 0, 0, 0, w.batch_size))


def _run(run_smoke_cell, tmp_path, adapter, backend):
    out = tmp_path / f"{adapter}-{backend}.json"
    proc = run_smoke_cell("IO-1", adapter, out, timeout=300, variant=backend)
    assert proc.returncode == 0, proc.stderr
    return load_result(out), out


CELLS = [
    ("numpy", "memory"),
    ("numpy", "npy_mmap"),
    ("grain", "array_record"),
    ("tfdata", "tfrecord"),
    ("tfdata", "tfds"),
    ("datarax", "tfds"),
    ("pytorch", "tfds"),
    ("grain", "tfds"),
    ("spdl", "npy_mmap"),
    ("raydata", "npy_mmap"),
    ("raydata", "parquet"),
    ("webdataset", "webdataset"),
    ("litdata", "litdata"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("adapter", "backend"), CELLS, ids=["-".join(c) for c in CELLS])
def test_a_backend_delivers_the_reference_records_and_reports_what_it_read(
    run_smoke_cell, tmp_path, adapter, backend
):
    result, _ = _run(run_smoke_cell, tmp_path, adapter, backend)
    assert result["status"] == "ok", result["reason"]
    special = result["special"]
    assert special["backend"] == backend and special["records"] == len(_dataset())
    # The same records, whatever the format: the reference's first batch, bit for bit.
    assert result["statistics"]["first_batch_sha256"] == _reference_first_batch_digest()
    # Exactly the files this reader opened, with their real sizes.
    dataset = _dataset()
    root = (
        dataset.directory
        if backend in formats.NPY_BACKENDS
        else get_adapter(adapter).own_source(_workload(backend), dataset).root
        if backend in formats.OWN_FORMAT_BACKENDS
        else formats.source_dir(dataset.directory, backend)
    )
    assert special["bytes_on_disk"] == sum(special["files"].values())
    for name, size in special["files"].items():
        assert (root / name).stat().st_size == size, name
    if backend in formats.NPY_BACKENDS:
        assert sorted(special["files"]) == ["image.npy", "label.npy"]
        assert special["record_encoding"].startswith("NumPy .npy")
    elif backend == "webdataset":
        # One tar shard per batch, every one of them (96 elements, batches of 8), no marker.
        assert sorted(special["files"]) == [f"shard-{i:06d}.tar" for i in range(12)]
        assert special["record_encoding"].startswith("POSIX tar shards written by wds.TarWriter")
    elif backend == "litdata":
        # LitData's index and one chunk per batch; the benchmark's completion marker is no file
        # LitData reads.
        assert "index.json" in special["files"] and formats.COMPLETE not in special["files"]
        assert len([n for n in special["files"] if n.endswith(".bin")]) == 12
        assert special["record_encoding"].startswith("LitData chunks written by its BinaryWriter")
    elif backend == "tfds":
        # TFDS as_dataset reads its TFRecord copy; data_source its ArrayRecord copy.
        wanted = "array_record" if adapter in ("grain", "pytorch") else "tfrecord"
        assert {name.split("/")[0] for name in special["files"]} == {wanted}
        assert any(name.endswith(f".{wanted}-00000-of-00001") for name in special["files"])
    else:
        assert list(special["files"]) == [f"records.{backend}"]
        if backend == "parquet":
            assert special["record_encoding"].startswith("Parquet rows")
    reps = result["repetitions"]
    assert special["time_to_first_batch_s"] == [r["time_to_first_batch_s"] for r in reps]
    if backend == "memory":
        assert len(special["load_s"]) == len(reps) and special["load_s_median"] > 0
        assert special["reader"] == "arrays in memory"
    else:
        assert special["load_s"] is None
    assert special["reader"] == {
        "npy_mmap": "np.load(mmap_mode='r') memory maps",
        "array_record": "grain.sources.ArrayRecordDataSource",
        "tfrecord": "tf.data.TFRecordDataset + tf.io.parse_single_example",
        "webdataset": "webdataset tar shards (wds.tarfile_to_samples)",
        "litdata": "litdata chunks (litdata.StreamingDataset)",
        "parquet": "ray.data.read_parquet",
    }.get(backend, special["reader"])
    dropped, _ = drop_page_cache()
    assert special["page_cache"] == ("cold" if dropped else "warm")
    if backend not in formats.NPY_BACKENDS:
        assert special["build_s"] > 0


@pytest.mark.slow
def test_an_ok_source_backend_result_without_its_metrics_is_rejected(run_smoke_cell, tmp_path):
    result, path = _run(run_smoke_cell, tmp_path, "numpy", "npy_mmap")
    for key in ("bytes_on_disk", "reader", "files"):
        broken = copy.deepcopy(result)
        del broken["special"][key]
        path.write_text(json.dumps(broken))
        with pytest.raises(UserError, match=f"'{key}' is a required property"):
            load_result(path)
    broken = copy.deepcopy(result)
    del broken["special"]
    Path(path).write_text(json.dumps(broken))
    with pytest.raises(UserError, match="'special' is a required property"):
        load_result(path)


@pytest.mark.parametrize("scenario", ["IO-1", "NLP-2"])
def test_the_npy_reader_names_exactly_the_cache_files(scenario):
    """Built from the cache's layout without touching the disk; dense and ragged fields."""
    scenario = load_catalog().get(scenario)
    dataset = materialize(scenario.resolve(scenario.default_variants[0], "tiny"), 0)
    info = formats.npy_source_info(dataset)
    assert info["paths"] == sorted(dataset.directory.glob("*.npy"))
    assert info["reader"] == "np.load(mmap_mode='r') memory maps"
    assert formats.npy_source_info(dataset.load_into_memory())["reader"] == "arrays in memory"
