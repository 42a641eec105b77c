# Cells on a SkyPilot cluster (config["infra"] != "local"): provision -> run_remote -> pull per
# cell -> (aggregate, plots) -> teardown. `pull` writes the same raw files as measure_local.smk.
# Nothing here calls `sky` at parse time: `snakemake -n` stays instant and offline. Billing has
# three stops: the teardown rule, the onerror handler below, and SkyPilot's idle autodown.
rule provision:
    output:
        f"{RUN_DIR}/cluster.json",
    log:
        "logs/{profile}/{infra}/cloud/provision.log",
    params:
        cluster=lambda wildcards: cluster_for(wildcards.profile),
        infra=config["infra"],
        idle_minutes=config["idle_minutes"],
        use_spot=config["use_spot"],
        work_dir=CLOUD_DIR,
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/cloud_provision.py"


rule run_remote:
    input:
        # ancient: re-provisioning a gone cluster must not re-run cells already measured.
        ancient(f"{RUN_DIR}/cluster.json"),
    output:
        f"{CLOUD_DIR}/jobs/{{scenario}}/{{variant}}/{{adapter}}.json",
    log:
        "logs/{profile}/{infra}/cloud/run/{scenario}/{variant}/{adapter}.log",
    params:
        cluster=lambda wildcards: cluster_for(wildcards.profile),
        infra=config["infra"],
        idle_minutes=config["idle_minutes"],
        use_spot=config["use_spot"],
        work_dir=CLOUD_DIR,
        settings=get_measured_settings,
        workload=get_workload,
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/cloud_run_remote.py"


rule pull:
    input:
        f"{CLOUD_DIR}/jobs/{{scenario}}/{{variant}}/{{adapter}}.json",
    output:
        report(
            CELL,
            caption="../report/cell.rst",
            category="{scenario}",
            subcategory="{variant}",
            labels={
                "adapter": "{adapter}",
                "variant": "{variant}",
                "file": "result JSON",
            },
        ),
    log:
        "logs/{profile}/{infra}/cloud/pull/{scenario}/{variant}/{adapter}.log",
    params:
        cluster=lambda wildcards: cluster_for(wildcards.profile),
    retries: 1
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/cloud_pull.py"


rule teardown:
    input:
        # Torn down only after everything that reads the run's results, the W&B export included.
        lambda wildcards: aggregate_outputs(wildcards.profile, wildcards.infra)
        + plot_outputs(wildcards.profile, wildcards.infra)
        + export_outputs(wildcards.profile, wildcards.infra),
    output:
        f"{CLOUD_DIR}/teardown.json",
    log:
        "logs/{profile}/{infra}/cloud/teardown.log",
    params:
        cluster=lambda wildcards: cluster_for(wildcards.profile),
        keep_cluster=config["keep_cluster"],
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/cloud_teardown.py"


onerror:
    # Snakemake SIGKILLs job processes on failure or interrupt; this runs in the main process.
    if config["keep_cluster"]:
        print(f"keep_cluster: true; {', '.join(all_clusters())} stay up (and bill)")
    else:
        _log = f"logs/{PROFILE.name}/{INFRA}/cloud/onerror-teardown.log"
        _record = cloud.teardown(all_clusters(), _log)
        print(f"onerror: tore down {', '.join(_record['clusters'])} (see {_log})")
