"""The workflow's logic in the package (`datarax_bench.workflow.cells`, `.cloud_runs`, and
`run.cell`'s `CellId`, matrix and `measured_with`), on the real catalog and profiles: the
workflow plans the cells `run` measures, names them one way, splits them over shards, and marks
stale exactly the cells `--resume-dir` measures again."""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import pytest

from datarax_bench.cloud import cluster as cloud
from datarax_bench.cloud import managed
from datarax_bench.errors import UserError
from datarax_bench.results import cell_path, infra_dir, process_path, write_json_atomic
from datarax_bench.run.cell import CellClock, CellId, make_result, matrix, resolve_cell
from datarax_bench.run.runner import cell_id, kept_result, select_cells, static_status
from datarax_bench.workflow import cloud_runs
from datarax_bench.workflow.cells import (
    Matrix,
    ShardPlan,
    cell_of,
    cell_pattern,
    process_pattern,
    run_dir_pattern,
    wildcard_constraints,
)
from datarax_bench.workload.catalog import load_catalog, load_profile

CONFIG = {"scenarios": [], "adapters": [], "styles": []}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def wildcards(cell: CellId, **more):
    suffix = "" if cell.style == "plain" else f".{cell.style}"
    return SimpleNamespace(
        scenario=cell.scenario,
        variant=cell.variant,
        adapter=cell.adapter,
        style_suffix=suffix,
        **more,
    )


# --- a cell's one name ----------------------------------------------------------------------


def test_a_cell_id_is_parsed_and_written_one_way():
    cell = CellId("CV-1", "small", "grain", "tuned")
    assert str(cell) == "CV-1/small/grain/tuned" == cell_id(*cell)
    assert CellId.parse(str(cell)) == cell
    assert CellId("CV-1", "small", "grain").style == "plain"
    for bad in ("CV-1/small/grain", "CV-1/small/grain/tuned/x", "CV-1//grain/plain"):
        with pytest.raises(UserError, match="SCENARIO/VARIANT/ADAPTER/STYLE"):
            CellId.parse(bad)


@pytest.mark.parametrize("style", ["plain", "tuned"])
def test_a_cell_s_file_is_the_one_the_workflow_pattern_names(style):
    cell = CellId("CV-1", "small", "grain", style)
    root = "results/smoke/local"
    assert cell.path(root) == cell_path(root, *cell)
    pattern = cell_pattern(run_dir_pattern("results"))
    w = vars(wildcards(cell, profile="smoke", infra="local"))
    assert pattern.format(**w) == str(cell.path(root))
    assert cell_of(wildcards(cell)) == cell
    process = process_pattern(run_dir_pattern("results")).format(**w, process=2)
    assert process == str(process_path(root, *cell, 2))


def test_an_infra_is_one_directory_name_in_results_and_in_the_bucket():
    assert infra_dir("gcp/us-central1") == "gcp_us-central1"
    assert infra_dir("local") == "local"
    assert run_dir_pattern("./results/") == "results/{profile}/{infra}"
    # The bucket's keys (cloud/managed.py) name it the same way.
    assert managed.cells_key("smoke", "gcp/us-central1") == (
        f"smoke/{infra_dir('gcp/us-central1')}/cells"
    )


# --- the matrix -------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["smoke", "quick", "first_look"])
def test_the_workflow_plans_the_cells_run_measures(catalog, profile):
    cells = Matrix.from_config(CONFIG, catalog)
    resolved = [resolve_cell(cells.profile(profile), catalog, *c) for c in cells.cells(profile)]
    assert [c.id for c in resolved] == cells.cells(profile)
    assert cells.cells(profile) == matrix(load_profile(profile, catalog), catalog)
    assert len(set(cells.cells(profile))) == len(cells.cells(profile))
    # `run --cells` selects by the same names, in the matrix's order.
    wanted = [str(c) for c in reversed(cells.cells(profile)[:3])]
    assert [str(c.id) for c in select_cells(resolved, wanted)] == wanted[::-1]


def test_the_config_narrows_the_matrix_as_the_cli_does(catalog):
    config = {"scenarios": ["TAB-1", "CV-1"], "adapters": ["numpy"], "styles": ["tuned"]}
    cells = Matrix.from_config(config, catalog)
    smoke = load_profile("smoke", catalog)
    expected = matrix(smoke, catalog, ["TAB-1", "CV-1"], ["numpy"], ["tuned"])
    assert cells.cells("smoke") == expected
    assert {c.scenario for c in expected} == {"TAB-1", "CV-1"}
    assert {(c.adapter, c.style) for c in expected} == {("numpy", "tuned")}
    assert cells.scenarios_for("smoke") == ["TAB-1", "CV-1"]
    assert Matrix.from_config(CONFIG, catalog).scenarios_for("smoke") == smoke.scenarios
    with pytest.raises(UserError):
        matrix(smoke, catalog, adapters=["no-such-loader"])


