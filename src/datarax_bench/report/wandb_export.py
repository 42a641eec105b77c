"""Export a results directory to Weights & Biases: one run, a table, keyed summary, plots, artifact.

Everything is read and validated before `wandb.init`, so bad input uploads nothing. The export
never loses results and never hangs: without `WANDB_API_KEY` it writes an offline run under the
results directory (uploaded later with `wandb sync`); with a key but W&B unreachable, a short
reachability probe and bounded W&B settings make it fall back to offline within a minute.
The key is read only to decide the mode; its value is never printed, logged or written.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from datarax_bench.console import say
from datarax_bench.errors import UserError
from datarax_bench.report.bill import billing_metrics, managed_metrics
from datarax_bench.report.compare import fresh_comparison, read_comparison
from datarax_bench.results import (
    CELL_KEYS,
    NUMERIC_KEYS,
    UTILISATION_PREFIX,
    cell_path,
    cell_style,
    feed_columns,
    load_result,
    result_row,
    utc_now,
    write_json_atomic,
)
from datarax_bench.workload.schemas import read_json

API_KEY_ENV = "WANDB_API_KEY"
DATA_DIR_ENV = "WANDB_DATA_DIR"
DEFAULT_PROJECT = "datarax-benchmarks"
DEFAULT_BASE_URL = "https://api.wandb.ai"
MODES = ("auto", "online", "offline", "disabled")
ARTIFACT_TYPE = "benchmark-results"
#: Optional files the workflow writes next to raw/ that belong in the artifact.
EXTRA_FILES = ("summary.json", "results.csv", "repetitions.csv", "summary.md")

#: Seconds the reachability probe waits for any HTTP answer from the W&B server.
PROBE_TIMEOUT_S = 5.0
#: Bounds for an online `wandb.init` against a server that answers but stalls. Without them
#: wandb 0.26 retried for more than 400 s. `init_timeout` alone does not bound it: wandb.init
#: makes about 8 GraphQL requests before giving up, so each is capped at 2 tries of 4 s
#: (measured: a stalled server is given up on after about 35 s).
ONLINE_SETTINGS = {
    "init_timeout": 15.0,
    "x_graphql_retry_max": 1,
    "x_graphql_retry_wait_max_seconds": 1.0,
    "x_graphql_timeout_seconds": 4.0,
    # Uploads after a successful init (history, files, artifact): a few retries with timeouts,
    # so that a connection lost mid-export ends in minutes instead of retrying for hours (not
    # measured; the run's transaction log stays on disk for `wandb sync` either way).
    "x_file_stream_retry_max": 5,
    "x_file_stream_retry_wait_max_seconds": 10.0,
    "x_file_stream_timeout_seconds": 60.0,
    "x_file_transfer_retry_max": 5,
    "x_file_transfer_retry_wait_max_seconds": 10.0,
    "x_file_transfer_timeout_seconds": 120.0,
}
#: For every run: no console capture or system sampling (the export measures nothing), no git
#: metadata (a remote URL can embed a token; the commit comes from the results), no wandb
#: chatter (silent also skips the login banner's extra, unbounded viewer query).
COMMON_SETTINGS = {
    "console": "off",
    "x_disable_stats": True,
    "disable_git": True,
    "save_code": False,
    "silent": True,
}

#: The W&B table's columns: results.csv's names (`results.result_row`), the special metrics and
#: the feed measurement (utilisation per step time) as one JSON column each.
TABLE_COLUMNS = (
    *CELL_KEYS,
    "style",
    "status",
    "reason",
    *NUMERIC_KEYS,
    "first_batch_consistent",
    "special",
    "feed",
    "path",
)
#: The table's measured numbers, also put in the run summary per cell.
NUMERIC_COLUMNS = NUMERIC_KEYS


# --- reading and validating the results directory ---------------------------------------------


@dataclass
class CellResult:
    path: Path  # relative to the results directory: raw/S/V/A.json
    result: dict[str, Any]


@dataclass
class ResultsBundle:
    """A validated results directory: every raw result, the manifest, plots, extra files."""

    root: Path
    manifest: dict[str, Any]
    cells: list[CellResult]
    plots: list[Path] = field(default_factory=list)
    extra_files: list[Path] = field(default_factory=list)

    @property
    def profile(self) -> str:
        return self.manifest["profile"]

    @property
    def git_commit(self) -> str | None:
        return self.manifest.get("git_commit") or next(
            (c.result["provenance"]["git_commit"] for c in self.cells), None
        )

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cells:
            out[c.result["status"]] = out.get(c.result["status"], 0) + 1
        return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_bundle(results_dir: Path, only_listed: bool = False) -> ResultsBundle:
    """Read and check a results directory; any problem is a UserError naming the file.

    Checks that every raw result validates, sits at the path its cell names, is listed in
    manifest.json with the same SHA-256 (a partial download or a stale manifest shows here),
    and that every file the manifest lists exists. With `only_listed`, raw files the manifest
    does not list are left out instead (the workflow's manifest names exactly the cells of its
    invocation; a scenario subset leaves the other scenarios' files in the directory).
    """
    root = Path(results_dir).absolute()  # the marker and the sync command name exact paths
    if not root.is_dir():
        raise UserError(f"{root}: results directory not found; expected the --output-dir of a run")
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(
            f"{manifest_path}: file not found; expected a results directory written by "
            "`datarax-bench run --output-dir` or the workflow"
        )
    manifest = read_json(manifest_path)
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("profile"), str)
        or not isinstance(manifest.get("cells"), list)
    ):
        raise UserError(f"{manifest_path}: expected a JSON object with 'profile' and 'cells'")
    listed: dict[str, dict[str, Any]] = {}
    for entry in manifest["cells"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise UserError(
                f"{manifest_path}: cells: expected objects with a 'path', got {entry!r}"
            )
        listed[entry["path"]] = entry

    raw_files = sorted((root / "raw").glob("*/*/*.json"))
    if not raw_files:
        raise UserError(
            f"{root / 'raw'}: no result files (raw/SCENARIO/VARIANT/ADAPTER[.STYLE].json)"
        )
    cells = []
    for path in raw_files:
        rel = path.relative_to(root)
        result = load_result(path)
        c = result["cell"]
        style = cell_style(result)
        expected = cell_path("", c["scenario"], c["variant"], c["adapter"], style)
        if rel != expected:
            cell = f"{c['scenario']}/{c['variant']}/{c['adapter']} ({style})"
            raise UserError(f"{path}: holds cell {cell}, expected at {expected}")
        if c["profile"] != manifest["profile"]:
            raise UserError(
                f"{path}: profile {c['profile']!r}, but manifest.json says {manifest['profile']!r}"
            )
        entry = listed.pop(str(rel), None)
        if entry is None and only_listed:
            continue
        if entry is None:
            raise UserError(f"{path}: not listed in {manifest_path}; the manifest is stale")
        if entry.get("sha256") and entry["sha256"] != _sha256(path):
            raise UserError(
                f"{path}: SHA-256 differs from {manifest_path}; the file changed or was copied partially"
            )
        cells.append(CellResult(rel, result))
    if listed:
        missing = next(iter(listed))
        raise UserError(f"{root / missing}: listed in {manifest_path} but missing")

    plots = sorted((root / "plots").rglob("*.png"))  # the workflow's plots/{scenario}/{kind}.png
    extra = [root / name for name in EXTRA_FILES if (root / name).is_file()]
    return ResultsBundle(root, manifest, cells, plots, extra)


def infer_infra(results_dir: Path, profile: str) -> str:
    """The workflow writes results/{profile}/{infra}/; anything else was run locally."""
    path = Path(results_dir).resolve()
    return path.name if path.parent.name == profile else "local"


# --- what is logged ----------------------------------------------------------------------------


def table_row(cell: CellResult) -> dict[str, Any]:
    special = cell.result.get("special")
    feed = cell.result.get("feed")
    row = {
        **result_row(cell.result, str(cell.path)),
        "special": json.dumps(special, sort_keys=True) if special else None,
        "feed": json.dumps(feed, sort_keys=True) if feed else None,
    }
    return {k: row[k] for k in TABLE_COLUMNS}


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, bool | int | float | str) and value is not None:
        out[prefix] = value


def summary_metrics(bundle: ResultsBundle) -> dict[str, Any]:
    """`<scenario>/<variant>/<adapter>[.<style>]/<metric>` (plain cells without the style, as
    before styles existed): no two cells share a key."""
    out: dict[str, Any] = {}
    for cell in bundle.cells:
        out.update(cell_metrics(cell))
    out.update({f"cells/{status}": n for status, n in bundle.counts().items()})
    out["cells/total"] = len(bundle.cells)
    out.update(billing_metrics(bundle.root))
    out.update(managed_metrics(bundle.root))
    return out


def cell_key(row: dict[str, Any]) -> str:
    """`<scenario>/<variant>/<adapter>[.<style>]`: a cell's prefix in the run summary."""
    key = f"{row['scenario']}/{row['variant']}/{row['adapter']}"
    return key if row["style"] == "plain" else f"{key}.{row['style']}"


def cell_metrics(cell: CellResult) -> dict[str, Any]:
    """One cell's summary keys: its status, measured numbers, special metrics, utilisation."""
    row = table_row(cell)
    key = cell_key(row)
    out: dict[str, Any] = {f"{key}/status": row["status"]}
    for name in NUMERIC_COLUMNS:
        if row[name] is not None:
            out[f"{key}/{name}"] = row[name]
    special: dict[str, Any] = {}
    _flatten("special", cell.result.get("special") or {}, special)
    out.update({f"{key}/{k}": v for k, v in special.items()})
    # Utilisation per step time (the shortest fed step is among the numeric columns).
    for name, value in feed_columns(cell.result.get("feed")).items():
        if name.startswith(UTILISATION_PREFIX):
            out[f"{key}/{name}"] = value
    return out


def run_name(profile: str, infra: str, commit: str | None, when: datetime) -> str:
    sha = (commit or "nogit")[:7]
    return f"{profile}-{infra}-{sha}-{when.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def _run_time(bundle: ResultsBundle) -> datetime:
    """When the benchmark started, so that exporting the same results again gives the same name."""
    try:
        return datetime.fromisoformat(bundle.manifest["started"])
    except (KeyError, TypeError, ValueError):
        return datetime.now(UTC)


def run_config(bundle: ResultsBundle, infra: str, name: str) -> dict[str, Any]:
    provenances = [c.result["provenance"] for c in bundle.cells]
    # A measured cell's provenance comes from its worker, which imported JAX and the loader;
    # cells decided without a worker carry the supervisor's.
    first = next(
        (c.result["provenance"] for c in bundle.cells if c.result["status"] == "ok"),
        provenances[0],
    )
    packages: dict[str, str | None] = {}
    for p in provenances:
        packages.update({k: v for k, v in p["packages"].items() if v or k not in packages})
    jax = next((p["jax"] for p in provenances if p.get("jax")), None)
    return {
        "run_name": name,
        "profile": bundle.profile,
        "infra": infra,
        "settings": bundle.manifest.get("settings"),
        "git_commit": bundle.git_commit,
        "git_dirty": first.get("git_dirty"),
        "hardware": {
            "cpu": first["cpu"],
            "memory_bytes": first["memory_bytes"],
            "gpu": next((p["gpu"] for p in provenances if p.get("gpu")), None),
            "jax_backend": jax["backend"] if jax else None,
            "jax_devices": jax["devices"] if jax else None,
            "jax_device_count": jax["device_count"] if jax else None,
            "hostnames": sorted({p.get("hostname") for p in provenances if p.get("hostname")}),
            "platform": first["platform"],
        },
        "python": first["python"],
        "packages": dict(sorted(packages.items())),
        "environment": first["environment"],
        "benchmark_started": bundle.manifest.get("started"),
        "benchmark_finished": bundle.manifest.get("finished"),
        "cells": len(bundle.cells),
        "counts": bundle.counts(),
    }


# --- choosing the mode -------------------------------------------------------------------------


def base_url(environ=None) -> str:
    environ = os.environ if environ is None else environ
    return (environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the server answers HTTP at all (any status), else why not, in words."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{url} unreachable ({reason})"


def key_problem(environ=None, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when W&B would take results uploaded now: a key, uploads not turned off
    (`WANDB_MODE`), and the server accepting the key; else why not, in words.

    One GraphQL `viewer` query with the key as HTTP basic auth (what wandb's own client sends),
    bounded by `timeout`: an unreachable server or a refused key shows in seconds, where
    `wandb.init` would retry for minutes. The key goes only into that request's header.
    """
    import base64

    environ = os.environ if environ is None else environ
    if not environ.get(API_KEY_ENV):
        return f"{API_KEY_ENV} is not set"
    mode, _ = choose_mode("auto", environ)
    if mode != "online":
        return f"WANDB_MODE={environ.get('WANDB_MODE')} uploads nothing"
    url = base_url(environ)
    auth = base64.b64encode(f"api:{environ[API_KEY_ENV]}".encode()).decode()
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": "query Viewer { viewer { id } }"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return f"W&B at {url} refused the key (HTTP {exc.code})"
        return f"W&B at {url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"W&B at {url} is unreachable ({getattr(exc, 'reason', exc)})"
    if not isinstance(body, dict) or not (body.get("data") or {}).get("viewer"):
        return f"W&B at {url} did not accept the key (no viewer in its answer)"
    return None


def choose_mode(requested: str, environ=None) -> tuple[str, str | None]:
    """(mode, reason it is offline) for requested auto/online/offline/disabled."""
    environ = os.environ if environ is None else environ
    if requested not in MODES:
        raise UserError(f"wandb mode {requested!r}: expected one of {', '.join(MODES)}")
    if requested in ("offline", "disabled"):
        return requested, None
    # auto/online defer to wandb's own switch, WANDB_MODE, when it turns uploading off.
    env_mode = {"dryrun": "offline"}.get(environ.get("WANDB_MODE", ""), environ.get("WANDB_MODE"))
    if env_mode in ("offline", "disabled"):
        return env_mode, ("WANDB_MODE=offline" if env_mode == "offline" else None)
    if not environ.get(API_KEY_ENV):
        why = f"{API_KEY_ENV} is not set"
        if requested == "online":
            why += " (online was requested; the run is kept offline instead)"
        return "offline", why
    return "online", None


# --- the export --------------------------------------------------------------------------------


def check_names(project: str, entity: str | None) -> None:
    """The W&B project and entity, against the patterns the workflow's config schema states."""
    from datarax_bench.workload.schemas import load_schema

    allowed = load_schema("config")["properties"]["wandb"]["properties"]
    for key, value in (("project", project), ("entity", entity)):
        pattern = allowed[key]["pattern"]
        if value is not None and not re.fullmatch(pattern, value):
            raise UserError(
                f"W&B {key} {value!r}: expected 1 to 128 letters, digits, '_', '.' or '-' "
                f"(pattern {pattern})"
            )


def _online_run_dirs(root: Path) -> set[Path]:
    """The `run-*` directories wandb made for online runs under a results directory."""
    return {p for p in (root / "wandb").glob("run-*") if p.is_dir()}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _settings(mode: str):
    import wandb

    values = dict(COMMON_SETTINGS, mode=mode)
    if mode == "online":
        values.update(ONLINE_SETTINGS)
    return wandb.Settings(**values)


@contextlib.contextmanager
def _staging_in(root: Path):
    """Offline artifact files are staged (copied) under WANDB_DATA_DIR until `wandb sync`
    uploads them; stage them inside the results directory so the run and its files stay together."""
    previous = os.environ.get(DATA_DIR_ENV)
    os.environ[DATA_DIR_ENV] = str(root / "wandb" / "data")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(DATA_DIR_ENV, None)
        else:
            os.environ[DATA_DIR_ENV] = previous


def interactive_charts(wandb, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """W&B's own charts from the table's rows, per scenario: median elements/s per cell as bars
    and, where the variants sweep a number (PC-1's depth), one line per adapter against it."""
    from datarax_bench.report.plots import throughput_shape
    from datarax_bench.workload.catalog import load_catalog

    scenarios = load_catalog().scenarios
    ok = [r for r in rows if r["status"] == "ok" and r["elements_per_s_median"] is not None]
    charts: dict[str, Any] = {}
    for scenario in dict.fromkeys(r["scenario"] for r in ok):
        mine = [r for r in ok if r["scenario"] == scenario]
        cells = wandb.Table(
            columns=["cell", "adapter", "variant", "elements_per_s_median"],
            data=[
                [f"{r['adapter_name']} · {r['variant']}", r["adapter_name"], r["variant"]]
                + [r["elements_per_s_median"]]
                for r in mine
            ],
        )
        title = f"{scenario}: median elements/s"
        charts[f"charts/{scenario}/throughput"] = wandb.plot.bar(
            cells, "cell", "elements_per_s_median", title=title
        )
        variants = list(dict.fromkeys(r["variant"] for r in mine))
        shape, key, x_of = throughput_shape(scenarios.get(scenario), variants)
        if shape == "line":
            sweep = wandb.Table(
                columns=[key, "adapter", "elements_per_s_median"],
                data=[
                    [x_of[r["variant"]], r["adapter_name"], r["elements_per_s_median"]]
                    for r in mine
                ],
            )
            charts[f"charts/{scenario}/throughput_by_{key}"] = wandb.plot.line(
                sweep, key, "elements_per_s_median", stroke="adapter", title=f"{title} by {key}"
            )
    return charts


def _log_run(
    bundle: ResultsBundle, *, mode: str, project: str, entity: str | None, infra: str, name: str
):
    """One W&B run with config, table, keyed summary, plots and the artifact. Returns a report."""
    # No crash reports to wandb's Sentry from a benchmark machine, unless the user opted in.
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    import wandb

    backend = (bundle.manifest.get("settings") or {}).get("backend")
    run = wandb.init(
        project=project,
        entity=entity,
        name=name,
        group=bundle.profile,
        job_type="benchmark",
        tags=[f"infra:{infra}", f"backend:{backend}", f"profile:{bundle.profile}"],
        config=run_config(bundle, infra, name),
        dir=str(bundle.root),
        settings=_settings(mode),
        reinit="create_new",
    )
    try:
        rows = [table_row(c) for c in bundle.cells]
        table = wandb.Table(columns=list(TABLE_COLUMNS), data=[list(r.values()) for r in rows])
        logged: dict[str, Any] = {"cells": table, **interactive_charts(wandb, rows)}
        comparison = fresh_comparison(bundle.root)  # written with a baseline (compare.py)
        if comparison is not None:
            columns, data = read_comparison(comparison)
            logged["comparison"] = wandb.Table(columns=columns, data=data)
        for plot in bundle.plots:
            key = plot.relative_to(bundle.root).with_suffix("").as_posix()  # plots/CV-1/latency
            logged[key] = wandb.Image(str(plot))
        run.log(logged)
        metrics = summary_metrics(bundle)
        run.summary.update(metrics)

        artifact = wandb.Artifact(
            f"results-{bundle.profile}-{infra}",
            type=ARTIFACT_TYPE,
            description=f"Raw results, manifest and table of {name}",
            metadata={
                "profile": bundle.profile,
                "infra": infra,
                "commit": bundle.git_commit,
                "run_name": name,
                "counts": bundle.counts(),
            },
        )
        files = [bundle.root / c.path for c in bundle.cells]
        files += [bundle.root / "manifest.json", *bundle.extra_files, *bundle.plots]
        if comparison is not None:
            files += [p for p in (comparison, comparison.with_suffix(".md")) if p.is_file()]
        for path in files:
            artifact.add_file(str(path), name=str(path.relative_to(bundle.root)))
        artifact.add(table, "cells")
        run.log_artifact(artifact)
        report = {
            "run_id": run.id,
            "run_name": name,
            "run_path": f"{run.entity}/{run.project}/{run.id}" if mode == "online" else None,
            "run_url": run.url if mode == "online" else None,
            "run_dir": str(Path(run.dir).parent),
            "exported": {
                "table_rows": len(rows),
                "summary_keys": len(metrics),
                "plots": [str(p.relative_to(bundle.root)) for p in bundle.plots],
                "artifact": {
                    "name": artifact.name,
                    "type": ARTIFACT_TYPE,
                    "files": [str(p.relative_to(bundle.root)) for p in files]
                    + ["cells.table.json"],
                },
            },
        }
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    return report


def export_results(
    results_dir: Path,
    *,
    project: str = DEFAULT_PROJECT,
    entity: str | None = None,
    mode: str = "auto",
    infra: str | None = None,
    skip_without_key: bool = False,
    marker: Path | None = None,
    only_listed: bool = False,
) -> dict[str, Any]:
    """Export one results directory; returns (and writes to `marker`) what happened.

    Bad input raises UserError before W&B is touched. W&B trouble online falls back to an
    offline run; the returned report always says where the run is and how to upload it.
    `only_listed` exports the manifest's cells and leaves other raw files out (`load_bundle`).
    """
    started = time.monotonic()
    check_names(project, entity)
    if "wandb" not in sys.modules:
        # An inherited WANDB_SERVICE points at the wandb-core of a parent process (started with
        # that process's settings); wandb 0.26's core crashed exporting through one. Start our own.
        os.environ.pop("WANDB_SERVICE", None)
    bundle = load_bundle(Path(results_dir), only_listed=only_listed)
    infra = infra or infer_infra(bundle.root, bundle.profile)
    name = run_name(bundle.profile, infra, bundle.git_commit, _run_time(bundle))
    chosen, offline_reason = choose_mode(mode)
    report: dict[str, Any] = {
        "schema_version": 1,
        "results_dir": str(bundle.root),
        "profile": bundle.profile,
        "infra": infra,
        "project": project,
        "entity": entity,
        "requested_mode": mode,
        "cells": len(bundle.cells),
        "run_name": name,
    }

    if skip_without_key and not os.environ.get(API_KEY_ENV):
        say(
            f"skipped: {API_KEY_ENV} is not set, so nothing is uploaded; results stay in {bundle.root}",
            prefix="export",
        )
        report.update(mode="skipped", reason=f"{API_KEY_ENV} is not set")
    elif chosen == "disabled":
        say("W&B export disabled; nothing logged", prefix="export")
        report.update(mode="disabled", reason="wandb mode is 'disabled'")
    else:
        log = functools.partial(
            _log_run, bundle, project=project, entity=entity, infra=infra, name=name
        )
        if chosen == "online":
            offline_reason = probe(base_url())
            if offline_reason is None:
                earlier = _online_run_dirs(bundle.root)
                try:
                    report.update(log(mode="online"), mode="online", reason=None)
                except Exception as exc:  # any W&B failure: keep the results, go offline
                    offline_reason = f"online export failed ({_one_line(exc)})"
                    # Its partial run directory would make a later `wandb sync` of the results
                    # directory upload this failed run next to the offline one.
                    for partial in _online_run_dirs(bundle.root) - earlier:
                        shutil.rmtree(partial, ignore_errors=True)
            if offline_reason:
                say(
                    f"cannot upload to W&B, falling back to offline: {offline_reason}",
                    prefix="export",
                )
        if report.get("mode") != "online":
            with _staging_in(bundle.root):
                report.update(log(mode="offline"), mode="offline", reason=offline_reason)
        report["sync_command"] = f"wandb sync {shlex.quote(report['run_dir'])}"
        if report["mode"] == "online":
            say(f"uploaded run {report['run_path']} ({report['run_url']})", prefix="export")
        else:
            why = f" ({offline_reason})" if offline_reason else ""
            say(f"offline run written to {report['run_dir']}{why}", prefix="export")
            say(f"upload it later with: {report['sync_command']}", prefix="export")
    report["duration_s"] = round(time.monotonic() - started, 3)
    report["finished"] = utc_now()
    if marker is not None:
        write_json_atomic(Path(marker), report)
    return report


#: Written by `CellsRun` after each cell kept: the run's id and path, and the cells it holds.
CELLS_RECORD = "wandb/cells-run.json"


class CellsRun:
    """A W&B run that receives each cell as soon as it is measured (`datarax-bench run
    --keep-each-cell` without a bucket): one run per benchmark run, resumed for each cell, which
    adds the cell's summary keys (as the final export names them), one history row, and the
    cell's raw result file (uploaded at once, `policy="now"`). The final export (`persist`) then
    makes the complete run as before; this one only makes sure that an interrupted run has lost
    no more than the cell in flight.

    In this process, between cells (never while a worker measures): wandb is imported once, and
    its service process is stopped after each cell (`wandb.teardown`), so nothing of W&B runs
    during a measurement.
    """

    def __init__(
        self,
        results_dir: Path,
        profile: str,
        *,
        project: str = DEFAULT_PROJECT,
        entity: str | None = None,
        mode: str = "online",
        run_id: str | None = None,
    ):
        check_names(project, entity)
        self.root = Path(results_dir).absolute()
        self.profile, self.project, self.entity, self.mode = profile, project, entity, mode
        started = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        where = f"{self.root}|{started}|{os.environ.get('SKYPILOT_TASK_ID', '')}"
        self.run_id = run_id or f"cells-{hashlib.sha256(where.encode()).hexdigest()[:16]}"
        self.name = f"{profile}-cells-{started}"
        self.kept = 0

    def __call__(self, path: Path, result: dict[str, Any]) -> dict[str, Any]:
        """Log one cell's result (written at `path` under the results directory)."""
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        if "wandb" not in sys.modules:
            os.environ.pop("WANDB_SERVICE", None)  # a parent's wandb-core: start our own
        import wandb

        path = Path(path).absolute()
        cell = CellResult(path.relative_to(self.root), result)
        metrics = cell_metrics(cell)
        run = wandb.init(
            project=self.project,
            entity=self.entity,
            id=self.run_id,
            resume="allow",
            name=self.name,
            group=self.profile,
            job_type="cells",
            tags=[f"profile:{self.profile}", "cells"],
            dir=str(self.root),
            settings=_settings(self.mode),
            reinit="create_new",
        )
        try:
            run.log({"cell": cell_key(table_row(cell)), **metrics})
            run.summary.update(metrics)
            run.save(str(path), base_path=str(self.root), policy="now")
        except BaseException:
            run.finish(exit_code=1)
            wandb.teardown()
            raise
        run.finish()
        wandb.teardown()
        self.kept += 1
        record = {
            "run_id": self.run_id,
            "run_path": f"{run.entity}/{run.project}/{run.id}" if self.mode == "online" else None,
            "mode": self.mode,
            "cells": [*self._kept_cells(), cell.path.as_posix()],
        }
        write_json_atomic(self.root / CELLS_RECORD, record)
        return {"run_id": self.run_id, "run_dir": str(Path(run.dir).parent)}

    def _kept_cells(self) -> list[str]:
        path = self.root / CELLS_RECORD
        return json.loads(path.read_text())["cells"] if path.is_file() else []


def export_for_workflow(results_dir: Path, marker: Path, **options: Any) -> dict[str, Any]:
    """The workflow's export: like export_results, but W&B trouble never fails the rule.

    Bad results (UserError) still fail it. Anything else that goes wrong after the fallback to
    offline (a wandb bug, a full disk) is recorded in the marker as mode `failed`: the results
    are on disk either way, and a failing export must not hold up the rest of the workflow.
    """
    try:
        # The aggregate rule wrote the manifest for exactly this invocation's cells: with a
        # scenario subset (`--config scenarios=[...]`) the other scenarios' files stay on disk.
        return export_results(results_dir, marker=marker, only_listed=True, **options)
    except UserError:
        raise
    except Exception as exc:
        say(f"W&B export failed, results are unaffected: {_one_line(exc)}", prefix="export")
        report = {
            "schema_version": 1,
            "results_dir": str(results_dir),
            "mode": "failed",
            "reason": _one_line(exc),
            "finished": utc_now(),
        }
        write_json_atomic(Path(marker), report)
        return report
