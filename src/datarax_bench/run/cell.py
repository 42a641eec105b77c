"""One cell (a profile, a workload, an adapter) and its result document, whatever its status."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from datarax_bench import provenance
from datarax_bench.adapters import get_adapter
from datarax_bench.adapters.base import Adapter
from datarax_bench.errors import UserError
from datarax_bench.results import SCHEMA_VERSION, cell_label, cell_path, utc_now
from datarax_bench.workload import data, reference
from datarax_bench.workload.catalog import Catalog, Profile, Workload


class CellId(NamedTuple):
    """A cell by name, as `run --cells`, managed shards and the workflow name it:
    `SCENARIO/VARIANT/ADAPTER/STYLE`. `parse` and `str()` are the one reading and writing."""

    scenario: str
    variant: str
    adapter: str
    style: str = "plain"

    def __str__(self) -> str:
        return "/".join(self)

    @classmethod
    def parse(cls, text: str) -> CellId:
        parts = str(text).split("/")
        if len(parts) != 4 or not all(parts):
            raise UserError(f"cell {text!r}: expected SCENARIO/VARIANT/ADAPTER/STYLE")
        return cls(*parts)

    def path(self, root: Path | str = "") -> Path:
        """Its result file under a results directory: raw/S/V/A.json, raw/S/V/A.STYLE.json."""
        return cell_path(Path(root), *self)


def matrix(
    profile: Profile,
    catalog: Catalog,
    scenarios: list[str] | None = None,
    adapters: list[str] | None = None,
    styles: list[str] | None = None,
) -> list[CellId]:
    """Every cell of a profile in the matrix's order: its (scenario, variant) pairs, narrowed to
    `scenarios`, x `adapters` (default: the profile's, else every registered one) x `styles`
    (default: the profile's). `run` measures these, the workflow plans them, managed jobs split
    them."""
    names = [get_adapter(a).id for a in adapters] if adapters else profile_adapters(profile)
    return [
        CellId(scenario, variant, adapter, style)
        for scenario, variant in profile.cells(catalog, scenarios or None)
        for adapter in names
        for style in styles or profile.styles
    ]


def profile_adapters(profile: Profile) -> list[str]:
    """The adapter ids a profile measures, in the registry's order: its `adapters`, or every
    registered adapter."""
    from datarax_bench.adapters import all_adapters

    registered = [a.id for a in all_adapters()]
    unknown = [a for a in profile.adapters if a not in registered]
    if unknown:
        raise UserError(
            f"profile {profile.name!r}: adapters: unknown adapter {unknown[0]!r}; "
            f"expected one of {', '.join(registered)}"
        )
    return [a for a in registered if not profile.adapters or a in profile.adapters]


def measured_with(profile: Profile, workload: Workload) -> dict[str, Any]:
    """What makes a kept result stale (the commit aside): the workload and the settings it was
    measured with. Results record both; `run --resume-dir`, managed shards and the workflow's
    rerun trigger (its `workload` and `settings` params) compare them."""
    return {"workload": workload.to_dict(), "settings": profile.settings(workload)}


@dataclass(frozen=True)
class Cell:
    profile: Profile
    workload: Workload
    adapter: Adapter

    @property
    def style(self) -> str:
        return self.adapter.style

    @property
    def label(self) -> str:
        w = self.workload
        return cell_label(w.scenario, w.variant, self.adapter.id, self.style)

    @property
    def id(self) -> CellId:
        w = self.workload
        return CellId(w.scenario, w.variant, self.adapter.id, self.style)


def resolve_cell(
    profile: Profile,
    catalog: Catalog,
    scenario: str,
    variant: str,
    adapter: str,
    style: str = "plain",
) -> Cell:
    workload = catalog.get(scenario).resolve(variant, profile.size)
    return Cell(profile, workload, get_adapter(adapter).styled(style))


class CellClock:
    """Start and end timestamps of one cell."""

    def __init__(self):
        self.started = utc_now()
        self._t0 = time.monotonic()

    def stamps(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "finished": utc_now(),
            "duration_s": time.monotonic() - self._t0,
        }


def cell_identity(profile: Profile, workload: Workload, adapter: Adapter) -> dict[str, str]:
    return {
        "profile": profile.name,
        "scenario": workload.scenario,
        "scenario_name": workload.scenario_name,
        "variant": workload.variant,
        "size": workload.size,
        "adapter": adapter.id,
        "adapter_name": adapter.display_name,
        "style": adapter.style,
        "measure": workload.measure,
    }


def pipeline_steps(adapter: Adapter, workload: Workload) -> dict[str, list[str]]:
    """Which of the workload's steps the adapter's style applies per element and per batch."""
    per_element, per_batch = reference.tuned_split(workload.transforms, adapter.batched_ops())
    return {
        "per_element": [s["op"] for s in per_element],
        "per_batch": [s["op"] for s in per_batch],
    }


def make_result(
    status: str,
    reason: str | None,
    profile: Profile,
    workload: Workload,
    adapter: Adapter,
    clock: CellClock,
    **body: Any,
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "reason": reason,
        "cell": cell_identity(profile, workload, adapter),
        "pipeline": pipeline_steps(adapter, workload),
        **measured_with(profile, workload),
        **body,
        "provenance": result_provenance(workload, adapter),
        "timestamps": clock.stamps(),
    }


def result_provenance(workload: Workload, adapter: Adapter) -> dict[str, Any]:
    """The result's provenance; with decoded JPEG files, their encoder and the adapter's decoder."""
    out = provenance.collect(adapter.distributions)
    decodes = reference.DECODE_OPS & set(workload.ops())
    if decodes and decodes <= adapter.ops:
        out["jpeg"] = {"encoder": data.jpeg_encoder(), "decoder": adapter.jpeg_decoder()}
    return out
