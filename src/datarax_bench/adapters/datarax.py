"""Datarax: a `MemorySource` feeding a `datarax.Pipeline` of operators, batched and JIT-compiled.

Every catalog step is one Datarax operator (an `OperatorModule` subclass, the framework's
extension point): `generate_random_params` draws the step's random parameters for the batch's
records and `apply` transforms one element in JAX; Datarax vmaps it over the batch and the
pipeline compiles source gather + all operators into one XLA computation per batch (`for batch in
pipeline`, its recommended loop).

Its plain pipeline already is the vectorised one its design recommends (per-element operators
vmapped over the batch in one compiled computation), so the tuned style builds the same
pipeline: there is no per-element work left to move after batching.

Randomness is the reference's (`datarax_bench.workload.randomness`), computed inside the compiled
pipeline with JAX's own threefry: Datarax hands each operator the global indices of the batch's
records (their positions in the epoch, which this adapter starts at 0 every epoch), and a random
step draws Threefry-2x32-20 words keyed by (seed, epoch) at counter (index, walk step << 24 |
draw), converted with the reference's integer-first arithmetic (`_datarax_ops`). Datarax's own
per-record keys (`fold_in(base_key, index)`) are not used: no other framework computes them. So
random pipelines deliver the reference's batches bit for bit, but where XLA computes a float op
its own way: zscore's sums (added in another order) and log1p, a few units in the last place.

What Datarax cannot express: `pad_batch` (padding each batch to its own longest sequence is a
data-dependent shape, and a compiled pipeline has static shapes) and ragged fields in general.

`branch_merge` (PC-2) is built with Datarax's DAG API, `Pipeline.from_dag`: each branch is its own
chain of operator nodes reading the same predecessor, and a merge node (a plain `nnx.Module`,
the DAG node shape Datarax recommends) takes the branches' outputs as positional arguments and
averages the field. Every other workload stays a linear `Pipeline(stages=...)`.

Checkpoints use Datarax's iterator state (`PipelineIterator.get_state()`/`set_state()`: records
consumed and the RNG streams' counts, "for exact mid-epoch resume"), written as JSON, plus the
epoch that keys every draw.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datarax_bench.adapters import register
from datarax_bench.adapters._tensorflow import import_tensorflow
from datarax_bench.adapters.base import Adapter, Batch, CellContext, Loader
from datarax_bench.workload import formats, randomness, reference
from datarax_bench.workload.catalog import Workload

#: Ops the adapter implements in JAX with the reference semantics.
DATARAX_OPS = frozenset(reference.FIELD_OPS) | reference.STRUCTURE_OPS
#: Why an op is left out (anything else missing gets the generic reason).
UNSUPPORTED_REASONS = {
    "decode_jpeg": (
        "Datarax 0.1.4 has no JPEG decoder (its documentation and package show none), and its "
        "pipeline is compiled by XLA, which decodes no JPEG, with static shapes, while a "
        "file's bytes and its decoded size vary per element"
    ),
    "pad_batch": (
        "Datarax cannot express transform 'pad_batch' with the reference semantics: its "
        "pipeline is compiled with static shapes, and pad_batch pads each batch to that "
        "batch's longest sequence (a data-dependent shape)"
    ),
}
# Ids of this dtype do not fit JAX's default 32-bit types; hash_bucket reads only id mod 2**32.
_WIDE_INT = np.dtype(np.int64)


def _first_use(workload: Workload, name: str) -> str | None:
    for step in reference.flat_steps(workload.transforms):
        if step["field"] == name:
            return step["op"]
    return None


@functools.cache
def _operator_class():
    """The Datarax operator class, defined on first use so that importing this module is light."""
    import jax
    import jax.numpy as jnp
    from datarax.core.config import OperatorConfig
    from datarax.core.operator import OperatorModule, extract_batch_size
    from flax import nnx

    from datarax_bench.adapters._datarax_ops import JAX_OPS as jax_ops
    from datarax_bench.adapters._datarax_ops import BatchKey

    class CatalogStep(OperatorModule):
        """One catalog step on one element; random parameters drawn per record, the reference's.

        `walk_step` is the step's number in the element's walk (`reference.apply_step`), which
        with the seed, the epoch and the record's index keys its draws.
        """

        def __init__(self, step, embedding, *, seed: int, walk_step: int, rngs):
            random = step["op"] in reference.RANDOM_OPS
            config = OperatorConfig(stochastic=random, stream_name="augment" if random else None)
            # Datarax draws a stochastic operator's base key from `rngs`; these operators do not
            # use it (their draws are keyed by the record index, `generate_random_params`).
            super().__init__(config, rngs=rngs if random else None, name=f"{step['op']}")
            self.step = dict(step)
            self.embedding = nnx.data(None if embedding is None else jnp.asarray(embedding))
            self.seed = seed & reference.MASK32
            self.walk_step = walk_step
            if random:
                randomness.counter_word(walk_step, 0)  # a walk too long for the counter fails here
            # The epoch keys the draws; a plain Variable, set by the loader per epoch and carried
            # through Datarax's compiled iteration.
            self.epoch = nnx.Variable(jnp.zeros((), dtype=jnp.uint32))

        def generate_random_params(self, element_keys, data_shapes):
            """The records' parameters from their global indices, `element_keys` (shape
            (batch,)): the reference's draws for (seed, epoch, index, walk step), one row each."""
            if not self.stochastic:
                return None
            indices = jnp.asarray(element_keys, dtype=jnp.uint32)
            key = BatchKey(jnp.uint32(self.seed), self.epoch[...], indices, self.walk_step)
            sample = jax_ops[self.step["op"]][0]
            return sample(self.step, key, data_shapes[self.step["field"]][1:])

        def _vmap_apply(self, batch_data, batch_states, stats=None, global_indices=None):
            # Datarax folds each record's global index into its operator's base key
            # (`per_record_keys`), keys no other framework computes. The reference keys the same
            # index with the seed, the epoch and the step instead: a random step draws for the
            # batch's indices themselves, then applies per record under vmap as Datarax does.
            if not self.stochastic:
                return super()._vmap_apply(batch_data, batch_states, stats, global_indices)
            data_shapes = jax.tree.map(lambda x: x.shape, batch_data)
            if global_indices is None:  # Datarax's fallback when a batch has no positions
                global_indices = jnp.arange(extract_batch_size(data_shapes), dtype=jnp.uint32)
            params = self.generate_random_params(global_indices, data_shapes)

            def apply_one(data, record_params):
                return self.apply(data, None, None, record_params)[0]

            return jax.vmap(apply_one)(batch_data, params), batch_states

        def apply(self, data, state, metadata, random_params=None, stats=None):
            step, name = self.step, self.step["field"]
            out = dict(data)
            if step["op"] == "shift_targets":
                tokens = out.pop(name)
                out[step["inputs"]] = tokens[:-1]
                out[step["targets"]] = tokens[1:]
            elif step["op"] == "embedding_lookup":
                out[step["output"]] = jnp.take(self.embedding, out.pop(name), axis=0)
            else:
                out[name] = jax_ops[step["op"]][1](step, out[name], random_params)
            return out, state, metadata

    return CatalogStep


