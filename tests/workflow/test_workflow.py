"""The Snakemake workflow end to end on the local machine, run the way users run it.

Each test works in a temporary copy of Snakefile + config/ + workflow/ (the package comes from
the installed checkout; DATARAX_BENCH_ROOT points at the copy), with the smoke profile.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from support import BIN, ROOT
from support.workflow import copy_workflow, planned, snakemake

from datarax_bench.adapters import all_adapters
from datarax_bench.errors import UserError
from datarax_bench.results import load_result
from datarax_bench.run.cell import profile_adapters, resolve_cell
from datarax_bench.run.runner import processes_of
from datarax_bench.workload.catalog import STYLES, load_catalog, profile_names

SMOKE_CELLS = {"CV-1/small/numpy", "PC-1/d1/numpy", "PC-1/d5/numpy"}
RUN_DIR = Path("results/smoke/local")


def executed(proc, rule: str) -> int:
    return len(re.findall(rf"^(?:local)?rule {rule}:", proc.output, re.MULTILINE))


def raw_cells(workdir: Path) -> dict[str, Path]:
    raw = workdir / RUN_DIR / "raw"
    return {str(p.relative_to(raw).with_suffix("")): p for p in raw.rglob("*.json")}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_cache):
    """One real run of the smoke workflow (three cells) that later tests inspect and re-run."""
    workdir = copy_workflow(tmp_path_factory.mktemp("wf") / "checkout")
    proc = snakemake(workdir, "--cores", "2")
    return workdir, proc


@pytest.mark.slow
def test_full_run_produces_every_target(smoke_run):
    workdir, proc = smoke_run
    assert executed(proc, "measure") == 3
    cells = raw_cells(workdir)
    assert set(cells) == SMOKE_CELLS
    for path in cells.values():
        assert load_result(path)["cell"]["profile"] == "smoke"
    table = pd.read_csv(workdir / RUN_DIR / "results.csv")
    assert len(table) == 3 and set(table["status"]) == {"ok"}
    assert set(table["infra"]) == {"local"}
    summary = (workdir / RUN_DIR / "summary.md").read_text()
    assert "## CV-1" in summary and "## PC-1" in summary
    manifest = json.loads((workdir / RUN_DIR / "manifest.json").read_text())
    assert len(manifest["cells"]) == 3
    for scenario in ("CV-1", "PC-1"):
        for kind in ("throughput", "latency", "first_batch"):
            assert (workdir / RUN_DIR / "plots" / scenario / f"{kind}.png").stat().st_size > 0
    logs = {p.relative_to(workdir / "logs").as_posix() for p in (workdir / "logs").rglob("*.log")}
    assert "smoke/local/measure/CV-1/small/numpy.log" in logs
    assert "smoke/local/aggregate.log" in logs and "smoke/local/plots/PC-1.log" in logs


@pytest.mark.slow
def test_the_run_says_its_plan_and_estimate_first_then_progress_after_each_cell(smoke_run):
    workdir, proc = smoke_run
    out = proc.output
    plan = out.index("plan: profile smoke: 3 cells (CV-1/small, PC-1/d1, PC-1/d5 x numpy x plain)")
    estimate = re.search(r"^estimate: about \d+ (s|min) \(", out, re.MULTILINE)
    progress = re.findall(r"^progress: (\d) of 3 cells, (\d) of 3 worker processes done", out, re.M)
    assert estimate and plan < estimate.start() < out.index("progress: ")
    # One line per finished cell, counting up to every cell (the jobs may finish in any order).
    assert sorted(progress) == [("1", "1"), ("2", "2"), ("3", "3")]
    assert "measuring done" in out
    plan_file = json.loads((workdir / "logs/run_plan.json").read_text())
    assert {p["output"] for p in plan_file["processes"]} == {
        str(RUN_DIR / "raw" / f"{cell}.json") for cell in SMOKE_CELLS
    }


@pytest.mark.slow
def test_measurements_never_overlap_whatever_the_cores(smoke_run):
    """--cores 2, yet the bench slot ran the cells one after another."""
    workdir, _ = smoke_run
    spans = sorted(
        (doc["timestamps"]["started"], doc["timestamps"]["finished"])
        for doc in map(load_result, raw_cells(workdir).values())
    )
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, spans


@pytest.mark.slow
def test_report_has_table_plots_and_cells(smoke_run):
    workdir, _ = smoke_run
    snakemake(workdir, "--report", "results/report.html")
    html = (workdir / "results/report.html").read_text(errors="replace")
    for needle in ("results.csv", "summary.md", "throughput.png", "CV-1", "PC-1", "numpy"):
        assert needle in html, needle


@pytest.mark.slow
def test_second_invocation_does_nothing(smoke_run):
    workdir, _ = smoke_run
    proc = snakemake(workdir, "-n")
    assert "Nothing to be done" in proc.output
    assert planned(proc, "measure") == 0


@pytest.mark.slow
def test_one_cell_file_reruns_only_that_cell(smoke_run):
    workdir, _ = smoke_run
    cells = raw_cells(workdir)
    target = cells["PC-1/d5/numpy"]
    before = {k: p.stat().st_mtime_ns for k, p in cells.items()}
    target.unlink()
    proc = snakemake(workdir, "--cores", "1", str(target.relative_to(workdir)))
    assert executed(proc, "measure") == 1 and executed(proc, "aggregate") == 0
    after = {k: p.stat().st_mtime_ns for k, p in raw_cells(workdir).items()}
    assert after["PC-1/d5/numpy"] != before["PC-1/d5/numpy"]
    assert {k: v for k, v in after.items() if k != "PC-1/d5/numpy"} == {
        k: v for k, v in before.items() if k != "PC-1/d5/numpy"
    }
    # The full target now only re-aggregates and re-plots.
    proc = snakemake(workdir, "--cores", "1")
    assert executed(proc, "measure") == 0 and executed(proc, "aggregate") == 1


@pytest.mark.slow
def test_scenario_selection_plans_only_its_cells(smoke_run):
    workdir, _ = smoke_run
    config = ["profile=smoke", "scenarios=[TAB-1]", "adapters=[numpy]"]
    proc = snakemake(workdir, "-n", config=config)
    assert planned(proc, "measure") == 1 and planned(proc, "plot_scenario") == 1


@pytest.mark.slow
def test_changed_settings_rerun_exactly_the_affected_cells(smoke_run):
    workdir, _ = smoke_run
    catalog_path = workdir / "config/scenarios.yaml"
    original = catalog_path.read_text()
    catalog = yaml.safe_load(original)
    catalog["scenarios"]["PC-1"]["variants"]["d5"]["tiny"]["dims"]["side"] = 10
    catalog_path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    try:
        proc = snakemake(workdir, "-n")
        assert planned(proc, "measure") == 1
        assert re.search(r"output: \S+/raw/PC-1/d5/numpy\.json$", proc.output, re.MULTILINE)
    finally:
        catalog_path.write_text(original)
    profile_path = workdir / "config/profiles/smoke.yaml"
    original = profile_path.read_text()
    profile = yaml.safe_load(original)
    profile["measurement"]["min_batches"] += 1
    profile_path.write_text(yaml.safe_dump(profile, sort_keys=False))
    try:
        proc = snakemake(workdir, "-n")
        assert planned(proc, "measure") == 3
        assert "Params have changed" in proc.output
    finally:
        profile_path.write_text(original)
    # A feed for CV-1 changes CV-1's cells only (PC-1 is not in it) and adds CV-1's feed plot.
    profile = yaml.safe_load(original)
    profile["feed"] = {"step_ms": [5], "scenarios": ["CV-1"]}
    profile_path.write_text(yaml.safe_dump(profile, sort_keys=False))
    try:
        proc = snakemake(workdir, "-n")
        assert planned(proc, "measure") == 1 and planned(proc, "plot_feed") == 1
        assert re.search(r"output: \S+/raw/CV-1/small/numpy\.json$", proc.output, re.MULTILINE)
    finally:
        profile_path.write_text(original)
    assert planned(snakemake(workdir, "-n"), "measure") == 0


@pytest.mark.slow
def test_kill_9_mid_cell_leaves_no_partial_result_and_resumes(tmp_path, data_cache):
    workdir = copy_workflow(tmp_path / "checkout")
    config = ["profile=smoke", "scenarios=[CV-1,PC-1,TAB-1]", "adapters=[numpy]"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DATARAX_BENCH_ROOT", None)
    proc = subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "2", "--config", *config],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    try:
        while not raw_cells(workdir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert raw_cells(workdir), "no cell finished in time"
        time.sleep(0.3)  # into the next cell
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    survivors = raw_cells(workdir)
    assert 0 < len(survivors) < 4
    for path in survivors.values():
        load_result(path)  # every file present is a complete, valid result
    before = {k: p.stat().st_mtime_ns for k, p in survivors.items()}
    # A killed Snakemake leaves its lock; --unlock is the documented way out.
    snakemake(workdir, "--unlock", config=config)
    # A cell whose file landed just before the kill is complete but unconfirmed: Snakemake
    # names it and --rerun-incomplete measures it again.
    check = snakemake(workdir, "-n", config=config, check=False)
    flagged = set(re.findall(r"^\S+/raw/(\S+)\.json$", check.output, re.MULTILINE))
    resumed = snakemake(workdir, "--cores", "2", "--rerun-incomplete", config=config)
    assert executed(resumed, "measure") == 4 - len(survivors) + len(flagged)
    cells = raw_cells(workdir)
    assert len(cells) == 4
    kept = set(before) - flagged
    assert {k: cells[k].stat().st_mtime_ns for k in kept} == {k: before[k] for k in kept}


@pytest.mark.slow
def test_a_profile_of_several_processes_measures_every_cell_s_first_before_any_second(
    tmp_path, data_cache
):
    """Rounds in the workflow: a rule per process before the last, ordered by priority, and
    `measure` measuring the last and pooling them; each process is its own job."""
    workdir = copy_workflow(tmp_path / "checkout")
    profile = workdir / "config/profiles/smoke.yaml"
    doc = yaml.safe_load(profile.read_text())
    doc["measurement"].update(processes=3, repetitions=2, repetitions_from="warm", cold_starts=3)
    profile.write_text(yaml.safe_dump(doc))
    config = ["profile=smoke", "scenarios=[CV-1,TAB-1]", "adapters=[numpy]"]
    proc = snakemake(workdir, "--cores", "2", config=config)
    assert executed(proc, "measure_process") == 4 and executed(proc, "measure") == 2
    assert (
        "plan: profile smoke: 2 cells" in proc.output and "3 worker processes each" in proc.output
    )
    assert "progress: 0 of 2 cells, 2 of 6 worker processes done" in proc.output
    assert "progress: 2 of 2 cells, 6 of 6 worker processes done" in proc.output
    cells = raw_cells(workdir)
    assert set(cells) == {"CV-1/small/numpy", "TAB-1/small/numpy"}
    starts = []
    for name, path in cells.items():
        result = load_result(path)
        assert result["status"] == "ok", result["reason"]
        assert result["statistics"]["processes"] == 3
        assert [r["process"] for r in result["repetitions"]] == [0, 0, 1, 1, 2, 2]
        starts += [(a["started"], a["process"], name) for a in result["attempts"]]
    # Every cell's first process, then every cell's second, then every cell's third.
    order = sorted(starts)
    assert [process for _, process, _ in order] == [0, 0, 1, 1, 2, 2], order
    assert len({name for _, _, name in order[:2]}) == 2
    kept = workdir / RUN_DIR / "processes/TAB-1/small/numpy"
    assert sorted(p.name for p in kept.iterdir()) == ["1.json", "2.json"]
    logs = workdir / "logs/smoke/local/measure/TAB-1/small/numpy"
    assert sorted(p.name for p in logs.iterdir()) == ["process-1.log", "process-2.log"]
    assert "Nothing to be done" in snakemake(workdir, "-n", config=config).output
    # `-F CELL` measures that cell again, every process of it, and nothing else.
    other = cells["CV-1/small/numpy"].stat().st_mtime_ns
    before = load_result(kept / "1.json")["timestamps"]["started"]
    target = str(cells["TAB-1/small/numpy"].relative_to(workdir))
    proc = snakemake(workdir, "--cores", "1", "-F", target, config=config)
    assert executed(proc, "measure_process") == 2 and executed(proc, "measure") == 1
    assert load_result(kept / "1.json")["timestamps"]["started"] > before
    assert cells["CV-1/small/numpy"].stat().st_mtime_ns == other


@pytest.fixture(scope="module")
def dry_workflow(tmp_path_factory) -> Path:
    """One copy of the workflow for the tests that only plan (`-n`, `--rulegraph`, `--dag`):
    none of them writes a file a later one reads."""
    return copy_workflow(tmp_path_factory.mktemp("dry") / "checkout")


@pytest.mark.parametrize("profile", profile_names())
@pytest.mark.slow
def test_dry_run_of_every_profile_with_its_adapters(dry_workflow, profile):
    workdir = dry_workflow
    proc = snakemake(workdir, "-n", config=[f"profile={profile}"])
    catalog = load_catalog()
    from datarax_bench.workload.catalog import load_profile

    loaded = load_profile(profile, catalog)
    cells = [
        resolve_cell(loaded, catalog, scenario, variant, adapter, style)
        for scenario, variant in loaded.cells(catalog)
        for adapter in profile_adapters(loaded)
        for style in loaded.styles
    ]
    # Every adapter unless the profile names some (first_look: the reference and four).
    assert set(profile_adapters(loaded)) <= {a.id for a in all_adapters()}
    assert loaded.adapters or len(profile_adapters(loaded)) == len(all_adapters())
    assert planned(proc, "measure") == len(cells)
    # Each process before a cell's last is a job of its own.
    assert planned(proc, "measure_process") == sum(processes_of(c) - 1 for c in cells)
    assert not (workdir / "results").exists()
    # A dry run measures nothing, so it announces no plan, estimate or progress.
    assert not re.search(r"^(plan|estimate|progress): ", proc.output, re.MULTILINE)
    assert not (workdir / "logs").exists()
    dag = snakemake(workdir, "--rulegraph", config=[f"profile={profile}"])
    assert "digraph" in dag.stdout and "measure" in dag.stdout


@pytest.mark.slow
def test_lint_and_format(tmp_path):
    workdir = copy_workflow(tmp_path / "checkout")
    lint = snakemake(workdir, "--lint", config=None)
    assert "Congratulations" in lint.output
    cloud_lint = snakemake(workdir, "--lint", config=["infra=gcp"])
    assert "Congratulations" in cloud_lint.output
    managed_lint = snakemake(
        workdir, "--lint", config=["infra=gcp", "cloud_mode=managed", "results_bucket=s3://abc/p"]
    )
    assert "Congratulations" in managed_lint.output
    files = ["Snakefile", *sorted(str(p) for p in (ROOT / "workflow/rules").glob("*.smk"))]
    fmt = subprocess.run(
        [str(BIN / "snakefmt"), "--check", *files], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


#: Snakemake itself prints google.api_core's FutureWarning about Python 3.11 before it reads
#: the Snakefile (it imports smart_open, whose GCS transport imports google-cloud-storage);
#: config/README.md documents this filter for it.
QUIET_GOOGLE = "ignore::FutureWarning:google.api_core._python_version_support"
ALLOWED = (
    "profile, profiles, infra, scenarios, adapters, styles, run, results_dir, wandb, keep_cluster"
)


#: `--config` overrides the workflow refuses, and the start of its one-line error.
BAD_OVERRIDES = [
    (
        "profile=nope",
        "--config: profile: got 'nope', expected one of 'ci_cpu', 'first_look', 'gpu_a100'",
    ),
    ("scenarios=[XX-1]", "--config: scenarios.0: got 'XX-1', expected one of 'CV-1', 'CV-2'"),
    ("adapters=[nosuch]", "--config: adapters.0: got 'nosuch', expected one of 'numpy'"),
    ("infra=mars", "--config: infra: got 'mars': 'mars' does not match '^(local|vast|lambda"),
    ("scenarios=CV-1", "--config: scenarios: got 'CV-1': 'CV-1' is not of type 'array'"),
    ("run=Has_Caps", "--config: run: got 'Has_Caps': 'Has_Caps' does not match"),
    ("results_dir=7", "--config: results_dir: got 7: 7 is not of type 'string'"),
    ("badkey=1", f"--config: badkey: unknown key; expected one of {ALLOWED}"),
    ("wandb={colour: red}", "--config: wandb.colour: unknown key; expected one of enabled,"),
    (
        "results_dir=/tmp/elsewhere",
        "--config: results_dir: got '/tmp/elsewhere', expected a path relative to the "
        "working directory",
    ),
    (
        "results_dir=out/../../up",
        "--config: results_dir: got 'out/../../up', expected a path inside the working directory",
    ),
]
#: Edits of config/config.yaml the workflow refuses: (old, new, the start of the error).
BAD_CONFIG_FILES = [
    ("run: bench", "run: Bench", "config/config.yaml: run: got 'Bench': 'Bench' does not match"),
    (
        "run: bench\n",
        "run: bench\nrun: again\n",
        "config/config.yaml: line 17: duplicate key 'run' (first at line 16)",
    ),
]


def checked_config(workdir: Path, overrides=(), monkeypatch=None) -> dict:
    """What the Snakefile's setup does with its config, in this process: config/config.yaml
    (its `configfile:`), then `--config` parsed and merged by Snakemake's own functions, then
    `check_config` (workflow/rules/common.smk), from the working directory `workdir`."""
    from snakemake.cli import parse_config
    from snakemake.common.configfile import load_configfile
    from snakemake.utils import update_config

    from datarax_bench.workflow.config import check_config

    monkeypatch.chdir(workdir)
    files = ["config/config.yaml"]  # as the Snakefile names it
    config = load_configfile(files[0])
    command_line = parse_config(list(overrides))
    update_config(config, command_line)
    check_config(config, command_line, files)
    return config


@pytest.mark.parametrize(("override", "expected"), BAD_OVERRIDES)
def test_bad_config_is_one_line_naming_the_key(project_copy, monkeypatch, override, expected):
    with pytest.raises(UserError) as err:
        checked_config(project_copy, [override], monkeypatch)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize(("old", "new", "expected"), BAD_CONFIG_FILES)
def test_bad_config_file_is_one_line_naming_the_file(project_copy, monkeypatch, old, new, expected):
    path = project_copy / "config/config.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(UserError) as err:
        checked_config(project_copy, (), monkeypatch)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value), str(err.value)


def test_the_shipped_config_checks_and_gets_every_default(project_copy, monkeypatch):
    config = checked_config(project_copy, ["profile=smoke", "scenarios=[CV-1]"], monkeypatch)
    assert config["profile"] == "smoke" and config["scenarios"] == ["CV-1"]
    assert config["wandb"]["mode"] == "auto"


# The real Snakemake runs: one per way an error reaches the Snakefile's setup (a `--config`
# value, a config file's, the catalog's); the values themselves are checked in-process above.


def test_bad_config_is_one_line_exit_2_before_any_job(tmp_path, monkeypatch):
    override, expected = BAD_OVERRIDES[0]
    monkeypatch.setenv("PYTHONWARNINGS", QUIET_GOOGLE)
    workdir = copy_workflow(tmp_path / "checkout")
    proc = snakemake(workdir, "-n", config=[override], check=False)
    assert proc.returncode == 2, proc.output[-2000:]
    # Snakemake's own notice that --config extends the config file precedes ours.
    notice = "Config file config/config.yaml is extended by additional config specified via"
    (line,) = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith(notice)]
    assert line.startswith(f"error: {expected}"), line
    assert not (workdir / "results").exists() and not (workdir / "logs").exists()


@pytest.mark.parametrize(
    ("path", "old", "new", "expected"),
    [
        ("config/config.yaml", *BAD_CONFIG_FILES[0]),
        (
            "config/scenarios.yaml",
            "        scale: [0.08, 1.0]\n",
            "",
            "{workdir}/config/scenarios.yaml: scenarios.CV-1.transforms.0 (random_resized_crop): "
            "missing parameter 'scale'",
        ),
    ],
)
@pytest.mark.slow
def test_bad_config_file_or_catalog_is_one_line_exit_2(
    tmp_path, monkeypatch, path, old, new, expected
):
    monkeypatch.setenv("PYTHONWARNINGS", QUIET_GOOGLE)
    workdir = copy_workflow(tmp_path / "checkout")
    text = (workdir / path).read_text()
    assert old in text
    (workdir / path).write_text(text.replace(old, new, 1))
    proc = snakemake(workdir, "-n", config=None, check=False)
    assert proc.returncode == 2, proc.output[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {expected.format(workdir=workdir)}"), line
    assert not (workdir / "results").exists() and not (workdir / "logs").exists()


def test_schema_enums_match_profiles_catalog_and_registry():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    props = schema["properties"]
    assert sorted(props["profile"]["enum"]) == profile_names()
    assert sorted(props["profiles"]["items"]["enum"]) == profile_names()
    assert props["scenarios"]["items"]["enum"] == list(load_catalog().scenarios)
    assert sorted(props["adapters"]["items"]["enum"]) == sorted(a.id for a in all_adapters())
    assert tuple(props["styles"]["items"]["enum"]) == STYLES
    for key, spec in props.items():
        assert "description" in spec and "default" in spec, key
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    assert set(config) == set(props), "config.yaml sets every key the schema knows"


@pytest.mark.slow
def test_several_profiles_in_one_invocation_each_get_their_own_cluster(dry_workflow):
    workdir = dry_workflow
    proc = snakemake(workdir, "-n", config=["profiles=[gpu_a100,tpu_v5e]", "infra=gcp"])
    catalog = load_catalog()
    from datarax_bench.workload.catalog import load_profile

    def cells_of(name: str) -> int:
        profile = load_profile(name, catalog)
        return len(profile.cells(catalog)) * len(profile.styles)

    cells = cells_of("gpu_a100") + cells_of("tpu_v5e")
    assert planned(proc, "teardown") == 2 and planned(proc, "aggregate") == 2
    assert planned(proc, "measure_remote") == cells * len(all_adapters())
    for profile in ("gpu_a100", "tpu_v5e"):
        assert f"results/{profile}/gcp/cloud/teardown.json" in proc.output
    # No cell waits for another: each profile's first cell provisions its own cluster, so the
    # two clusters are provisioned in parallel (cells of one cluster queue on its lock).
    dag = snakemake(workdir, "--dag", config=["profiles=[gpu_a100,tpu_v5e]", "infra=gcp"]).stdout
    cell_nodes = set(re.findall(r"^\s*(\d+)\[label = \"measure_remote", dag, re.MULTILINE))
    assert len(cell_nodes) == cells * len(all_adapters())
    edges = re.findall(r"^\s*(\d+) -> (\d+)", dag, re.MULTILINE)
    assert not [e for e in edges if e[1] in cell_nodes]
    local = snakemake(workdir, "-n", config=["profiles=[smoke,ci_cpu]", "adapters=[numpy]"])
    expected = cells_of("smoke") + cells_of("ci_cpu")
    assert planned(local, "measure") == expected and planned(local, "aggregate") == 2


@pytest.mark.slow
def test_both_styles_end_to_end_with_the_sweep_cached_for_reruns(tmp_path, monkeypatch):
    monkeypatch.setenv("DATARAX_BENCH_CACHE", str(tmp_path / "cache"))
    workdir = copy_workflow(tmp_path / "checkout")
    config = ["profile=smoke", "scenarios=[TAB-1]", "adapters=[numpy,tfdata]"]
    config += ["styles=[plain,tuned]", "wandb={mode: offline}"]
    proc = snakemake(workdir, "--cores", "2", config=config)
    assert executed(proc, "measure") == 4
    cells = raw_cells(workdir)
    assert set(cells) == {
        f"TAB-1/small/{a}{s}" for a in ("numpy", "tfdata") for s in ("", ".tuned")
    }
    tuned = load_result(cells["TAB-1/small/tfdata.tuned"])
    assert tuned["cell"]["style"] == "tuned" and tuned["tuning"]["cached"] is False
    assert tuned["pipeline"]["per_batch"], "TAB-1's trailing value-wise steps run per batch"

    table = pd.read_csv(workdir / RUN_DIR / "results.csv").set_index(["adapter", "style"])
    assert set(table["status"]) == {"ok"}
    for adapter in ("numpy", "tfdata"):
        row = table.loc[(adapter, "tuned")]
        assert row["same_bytes_as_plain"] == True  # noqa: E712 - a numpy bool from the CSV
        expected = (
            row["elements_per_s_median"] / table.loc[(adapter, "plain")]["elements_per_s_median"]
        )
        assert row["tuned_to_plain"] == pytest.approx(expected, rel=1e-3)
        assert pd.isna(table.loc[(adapter, "plain")]["tuned_to_plain"])
    assert "tf_map_parallel_calls=" in table.loc[("tfdata", "tuned")]["tuned_parallelism"]
    summary = (workdir / RUN_DIR / "summary.md").read_text()
    assert "Tuned parallelism" in summary and "| tuned |" in summary
    assert "first batch differs from the plain style" not in summary

    # Re-measuring the tuned cell takes the cached choice: no second sweep.
    snakemake(
        workdir, "--cores", "2", "-R", f"{RUN_DIR}/raw/TAB-1/small/tfdata.tuned.json", config=config
    )
    again = load_result(cells["TAB-1/small/tfdata.tuned"])
    assert again["tuning"]["cached"] is True and again["tuning"]["cost_s"] == 0
    assert again["tuning"]["chosen"] == tuned["tuning"]["chosen"]
