# Configuration, the cell matrix and input functions. What the rules need to know about cells,
# profiles, shards and cloud runs is the package's (src/datarax_bench/workflow/cells.py and
# cloud_runs.py, unit-tested in tests/test_workflow_logic.py); this file only wires it.
import os
import re
import sys

# The catalog and profiles are the ones in this checkout (jobs inherit the variable).
os.environ.setdefault("DATARAX_BENCH_ROOT", workflow.basedir)

from datarax_bench import machine_load
from datarax_bench.adapters import all_adapters
from datarax_bench.results import cell_path, process_path
from datarax_bench.workload.catalog import (
    STYLES,
    load_catalog,
    load_profile,
    profile_names,
)
from datarax_bench.workflow import cloud_runs, engine, progress
from datarax_bench.workflow.cells import Matrix, ShardPlan, cell_of, infra_dir
from datarax_bench.workflow.config import check_config, one_line_errors

# A bad config value, catalog or profile: one line and exit code 2 before any job, as the CLI.
with one_line_errors():
    check_config(config, workflow.config_settings.config, workflow.configfiles)
    CELLS = Matrix.from_config(config, load_catalog())
    # `profiles` (several in one invocation) wins over `profile`; the first is the default.
    PROFILES = [CELLS.profile(n) for n in config["profiles"] or [config["profile"]]]
PROFILE = PROFILES[0]
INFRA = infra_dir(config["infra"])
RESULTS = os.path.normpath(config["results_dir"])

# One bench slot, so that two measurements never share the machine whatever --cores says
# (measuring rules take bench_slot=1). profiles/default declares it too; the workflow sets it
# itself unless the command line already did (`--resources bench_slot=N`).
if "bench_slot" not in workflow.global_resources:
    workflow.register_resource("bench_slot", 1)


# Before the first job (not on a dry run): Snakemake without its job-rate limiter, whose
# re-planning kept it busy during measurements (src/datarax_bench/workflow/engine.py); then, for
# a local run, what makes this machine noisy now (strict_machine: refuse to start), what the run
# will measure and how long it should take.
onstart:
    if not engine.drop_rate_limiter(workflow):
        print(engine.LIMITER_WARNING, file=sys.stderr)
    if config["infra"] == "local":
        machine_load.check_before_measuring(
            max(machine_load.cores_assumed(p.parallelism) for p in PROFILES),
            config["strict_machine"],
            seconds=2.0,
        )
        jobs = workflow.dag.needrun_jobs()
        progress.announce(
            PLAN, progress.planned_processes(jobs, CELLS.profile, CELLS.catalog)
        )


# A local run's plan (every worker process, costed), written by onstart, read by each measuring
# job for its progress line.
PLAN = "logs/run_plan.json"

# results/{profile}/{infra} is a results directory like `datarax-bench run --output-dir` writes.
RUN_DIR = f"{RESULTS}/{{profile}}/{{infra}}"
# raw/S/V/A.json, or raw/S/V/A.STYLE.json: the style suffix is empty or ".STYLE".
CELL = str(cell_path(RUN_DIR, "{scenario}", "{variant}", "{adapter}{style_suffix}"))
# A cell measured in several worker processes keeps each one's result until it pools them.
PROCESS = str(
    process_path(
        RUN_DIR,
        "{scenario}",
        "{variant}",
        "{adapter}{style_suffix}",
        "plain",
        "{process}",
    )
)
# Every rule that writes a cell's result files it in the report the same way.
CELL_REPORT = report(
    CELL,
    caption="../report/cell.rst",
    category="{scenario}",
    subcategory="{variant}",
    labels={
        "adapter": "{adapter}{style_suffix}",
        "variant": "{variant}",
        "file": "result JSON",
    },
)
# A cloud run's records and bill; cloud.smk's teardown or managed.smk's finish writes the last.
CLOUD_DIR = f"{RUN_DIR}/cloud"
TEARDOWN = f"{CLOUD_DIR}/teardown.json"


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))


wildcard_constraints:
    profile=_alternatives(profile_names()),
    infra=re.escape(INFRA),
    scenario=_alternatives(CELLS.catalog.scenarios),
    variant=_alternatives(
        v for s in CELLS.catalog.scenarios.values() for v in s.variants
    ),
    adapter=_alternatives(adapter.id for adapter in all_adapters()),
    style_suffix="|" + _alternatives(f".{s}" for s in STYLES if s != "plain"),
    process=r"[1-9][0-9]*",


# --- cells (measure_local.smk, cloud.smk, managed.smk) -------------------------------------
def at(pattern, wildcards):
    """`pattern` (RUN_DIR, CLOUD_DIR, ...) for the job's wildcards."""
    return pattern.format(**dict(wildcards.items()))


def get_cell_results(wildcards):
    root = at(RUN_DIR, wildcards)
    return [str(cell.path(root)) for cell in CELLS.cells(wildcards.profile)]


