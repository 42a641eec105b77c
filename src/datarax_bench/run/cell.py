"""One cell (a profile, a workload, an adapter) and its result document, whatever its status."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from datarax_bench import provenance
from datarax_bench.adapters import get_adapter
from datarax_bench.adapters.base import Adapter
from datarax_bench.results import SCHEMA_VERSION, cell_label, utc_now
from datarax_bench.workload import reference
from datarax_bench.workload.catalog import Catalog, Profile, Workload


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
    per_element, per_batch = reference.split_for_batches(workload.transforms, adapter.batched_ops())
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
        "workload": workload.to_dict(),
        "settings": profile.settings(workload),
        **body,
        "provenance": provenance.collect(adapter.distributions),
        "timestamps": clock.stamps(),
    }
