"""Aggregating cell results into tables and a ranked summary (the workflow's `aggregate` rule).

`results.csv` has one row per cell (every status, all statistics); `repetitions.csv` one row per
timed repetition of the `ok` cells (the per-repetition latency percentiles the plots use).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from datarax_bench.machine_load import BUSY_SHARE
from datarax_bench.report.bill import billing_markdown, managed_markdown
from datarax_bench.results import (
    all_or_nothing,
    cell_style,
    load_result,
    result_row,
    shortest_fed_label,
    utilisation_columns,
    write_run_index,
    write_text_atomic,
)
from datarax_bench.stats import UNSTABLE_CV, is_unstable
from datarax_bench.workload.catalog import STYLES, load_profile


def cell_row(result: dict[str, Any], infra: str, path: str) -> dict[str, Any]:
    """One row of results.csv: the result's row (`results.result_row`) on `infra`."""
    row = result_row(result, path)
    return {"profile": row.pop("profile"), "infra": infra, **row}


def repetition_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    if result["status"] != "ok":
        return []
    identity = {"profile": result["cell"]["profile"]}
    identity.update(
        {k: result["cell"][k] for k in ("scenario", "variant", "adapter", "adapter_name")}
    )
    identity["style"] = cell_style(result)
    rows = []
    for rep in result["repetitions"]:
        row = {**identity, "repetition": rep["index"], "process": rep.get("process", 0)}
        for key in ("batches", "elements", "window_s", "elements_per_s", "bytes_per_s"):
            row[key] = rep[key]
        row.update({f"latency_ms_{k}": v for k, v in rep["latency_ms"].items()})
        for key in ("time_to_first_batch_s", "setup_s", "peak_rss_bytes", "device_peak_bytes"):
            row[key] = rep[key]
        row["cpu_s_per_1k_elements"] = rep.get("cpu_s_per_1k_elements")
        row["others_cpu_share"] = (rep.get("machine_load") or {}).get("foreign_share")
        rows.append(row)
    return rows


def results_table(results: list[dict[str, Any]], infra: str, paths: list[str]) -> pd.DataFrame:
    """One row per cell in input order, with rank and ratio to the best adapter of each variant
    and style, and each tuned cell beside its adapter's plain one."""
    table = pd.DataFrame([cell_row(r, infra, p) for r, p in zip(results, paths, strict=True)])
    if table.empty:
        return table
    median = table["elements_per_s_median"].astype(float)
    ok = table["status"] == "ok"
    group = [table["scenario"], table["variant"], table["style"]]
    best = median.where(ok).groupby(group).transform("max")
    table["ratio_to_best"] = (median / best).where(ok)
    table["rank"] = median.where(ok).groupby(group).rank(ascending=False, method="min")
    table["rank"] = table["rank"].astype("Int64")
    table = table.join(_beside_plain(table))
    # The flag the harness wrote; results from before it existed get the same rule applied here.
    cv = table["elements_per_s_cv"].astype(float)
    computed = cv.map(lambda v: bool(v == v and is_unstable(v)))
    table["unstable"] = (
        table["unstable"].where(table["unstable"].notna(), computed).where(ok, False)
    )
    return table


def _beside_plain(table: pd.DataFrame) -> pd.DataFrame:
    """Per row: `tuned_to_plain`, its median over the plain cell's of the same adapter and
    variant, and `same_bytes_as_plain`, whether their first batches have the same digest (the
    tuned style must deliver the plain bytes); empty for plain rows and where one is missing."""
    key = ["scenario", "variant", "adapter"]
    ok = table[table["status"] == "ok"]
    plain = ok[ok["style"] == "plain"].set_index(key)
    out = pd.DataFrame(index=table.index, columns=["tuned_to_plain", "same_bytes_as_plain"])
    out = out.astype({"tuned_to_plain": float, "same_bytes_as_plain": object})
    for i, r in ok[ok["style"] != "plain"].iterrows():
        k = (r["scenario"], r["variant"], r["adapter"])
        if k not in plain.index:
            continue
        base = plain.loc[k]
        out.at[i, "tuned_to_plain"] = r["elements_per_s_median"] / base["elements_per_s_median"]
        if r["first_batch_sha256"] and base["first_batch_sha256"]:
            out.at[i, "same_bytes_as_plain"] = r["first_batch_sha256"] == base["first_batch_sha256"]
    return out


