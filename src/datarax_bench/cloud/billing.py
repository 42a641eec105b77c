"""What a cluster costs: the ledger of launches and teardowns, the bill (only a verified absence
ends billed time), the run-length estimate checked against `max_cluster_hours`."""

from __future__ import annotations

import fcntl
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datarax_bench.cloud.sky import SkyTimeout, json_records, run_sky
from datarax_bench.errors import UserError
from datarax_bench.results import utc_now

#: Stated estimates, not measurements on a cloud: what one remote call costs beyond its cells'
#: worker processes (a real `sky exec` round trip, 15-30 s, with the workdir sync and the pull:
#: the upper end; a batch of cells is one call), the launch (provisioning and the install in setup), and one worker process of a
#: profile that states none (`cloud.process_estimate_s`).
CELL_ORCHESTRATION_ESTIMATE_S = 30.0


LAUNCH_ESTIMATE_S = 900.0


DEFAULT_PROCESS_ESTIMATE_S = 30.0


#: A plan estimated past this share of `max_cluster_hours` is warned about: the estimate is
#: rough, and the ceiling cuts the run off where it stands.
ESTIMATE_WARNING_SHARE = 0.75


@dataclass(frozen=True)
class RunEstimate:
    """How long a cloud run should take: its launch, then every remote call's orchestration (a
    call per cell unless `calls` says fewer: batches) and every worker process of every cell
    measured there, spread over `machines` (managed shards run in parallel)."""

    cells: int
    processes: int
    process_s: float
    cell_s: float = CELL_ORCHESTRATION_ESTIMATE_S
    launch_s: float = LAUNCH_ESTIMATE_S
    machines: int = 1
    calls: int | None = None

    @property
    def remote_calls(self) -> int:
        return self.cells if self.calls is None else self.calls

    @property
    def hours(self) -> float:
        work_s = self.remote_calls * self.cell_s + self.processes * self.process_s
        return (self.launch_s + work_s / self.machines) / 3600

    def describe(self) -> str:
        spread = f", over {self.machines} machines" if self.machines > 1 else ""
        calls = (
            f"{self.cells} cells"
            if self.calls is None
            else f"{self.cells} cells in {self.calls} remote calls"
        )
        return (
            f"{calls} x {self.cell_s:g} s + {self.processes} worker processes x "
            f"{self.process_s:g} s + {self.launch_s / 60:g} min launch{spread}"
        )


def estimate_run(
    profile, process_counts: Sequence[int], machines: int = 1, calls: int | None = None
) -> RunEstimate:
    """`process_counts`: the worker processes (`runner.processes_of`) of each cell measured on
    the cloud; `calls`: how many remote calls measure them (batches), one per cell if None."""
    return RunEstimate(
        cells=len(process_counts),
        processes=sum(process_counts),
        process_s=float(profile.cloud.get("process_estimate_s", DEFAULT_PROCESS_ESTIMATE_S)),
        machines=max(1, machines),
        calls=calls,
    )


def check_run_fits(estimate: RunEstimate, profile_name: str, max_cluster_hours: float) -> str:
    """The plan's estimate as one line; raises UserError when the run cannot fit the ceiling,
    which would cut it off with cells unmeasured. The line starts with `warning:` when the run
    comes close to it."""
    hours = estimate.hours
    estimated = (
        f"profile {profile_name}: the run is estimated at {hours:.1f} h ({estimate.describe()})"
    )
    if hours > max_cluster_hours:
        raise UserError(
            f"max_cluster_hours: got {max_cluster_hours:g}, but {estimated}; "
            f"expected max_cluster_hours >= {math.ceil(hours)}, or fewer scenarios"
        )
    line = f"{estimated} of max_cluster_hours {max_cluster_hours:g}"
    if hours > ESTIMATE_WARNING_SHARE * max_cluster_hours:
        return f"warning: {line}: close to the ceiling, which stops the run where it stands"
    return line


#: Ledger events after which the cluster verifiably no longer exists: only these end billed time.
BILLING_ENDS = {"teardown_verified": "torn down (verified)", "gone": "gone (verified absent)"}


class Ledger:
    """Append-only record of what a run's clusters did and when (cloud/ledger.jsonl).

    One JSON object per line: `event`, `cluster`, `at` (UTC), `t` (epoch seconds), details.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def add(self, event: str, cluster: str, **details: Any) -> dict[str, Any]:
        record = {"event": event, "cluster": cluster, "at": utc_now(), "t": time.time()}
        record.update(details)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps(record, allow_nan=False) + "\n")
        return record

    def events(self, cluster: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill; the rest stays readable
            if cluster is None or record.get("cluster") == cluster:
                out.append(record)
        return out

    def current_launch(self, cluster: str) -> dict[str, Any] | None:
        """The latest `launch_requested` of the cluster's present life (none after teardown)."""
        launch = None
        for record in self.events(cluster):
            if record["event"] == "launch_requested":
                launch = record
            elif record["event"] in BILLING_ENDS:
                launch = None
        return launch


