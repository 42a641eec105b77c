# Configuration, the cell matrix and input functions. Everything the rules need to know about
# scenarios, variants, profiles and adapters comes from the package (config/scenarios.yaml,
# config/profiles/, the adapter registry); nothing here repeats those facts.
import os
import re
import sys
import uuid
from functools import cache

# The catalog and profiles are the ones in this checkout (jobs inherit the variable).
os.environ.setdefault("DATARAX_BENCH_ROOT", workflow.basedir)

from datarax_bench.cloud import cluster as cloud, managed
from datarax_bench.cloud import billing, sky
from datarax_bench.workflow import engine, progress
from datarax_bench import machine_load
from datarax_bench.adapters import all_adapters
from datarax_bench.workload.catalog import STYLES, load_catalog, load_profile, profile_names
from datarax_bench.run.cell import resolve_cell
from datarax_bench.measures.feed import fed_scenarios
from datarax_bench.results import cell_path, process_path
from datarax_bench.run.runner import processes_of
from datarax_bench.workflow.config import check_config, one_line_errors

# A bad config value, catalog or profile: one line and exit code 2 before any job, as the CLI.
with one_line_errors():
    check_config(config, workflow.config_settings.config, workflow.configfiles)
    CATALOG = load_catalog()
    # `profiles` (several in one invocation) wins over `profile`; the first is the default.
    PROFILES = [
        load_profile(n, CATALOG) for n in config["profiles"] or [config["profile"]]
    ]
PROFILE = PROFILES[0]
ADAPTERS = config["adapters"] or [adapter.id for adapter in all_adapters()]
# An --infra string such as gcp/us-central1 becomes one directory name.
INFRA = re.sub(r"[/]", "_", config["infra"])
RESULTS = os.path.normpath(config["results_dir"])

# One bench slot, so that two measurements never share the machine whatever --cores says
# (measuring rules take bench_slot=1). profiles/default declares it too; the workflow sets it
# itself when another profile or none is used, unless the command line already did
# (`--resources bench_slot=N`).
if "bench_slot" not in workflow.global_resources:
    workflow.register_resource("bench_slot", 1)


# Before the first job (not on a dry run). First, Snakemake without its job-rate limiter: with it,
# every job adds a chain of scheduling passes, one per timespan for as long as jobs wait, that
# kept Snakemake busy during the measurements, and no command-line value turns it off
# (src/datarax_bench/workflow/engine.py). Then, for a local run, say what makes this machine noisy right
# now (with strict_machine, refuse to start), then what the run will measure and how long it
# should take.
onstart:
    if not engine.drop_rate_limiter(workflow):
        print(
            "warning: Snakemake's job-rate limiter is not where this Snakemake version was "
            "expected to keep it; its re-planning may load the machine during measurements",
            file=sys.stderr,
        )
    if config["infra"] == "local":
        machine_load.check_before_measuring(
            max(machine_load.cores_assumed(p.parallelism) for p in PROFILES),
            config["strict_machine"],
            seconds=2.0,
        )
        progress.announce(
            PLAN,
            progress.planned_processes(
                workflow.dag.needrun_jobs(), profile_named, CATALOG
            ),
        )


# A local run's plan (every worker process it runs, costed), written before the first job by the
# onstart handler, read by each measuring job for its progress line.
PLAN = "logs/run_plan.json"


# results/{profile}/{infra} is a results directory like `datarax-bench run --output-dir` writes.
RUN_DIR = f"{RESULTS}/{{profile}}/{{infra}}"
# A plain cell is raw/S/V/A.json, another style's raw/S/V/A.STYLE.json: the style suffix is
# empty or ".STYLE".
CELL = str(cell_path(RUN_DIR, "{scenario}", "{variant}", "{adapter}{style_suffix}"))
# A cell measured in several worker processes (the profile's measurement.processes) keeps each
# process's own result here until the cell pools them: processes/S/V/A[.STYLE]/K.json.
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


def _alternatives(names):
    return "|".join(
        re.escape(name) for name in sorted(set(names), key=len, reverse=True)
    )


wildcard_constraints:
    profile=_alternatives(profile_names()),
    infra=re.escape(INFRA),
    scenario=_alternatives(CATALOG.scenarios),
    variant=_alternatives(v for s in CATALOG.scenarios.values() for v in s.variants),
    adapter=_alternatives(adapter.id for adapter in all_adapters()),
    style_suffix="|"
    + _alternatives(f".{style}" for style in STYLES if style != "plain"),
    process=r"[1-9][0-9]*",


@cache
def profile_named(name):
    return load_profile(name, CATALOG)


def run_dir(profile=PROFILE.name, infra=INFRA):
    return RUN_DIR.format(profile=profile, infra=infra)


