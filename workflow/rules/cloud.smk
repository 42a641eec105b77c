# Cells on a SkyPilot cluster (config["infra"] != "local"): measure_remote per cell (the first
# job of an invocation provisions: reuses the cluster if it is up, else launches it; then each
# runs its cell, pulls and validates the result: a raw result exists only if it was measured
# and pulled) -> teardown (verified) -> aggregate, plots, export. `measure_remote` writes the
# same raw files as measure_local.smk. Provisioning is no rule of its own, so that it never
# makes measured cells out of date. Nothing here calls `sky` at parse time: `snakemake -n`
# stays instant and offline. Billing has three stops: the teardown rule, the onerror handler
# below, and the autodown deadline armed on the cluster itself (src/datarax_bench/cloud/cluster.py).


rule measure_remote:
    output:
        CELL_REPORT,
    log:
        "logs/{profile}/{infra}/cloud/measure/{scenario}/{variant}/{adapter}{style_suffix}.log",
    params:
        cluster=get_cluster,
        infra=config["infra"],
        work_dir=CLOUD_DIR,
        style=get_style,
        settings=get_settings,
        workload=get_workload,
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/cloud_measure.py"


rule teardown:
    input:
        # As soon as the last cell is pulled: nothing after it needs the cluster.
        get_cell_results,
    output:
        TEARDOWN,
    log:
        "logs/{profile}/{infra}/cloud/teardown.log",
    params:
        cluster=get_cluster,
        keep_cluster=config["keep_cluster"],
        work_dir=CLOUD_DIR,
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/cloud_teardown.py"


# After a failure each cluster is torn down (unless kept) and its bill written: what was billed
# until now and whether it still bills (cloud/failed-run-bill.json).
onerror:
    # Snakemake SIGKILLs job processes on failure or interrupt; this runs in the main process.
    cloud_runs.tear_down_after_error(CLOUD_RUNS.values(), config["keep_cluster"])