def test_a_profile_names_the_adapters_it_measures_and_the_config_replaces_them(catalog):
    smoke = load_profile("smoke", catalog)
    chosen = dataclasses.replace(smoke, adapters=("tfdata", "numpy"))
    adapters = [c.adapter for c in matrix(chosen, catalog)]
    assert sorted(set(adapters)) == ["numpy", "tfdata"]
    assert adapters[0] == "numpy"  # the registry's order, not the profile's
    everything = {c.adapter for c in matrix(smoke, catalog)}
    assert {"numpy", "tfdata"} < everything  # no list: every registered adapter
    assert {c.adapter for c in matrix(chosen, catalog, adapters=["grain"])} == {"grain"}
    wrong = dataclasses.replace(smoke, adapters=("numpy", "no-such-loader"))
    with pytest.raises(UserError, match="profile 'smoke': adapters: unknown adapter 'no-such"):
        matrix(wrong, catalog)


def test_a_cell_s_processes_come_in_rounds(catalog):
    cells = Matrix.from_config(CONFIG, catalog)
    profile = "first_look"
    several = [c for c in cells.cells(profile) if cells.processes(profile, c) > 1]
    assert several, "first_look measures some cells in several processes"
    cell = several[0]
    n = cells.processes(profile, cell)
    assert cells.earlier_processes(profile, cell, None) == list(range(1, n))
    assert cells.earlier_processes(profile, cell, "2") == [1]
    assert [cells.process_priority(profile, cell, k) for k in range(1, n + 1)] == list(
        range(n - 1, -1, -1)
    )


def test_each_wildcard_constraint_matches_the_names_it_can_take(catalog):
    constraints = wildcard_constraints(catalog, "gcp/us-central1")
    cells = Matrix.from_config({**CONFIG, "styles": ["plain", "tuned"]}, catalog)
    for cell in cells.cells("smoke"):
        w = vars(wildcards(cell))
        for name in ("scenario", "variant", "adapter", "style_suffix"):
            assert re.fullmatch(constraints[name], w[name]), (name, w[name])
    assert re.fullmatch(constraints["infra"], "gcp_us-central1")
    assert not re.fullmatch(constraints["infra"], "gcp/us-central1")
    assert re.fullmatch(constraints["profile"], "smoke")
    assert re.fullmatch(constraints["process"], "12") and not re.fullmatch(
        constraints["process"], "0"
    )


# --- what makes a cell stale ------------------------------------------------------------------


def test_the_workflow_s_rerun_trigger_and_resume_dir_agree_on_a_feed_change(catalog, tmp_path):
    """The workflow's params (`workload`, `settings`) and `run --resume-dir`'s `kept_result`
    read one definition (`run.cell.measured_with`): a feed for CV-1 changes the trigger of the
    CV-1 cells and no other, and exactly those results are no longer kept."""
    smoke = load_profile("smoke", catalog)
    fed = dataclasses.replace(smoke, feed={"step_ms": [5], "scenarios": ["CV-1"]})
    before = Matrix.from_config(CONFIG, catalog, profiles={"smoke": smoke})
    after = Matrix.from_config(CONFIG, catalog, profiles={"smoke": fed})
    chosen = [CellId("CV-1", "small", "numpy"), CellId("TAB-1", "small", "numpy")]
    assert set(chosen) <= set(before.cells("smoke"))
    for cell in chosen:
        old = resolve_cell(smoke, catalog, *cell)
        result = make_result("failed", "a stand-in", smoke, old.workload, old.adapter,
                             CellClock(), error="")  # fmt: skip
        # The result records what the workflow's trigger compares.
        assert {k: result[k] for k in ("workload", "settings")} == before.measured_with(
            "smoke", cell
        )
        path = cell.path(tmp_path)
        write_json_atomic(path, result)
        trigger_changed = before.measured_with("smoke", cell) != after.measured_with("smoke", cell)
        new = resolve_cell(fed, catalog, *cell)
        assert kept_result(path, old) is not None  # this checkout's result, kept
        stale = kept_result(path, new) is None
        assert trigger_changed == stale == (cell.scenario == "CV-1"), cell


