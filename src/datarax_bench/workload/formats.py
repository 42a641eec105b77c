"""IO-1's source backends: the cached records written once in each native on-disk format.

==============  =========================================================================
backend         what a loader reads
==============  =========================================================================
memory          the `.npy` cache, read into RAM before each repetition (load timed apart)
npy_mmap        the `.npy` cache itself, memory-mapped
array_record    one ArrayRecord file (`group_size:1`, for random access); each record is
                the element's arrays pickled as a dict, as Grain's ArrayRecord tutorial
                writes them
tfrecord        one TFRecord file; each record a `tf.train.Example` holding every field's
                raw C-order bytes as a bytes feature (the TFRecord guide's way to store a
                tensor), decoded with `tf.io.decode_raw`
tfds            a TFDS dataset built here with `tfds.dataset_builders.store_as_tfds_dataset`
                (a `FeaturesDict` of `Tensor` features, arrays in the raw-bytes encoding TFDS
                recommends for them, element order kept), in both file formats TFDS reads:
                TFRecord for `as_dataset` (tf.data, Datarax's `from_tfds`) and ArrayRecord
                for `data_source` (Grain, PyTorch)
parquet         one Parquet file written with pyarrow (row groups of 1024 elements, in order),
                one row per element: an `index` column (the element's index, so a reader that
                draws per element can key its draws) and one binary column per field holding
                its raw C-order bytes, the encoding `ray.data.read_parquet` documents for
                tensors (`tensor_column_schema`); the fields' dtypes and shapes are in the
                file's schema metadata
==============  =========================================================================

Element `i` of every backend is element `i` of the cache, byte for byte, so every backend must
deliver the reference's batches exactly. Files are built once per dataset, in their own process
(`python -m datarax_bench.workload.formats DATASET_DIR BACKEND`): the writers import TensorFlow and TFDS,
which must not load into a measuring process that reads with another framework. Like the data
cache, a build goes to a temporary directory that is renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from datarax_bench.files import atomic_directory
from datarax_bench.workload.data import Dataset

BACKENDS = (
    "memory",
    "npy_mmap",
    "array_record",
    "tfrecord",
    "tfds",
    "parquet",
    "webdataset",
    "litdata",
)
#: Backends that read the `.npy` cache itself; the others have files of their own.
NPY_BACKENDS = frozenset({"memory", "npy_mmap"})
#: A loader's own format, written by its adapter with its framework's writer (one batch per
#: file, as that loader reads it everywhere: `Adapter.own_source`), not by this module.
OWN_FORMAT_BACKENDS = frozenset({"webdataset", "litdata"})
#: Bump when a writer changes, so that files of an old encoding are never read as new.
FORMAT_VERSION = 3
#: The TFDS dataset's name and version (its builder is ad hoc: nothing is registered).
TFDS_NAME = "datarax_bench_records"
TFDS_VERSION = "1.0.0"
TFDS_SPLIT = "train"
TFDS_FILE_FORMATS = ("tfrecord", "array_record")
#: The Parquet column of each row's element index, and the schema metadata key of the fields.
PARQUET_INDEX = "index"
PARQUET_FIELDS_KEY = b"datarax_bench.fields"
#: Rows per Parquet row group (the unit a Parquet reader reads, and Ray Data packs into blocks).
PARQUET_ROW_GROUP = 1024
#: The marker of a format written completely (atomic_directory's test), read by no loader.
COMPLETE = "complete.json"
_BUILD_TIMEOUT_S = 1800


@dataclass(frozen=True)
class SourceFiles:
    """Where one backend's files are; `meta` is what the build recorded (empty for `.npy`)."""

    backend: str
    root: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def array_record_paths(self) -> list[str]:
        return [str(self.root / "records.array_record")]

    def tfrecord_paths(self) -> list[str]:
        return [str(self.root / "records.tfrecord")]

    def parquet_paths(self) -> list[str]:
        return [str(self.root / "records.parquet")]

    def tfds_data_dir(self, file_format: str) -> str:
        """The TFDS `data_dir` holding the dataset in `file_format` (tfrecord, array_record)."""
        return str(self.root / file_format)

    def tfds_builder_dir(self, file_format: str) -> str:
        return str(Path(self.tfds_data_dir(file_format)) / TFDS_NAME / TFDS_VERSION)


def tfds_data_source(source: SourceFiles):
    """TFDS's random-access `data_source` over the dataset's ArrayRecord copy (the path TFDS
    documents for Grain and PyTorch), and the `source_info` of a loader that reads it."""
    import tensorflow_datasets as tfds

    records = tfds.data_source(
        TFDS_NAME,
        split=TFDS_SPLIT,
        data_dir=source.tfds_data_dir("array_record"),
        download=False,
    )
    info = {
        "reader": "tfds.data_source (ArrayRecord files)",
        "paths": [source.tfds_builder_dir("array_record")],
    }
    return records, info