@functools.cache
def _merge_class():
    """The DAG node that merges branch outputs, defined on first use like the operator class."""
    import jax.numpy as jnp
    from flax import nnx

    from datarax_bench.adapters._datarax_ops import divided

    class MeanMerge(nnx.Module):
        """Merge node: the element-wise mean of one field over its branches' batches.

        Only the merged field differs between branches; every other field is taken from the
        first branch.
        """

        def __init__(self, field: str):
            self.field = field

        def __call__(self, *branches: dict) -> dict:
            values = [b[self.field].astype(jnp.float32) for b in branches]
            merged = divided(sum(values[1:], values[0]), jnp.float32(len(values)))
            return {**branches[0], self.field: merged}

    return MeanMerge


def _source_arrays(workload: Workload, dataset) -> dict[str, np.ndarray]:
    """The dataset's fields in memory, in types JAX holds without 64-bit mode."""
    arrays = {}
    for name, arr in dataset.dense.items():
        if arr.dtype == _WIDE_INT:
            # Only hash_bucket consumes 64-bit ids here (support() checks), and it reads id mod
            # 2**32 first: keep exactly those bits.
            arrays[name] = (np.asarray(arr) & reference.MASK32).astype(np.uint32)
        else:
            arrays[name] = np.ascontiguousarray(arr)
    return arrays


