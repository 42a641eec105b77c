"""Remote cells in batches (cloud/batches.py): which cells share a `sky exec`, the remote command
that measures them, and when a kept result still counts."""

from __future__ import annotations

import os
import subprocess

import pytest

from datarax_bench.cloud import batches, tasks
from datarax_bench.errors import UserError
from datarax_bench.run.cell import CellClock, CellId, make_result, matrix, resolve_cell
from datarax_bench.run.runner import static_status
from datarax_bench.workflow import cloud_runs
from datarax_bench.workload.catalog import load_catalog, load_profile


def cells(scenario: str, variant: str, adapters: str, style: str = "plain") -> list[CellId]:
    return [CellId(scenario, variant, a, style) for a in adapters.split()]


def test_a_batch_is_one_scenario_variant_and_style_in_the_matrix_order():
    tab = cells("TAB-1", "small", "a b c")
    cv = cells("CV-1", "small", "a b")
    tuned = cells("CV-1", "small", "a", "tuned")
    mixed = [tab[0], tab[1], cv[0], tuned[0], tab[2], cv[1]]
    assert batches.plan(mixed, 12) == [tab, cv, tuned]
    assert batches.plan(mixed, 1) == [[c] for c in [*tab, *cv, *tuned]]


def test_a_group_larger_than_the_size_is_split_evenly_and_consecutively():
    group = cells("TAB-1", "small", " ".join(f"a{i}" for i in range(20)))
    assert [len(b) for b in batches.plan(group, 12)] == [10, 10]
    assert [len(b) for b in batches.plan(group[:13], 12)] == [7, 6]
    assert [len(b) for b in batches.plan(group, 7)] == [7, 7, 6]
    assert [c for b in batches.plan(group, 7) for c in b] == group
    with pytest.raises(UserError, match="remote_batch_cells: got 0"):
        batches.plan(group, 0)


def test_cells_decided_without_a_machine_take_no_place_in_a_batch():
    catalog = load_catalog()
    profile = load_profile("smoke", catalog)
    every = matrix(profile, catalog)
    static = [c for c in every if static_status(resolve_cell(profile, catalog, *c))]
    assert static, "the smoke matrix has unsupported cells"
    plan = batches.remote_plan(profile, catalog, every, 12)
    planned = [c for b in plan for c in b]
    assert not set(static) & set(planned)
    assert sorted(planned) == sorted(set(every) - set(static))
    assert batches.batch_of(plan, static[0]) == [static[0]]
    assert planned[0] in batches.batch_of(plan, planned[0])


def test_the_workflow_finds_a_cells_batch_and_the_longest_one_from_its_config():
    config = {"scenarios": ["TAB-1", "CV-1"], "adapters": ["numpy", "grain", "datarax"],
              "styles": [], "remote_batch_cells": 2}  # fmt: skip
    # CV-1's three cells in the config's adapter order: 2 + 1.
    batch, longest = cloud_runs.remote_batch(config, "smoke", CellId("CV-1", "small", "datarax"))
    assert batch == [CellId("CV-1", "small", "datarax")]
    assert longest == 2
    batch, _ = cloud_runs.remote_batch(config, "smoke", CellId("CV-1", "small", "grain"))
    assert batch == cells("CV-1", "small", "numpy grain")
    single, longest = cloud_runs.remote_batch(
        {**config, "remote_batch_cells": 1}, "smoke", CellId("CV-1", "small", "numpy")
    )
    assert single == [CellId("CV-1", "small", "numpy")] and longest == 1


def test_the_batch_command_measures_only_its_cells_after_removing_their_old_results():
    batch = cells("TAB-1", "small", "numpy grain")
    command = tasks.remote_batch_command("smoke", batch)
    raw = "~/datarax-bench-results/smoke/raw/TAB-1/small"
    assert f"rm -f {raw}/numpy.json {raw}/grain.json; datarax-bench run" in command
    assert "--scenarios TAB-1 --style plain --output-dir ~/datarax-bench-results/smoke " in command
    assert command.endswith("--cells TAB-1/small/numpy/plain TAB-1/small/grain/plain )")
    # A subshell that stops at the first failure, as every remote command.
    assert command.startswith("( set -euo pipefail; source ~/.datarax-bench-env; ")
    subprocess.run(["bash", "-n", "-c", command], check=True)


def test_a_kept_result_counts_only_for_its_cell_workload_and_settings(tmp_path):
    catalog = load_catalog()
    profile = load_profile("smoke", catalog)
    cell = resolve_cell(profile, catalog, "TAB-1", "small", "numpy", "plain")
    other = resolve_cell(profile, catalog, "TAB-1", "small", "grain", "plain")
    result = make_result(
        "failed", "for the test", profile, cell.workload, cell.adapter, CellClock()
    )
    assert batches.same_measurement(result, cell)
    assert not batches.same_measurement(result, other)
    changed = {**result, "settings": {**result["settings"], "seed": 1}}
    assert not batches.same_measurement(changed, cell)
    cache = batches.cache_path(tmp_path / "cloud", CellId("TAB-1", "small", "numpy"))
    assert cache == tmp_path / "cloud" / "batches" / "raw" / "TAB-1" / "small" / "numpy.json"


def test_a_cached_result_is_taken_once_without_any_sky_call_and_a_stale_one_is_dropped(
    tmp_path, monkeypatch
):
    from datarax_bench.cloud import cluster as cloud
    from datarax_bench.results import load_result, write_result

    # A `sky` and an rsync that only record that they were called.
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for name in ("sky", "rsync"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexit 1\n')
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    catalog = load_catalog()
    profile = load_profile("smoke", catalog)
    me, mate = CellId("TAB-1", "small", "numpy"), CellId("TAB-1", "small", "grain")
    cell = resolve_cell(profile, catalog, *me)
    work = tmp_path / "results" / "smoke" / "ssh_loopback" / "cloud"
    spec = cloud.ClusterSpec(profile, "ssh/loopback", "c1", cloud.CloudSettings(), work, tmp_path)
    result = make_result(
        "failed", "for the test", profile, cell.workload, cell.adapter, CellClock()
    )
    cached = batches.cache_path(work, me)
    write_result(cached, result)
    output = me.path(work.parent)
    assert cloud.measure_remote_cell(spec, *me[:3], output, batch=[me, mate]) == result
    assert load_result(output) == result and not cached.exists()
    assert [e["event"] for e in spec.ledger.events()] == ["taken_from_batch"]
    assert not calls.exists()
    # Measured by other code (another commit): not taken, and removed.
    stale = {**result, "provenance": {**result["provenance"], "git_commit": "0" * 40}}
    write_result(cached, stale)
    assert cloud._take_from_cache(spec, me, cell, output) is None
    assert not cached.exists()