def get_style(wildcards):
    return cell_of(wildcards).style


def get_process_count(wildcards):
    return CELLS.processes(wildcards.profile, cell_of(wildcards))


def _processes(wildcards, numbers):
    return [
        PROCESS.format(**{**dict(wildcards.items()), "process": k}) for k in numbers
    ]


def get_earlier_processes(wildcards):
    """The results of the cell's processes before process {process}, in order."""
    return _processes(wildcards, range(1, int(wildcards.process)))


def get_first_processes(wildcards):
    """Every process of the cell but its last, which `measure` measures before pooling."""
    return _processes(wildcards, range(1, get_process_count(wildcards)))


def get_process_priority(wildcards):
    """Rounds: every cell's first process runs before any cell's second, and so on, so that a
    cell's processes spread over the run and sample the machine's drift."""
    return get_process_count(wildcards) - int(wildcards.process)


# What makes a cell stale (a params trigger): its workload and settings, as `--resume-dir`.
def get_workload(wildcards):
    return CELLS.measured_with(wildcards.profile, cell_of(wildcards))["workload"]


def get_settings(wildcards):
    return CELLS.measured_with(wildcards.profile, cell_of(wildcards))["settings"]


# --- cloud runs (cloud.smk, managed.smk) ---------------------------------------------------
def cloud_run(profile, infra=INFRA):
    work_dir = CLOUD_DIR.format(profile=profile, infra=infra)
    return cloud_runs.CloudRun(profile, config["infra"], config["run"], work_dir)


CLOUD_RUNS = [cloud_run(p.name) for p in PROFILES]
if config["infra"] != "local":
    cloud_runs.start_invocation()
    with one_line_errors():
        cloud_runs.check_before_planning(config, CELLS, [p.name for p in PROFILES])


def get_cluster(wildcards):
    return cloud_run(wildcards.profile).cluster


def get_shard_job_name(wildcards):
    return cloud_run(wildcards.profile).job_name(wildcards.shard)


def get_teardown_inputs(wildcards):
    """On a cloud infra, the verified teardown record (the bill); nothing for a local run."""
    return [] if config["infra"] == "local" else [at(TEARDOWN, wildcards)]


def shard_plan(profile):
    return ShardPlan.split(CELLS.cells(profile), config["shards"])


def get_shard_reports(wildcards):
    work_dir = at(CLOUD_DIR, wildcards)
    return [
        ShardPlan.report(work_dir, k) for k in shard_plan(wildcards.profile).numbers()
    ]


def get_shard_cells(wildcards):
    return [str(c) for c in shard_plan(wildcards.profile).cells(wildcards.shard)]


def get_shard_cell_files(wildcards):
    return shard_plan(wildcards.profile).cell_files(wildcards.shard)


def get_shard_settings(wildcards):
    """What the shard's cells measure: a change submits the shard again."""
    cells = shard_plan(wildcards.profile).cells(wildcards.shard)
    return {str(c): CELLS.measured_with(wildcards.profile, c) for c in cells}


def get_cell_shard_report(wildcards):
    shard = shard_plan(wildcards.profile).shard_of(cell_of(wildcards))
    return ShardPlan.report(at(CLOUD_DIR, wildcards), shard)


def get_cells_by_shard(wildcards):
    """Shard number -> the cells' result files here, for the hardware check across shards."""
    root = at(RUN_DIR, wildcards)
    plan = shard_plan(wildcards.profile)
    return {k: [str(c.path(root)) for c in plan.cells(k)] for k in plan.numbers()}


# --- what a run writes (aggregate.smk, plots.smk, export.smk, compare.smk) -----------------
def outputs(rule, profile, infra=INFRA, **wildcards):
    """The rule's output files for a profile (every value of any other wildcard given)."""
    return expand(
        list(map(str, rule.output)), profile=profile, infra=infra, **wildcards
    )


def get_run_outputs(profile, infra=INFRA):
    """The table, plots and, with a baseline, the comparison: what the W&B export logs."""
    scenarios = CELLS.scenarios_for(profile)
    fed = CELLS.fed_scenarios(profile)
    return (
        outputs(rules.aggregate, profile, infra)
        + outputs(rules.plot_overview, profile, infra)
        + outputs(rules.plot_scenario, profile, infra, scenario=scenarios)
        + outputs(rules.plot_feed, profile, infra, scenario=fed)
        + (outputs(rules.compare, profile, infra) if config["baseline"] else [])
    )


def get_final_targets():
    """What `snakemake` builds (the `all` target) for every selected profile: the table, plots,
    the comparison, the W&B export and, on a cloud infra, the torn-down cluster."""
    targets = []
    for profile in PROFILES:
        targets += get_run_outputs(profile.name)
        if config["wandb"]["enabled"]:
            targets += outputs(rules.export_wandb, profile.name)
        if config["infra"] != "local":
            targets.append(TEARDOWN.format(profile=profile.name, infra=INFRA))
    return targets