def _source(ctx: CellContext):
    """The Datarax source of the cell's records, and what it reads.

    The cached arrays go into a `MemorySource`; IO-1's TFDS dataset is read with Datarax's
    `from_tfds` (for a dataset this size its eager `TFDSEagerSource`: TFDS's `as_dataset` over
    the TFRecord files, every record loaded into JAX arrays at setup).
    """
    from datarax.sources import MemorySource, MemorySourceConfig
    from flax import nnx

    if ctx.workload.options.get("backend") == "tfds":
        from datarax.sources import from_tfds

        import_tensorflow()  # TFDS loads TensorFlow: keep it off the accelerators JAX uses
        source = from_tfds(
            formats.TFDS_NAME,
            formats.TFDS_SPLIT,
            data_dir=ctx.source.tfds_data_dir("tfrecord"),
            rngs=nnx.Rngs(ctx.seed),
        )
        paths = [ctx.source.tfds_builder_dir("tfrecord")]
        return source, {"reader": f"datarax from_tfds ({type(source).__name__})", "paths": paths}
    source = MemorySource(
        MemorySourceConfig(shuffle=False),
        _source_arrays(ctx.workload, ctx.dataset),
        rngs=nnx.Rngs(ctx.seed),
    )
    return source, {**formats.npy_source_info(ctx.dataset), "reader": "MemorySource"}


class DataraxLoader(Loader):
    def __init__(self, ctx: CellContext):
        import datarax
        import jax
        from flax import nnx

        w = ctx.workload
        self.num_batches = w.num_batches
        self._step_class = _operator_class()
        self._rngs = nnx.Rngs(augment=jax.random.key(ctx.seed))
        self._seed = ctx.seed
        # Numbers the operators' steps as the reference's walk does, in the order they are built.
        self._walk_steps = itertools.count()
        self.operators = []
        steps = reference.flat_steps(w.transforms)
        source, self.source_info = _source(ctx)
        if any(step["op"] == "branch_merge" for step in steps):
            nodes, edges, sink = self._dag(steps)
            self.pipeline = datarax.Pipeline.from_dag(
                source=source,
                nodes=nodes,
                edges=edges,
                sink=sink,
                batch_size=w.batch_size,
                rngs=nnx.Rngs(ctx.seed),
            )
        else:
            self.pipeline = datarax.Pipeline(
                source=source,
                stages=[self._operator(step) for step in steps],
                batch_size=w.batch_size,
                rngs=nnx.Rngs(ctx.seed),
            )
        self._jnp = jax.numpy
        self._iterator = None
        self._epoch = 0
        self._resumed: tuple[int, Any] | None = None  # (epoch, restored iterator) for epoch()
        self.parallelism = {
            "workers": 0,
            "threads": 0,
            "prefetch": 0,
            "mode": "jit",
            "execution": "one jax.jit step per batch (source gather + vmapped operators)",
            "source": "MemorySource, staged on the JAX device once per loader",
            "rng": f"reference {randomness.SCHEME} draws (JAX threefry)",
        }

    def _operator(self, step: dict[str, Any]):
        table = None
        if step["op"] == "embedding_lookup":
            table = reference.embedding_table(step["num_rows"], step["dim"], step["table_seed"])
        op = self._step_class(
            step, table, seed=self._seed, walk_step=next(self._walk_steps), rngs=self._rngs
        )
        self.operators.append(op)
        return op

    def _dag(self, steps: list[dict[str, Any]]) -> tuple[dict, dict, str]:
        """(nodes, edges, sink) for `Pipeline.from_dag`: each step a node after the previous one,
        each branch_merge a fan-out into its branches' operator chains and a merge node."""
        nodes: dict[str, Any] = {}
        edges: dict[str, list[str]] = {}
        last: list[str] = []  # predecessors of the next node; empty means the source batch

        def add(name: str, module, preds: list[str]) -> list[str]:
            nodes[name], edges[name] = module, list(preds)
            return [name]

        for i, step in enumerate(steps):
            if step["op"] != "branch_merge":
                last = add(f"step_{i}", self._operator(step), last)
                continue
            next(self._walk_steps)  # the merge's own step, before its branches' steps
            ends = []
            for b, branch in enumerate(step["branches"]):
                tip = last
                for j, sub in enumerate(
                    reference.flat_steps([{**s, "field": step["field"]} for s in branch])
                ):
                    tip = add(f"step_{i}_branch_{b}_{j}", self._operator(sub), tip)
                ends.extend(tip)
            last = add(f"step_{i}_merge", _merge_class()(step["field"]), ends)
        return nodes, edges, last[0]

    def epoch(self, epoch: int) -> Iterator[Batch]:
        first = 0
        if self._resumed is not None and self._resumed[0] == epoch:
            iterator = self._resumed[1]
            first = int(iterator.get_state()["position"]) // self.pipeline.batch_size
        else:
            self._set_epoch(epoch)
            iterator = iter(self.pipeline)
            # Every epoch reads the source from its first record (drop-remainder batches).
            state = iterator.get_state()
            iterator.set_state({**state, "position": 0})
        self._resumed = None
        self._iterator, self._epoch = iterator, epoch
        try:
            for _ in range(first, self.num_batches):
                yield next(iterator)
        finally:
            iterator.close()

    def save_state(self, directory: Path) -> None:
        state = self._iterator.get_state()
        iterator = {"position": int(state["position"]), "rng_counts": state["rng_counts"]}
        (directory / "state.json").write_text(
            json.dumps({"epoch": self._epoch, "iterator": iterator})
        )

    def restore_state(self, directory: Path) -> None:
        saved = json.loads((directory / "state.json").read_text())
        self._set_epoch(saved["epoch"])
        iterator = iter(self.pipeline)
        iterator.set_state(saved["iterator"])
        self._resumed = (saved["epoch"], iterator)

    def _set_epoch(self, epoch: int) -> None:
        for op in self.operators:
            op.epoch.set_value(self._jnp.asarray(epoch & reference.MASK32, dtype=self._jnp.uint32))

    def close(self) -> None:
        self.operators = []
        self.pipeline = None