def repetitions_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    columns = [
        *("profile", "scenario", "variant", "adapter", "adapter_name", "style"),
        *("repetition", "process"),
    ]
    rows = [row for r in results for row in repetition_rows(r)]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.3g}"


def _ratio(value: Any) -> str:
    return "" if value is None or value != value else f"{value:.2f}×"


def _text(value: Any) -> str:
    """A text cell; a missing value (None, or NaN once pandas has had the column) is a dash."""
    return "—" if value is None or value != value or value == "" else _md(value)


def _optional(value: Any) -> str:
    return "" if value is None or value != value else _number(float(value))


def _precision_missed(table: pd.DataFrame) -> str:
    """A sentence on the cells measured to a precision target that did not meet it, or ''."""
    if "stopped" not in table:
        return ""
    stopped = table["stopped"].fillna("").astype(str)
    # One process stops at its cap ("max_repetitions reached"), several pooled say it of the cell.
    missed = stopped.str.startswith(("precision not reached", "max_repetitions reached"))
    targeted = missed | stopped.str.startswith("precision reached")
    if not missed.any():
        return ""
    return (
        f" {int(missed.sum())} of {int(targeted.sum())} cells measured to a precision target did "
        "not meet it: their intervals are as wide as shown (`precision` and `stopped` in "
        "results.csv)."
    )


def _busy(r) -> str:
    """The busy note, with the share of the machine others used during the cell's windows."""
    busy = getattr(r, "busy", None)
    if busy is None or busy != busy or not bool(busy):  # None or NaN: not known
        return ""
    return f"**busy** (others used {r.others_cpu_share:.0%})"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _adapter(name: str, adapter: str, style: str) -> str:
    """An adapter as users name it, with its id, and its style unless plain."""
    label = f"{_md(name)} (`{adapter}`)"
    return label if style == "plain" else f"{label}, {style}"


