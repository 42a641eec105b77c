"""Deterministic synthetic data, materialised once into an on-disk cache of `.npy` files.

Data depend only on (scenario, variant, size, seed) and the catalog's field specs: every adapter
reads the same bytes, and a cell never pays for generation that an earlier cell already did.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import paths
from .catalog import FieldSpec, Workload

# Bump when generation changes, so that old caches are never mistaken for new data.
GENERATOR_VERSION = 1
_CHUNK_BYTES = 64 << 20


def _field_seed(seed: int, workload: Workload, field: str) -> list[int]:
    tag = hashlib.sha256(f"{workload.scenario}/{workload.variant}/{workload.size}/{field}".encode())
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


def _digest_files(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.glob("*.npy")):
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def cache_key(workload: Workload, seed: int) -> str:
    spec = {
        "generator_version": GENERATOR_VERSION,
        "scenario": workload.scenario,
        "variant": workload.variant,
        "size": workload.size,
        "seed": seed,
        "num_elements": workload.num_elements,
        "fields": {name: f.to_dict() for name, f in workload.fields.items()},
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@dataclass
class Dataset:
    """Memory-mapped arrays of one workload; ragged fields as (values, offsets)."""

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
    target = base / workload.scenario / f"{workload.variant}-{workload.size}" / key[:16]
    if (target / "meta.json").is_file():
        return _open(target, workload, generated=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temporary directory and rename: a reader never sees half a dataset,
    # and two processes generating the same key at once both end with one complete copy.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        for name, spec in workload.fields.items():
            field_seed = _field_seed(seed, workload, name)
            if spec.ragged:
                _write_ragged(tmp, spec, workload.num_elements, field_seed)
            else:
                _write_dense(tmp / f"{name}.npy", spec, workload.num_elements, field_seed)
        meta = {"key": key, "digest": _digest_files(tmp), "workload": workload.to_dict()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        if target.exists() and not (target / "meta.json").is_file():
            # Only a tampered cache has a dataset directory without its meta: rebuild it.
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _open(target, workload, generated=True)