def scenarios_for(profile_name):
    """The scenarios measured: `--config scenarios=[...]` or else the profile's own list."""
    return config["scenarios"] or profile_named(profile_name).scenarios


def cells(profile_name):
    """(scenario, variant, adapter, style) for every cell of a profile under this config."""
    profile = profile_named(profile_name)
    return [
        (scenario, variant, adapter, style)
        for scenario, variant in profile.cells(CATALOG, scenarios_for(profile_name))
        for adapter in ADAPTERS
        for style in config["styles"] or profile.styles
    ]


def get_cell_results(wildcards):
    root = run_dir(wildcards.profile, wildcards.infra)
    return [str(cell_path(root, *cell)) for cell in cells(wildcards.profile)]


def get_style(wildcards):
    """The cell's pipeline style, from its file name's style suffix."""
    return wildcards.style_suffix.lstrip(".") or "plain"


@cache
def process_count(profile_name, scenario, variant, adapter, style):
    cell = resolve_cell(
        profile_named(profile_name), CATALOG, scenario, variant, adapter, style
    )
    return processes_of(cell)


# A cloud run's length, estimated from the plan (cells x worker processes x the profile's
# per-process estimate, billing.estimate_run): one line on stderr, a warning near
# max_cluster_hours, and exit 2 with one line when it cannot fit, since the ceiling would cut
# the run off with cells unmeasured.
if config["infra"] != "local":
    for _profile in PROFILES:
        _counts = [process_count(_profile.name, *cell) for cell in cells(_profile.name)]
        with one_line_errors():
            _line = billing.check_run_fits(
                billing.estimate_run(_profile, _counts, machines=config["shards"]),
                _profile.name,
                config["max_cluster_hours"],
            )
        print(_line, file=sys.stderr)


def get_process_count(wildcards):
    """How many worker processes measure the cell (1 for a cell that runs no loader)."""
    return process_count(
        wildcards.profile,
        wildcards.scenario,
        wildcards.variant,
        wildcards.adapter,
        get_style(wildcards),
    )


def _process_results(wildcards, numbers):
    return [
        PROCESS.format(**{**dict(wildcards.items()), "process": k}) for k in numbers
    ]


def get_earlier_processes(wildcards):
    """The results of the cell's processes before process {process}, in order."""
    return _process_results(wildcards, range(1, int(wildcards.process)))


def get_first_processes(wildcards):
    """The results of every process of the cell but its last, which `measure` measures itself
    before pooling them all (none for a cell measured in one process)."""
    return _process_results(wildcards, range(1, get_process_count(wildcards)))


def get_process_priority(wildcards):
    """Rounds: every cell's first process runs before any cell's second, and so on (the last
    process, in `measure`, has the default priority 0). A cell's processes are then spread
    over the run, so that their spread includes the machine's drift over it."""
    return get_process_count(wildcards) - int(wildcards.process)


def get_measured_settings(wildcards):
    """The cell's measurement settings: a change re-runs the cells it affects (params trigger)."""
    profile = profile_named(wildcards.profile)
    return profile.settings(get_cell_workload(wildcards))


def get_cell_workload(wildcards):
    size = profile_named(wildcards.profile).size
    return CATALOG.get(wildcards.scenario).resolve(wildcards.variant, size)


def get_workload(wildcards):
    """What the cell's loader must do, resolved from the catalog: a change re-runs that cell."""
    return get_cell_workload(wildcards).to_dict()


def aggregate_outputs(profile=PROFILE.name, infra=INFRA):
    root = run_dir(profile, infra)
    names = [
        "results.csv",
        "repetitions.csv",
        "summary.md",
        "manifest.json",
        "summary.json",
    ]
    return [f"{root}/{name}" for name in names]


def plot_outputs(profile=PROFILE.name, infra=INFRA):
    root = run_dir(profile, infra)
    scenarios = scenarios_for(profile)
    fed = fed_scenarios(profile_named(profile), CATALOG, scenarios)
    return (
        [f"{root}/plots/overview.png"]
        + [
            f"{root}/plots/{scenario}/{kind}.png"
            for scenario in scenarios
            for kind in ("throughput", "latency", "first_batch")
        ]
        + [f"{root}/plots/{scenario}/feed.png" for scenario in fed]
    )


def export_outputs(profile=PROFILE.name, infra=INFRA):
    """The W&B export marker when the export is enabled (workflow/rules/export.smk)."""
    if not config["wandb"]["enabled"]:
        return []
    return [f"{run_dir(profile, infra)}/wandb_export.json"]


# --- a comparison with an earlier run (workflow/rules/compare.smk) ------------------------


def baseline_dir(profile=PROFILE.name, infra=INFRA):
    return config["baseline"].format(profile=profile, infra=infra)