def summary_markdown(table: pd.DataFrame, profile: str, infra: str) -> str:
    """Per scenario: ok cells ranked by median throughput, then the cells that were not measured."""
    lines = [f"# Benchmark summary: profile `{profile}`, infra `{infra}`", ""]
    counts = table["status"].value_counts() if not table.empty else pd.Series(dtype=int)
    described = ", ".join(f"{n} {status}" for status, n in counts.items())
    retried = table[table["attempts"] > 1] if not table.empty else table
    if len(retried):
        outcome = ", ".join(f"{n} {s}" for s, n in retried["status"].value_counts().items())
        described += f"; {len(retried)} retried after a failed attempt ({outcome})"
    lines += [
        f"{len(table)} cells: {described or 'none'}. Throughput is the median of the repetitions "
        "in elements/s with its 95% confidence interval (over the worker processes' medians "
        "where a cell ran in several, else a bootstrap over its windows); the ratio is to the "
        "fastest "
        f"adapter of the same variant; cells whose repetitions vary by more than "
        f"{UNSTABLE_CV:.0%} (coefficient of variation) are marked **unstable**, and cells "
        f"during whose windows other processes used more than {BUSY_SHARE:.0%} of the machine's "
        "CPU are marked **busy**, with that share. CPU seconds count the measuring process and "
        "all its worker processes." + _precision_missed(table),
        "",
    ]
    for scenario, rows in table.groupby("scenario", sort=False):
        lines += [f"## {scenario}: {rows['scenario_name'].iloc[0]}", ""]
        order = {v: i for i, v in enumerate(rows["variant"].drop_duplicates())}
        ok = rows[rows["status"] == "ok"]
        styles = {style: i for i, style in enumerate(STYLES)}
        ok = ok.assign(_order=ok["variant"].map(order), _style=ok["style"].map(styles)).sort_values(
            ["_order", "_style", "rank"], kind="stable"
        )
        if len(ok) and ok["measure"].iloc[0] != "throughput":
            lines += _special_table(ok)
        elif len(ok):
            lines += [
                "| Variant | Style | Rank | Adapter | Median elements/s | 95% CI | Ratio to best "
                "| Tuned/plain | Tuned parallelism | CV | CPU s per 1k elements | Note |",
                "|---|---|---:|---|---:|---|---:|---:|---|---:|---:|---|",
            ]
            for r in ok.itertuples():
                note = " ".join(filter(None, ["**unstable**" if r.unstable else "", _busy(r)]))
                if r.first_batch_consistent is False:
                    note = (note + " first batch differs between repetitions").strip()
                if r.same_bytes_as_plain is False:
                    note = (note + " **first batch differs from the plain style's**").strip()
                lines.append(
                    f"| {r.variant} | {r.style} | {r.rank} | {_md(r.adapter_name)} (`{r.adapter}`) "
                    f"| {_number(r.elements_per_s_median)} "
                    f"| {_number(r.elements_per_s_ci95_low)}–{_number(r.elements_per_s_ci95_high)} "
                    f"| {r.ratio_to_best:.2f} | {_ratio(r.tuned_to_plain)} "
                    f"| {_text(getattr(r, 'tuned_parallelism', None))} "
                    f"| {r.elements_per_s_cv:.1%} "
                    f"| {_optional(getattr(r, 'cpu_s_per_1k_elements_median', None))} | {note} |"
                )
            lines.append("")
            lines += _feed_table(ok)
        missing = rows[rows["status"] != "ok"]
        if len(missing):
            lines += ["| Variant | Adapter | Status | Reason |", "|---|---|---|---|"]
            for r in missing.itertuples():
                lines.append(
                    f"| {r.variant} | {_adapter(r.adapter_name, r.adapter, r.style)} | {r.status} "
                    f"| {_md(r.reason)} |"
                )
            lines.append("")
    return "\n".join(lines)