def test_a_shard_s_settings_are_its_cells_settings(catalog):
    cells = Matrix.from_config(CONFIG, catalog)
    some = cells.cells("smoke")[:4]
    each = cells.measured_with_each("smoke", some)
    assert list(each) == [str(c) for c in some]
    assert all(each[str(c)] == cells.measured_with("smoke", c) for c in some)
    assert list(each[str(some[0])]) == ["workload", "settings"]


# --- a managed run's shards -------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 3, 7])
def test_every_cell_is_in_exactly_one_shard(catalog, shards):
    cells = Matrix.from_config(CONFIG, catalog).cells("smoke")
    plan = ShardPlan.split(cells, shards)
    assert list(plan.shards) == list(range(1, shards + 1))
    assert sorted(c for k in plan.shards for c in plan.cells(k)) == sorted(cells)
    for k in plan.shards:
        assert all(plan.shard_of(c) == k for c in plan.cells(str(k)))
        assert plan.ids(k) == [str(c) for c in plan.cells(k)]
        assert plan.cell_files(k) == {str(c): str(cell_path("", *c)) for c in plan.cells(k)}
    root = "results/smoke/aws"
    by_shard = plan.files_by_shard(root)
    assert sorted(f for files in by_shard.values() for f in files) == sorted(
        str(c.path(root)) for c in cells
    )
    assert plan.reports("w") == [f"w/managed/shard-{k}.json" for k in plan.shards]
    with pytest.raises(ValueError, match="no shard"):
        plan.shard_of(CellId("CV-1", "small", "numpy", "no-such-style"))
    with pytest.raises(UserError, match="shards: got 0"):
        ShardPlan.split(cells, 0)


# --- cloud runs -------------------------------------------------------------------------------


def test_a_cloud_run_names_its_cluster_directory_and_logs():
    run = cloud_runs.CloudRun("smoke", "gcp/us-central1", "bench", "res/{profile}/{infra}/cloud")
    assert run.work_dir == "res/smoke/gcp_us-central1/cloud"
    assert run.cluster == cloud.cluster_name("smoke", "gcp/us-central1", "bench")
    assert run.job_name("2") == managed.job_name(run.cluster, 2)
    assert (
        str(run.log("onerror-teardown")) == "logs/smoke/gcp_us-central1/cloud/onerror-teardown.log"
    )


def _config(**more):
    base = {"infra": "local", "run": "bench", "use_spot": "auto", "shards": 1}
    return {**CONFIG, **base, "max_cluster_hours": 8, **more}


@pytest.fixture
def invocation(monkeypatch):
    """A cloud run's `prepare` gives the process its invocation id (for its jobs): this test's."""
    monkeypatch.setenv(cloud.INVOCATION_ENV, "this-test")


def test_the_run_estimate_counts_only_the_cells_the_cloud_measures_and_a_call_per_batch(
    catalog, capsys, invocation
):
    """An unsupported cell is written here by its own job and a batch of cells is one remote
    call: neither may push a plan over its ceiling."""
    cells = Matrix.from_config(CONFIG, catalog)
    profiles = [cells.profile("smoke")]
    total = len(cells.cells("smoke"))
    stated = {}
    for size in (1, 12):
        cloud_runs.prepare(
            _config(infra="aws", remote_batch_cells=size), cells, profiles, "r/{profile}/{infra}"
        )
        err = capsys.readouterr().err
        found = re.search(r"estimated at [\d.]+ h \((\d+) cells in (\d+) remote calls x 30 s", err)
        assert found, err
        stated[size] = (int(found[1]), int(found[2]))
    remote = stated[1][0]
    unsupported = sum(
        static_status(resolve_cell(cells.profile("smoke"), catalog, *cell)) is not None
        for cell in cells.cells("smoke")
    )
    assert unsupported > 0 and remote == total - unsupported
    assert stated[1] == (remote, remote)  # one call per cell
    assert stated[12][0] == remote and remote / 12 <= stated[12][1] < remote


def test_a_cloud_run_that_cannot_fit_its_ceiling_stops_before_any_job(catalog, capsys, invocation):
    cells = Matrix.from_config(CONFIG, catalog)
    profiles = [cells.profile("smoke")]
    runs = cloud_runs.prepare(_config(), cells, profiles, "r/{profile}/{infra}/cloud")
    assert list(runs) == ["smoke"] and capsys.readouterr().err == ""  # local: no estimate
    cloud_runs.prepare(_config(infra="aws"), cells, profiles, "r/{profile}/{infra}/cloud")
    assert "profile smoke: the run is estimated at" in capsys.readouterr().err
    with pytest.raises(UserError, match="max_cluster_hours"):
        cloud_runs.prepare(
            _config(infra="aws", max_cluster_hours=0.1), cells, profiles, "r/{profile}/{infra}"
        )