def npy_source_info(dataset: Dataset) -> dict[str, Any]:
    """What a loader of the cached arrays reads (its `source_info`): memory maps or RAM.

    Built inside a loader's timed setup, so it only names files (the cache's layout, see
    `data.materialize`) and never touches the disk."""
    arrays = [*dataset.dense.values(), *(a for pair in dataset.ragged.values() for a in pair)]
    names = [f"{name}.npy" for name in dataset.dense]
    names += [f"{name}.{part}.npy" for name in dataset.ragged for part in ("values", "offsets")]
    return {
        "reader": "np.load(mmap_mode='r') memory maps"
        if any(isinstance(a, np.memmap) for a in arrays)
        else "arrays in memory",
        "paths": [dataset.directory / name for name in sorted(names)],
    }


def files_read(paths: list[str | Path]) -> list[Path]:
    """Every file under the given files and directories (what a reader opens), but the marker
    this benchmark writes when a format is complete, which no reader opens."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.name != COMPLETE))
        else:
            out.append(path)
    return out


def source_dir(dataset_dir: Path, backend: str) -> Path:
    return Path(dataset_dir) / "formats" / f"v{FORMAT_VERSION}" / backend


def is_prepared(dataset: Dataset, backend: str) -> bool:
    """Whether `prepare` finds the files built (not for a loader's own format, which its adapter
    writes: `OWN_FORMAT_BACKENDS`)."""
    return backend in NPY_BACKENDS or (source_dir(dataset.directory, backend) / COMPLETE).is_file()


def prepare(dataset: Dataset, backend: str) -> SourceFiles:
    """The backend's files for `dataset`, built (in a child process) unless already there."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown source backend {backend!r}; expected one of {BACKENDS}")
    if backend in OWN_FORMAT_BACKENDS:
        raise ValueError(f"the {backend} files are written by its adapter (Adapter.own_source)")
    if backend in NPY_BACKENDS:
        return SourceFiles(backend, dataset.directory)
    root = source_dir(dataset.directory, backend)
    if not is_prepared(dataset, backend):
        _build_in_child(dataset.directory, backend)
    return SourceFiles(backend, root, json.loads((root / COMPLETE).read_text()))


def _build_in_child(directory: Path, backend: str) -> None:
    # Writers are CPU work: keep TensorFlow off any accelerator the measuring process will use.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "datarax_bench.workload.formats", str(directory), backend]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=_BUILD_TIMEOUT_S,
    )
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        raise RuntimeError(f"building the {backend} files failed: {last}")


# --- record encodings, shared by writers and readers -------------------------------------------


def pickle_record(element: dict[str, np.ndarray]) -> bytes:
    # np.array, not np.ascontiguousarray: that one turns a scalar field into shape (1,).
    return pickle.dumps({name: np.array(value, order="C") for name, value in element.items()})


def unpickle_record(record: bytes) -> dict[str, np.ndarray]:
    """An ArrayRecord record back into the element's arrays."""
    return pickle.loads(record)


class DecodedRecords:
    """A random-access source whose elements pass through `decode` (picklable when both are)."""

    def __init__(self, source, decode):
        self.source = source
        self.decode = decode

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.decode(self.source[index])


class TfdsElement:
    """A TFDS `data_source` element with the catalog's dtypes (TFDS turns scalars into Python
    numbers). Picklable, for worker processes."""

    def __init__(self, fields: dict[str, Any]):
        self.dtypes = {name: np.dtype(spec.dtype) for name, spec in fields.items()}

    def __call__(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        return {name: np.asarray(element[name], dtype) for name, dtype in self.dtypes.items()}


# --- writers (run in the build process) --------------------------------------------------------


def _fields(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    fields = meta["data"]["fields"]
    ragged = [name for name, f in fields.items() if None in f["shape"]]
    if ragged:
        raise ValueError(f"source backends hold fixed-shape fields only; {ragged} are ragged")
    return fields


def _open_cache(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
    meta = json.loads((directory / "meta.json").read_text())
    fields = _fields(meta)
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in sorted(fields)}
    return arrays, fields, meta["data"]["num_elements"]


def _elements(arrays: dict[str, np.ndarray], n: int):
    for i in range(n):
        yield i, {name: np.asarray(arr[i]) for name, arr in arrays.items()}


def _write_array_record(target: Path, arrays, fields, n) -> dict[str, Any]:
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(target / "records.array_record"), "group_size:1")
    try:
        for _, element in _elements(arrays, n):
            writer.write(pickle_record(element))
    finally:
        writer.close()
    return {"encoding": "pickled dict of the element's NumPy arrays, one record per element"}


def _write_tfrecord(target: Path, arrays, fields, n) -> dict[str, Any]:
    import tensorflow as tf

    def feature(value: np.ndarray):
        raw = np.array(value, order="C").tobytes()
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[raw]))

    with tf.io.TFRecordWriter(str(target / "records.tfrecord")) as writer:
        for _, element in _elements(arrays, n):
            features = {name: feature(value) for name, value in element.items()}
            example = tf.train.Example(features=tf.train.Features(feature=features))
            writer.write(example.SerializeToString())
    return {
        "encoding": "tf.train.Example per element; each field its raw C-order bytes "
        "(a bytes feature, little-endian)",
    }