def _feed_table(ok: pd.DataFrame) -> list[str]:
    """Whether each loader kept an emulated accelerator fed: utilisation per step time and the
    shortest step fed (the profile's `feed`; nothing where it was not measured)."""
    columns = [(t, c) for t, c in utilisation_columns(ok.columns) if ok[c].notna().any()]
    if not columns:
        return []
    fed = ok[ok[[c for _, c in columns]].notna().any(axis=1)]
    threshold = float(fed["feed_threshold"].dropna().iloc[0])
    steps = [t for t, _ in columns]
    header = ["Variant", "Adapter", *(f"AU at {t:g} ms" for t in steps), "Fed from"]
    lines = [
        "Keeping an accelerator fed: the utilisation (AU = batches × step time / wall time) of a "
        "training loop that spends a fixed step time on each batch while the next one is "
        "fetched (an emulated accelerator, no host CPU). Fed from: the shortest step time from "
        f"which every longer one reaches {threshold:.0%}, the fastest training step this loader "
        "keeps fed on this machine.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|---|" + "---:|" * (len(header) - 2),
    ]
    for r in fed.to_dict("records"):
        cells = [
            r["variant"],
            _adapter(r["adapter_name"], r["adapter"], r["style"]),
            *("" if pd.isna(r[c]) else f"{r[c]:.1%}" for _, c in columns),
            shortest_fed_label(r["feed_shortest_fed_step_ms"], steps),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


#: The metrics a special measurement's summary table shows, in order, where not all of its
#: scalar metrics (lists such as per-repetition times stay in results.csv and the result files).
SUMMARY_METRICS = {
    "source_backends": (
        "reader",
        "bytes_on_disk",
        "time_to_first_batch_s_median",
        "load_s_median",
        "page_cache",
        "build_s",
    ),
    "streaming": (
        "dataset_bytes",
        "time_to_first_batch_s_median",
        "load_s_median",
        "time_to_first_batch_including_load_s_median",
        "page_cache",
    ),
    "checkpoint": (
        "checkpoint_after",
        "resume_exact",
        "save_s_median",
        "restore_s_median",
        "first_batch_after_restore_s_median",
        "state_bytes",
    ),
}
#: Text metrics said once under the table, for each distinct value, instead of in every row.
SUMMARY_NOTES = ("record_encoding", "page_cache_note")


def _plain(value: Any) -> Any:
    """Whole numbers as integers (pandas stores a column with gaps as floats)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return "" if value is None or (isinstance(value, float) and value != value) else value


def _metric(key: str, value: Any) -> str:
    """One special metric for the summary: sizes in binary units, times to three figures."""
    value = _plain(value)
    if isinstance(value, bool) or value == "":
        return str(value)
    if key.endswith("bytes") or key.endswith("bytes_on_disk"):
        size, unit = float(value), "B"
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if size < 1024 or unit == "TiB":
                break
            size /= 1024
        return f"{value} B" if unit == "B" else f"{size:.3g} {unit}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return _md(value)


def _special_table(ok: pd.DataFrame) -> list[str]:
    """A special measurement's own table: its metrics first, throughput beside them, no ranking
    (what such a scenario measures is not which loader is fastest)."""
    measure = ok["measure"].iloc[0]
    present = [c for c in ok.columns if c.startswith("special_") and ok[c].notna().any()]
    chosen = SUMMARY_METRICS.get(measure)
    if chosen:
        keys = [f"special_{k}" for k in chosen if f"special_{k}" in present]
    else:
        keys = [c for c in present if c.removeprefix("special_") not in SUMMARY_NOTES]
    names = [k.removeprefix("special_").replace("_", " ") for k in keys]
    header = ["Variant", "Adapter", *names, "Median elements/s", "CV"]
    lines = [
        f"Measurement `{measure}`:",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * (len(header) - 2) + "---:|---:|",
    ]
    for r in ok.itertuples():
        note = " ".join(filter(None, ["**unstable**" if r.unstable else "", _busy(r)]))
        note = f" {note}" if note else ""
        cells = [
            r.variant,
            _adapter(r.adapter_name, r.adapter, r.style),
            *(_metric(k, getattr(r, k)) for k in keys),
            _number(r.elements_per_s_median),
            f"{r.elements_per_s_cv:.1%}{note}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for key in SUMMARY_NOTES:
        column = f"special_{key}"
        if column not in present:
            continue
        for value, rows in ok.groupby(column, sort=False):
            variants = ", ".join(dict.fromkeys(rows["variant"]))
            lines.append(f"- {key.replace('_', ' ')} ({variants}): {_md(value)}")
        lines.append("")
    return lines


def _csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False)


def aggregate_run(
    result_paths: Iterable[str | Path],
    run_dir: str | Path,
    profile: str,
    infra: str,
    table_path: str | Path | None = None,
    repetitions_path: str | Path | None = None,
    summary_path: str | Path | None = None,
) -> pd.DataFrame:
    """Read every cell (validated), write results.csv, repetitions.csv, summary.md and the run index
    (manifest.json, summary.json) in `run_dir`. Returns the results table."""
    run_dir = Path(run_dir)
    paths = [Path(p) for p in result_paths]
    results = [load_result(p) for p in paths]
    relative = [str(p.resolve().relative_to(run_dir.resolve())) for p in paths]
    table = results_table(results, infra, relative)
    repetitions = repetitions_table(results)
    summary = summary_markdown(table, profile, infra) + billing_markdown(run_dir)
    summary += managed_markdown(run_dir)
    run_profile = load_profile(profile)
    # Every output or none: a failure part-way leaves the previous outputs as they were.
    with all_or_nothing():
        write_text_atomic(Path(table_path or run_dir / "results.csv"), _csv(table))
        write_text_atomic(Path(repetitions_path or run_dir / "repetitions.csv"), _csv(repetitions))
        write_text_atomic(Path(summary_path or run_dir / "summary.md"), summary)
        write_run_index(run_profile, run_dir, results)
    return table
