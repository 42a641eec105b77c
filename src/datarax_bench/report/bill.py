"""A cloud run's bill and managed-jobs record, read from `cloud/teardown.json` and shown in
summary.md and the W&B summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_teardown(run_dir: Path) -> dict[str, Any]:
    """A cloud run's teardown record (cloud/teardown.json); empty for local runs."""
    try:
        record = json.loads((Path(run_dir) / "cloud" / "teardown.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def read_billing(run_dir: Path) -> dict[str, Any] | None:
    """The bill recorded by a cloud run's teardown, None for local runs."""
    return read_teardown(run_dir).get("billing")


def billing_markdown(run_dir: Path) -> str:
    """summary.md's section on what the cluster cost; empty for a local run."""
    bill = read_billing(run_dir)
    if not bill:
        return ""
    lines = ["", "## Cloud cost", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in billing_markdown_rows(bill)]
    return "\n".join(lines) + "\n"


def billing_markdown_rows(bill: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) of each row of summary.md's bill."""

    def money(value: float | None) -> str:
        return "not quoted" if value is None else f"${value:.4f}"

    share = bill.get("measuring_share")
    rows = [
        ("cluster", f"`{bill['cluster']}`"),
        ("billing", bill.get("billing_state") or "unknown"),
        ("launches", str(bill.get("launches"))),
        (
            "billed time",
            f"{bill['billed_s'] / 60:.1f} min (launch request to verified absence"
            + (", still running)" if bill.get("still_billing") else ")"),
        ),
        (
            "hourly price",
            "not quoted" if bill.get("hourly_usd") is None else f"${bill['hourly_usd']:.2f}/h",
        ),
        ("price source", bill.get("price_source") or "unknown"),
        ("cost", money(bill.get("cost_usd"))),
        ("cells pulled", str(bill.get("cells_pulled"))),
        ("cost per cell", money(bill.get("cost_per_cell_usd"))),
        ("share of billed time measuring", "n/a" if share is None else f"{share:.1%}"),
        ("orchestration per cell", f"{bill.get('orchestration_s_per_cell')} s"),
        ("`sky cost-report` (same catalog price)", money(bill.get("sky_cost_report_usd"))),
    ]
    return rows


def billing_metrics(run_dir: Path) -> dict[str, Any]:
    """W&B summary metrics of the bill (`cloud/...`); empty for a local run."""
    bill = read_billing(run_dir) or {}
    keys = (
        "billed_s", "hourly_usd", "cost_usd", "cells_pulled", "cost_per_cell_usd",
        "measuring_share", "orchestration_s_per_cell", "sky_cost_report_usd", "launches",
        "still_billing",
    )  # fmt: skip
    return {f"cloud/{k}": bill[k] for k in keys if bill.get(k) is not None}


def read_managed(run_dir: Path) -> dict[str, Any] | None:
    """The managed-jobs record of a run, None for other runs."""
    return read_teardown(run_dir).get("managed")


def managed_metrics(run_dir: Path) -> dict[str, Any]:
    """W&B summary metrics of a managed run (`cloud/...`); empty for other runs."""
    info = read_managed(run_dir)
    if not info:
        return {}
    out = {
        "cloud/shards": len(info["shards"]),
        "cloud/recoveries": info["recoveries"],
        "cloud/cells_measured_more_than_once": len(info.get("measured_more_than_once") or {}),
        "cloud/billed_s": info["billed_s"],
    }
    if info.get("cost_usd") is not None:
        out["cloud/cost_usd"] = info["cost_usd"]
    controller = info.get("controller") or {}
    if controller:
        out["cloud/controller_still_billing"] = bool(controller.get("still_billing"))
    return out


def managed_markdown(run_dir: Path) -> str:
    """summary.md's section on a managed run: shards, recoveries, cells measured twice."""
    info = read_managed(run_dir)
    if not info:
        return ""
    lines = ["", "## Managed jobs", "", f"Results bucket: `{info['bucket']}`.", ""]
    lines += ["| shard | job | status | recoveries | cells (submitted) | wall time | "
              "JOB DURATION |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in info["shards"]:
        minutes = (s.get("job_duration_s") or 0.0) / 60
        wall = "-" if s.get("wall_s") is None else f"{s['wall_s'] / 60:.1f} min"
        lines.append(
            f"| {s['shard']} | {s.get('job_id') or '-'} | {s.get('status')} | "
            f"{s.get('recoveries') or 0} | {s['cells']} ({s['submitted']}) | {wall} | "
            f"{minutes:.1f} min |"
        )
    again = info.get("measured_more_than_once") or {}
    controller = info.get("controller") or {}
    if controller.get("still_billing"):
        lines += ["", f"**The jobs controller `{controller.get('name')}` STILL BILLS** "
                  f"({controller.get('state')}); end it with `{controller.get('command')}`."]  # fmt: skip
    elif controller.get("name"):
        lines += ["", f"Jobs controller `{controller['name']}`: {controller.get('state')}."]
    if controller.get("cost_usd") is not None or controller.get("billed_s") is not None:
        lines.append(
            f"Controller: {(controller.get('billed_s') or 0) / 60:.1f} min, "
            f"${controller.get('cost_usd') or 0.0:.4f} (`sky cost-report`)."
        )
    lines += ["", f"Recoveries: {info['recoveries']}. Billed job time (each job's wall time: "
              "the controller's start, provisioning, recoveries and the run): "
              f"{info['billed_s'] / 60:.1f} min"
              + ("" if info.get("cost_usd") is None else f", about ${info['cost_usd']:.4f}")
              + "."]  # fmt: skip
    if again:
        lines.append("Cells measured more than once (a preemption interrupted them; the result "
                     "kept is the last one):")  # fmt: skip
        lines += [f"- `{rel}`: {n} times" for rel, n in sorted(again.items())]
    else:
        lines.append("No cell was measured more than once.")
    return "\n".join(lines) + "\n"