def ledger_for(work_dir: Path) -> Ledger:
    return Ledger(Path(work_dir) / "ledger.jsonl")


def remaining_minutes(ledger: Ledger, cluster: str, max_cluster_hours: float) -> float:
    launch = ledger.current_launch(cluster)
    started = launch["t"] if launch else time.time()
    return max_cluster_hours * 60 - (time.time() - started) / 60


def cost_report(clusters: Sequence[str], log: Path | None = None) -> list[dict[str, Any]]:
    """SkyPilot's recorded cost for these clusters (it keeps history after teardown)."""
    try:
        proc = run_sky(["sky", "cost-report", "--all", "-o", "json"], log, check=False)
        records = json_records(proc.stdout) if proc.returncode == 0 else []
    except (SkyTimeout, ValueError):
        return []
    keep = ("name", "status", "total_cost", "duration", "num_nodes", "launched_at", "resources")
    return [{k: r.get(k) for k in keep} for r in records if r.get("name") in set(clusters)]


#: What the hourly price is: the figure `sky launch` prints for the resources its optimizer
#: chose, from SkyPilot's price catalog. SkyPilot 0.14.1 reports no other: `sky status -o json`
#: has no price, and `sky cost-report`'s `total_cost` is the same catalog price times its own
#: usage intervals (`Resources.get_cost`). The offer actually rented (a Vast bid, a host's own
#: rate) and disks, storage and network are not in it.
PRICE_SOURCE = (
    "SkyPilot catalog price of the resources its optimizer chose (sky launch's table), compute "
    "only: no disk, storage or network; not the rented offer's own price, which SkyPilot "
    "0.14.1 does not report"
)


#: Ledger events that leave a cluster billing, and what each says about it.
_STILL_BILLING = {
    "status_unreadable": "its status could not be read",
    "not_up": "it was found not UP but still existing",
    "teardown_failed": "its teardown failed",
    "kept": "it was kept (keep_cluster)",
}


def billing(work_dir: Path, cluster: str, cost_records: Sequence[dict] = ()) -> dict[str, Any]:
    """Billed time and cost of a run's cluster, from its ledger (and SkyPilot's cost report).

    Billed time runs from each launch request to a verified absence (a verified teardown, or a
    refreshed status that no longer lists the cluster), or to now while none has been seen: an
    upper bound, since the provider starts billing once the machine exists. A status that could
    not be read, or a teardown that failed, leaves the clock running.
    """
    events = ledger_for(work_dir).events(cluster)
    billed_s, start, price, last_seen = 0.0, None, None, None
    for record in events:
        if record["event"] == "launch_requested" and start is None:
            start = record["t"]
        elif record["event"] == "up" and record.get("hourly_usd") is not None:
            price = record["hourly_usd"]
        elif record["event"] in BILLING_ENDS and start is not None:
            billed_s += record["t"] - start
            start = None
        if record["event"] in BILLING_ENDS or record["event"] in _STILL_BILLING:
            last_seen = record
    still_billing = start is not None
    if still_billing:
        billed_s += time.time() - start
        why = _STILL_BILLING.get((last_seen or {}).get("event"), "no verified teardown yet")
        state = f"STILL BILLING: {why}" + (f" ({last_seen['at']})" if last_seen else "")
    elif last_seen is not None:
        state = f"ended: {BILLING_ENDS[last_seen['event']]} at {last_seen.get('at')}"
    else:
        state = "never launched"
    measured = [r for r in events if r["event"] == "pulled"]
    measuring_s = sum(r.get("measured_s", 0.0) for r in measured)
    job_s = sum(r.get("job_s", 0.0) for r in measured)
    cost = None if price is None else price * billed_s / 3600
    reported = [r for r in cost_records if r.get("name") == cluster]
    return {
        "cluster": cluster,
        "launches": sum(1 for r in events if r["event"] == "launch_requested"),
        "billed_s": round(billed_s, 1),
        "still_billing": still_billing,
        "billing_state": state,
        "hourly_usd": price,
        "price_source": PRICE_SOURCE,
        "cost_usd": None if cost is None else round(cost, 4),
        "cells_pulled": len(measured),
        "cost_per_cell_usd": (
            None if cost is None or not measured else round(cost / len(measured), 5)
        ),
        "measuring_s": round(measuring_s, 1),
        "measuring_share": round(measuring_s / billed_s, 4) if billed_s > 0 else None,
        # What each cell cost beyond its own run: sync, job submission, log streaming, pull.
        "orchestration_s_per_cell": (
            round((job_s - measuring_s) / len(measured), 2) if measured else None
        ),
        # The same catalog price over SkyPilot's own usage intervals; `resources` names what
        # was launched (instance type, region, spot), against which the provider's invoice
        # can be checked.
        "sky_cost_report_usd": reported[0].get("total_cost") if reported else None,
        "launched_resources": reported[0].get("resources") if reported else None,
    }
