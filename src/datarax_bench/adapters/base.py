"""The one small interface every framework adapter implements.

An adapter declares what it can do (ops, measures) and builds a loader for one cell. The
measures (`measures/`, through the harness) do everything else: it times each batch from request to device-ready, delivering every field
with `jax.device_put` onto the profile's device, so the final work is the same for every adapter.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from datarax_bench.errors import UserError
from datarax_bench.provenance import package_versions
from datarax_bench.workload import reference
from datarax_bench.workload.catalog import STYLES, Profile, Workload
from datarax_bench.workload.data import Dataset
from datarax_bench.workload.formats import SourceFiles

Batch = Mapping[str, Any]


@dataclass
class CellContext:
    """Everything a loader needs to build its pipeline for one repetition."""

    workload: Workload
    dataset: Dataset
    profile: Profile
    seed: int
    #: IO-1: the files of the workload's source backend (`formats.prepare`); None otherwise.
    source: SourceFiles | None = None
    #: Settings over the profile's parallelism: a point of the tuned style's sweep, or its choice.
    parallelism_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def parallelism(self) -> dict[str, Any]:
        return {**self.profile.parallelism, **self.parallelism_overrides}


class Loader(ABC):
    """A built pipeline. `epoch(e)` yields the batches of epoch `e` (drop-remainder)."""

    #: The parallelism this loader really uses (workers, threads, autotune, ...), for the result.
    parallelism: dict[str, Any]
    #: What the loader reads: {"reader": the API, "paths": files or directories}. IO-1 reports
    #: it, with the size of those files on disk.
    source_info: dict[str, Any] | None = None

    @abstractmethod
    def epoch(self, epoch: int) -> Iterator[Batch]: ...

    def close(self) -> None:  # noqa: B027 - optional hook; most loaders hold nothing to release
        """Release workers, threads and files."""

    # Checkpointing (PR-1), for adapters that declare the "checkpoint" measure: both methods use
    # the framework's own state API and its own serialized form, written as files under
    # `directory` (their total size is the reported state size).

    def save_state(self, directory: Path) -> None:
        """Save the state after the batches yielded so far into the empty `directory`.

        Called between two batches of an epoch, its generator suspended; the loader then goes
        on yielding that epoch's batches as if nothing happened.
        """
        raise NotImplementedError(f"{type(self).__name__} has no state API")

    def restore_state(self, directory: Path) -> None:
        """Restore a state saved by `save_state` into this freshly opened loader.

        Called before any `epoch()`. The next `epoch(e)` call, for the epoch whose batch came
        next when the state was saved, yields from that batch to the end of the epoch.
        """
        raise NotImplementedError(f"{type(self).__name__} has no state API")


def _decoded(x, p, key):
    # The framework's own reader has decoded the JPEG already.
    return x


#: The reference's ops for a framework whose reader decodes JPEG files itself (WebDataset's
#: `decode`): the walk's decode step takes its pixels as they are, the step still counted, so
#: every later step draws as the reference's does.
DECODED_OPS = dataclasses.replace(
    reference.REFERENCE_OPS, fields={**reference.FIELD_OPS, "decode_jpeg": _decoded}
)


def jpeg_fields(fields: Mapping[str, Any]) -> frozenset[str]:
    """The fields of a workload that hold JPEG files (a `jpeg` generator's)."""
    return frozenset(name for name, spec in fields.items() if spec.generator["kind"] == "jpeg")


def apply_decoded(transforms, element: dict[str, Any], key) -> dict[str, Any]:
    """`reference.apply_element` of an element whose JPEG fields the framework decoded."""
    out = dict(element)
    for step in transforms:
        if step["op"] not in reference.BATCH_OPS:
            reference.apply_step(step, out, DECODED_OPS, key)
    return out


def worker_prefetch_grid(cores: int) -> list[dict[str, Any]]:
    """The tuned sweep of a loader with worker processes (PyTorch's DataLoader and those built
    on it): in-process, or one worker up to one per usable core, a short or a long prefetch."""
    cores = max(1, min(cores, os.cpu_count() or 1))
    points: list[dict[str, Any]] = [{"workers": 0, "prefetch": 2}]
    for workers in sorted({1, cores}):
        points += [{"workers": workers, "prefetch": p} for p in (2, 8)]
    return points


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, None where it is not installed."""
    return package_versions([name])[name]


def tensor_to_host(value: Any) -> Any:
    """A framework tensor with a `.numpy()` (torch, TF eager) as a NumPy array, without a copy
    where the framework allows; anything else through `np.asarray`."""
    numpy = getattr(value, "numpy", None)
    return numpy() if callable(numpy) else np.asarray(value)


class Adapter(ABC):
    #: Short id used in file names and on the command line.
    id: ClassVar[str]
    #: The name users know.
    display_name: ClassVar[str]
    #: Extra names accepted on the command line (case-insensitive).
    aliases: ClassVar[tuple[str, ...]] = ()
    #: pip distributions whose versions go into the result's provenance.
    distributions: ClassVar[tuple[str, ...]] = ()
    #: Catalog ops this adapter implements with the reference semantics.
    ops: ClassVar[frozenset[str]] = frozenset()
    #: Why an op outside `ops` is not implemented, where there is more to say than that the
    #: framework cannot express it (shown in the cell's `unsupported` reason).
    op_reasons: ClassVar[dict[str, str]] = {}
    #: Catalog measures needing a native API (checkpoint, streaming, ...) this adapter supports;
    #: the measures the harness performs alike for every loader need no declaration
    #: (`measures.Measure.any_adapter`), and which are supported is `measures.support`.
    measures: ClassVar[frozenset[str]] = frozenset({"throughput"})
    #: Why a measure outside `measures` is not supported, where there is more to say than
    #: "no native support" (shown in the cell's `unsupported` reason).
    measure_reasons: ClassVar[dict[str, str]] = {}
    #: IO-1 source backends (`formats.BACKENDS`) the adapter reads with its framework's own
    #: readers; `backend_reasons` says why another one is not, where there is more to say.
    backends: ClassVar[frozenset[str]] = frozenset()
    backend_reasons: ClassVar[dict[str, str]] = {}
    #: The pipeline styles the adapter builds (`STYLES`); `open` reads `self.style`.
    styles: ClassVar[frozenset[str]] = frozenset({"plain"})
    #: Ops (`reference.BATCHABLE_OPS`) the tuned style applies to whole batches.
    batch_ops: ClassVar[frozenset[str]] = frozenset()
    #: The style this instance builds; `styled` makes one for another style.
    style: str = "plain"

    def styled(self, style: str) -> Adapter:
        """This adapter building `style` pipelines (a copy; the registry's stays plain)."""
        if style not in STYLES:
            raise UserError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
        if style == self.style:
            return self
        other = copy.copy(self)
        other.style = style
        return other

    def batched_ops(self) -> frozenset[str]:
        """The ops this instance's pipelines apply to whole batches."""
        return self.batch_ops if self.style == "tuned" else frozenset()

    def tuning_grid(self, ctx: CellContext, cores: int) -> list[dict[str, Any]]:
        """The tuned style's sweep: settings over the profile's parallelism (keys `open` reads
        from `ctx.parallelism`) within `cores` usable cores. One point or none: nothing to tune."""
        return []

    def style_support(self) -> str | None:
        """Why the adapter cannot build its style, or None."""
        if self.style in self.styles:
            return None
        return f"{self.display_name} has no {self.style} pipeline style"

    def ops_support(self, workload: Workload) -> str | None:
        """Why the adapter cannot express one of the workload's transforms or hold its
        fields, or None."""
        for op in workload.ops():
            if op not in self.ops:
                return self.op_reasons.get(op) or (
                    f"{self.display_name} cannot express transform {op!r} with the reference semantics"
                )
        return None

    def own_source(self, workload: Workload, dataset: Dataset) -> SourceFiles:
        """IO-1: the files of the adapter's own format (`formats.OWN_FORMAT_BACKENDS`), as
        `prepare` wrote them before the measure; only adapters whose `backends` name one."""
        raise NotImplementedError(f"{self.display_name} writes no format of its own")

    def prepare(self, workload: Workload, dataset: Dataset) -> None:  # noqa: B027 - optional
        """Write what the framework reads and the cache is not (its own on-disk format), once,
        before anything is timed: the worker calls it between the data and the measure, so a
        one-off conversion is never counted as the loader's setup."""

    @abstractmethod
    def open(self, ctx: CellContext) -> Loader:
        """Build the pipeline (the timed setup of a repetition)."""

    def jpeg_decoder(self) -> str:
        """The JPEG decoder the adapter's `decode_jpeg` uses, with its library's version (in the
        result's provenance): the reference's own unless the framework documents another."""
        return f"PIL.Image.open, the reference's decode_jpeg ({reference.jpeg_library()})"

    def to_host(self, value: Any) -> Any:
        """What `jax.device_put` receives for one field; override for framework tensors."""
        return np.asarray(value)
