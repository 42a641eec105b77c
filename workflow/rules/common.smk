# Config and input functions: the package's cells, shards and cloud runs wired to the rules.
import os

# The catalog and profiles are the ones in this checkout (jobs inherit the variable).
os.environ.setdefault("DATARAX_BENCH_ROOT", workflow.basedir)

from datarax_bench.workload.catalog import load_catalog
from datarax_bench.workflow import cells, cloud_runs, engine
from datarax_bench.results import infra_dir
from datarax_bench.workflow.cells import Matrix, ShardPlan, cell_of
from datarax_bench.workflow.config import check_config, one_line_errors

# A bad config value, catalog or profile: one line and exit code 2 before any job, as the CLI.
with one_line_errors():
    check_config(config, workflow.config_settings.config, workflow.configfiles)
    CELLS = Matrix.from_config(config, load_catalog())
    # `profiles` (several in one invocation) wins over `profile`; the first is the default.
    PROFILES = [CELLS.profile(n) for n in config["profiles"] or [config["profile"]]]
INFRA = infra_dir(config["infra"])

# One bench slot (measuring rules take 1): never two measurements at once, whatever --cores says,
# unless the command line sets another count (`--resources bench_slot=N`).
if "bench_slot" not in workflow.global_resources:
    workflow.register_resource("bench_slot", 1)

# A local run's plan (its worker processes, costed), for each measuring job's progress line.
PLAN = "logs/run_plan.json"


# Before the first job: no job-rate limiter; on a local run, the machine's noise and the plan.
onstart:
    engine.on_start(workflow, config, PROFILES, CELLS, PLAN)


RUN_DIR = cells.run_dir_pattern(config["results_dir"])
CELL = cells.cell_pattern(RUN_DIR)
PROCESS = cells.process_pattern(RUN_DIR)
# Every rule that writes a cell's result shows it in the report the same way.
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


wildcard_constraints:
    **cells.wildcard_constraints(CELLS.catalog, config["infra"]),


def at(pattern, wildcards, **more):
    """`pattern` (RUN_DIR, CLOUD_DIR, PROCESS, ...) filled in from a job's wildcards."""
    return pattern.format(**{**dict(wildcards.items()), **more})


# --- cells (measure_local.smk, cloud.smk, managed.smk) -------------------------------------
def get_cell_results(wildcards):
    return CELLS.result_files(wildcards.profile, at(RUN_DIR, wildcards))


def get_style(wildcards):
    return cell_of(wildcards).style


def get_earlier_processes(wildcards):
    """The cell's processes before {process} (without it, before its last), in order."""
    last = wildcards.get("process")
    numbers = CELLS.earlier_processes(wildcards.profile, cell_of(wildcards), last)
    return [at(PROCESS, wildcards, process=k) for k in numbers]


def get_process_priority(wildcards):  # in rounds: every cell's first process first
    w = wildcards
    return CELLS.process_priority(w.profile, cell_of(w), w.process)


# What makes a cell stale (a params trigger): its workload and settings, as `--resume-dir`.
def get_workload(wildcards):
    return CELLS.measured_with(wildcards.profile, cell_of(wildcards))["workload"]


def get_settings(wildcards):
    return CELLS.measured_with(wildcards.profile, cell_of(wildcards))["settings"]


# --- cloud runs (cloud.smk, managed.smk) ---------------------------------------------------
with one_line_errors():
    CLOUD_RUNS = cloud_runs.prepare(config, CELLS, PROFILES, CLOUD_DIR)


def get_cluster(wildcards):
    return CLOUD_RUNS[wildcards.profile].cluster


def get_teardown_inputs(wildcards):
    """On a cloud infra, the verified teardown record (the bill); nothing for a local run."""
    return [] if config["infra"] == "local" else [at(TEARDOWN, wildcards)]


def shard_plan(wildcards):
    return ShardPlan.split(CELLS.cells(wildcards.profile), config["shards"])


def get_shard_job_name(wildcards):
    return CLOUD_RUNS[wildcards.profile].job_name(wildcards.shard)


def get_shard_reports(wildcards):
    return shard_plan(wildcards).reports(at(CLOUD_DIR, wildcards))


def get_shard_cells(wildcards):
    return shard_plan(wildcards).ids(wildcards.shard)


def get_shard_cell_files(wildcards):
    return shard_plan(wildcards).cell_files(wildcards.shard)


def get_shard_settings(wildcards):
    """What the shard's cells measure, as get_workload and get_settings: a change submits it."""
    cells = shard_plan(wildcards).cells(wildcards.shard)
    return CELLS.measured_with_each(wildcards.profile, cells)


def get_cell_shard_report(wildcards):
    shard = shard_plan(wildcards).shard_of(cell_of(wildcards))
    return ShardPlan.report(at(CLOUD_DIR, wildcards), shard)


def get_cells_by_shard(wildcards):
    return shard_plan(wildcards).files_by_shard(at(RUN_DIR, wildcards))


# --- what a run writes (aggregate.smk, plots.smk, export.smk, compare.smk) -----------------
def outputs(rule, profile, **more):
    """The rule's output files for a profile (and every value of any other wildcard given)."""
    return expand([*map(str, rule.output)], profile=profile, infra=INFRA, **more)


def get_run_outputs(profile):
    """The table, plots and, with a baseline, the comparison: what the W&B export logs."""
    return (
        outputs(rules.aggregate, profile)
        + outputs(rules.plot_overview, profile)
        + outputs(rules.plot_scenario, profile, scenario=CELLS.scenarios_for(profile))
        + outputs(rules.plot_feed, profile, scenario=CELLS.fed_scenarios(profile))
        + (outputs(rules.compare, profile) if config["baseline"] else [])
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