def comparison_outputs(profile=PROFILE.name, infra=INFRA):
    """The comparison files when a baseline is configured, else nothing."""
    if not config["baseline"]:
        return []
    root = run_dir(profile, infra)
    names = ["comparison.md", "comparison.csv", "plots/comparison.png"]
    return [f"{root}/{name}" for name in names]


def get_final_targets():
    """What `snakemake` builds by default (the `all` target) for every selected profile.

    That is the table, plots, the W&B export, the comparison with a baseline and, on a cloud
    infra, the torn-down cluster.
    """
    targets = []
    for profile in PROFILES:
        targets += aggregate_outputs(profile.name) + plot_outputs(profile.name)
        # The W&B export (workflow/rules/export.smk); offline without a key.
        targets += export_outputs(profile.name)
        # With a baseline, the comparison with it (workflow/rules/compare.smk).
        targets += comparison_outputs(profile.name)
        # A cloud run ends with its cluster torn down (workflow/rules/cloud.smk).
        if config["infra"] != "local":
            targets.append(teardown_marker(profile.name))
    return targets


# --- cloud runs (workflow/rules/cloud.smk) ------------------------------------------------
# Names only: nothing here calls `sky`, so planning stays instant and offline.
CLOUD_DIR = f"{RUN_DIR}/cloud"


# One id per invocation, inherited by its jobs: a cluster record from an earlier invocation
# (a killed run) is checked again before a cell trusts it.
os.environ.setdefault(cloud.INVOCATION_ENV, uuid.uuid4().hex)

# An explicit `use_spot: true` on a cloud without spot fails here, before anything launches
# (`auto` needs no check at planning time: the provision job decides).
if config["infra"] != "local" and config["use_spot"] is True:
    with one_line_errors():
        sky.resolve_use_spot(config["infra"], True)


def get_teardown_inputs(wildcards):
    """On a cloud infra, the verified teardown record (the bill); nothing for a local run."""
    if config["infra"] == "local":
        return []
    return [teardown_marker(wildcards.profile, wildcards.infra)]


def cluster_for(profile):
    return cloud.cluster_name(profile, config["infra"], config["run"])


def all_clusters():
    """Every selected profile's cluster; tearing down one that never launched is harmless."""
    return [cluster_for(profile.name) for profile in PROFILES]


def teardown_marker(profile=PROFILE.name, infra=INFRA):
    return f"{run_dir(profile, infra)}/cloud/teardown.json"


# --- managed jobs (workflow/rules/managed.smk) ---------------------------------------------
def cell_ids(profile_name):
    """Each cell as `datarax-bench run --cells` names it, in the matrix's order."""
    return ["/".join(cell) for cell in cells(profile_name)]


def shard_plan(profile_name):
    """Shard number -> the ids of its cells (managed.assign_shards: a fixed split)."""
    return managed.assign_shards(cell_ids(profile_name), config["shards"])


def get_shard_reports(wildcards):
    root = CLOUD_DIR.format(profile=wildcards.profile, infra=wildcards.infra)
    return [f"{root}/managed/shard-{k}.json" for k in shard_plan(wildcards.profile)]


def get_shard_cells(wildcards):
    return shard_plan(wildcards.profile)[int(wildcards.shard)]


def get_shard_cell_files(wildcards):
    """Cell id -> its file under a results directory (raw/S/V/A[.STYLE].json)."""
    return {
        cid: str(cell_path("", *cid.split("/"))) for cid in get_shard_cells(wildcards)
    }


def get_shard_settings(wildcards):
    """What the shard's cells measure: a change submits the shard again (params trigger), and
    its job measures again every cell the change affects."""
    profile = profile_named(wildcards.profile)
    cells = {}
    for cid in get_shard_cells(wildcards):
        workload = CATALOG.get(cid.split("/")[0]).resolve(
            cid.split("/")[1], profile.size
        )
        cells[cid] = {
            "workload": workload.to_dict(),
            "settings": profile.settings(workload),
        }
    return cells


def get_cell_shard_report(wildcards):
    """The report of the shard that measures this cell."""
    cid = "/".join(
        (wildcards.scenario, wildcards.variant, wildcards.adapter, get_style(wildcards))
    )
    for shard, ids in shard_plan(wildcards.profile).items():
        if cid in ids:
            root = CLOUD_DIR.format(profile=wildcards.profile, infra=wildcards.infra)
            return f"{root}/managed/shard-{shard}.json"
    raise ValueError(f"cell {cid} is not in the matrix of profile {wildcards.profile}")


def get_cells_by_shard(wildcards):
    """Shard number -> the cells' result files here, for the hardware check across shards."""
    root = run_dir(wildcards.profile, wildcards.infra)
    return {
        shard: [str(cell_path(root, *cid.split("/"))) for cid in ids]
        for shard, ids in shard_plan(wildcards.profile).items()
    }
