"""One cell's result document, whatever its status."""

from __future__ import annotations

import time
from typing import Any

from . import provenance
from .adapters.base import Adapter
from .catalog import Profile, Workload
from .results import SCHEMA_VERSION, utc_now


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
        "measure": workload.measure,
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
        "workload": workload.to_dict(),
        "settings": profile.settings(),
        **body,
        "provenance": provenance.collect(adapter.distributions),
        "timestamps": clock.stamps(),
    }