@register
class Datarax(Adapter):
    id = "datarax"
    display_name = "Datarax"
    distributions = ("datarax", "jax", "flax")
    measure_reasons = {
        "streaming": "Datarax's MemorySource stages the whole dataset on the JAX device at setup: "
        "it has no lazy path from these files (IO-2 needs one)",
    }
    ops = DATARAX_OPS
    styles = frozenset({"plain", "tuned"})
    measures = Adapter.measures | {"checkpoint"}
    backends = frozenset({"memory", "tfds"})
    backend_reasons = {
        # Datarax 0.1.4 has file sources for these formats, but its own Pipeline cannot iterate
        # them (tests/adapters/test_datarax.py shows both failures against the installed
        # package, so that this reason is re-checked whenever Datarax is upgraded).
        "npy_mmap": "Datarax 0.1.4's .npy memory-map source (StreamingDiskSource) holds one "
        "array per source, and its Pipeline cannot iterate it: `for batch in pipeline` needs a "
        "get_batch it lacks, and the compiled step() leaks its memory map as a tracer",
        "array_record": "Datarax 0.1.4's ArrayRecordSourceModule yields raw record bytes, which "
        "its compiled pipeline cannot hold, and its Pipeline cannot iterate it: `for batch in "
        "pipeline` needs a get_batch it lacks, and step() needs a concrete start index",
        "tfrecord": "Datarax has no TFRecord source (it reads TFRecord through TFDS: the tfds "
        "variant)",
        "parquet": "Datarax 0.1.4 has no Parquet source (its HF sources reach Parquet only "
        "through Hugging Face datasets' load_dataset, which is not installed)",
    }

    def ops_support(self, workload: Workload) -> str | None:
        for op in workload.ops():
            if op in UNSUPPORTED_REASONS:
                return UNSUPPORTED_REASONS[op]
        reason = super().ops_support(workload)
        if reason:
            return reason
        for name, spec in workload.fields.items():
            if spec.ragged:
                return (
                    f"Datarax cannot hold ragged field {name!r} in its statically shaped pipeline"
                )
            if np.dtype(spec.dtype) == _WIDE_INT and _first_use(workload, name) != "hash_bucket":
                return (
                    f"Datarax (JAX without 64-bit mode) cannot hold int64 field {name!r} unchanged"
                )
        return None

    def open(self, ctx: CellContext) -> Loader:
        return DataraxLoader(ctx)
