"""Result files: validating, writing and reading them; flattening one to a row (the columns of
results.csv, summary.md, summary.json and the W&B table); the run index (manifest.json,
summary.json). `cell.make_result` builds them."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from datarax_bench.errors import UserError
from datarax_bench.files import all_or_nothing, user_file_mode, write_text_atomic
from datarax_bench.workload.schemas import first_non_finite, read_json, validate

SCHEMA_VERSION = 1
__all__ = ["all_or_nothing", "user_file_mode", "write_text_atomic"]  # re-exported for callers

STATUSES = ("ok", "unsupported", "failed", "timeout", "not_implemented")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def write_json_atomic(path: Path, document: Any) -> None:
    """`document` as indented JSON, atomically; NaN and infinities are refused, not written."""
    found = first_non_finite(document)
    if found:
        raise ValueError(f"{path}: {found[0]} is {found[1]}; JSON results hold finite numbers only")
    write_text_atomic(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Validate first: an invalid result is a bug and must never reach disk."""
    validate(result, "result", f"result for {Path(path)}")
    write_json_atomic(path, result)


def load_result(path: Path) -> dict[str, Any]:
    """Read and validate one result file; a bad file is a UserError naming it."""
    path = Path(path)
    document = read_json(path)
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected a JSON object with a benchmark result")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"{path}: schema_version {document.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    validate(document, "result", path)
    return document


def cell_path(root: Path, scenario: str, variant: str, adapter: str, style: str = "plain") -> Path:
    """The layout shared by the CLI's --output-dir and the workflow: raw/S/V/A.json for the
    plain style, raw/S/V/A.STYLE.json for another."""
    return Path(root) / "raw" / scenario / variant / f"{_cell_name(adapter, style)}.json"


def process_path(
    root: Path, scenario: str, variant: str, adapter: str, style: str, number: int | str
) -> Path:
    """Where process `number` (counted from 1) of a cell measured in several keeps its own
    result until the cell is pooled: processes/S/V/A[.STYLE]/K.json."""
    name = _cell_name(adapter, style)
    return Path(root) / "processes" / scenario / variant / name / f"{number}.json"


def _cell_name(adapter: str, style: str) -> str:
    return adapter if style == "plain" else f"{adapter}.{style}"


#: Under a resume directory: one file per measurement started, `attempts/<cell path>/<stamp>`.
ATTEMPTS_DIR = "attempts"


def cell_label(scenario: str, variant: str, adapter: str, style: str = "plain") -> str:
    """A cell as logs and messages name it: `S/V/A`, with ` (STYLE)` unless plain."""
    label = f"{scenario}/{variant}/{adapter}"
    return label if style == "plain" else f"{label} ({style})"


def describe_settings(settings: dict[str, Any]) -> str:
    """Parallelism settings as one short string: `workers=2 prefetch=8`."""
    return " ".join(f"{k}={v}" for k, v in settings.items())


def cell_style(result: dict[str, Any]) -> str:
    """The result's pipeline style; results from before styles existed are plain."""
    return result["cell"].get("style", "plain")


# --- one result as one row ----------------------------------------------------------------

CELL_KEYS = ("scenario", "scenario_name", "variant", "size", "adapter", "adapter_name", "measure")
THROUGHPUT_KEYS = ("median", "ci95_low", "ci95_high", "cv", "min", "max")
STAT_KEYS = (
    "bytes_per_s_median",
    "latency_ms_p50_median",
    "latency_ms_p95_median",
    "latency_ms_p99_median",
    "time_to_first_batch_s_median",
    "peak_rss_bytes_max",
    "device_peak_bytes_max",
    "cpu_s_per_1k_elements_median",
    "busy_cores_median",
    # How much the cell's worker processes' medians differed (None for one process).
    "between_process_cv",
    # The median's 95% interval half-width relative to it, and why the windows stopped: whether
    # a cell measured to the profile's precision target met it.
    "precision",
    "stopped",
    "first_batch_sha256",
    "first_batch_consistent",
)
#: The measured numbers of a row (None unless the cell is ok).
NUMERIC_KEYS = (
    *(f"elements_per_s_{k}" for k in THROUGHPUT_KEYS),
    *(k for k in STAT_KEYS if k not in ("first_batch_sha256", "first_batch_consistent", "stopped")),
    "repetitions",
    "feed_shortest_fed_step_ms",
    "tuning_cost_s",
)


def tries(result: dict[str, Any]) -> int:
    """The most worker runs one of the cell's processes took: above one, a failed attempt was
    retried (0: no worker ran)."""
    return max((a["attempt"] for a in result.get("attempts") or []), default=0)


def result_row(result: dict[str, Any], path: str) -> dict[str, Any]:
    """One cell as one flat row: identity, status, statistics (None unless ok), the special
    measurements' scalar metrics (`special_*`), attempts, timing, commit, path."""
    row: dict[str, Any] = {"profile": result["cell"]["profile"]}
    row.update({k: result["cell"][k] for k in CELL_KEYS})
    row["style"] = cell_style(result)
    row["status"] = result["status"]
    row["reason"] = result["reason"]
    stats = result.get("statistics") if result["status"] == "ok" else None
    row["repetitions"] = stats["repetitions"] if stats else None
    row["unstable"] = stats.get("unstable") if stats else None
    row["busy"] = stats.get("busy") if stats else None
    load = (stats or {}).get("machine_load") or {}
    row["others_cpu_share"] = load.get("foreign_share")
    for key in THROUGHPUT_KEYS:
        row[f"elements_per_s_{key}"] = stats["elements_per_s"][key] if stats else None
    for key in STAT_KEYS:
        row[key] = stats.get(key) if stats else None
    # The special measurements' scalar metrics (deterministic, sharded, devices, ...).
    for key, value in (result.get("special") or {}).items():
        if "sha256" in key:
            continue  # digests stay in the result files
        if isinstance(value, list) and all(isinstance(v, int | float | str) for v in value):
            value = ", ".join(map(str, value))
        if value is None or isinstance(value, bool | int | float | str):
            row[f"special_{key}"] = value
    # The tuned style's parallelism: what the sweep chose, what sweeping cost (0 when cached).
    tuning = result.get("tuning") if result["status"] == "ok" else None
    row["tuned_parallelism"] = describe_settings(tuning["chosen"]) or None if tuning else None
    row["tuning_cost_s"] = tuning["cost_s"] if tuning else None
    row["tuning_cached"] = tuning["cached"] if tuning else None
    # Whether the loader kept an emulated accelerator fed: AU per step time, the shortest fed.
    row.update(feed_columns(result.get("feed") if result["status"] == "ok" else None))
    row["attempts"] = tries(result)
    row["duration_s"] = result["timestamps"]["duration_s"]
    row["started"] = result["timestamps"]["started"]
    row["git_commit"] = result["provenance"].get("git_commit")
    row["path"] = path
    return row


# --- the run index ------------------------------------------------------------------------

#: The columns of summary.json's rows.
SUMMARY_KEYS = ("scenario", "variant", "adapter", "style", "measure", "status", "reason", "path")


def summary_row(result: dict[str, Any], path: str) -> dict[str, Any]:
    row = result_row(result, path)
    keys = SUMMARY_KEYS + (
        tuple(f"elements_per_s_{k}" for k in THROUGHPUT_KEYS) if result["status"] == "ok" else ()
    )
    return {k: row[k] for k in keys}


def write_run_index(
    profile, output_dir: Path, results: list[dict[str, Any]], started: str | None = None
) -> dict[str, Any]:
    """manifest.json (what was run, with file hashes) and summary.json (a row per cell).

    Shared by `run --output-dir` and the workflow, so that both produce the same layout.
    """
    output_dir = Path(output_dir)
    entries = []
    for r in results:
        c = r["cell"]
        path = cell_path(output_dir, c["scenario"], c["variant"], c["adapter"], cell_style(r))
        rel = str(path.relative_to(output_dir))
        entries.append((r, rel, hashlib.sha256(path.read_bytes()).hexdigest()))
    commit = results[0]["provenance"]["git_commit"] if results else None
    manifest = {
        "schema_version": 1,
        "profile": profile.name,
        "settings": profile.settings(),
        "git_commit": commit,
        "started": started or min((r["timestamps"]["started"] for r in results), default=None),
        "finished": utc_now(),
        "cells": [
            {
                **{k: r["cell"][k] for k in ("scenario", "variant", "adapter")},
                "style": cell_style(r),
                "status": r["status"],
                "path": rel,
                "sha256": digest,
            }
            for r, rel, digest in entries
        ],
    }
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = {
        "profile": profile.name,
        "counts": counts,
        "cells": [summary_row(r, rel) for r, rel, _ in entries],
    }
    write_json_atomic(output_dir / "manifest.json", manifest)
    write_json_atomic(output_dir / "summary.json", summary)
    return summary


# --- the feed in a row (results.csv, the W&B table) ----------------------------------------

UTILISATION_PREFIX = "feed_utilisation_"
_UTILISATION_COLUMN = re.compile(rf"^{UTILISATION_PREFIX}([0-9.e+-]+)ms$")


def utilisation_column(step_ms: float) -> str:
    return f"{UTILISATION_PREFIX}{step_ms:g}ms"


def utilisation_columns(columns: Iterable[str]) -> list[tuple[float, str]]:
    """(step time in ms, column) of every utilisation column, shortest step first."""
    found = [(m.group(1), c) for c in columns if (m := _UTILISATION_COLUMN.match(c))]
    return sorted((float(t), c) for t, c in found)


def feed_columns(feed: dict[str, Any] | None) -> dict[str, Any]:
    """The feed's columns of a cell's row: the shortest fed step, the threshold and AU per step."""
    row: dict[str, Any] = {
        "feed_shortest_fed_step_ms": feed["shortest_fed_step_ms"] if feed else None,
        "feed_threshold": feed["threshold"] if feed else None,
    }
    for window in (feed or {}).get("windows", []):
        row[utilisation_column(window["step_ms"])] = window["utilisation"]
    return row


def shortest_fed_label(value: float | None, step_ms: Iterable[float]) -> str:
    """How the summary says it: `≤ 1 ms` when even the shortest step measured was fed (a shorter
    one might be too), `> 100 ms` when none was."""
    steps = sorted(step_ms)
    if value is None or value != value:  # None, or NaN from a table
        return f"> {steps[-1]:g} ms" if steps else ""
    return f"≤ {value:g} ms" if steps and value <= steps[0] else f"{value:g} ms"


def infra_dir(infra: str) -> str:
    """An `--infra` such as gcp/us-central1 as one directory name, as results/ and a managed
    run's bucket name it: gcp_us-central1."""
    return infra.replace("/", "_")
