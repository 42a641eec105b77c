# Cells as SkyPilot managed jobs (config cloud_mode: managed): managed_shard per shard (submit
# its missing cells as one `sky jobs launch`, watch `sky jobs queue` to the end, cancel on error)
# -> pull_cell per cell (from the results bucket, validated) -> managed_finish (hardware the same
# on every shard, no job left running, the record aggregate reads) -> aggregate, plots, export.
# The jobs keep every cell in the bucket as soon as it is measured, so a preemption, which
# SkyPilot recovers by itself, costs at most the cell in flight. `pull_cell` writes the same raw
# files as measure_local.smk. Nothing here calls `sky` at parse time.


wildcard_constraints:
    shard=r"\d+",


rule managed_shard:
    output:
        ShardPlan.report(CLOUD_DIR, "{shard}"),
    log:
        "logs/{profile}/{infra}/cloud/managed/shard-{shard}.log",
    params:
        name=get_shard_job_name,
        shards=config["shards"],
        cells=get_shard_cells,
        cell_files=get_shard_cell_files,
        settings=get_shard_settings,
        bucket=config["results_bucket"],
        infra=config["infra"],
        keep_cluster=config["keep_cluster"],
        poll_s=config["managed_poll_seconds"],
        work_dir=CLOUD_DIR,
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/managed_shard.py"


rule pull_cell:
    input:
        get_cell_shard_report,
    output:
        CELL_REPORT,
    log:
        "logs/{profile}/{infra}/cloud/pull/{scenario}/{variant}/{adapter}{style_suffix}.log",
    params:
        bucket=config["results_bucket"],
        infra=INFRA,
        style=get_style,
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/managed_pull.py"


rule managed_finish:
    input:
        reports=get_shard_reports,
        cells=get_cell_results,
    output:
        TEARDOWN,
    log:
        "logs/{profile}/{infra}/cloud/managed/finish.log",
    params:
        cells_by_shard=get_cells_by_shard,
        bucket=config["results_bucket"],
        infra=INFRA,
        work_dir=CLOUD_DIR,
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/managed_finish.py"


onerror:
    # Snakemake SIGKILLs job processes on failure or interrupt; this runs in the main process.
    cloud_runs.cancel_after_error(
        CLOUD_RUNS.values(), config["shards"], config["keep_cluster"]
    )