def _write_tfds(target: Path, arrays, fields, n) -> dict[str, Any]:
    import tensorflow_datasets as tfds

    # TFDS recommends raw-bytes encoding for tensors of higher dimension ("to save space on
    # disk"): its default upcasts integers to an int64 list. Scalars keep the default.
    features = tfds.features.FeaturesDict(
        {
            name: tfds.features.Tensor(
                shape=tuple(f["shape"]),
                dtype=np.dtype(f["dtype"]),
                encoding=tfds.features.Encoding.BYTES
                if f["shape"]
                else tfds.features.Encoding.NONE,
            )
            for name, f in sorted(fields.items())
        }
    )
    for file_format in TFDS_FILE_FORMATS:
        tfds.dataset_builders.store_as_tfds_dataset(
            name=TFDS_NAME,
            version=TFDS_VERSION,
            features=features,
            split_datasets={TFDS_SPLIT: _elements(arrays, n)},
            data_dir=str(target / file_format),
            description="datarax-bench synthetic records, in the order of the .npy cache.",
            file_format=file_format,
            # Keep element i at position i (TFDS otherwise shuffles examples by key).
            disable_shuffling=True,
        )
    return {
        "encoding": "TFDS FeaturesDict of Tensor features in serialized tf.train.Examples "
        "(arrays as raw bytes, scalars as int64)",
        "name": TFDS_NAME,
        "version": TFDS_VERSION,
        "split": TFDS_SPLIT,
        "file_formats": list(TFDS_FILE_FORMATS),
    }


def _parquet_rows(arrays, schema, start: int, stop: int):
    """Elements `start` to `stop` as a pyarrow table: their indices, each field's raw bytes."""
    import pyarrow as pa

    columns = {PARQUET_INDEX: pa.array(np.arange(start, stop, dtype=np.int64))}
    for name in schema.names[1:]:
        raw = [np.array(arrays[name][i], order="C").tobytes() for i in range(start, stop)]
        columns[name] = pa.array(raw, pa.binary())
    return pa.table(columns, schema=schema)


def _write_parquet(target: Path, arrays, fields, n) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Each field a binary column of its raw C-order bytes: the form `ray.data.read_parquet`
    # documents for tensors in Parquet ("serialized in the raw NumPy array format in C-contiguous
    # order (e.g., via arr.tobytes())", its `tensor_column_schema`). Ray's own tensor extension
    # type would take Ray to write; raw bytes hold every field (scalars too) exactly, any Parquet
    # reader reads them, and the TFRecord file holds the same bytes.
    if PARQUET_INDEX in fields:
        raise ValueError(f"a field may not be named {PARQUET_INDEX!r}: the index column is")
    described = {
        name: {"dtype": np.dtype(f["dtype"]).str, "shape": list(f["shape"])}
        for name, f in sorted(fields.items())
    }
    schema = pa.schema(
        [(PARQUET_INDEX, pa.int64()), *((name, pa.binary()) for name in described)],
        metadata={PARQUET_FIELDS_KEY: json.dumps(described).encode()},
    )
    # Uncompressed, as the other formats hold their bytes (the records are random numbers).
    with pq.ParquetWriter(str(target / "records.parquet"), schema, compression="none") as writer:
        for start in range(0, n, PARQUET_ROW_GROUP):
            stop = min(n, start + PARQUET_ROW_GROUP)
            rows = _parquet_rows(arrays, schema, start, stop)
            writer.write_table(rows, row_group_size=stop - start)
    return {
        "encoding": f"Parquet rows: an int64 {PARQUET_INDEX!r} column (the element index) and "
        "each field its raw C-order bytes in a binary column (little-endian), uncompressed",
        "fields": described,
        "row_group_size": PARQUET_ROW_GROUP,
    }


_WRITERS = {
    "array_record": (_write_array_record, ("array-record",)),
    "tfrecord": (_write_tfrecord, ("tensorflow",)),
    "tfds": (_write_tfds, ("tensorflow-datasets", "tensorflow", "array-record")),
    "parquet": (_write_parquet, ("pyarrow",)),
}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def build(directory: Path, backend: str) -> Path:
    """Write `backend`'s files for the cached dataset in `directory`; returns their root."""
    root = source_dir(directory, backend)
    if (root / COMPLETE).is_file():
        return root
    writer, distributions = _WRITERS[backend]
    arrays, fields, n = _open_cache(Path(directory))
    with atomic_directory(root, lambda d: (d / COMPLETE).is_file()) as tmp:
        start = time.perf_counter()
        described = writer(tmp, arrays, fields, n)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in files_read([tmp])}
        complete = {
            "format_version": FORMAT_VERSION,
            "backend": backend,
            "records": n,
            "build_s": time.perf_counter() - start,
            "versions": {d: _version(d) for d in distributions},
            "files": files,
            **described,
        }
        (tmp / COMPLETE).write_text(json.dumps(complete, indent=1, sort_keys=True))
    return root


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[1] not in _WRITERS:
        print(
            f"usage: python -m datarax_bench.workload.formats DATASET_DIR {{{','.join(_WRITERS)}}}",
            file=sys.stderr,
        )
        return 2
    build(Path(args[0]), args[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
