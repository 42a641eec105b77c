"""Deterministic synthetic data, materialised once into an on-disk cache of `.npy` files.

Data depend only on the scenario, its fields as resolved (shapes, dtypes, generators), the
element count and the seed: every adapter reads the same bytes, variants that differ in nothing
else (IO-1's backends, IO-2's loadings, PC-1's depths, DIST-1's device counts) read the same
records, and a cell never pays for generation that an earlier cell already did. A `jpeg` field
holds each element's JPEG file, encoded here from synthetic pixels by one encoder with fixed
settings (`JPEG_SETTINGS`), whose version is part of the data's identity.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datarax_bench import paths
from datarax_bench.files import atomic_directory
from datarax_bench.workload import reference
from datarax_bench.workload.catalog import FieldSpec, Workload

# Bump when generation changes, so that old caches are never mistaken for new data.
GENERATOR_VERSION = 2
_CHUNK_BYTES = 64 << 20
#: How every JPEG of the data is encoded: one encoder (Pillow, `reference.jpeg_library`) with
#: fixed settings (the field's quality, 4:2:0 chroma subsampling, baseline, standard Huffman
#: tables), so the same pixels give the same bytes wherever the pinned Pillow runs. The encoder
#: and these settings are part of the data's identity (`data_spec`).
JPEG_SETTINGS = {"subsampling": "4:2:0", "optimize": False, "progressive": False}
# The pixels a JPEG encodes: one random colour per JPEG_BLOCK² pixels, bilinearly interpolated,
# plus uniform noise of ±JPEG_NOISE: about 3 bits per pixel at quality 90, in the range of
# photographs (uniform noise alone, what JPEG compresses worst, takes about 7.5).
JPEG_BLOCK = 16
JPEG_NOISE = 12
# Bump when the JPEG pixels or settings change.
JPEG_VERSION = 1


def _field_seed(seed: int, workload: Workload, field: str) -> list[int]:
    tag = hashlib.sha256(f"{workload.scenario}/{field}".encode())
    return [seed, int.from_bytes(tag.digest()[:8], "little")]


def _draw(rng: np.random.Generator, gen: dict[str, Any], shape: tuple, dtype: str) -> np.ndarray:
    kind = gen["kind"]
    if kind in ("uniform_int", "ragged_int"):
        out = rng.integers(gen["low"], gen["high"], size=shape, dtype=np.int64)
    elif kind == "uniform":
        out = rng.uniform(gen["low"], gen["high"], size=shape)
    elif kind == "normal":
        out = rng.normal(gen["mean"], gen["std"], size=shape)
        if np.issubdtype(np.dtype(dtype), np.integer):
            info = np.iinfo(dtype)
            out = np.clip(np.rint(out), info.min, info.max)
    else:  # the catalog schema admits no other kind
        raise ValueError(f"unknown generator kind {kind!r}")
    return out.astype(dtype, copy=False)


def _write_dense(path: Path, spec: FieldSpec, n: int, seed: list[int]) -> None:
    shape = (n, *spec.shape)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=spec.dtype, shape=shape)
    per_element = max(1, int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize)
    chunk = max(1, _CHUNK_BYTES // per_element)
    for index, start in enumerate(range(0, n, chunk)):
        stop = min(n, start + chunk)
        rng = np.random.default_rng([*seed, index])
        out[start:stop] = _draw(rng, spec.generator, (stop - start, *spec.shape), spec.dtype)
    out.flush()
    del out


def _write_ragged(directory: Path, spec: FieldSpec, n: int, seed: list[int]) -> None:
    gen = spec.generator
    rng = np.random.default_rng(seed)
    # Lengths are inclusive of max_length; the fixed tail of the shape (if any) is per row.
    lengths = rng.integers(gen["min_length"], gen["max_length"] + 1, size=n, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tail = tuple(d for d in spec.shape if d is not None)
    values = _draw(rng, gen, (int(offsets[-1]), *tail), spec.dtype)
    np.save(directory / f"{spec.name}.values.npy", values)
    np.save(directory / f"{spec.name}.offsets.npy", offsets)


def jpeg_pixels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The (height, width, 3) uint8 pixels of one synthetic JPEG (`JPEG_BLOCK`, `JPEG_NOISE`)."""
    grid = (-(-height // JPEG_BLOCK) + 1, -(-width // JPEG_BLOCK) + 1, 3)
    smooth = reference.resize_bilinear(
        rng.integers(0, 256, size=grid, dtype=np.uint8), height, width
    )
    noise = rng.integers(-JPEG_NOISE, JPEG_NOISE + 1, size=(height, width, 3)).astype(np.float32)
    return np.clip(np.rint(smooth + noise), 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """`pixels` as a JPEG file, by the one encoder with the fixed settings (`JPEG_SETTINGS`)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality, **JPEG_SETTINGS)
    return out.getvalue()


def _write_jpeg(directory: Path, spec: FieldSpec, n: int, seed: list[int]) -> None:
    """Element i's JPEG bytes, its sides uniform in [min_side, max_side] (each drawn on its
    own), as one blob with offsets: a ragged uint8 field."""
    gen = spec.generator
    sides = np.random.default_rng(seed).integers(
        gen["min_side"], gen["max_side"] + 1, size=(n, 2), dtype=np.int64
    )
    offsets = np.zeros(n + 1, dtype=np.int64)
    blobs = []
    for i, (height, width) in enumerate(sides.tolist()):
        # Each element's pixels from a generator of its own: the same bytes however many are made.
        pixels = jpeg_pixels(np.random.default_rng([*seed, i]), height, width)
        blobs.append(np.frombuffer(encode_jpeg(pixels, gen["quality"]), dtype=np.uint8))
        offsets[i + 1] = offsets[i] + len(blobs[-1])
    values = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)
    np.save(directory / f"{spec.name}.values.npy", values)
    np.save(directory / f"{spec.name}.offsets.npy", offsets)


def jpeg_encoder() -> dict[str, Any]:
    """The encoder of the data's JPEGs and its fixed settings (part of the data's identity)."""
    return {"library": reference.jpeg_library(), **JPEG_SETTINGS, "version": JPEG_VERSION}


def _digest_files(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.glob("*.npy")):
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def data_spec(workload: Workload, seed: int) -> dict[str, Any]:
    """Everything the generated bytes depend on (and nothing else: not the variant's name)."""
    spec = {
        "generator_version": GENERATOR_VERSION,
        "scenario": workload.scenario,
        "seed": seed,
        "num_elements": workload.num_elements,
        "fields": {name: f.to_dict() for name, f in workload.fields.items()},
    }
    if any(f.generator["kind"] == "jpeg" for f in workload.fields.values()):
        # Another encoder version may encode the same pixels into other bytes.
        spec["jpeg_encoder"] = jpeg_encoder()
    return spec


def cache_key(workload: Workload, seed: int) -> str:
    return hashlib.sha256(
        json.dumps(data_spec(workload, seed), sort_keys=True).encode()
    ).hexdigest()


def _ship(array: np.ndarray) -> tuple[str, Any]:
    # A whole-file memory map (np.load with mmap_mode) has the mmap itself as its base; a view
    # into one, or an array in memory, travels by value.
    if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename:
        return ("npy", array.filename)
    return ("array", np.asarray(array))


def _unship(shipped: tuple[str, Any]) -> np.ndarray:
    kind, value = shipped
    return np.load(value, mmap_mode="r") if kind == "npy" else value


@dataclass
class Dataset:
    """Memory-mapped arrays of one workload; ragged fields as (values, offsets).

    A random-access source of elements (`len`, `dataset[i]`). Pickled for a loader's worker
    processes, memory-mapped files travel as their names and are mapped again on arrival;
    arrays held in memory travel as they are.
    """

    directory: Path
    num_elements: int
    dense: dict[str, np.ndarray]
    ragged: dict[str, tuple[np.ndarray, np.ndarray]]
    digest: str
    generated: bool

    @property
    def field_names(self) -> list[str]:
        return sorted([*self.dense, *self.ragged])

    def __len__(self) -> int:
        return self.num_elements

    def element(self, index: int) -> dict[str, np.ndarray]:
        """Element `index` as a dict of arrays (views into the memory map)."""
        out = {name: arr[index] for name, arr in self.dense.items()}
        for name, (values, offsets) in self.ragged.items():
            out[name] = values[offsets[index] : offsets[index + 1]]
        return out

    __getitem__ = element

    def rows(self, indices: list[int]) -> dict[str, np.ndarray]:
        """The dense fields of elements `indices`, stacked: one slice of each array where the
        indices are consecutive (the bytes of stacking the elements, read in one go)."""
        first = indices[0]
        if indices == list(range(first, first + len(indices))):
            picked: slice | list[int] = slice(first, first + len(indices))
        else:
            picked = indices
        return {name: np.array(arr[picked]) for name, arr in self.dense.items()}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["dense"] = {k: _ship(v) for k, v in self.dense.items()}
        state["ragged"] = {k: (_ship(v), _ship(o)) for k, (v, o) in self.ragged.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["dense"] = {k: _unship(v) for k, v in state["dense"].items()}
        state["ragged"] = {k: (_unship(v), _unship(o)) for k, (v, o) in state["ragged"].items()}
        self.__dict__.update(state)

    def load_into_memory(self) -> Dataset:
        """A copy with every array read into RAM (eager loading)."""
        return Dataset(
            directory=self.directory,
            num_elements=self.num_elements,
            dense={k: np.array(v) for k, v in self.dense.items()},
            ragged={k: (np.array(v), np.array(o)) for k, (v, o) in self.ragged.items()},
            digest=self.digest,
            generated=self.generated,
        )


def _open(directory: Path, workload: Workload, generated: bool) -> Dataset:
    meta = json.loads((directory / "meta.json").read_text())
    dense, ragged = {}, {}
    for name, spec in workload.fields.items():
        if spec.ragged:
            ragged[name] = (
                np.load(directory / f"{name}.values.npy", mmap_mode="r"),
                np.load(directory / f"{name}.offsets.npy", mmap_mode="r"),
            )
        else:
            dense[name] = np.load(directory / f"{name}.npy", mmap_mode="r")
    return Dataset(directory, workload.num_elements, dense, ragged, meta["digest"], generated)


def materialize(workload: Workload, seed: int, root: Path | None = None) -> Dataset:
    """Generate the workload's data into the cache unless it is already there; open it."""
    key = cache_key(workload, seed)
    base = Path(root or paths.cache_dir()) / "data"
    target = base / workload.scenario / key[:16]
    if (target / "meta.json").is_file():
        return _open(target, workload, generated=False)
    with atomic_directory(target, lambda d: (d / "meta.json").is_file()) as tmp:
        for name, spec in workload.fields.items():
            field_seed = _field_seed(seed, workload, name)
            if spec.generator["kind"] == "jpeg":
                _write_jpeg(tmp, spec, workload.num_elements, field_seed)
            elif spec.ragged:
                _write_ragged(tmp, spec, workload.num_elements, field_seed)
            else:
                _write_dense(tmp / f"{name}.npy", spec, workload.num_elements, field_seed)
        meta = {"key": key, "digest": _digest_files(tmp), "data": data_spec(workload, seed)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return _open(target, workload, generated=True)
