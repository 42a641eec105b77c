# Measure one cell on this machine. Included when config["infra"] == "local"; cloud.smk
# produces the same files for other infras.


rule measure:
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
        "logs/{profile}/{infra}/measure/{scenario}/{variant}/{adapter}.log",
    params:
        settings=get_measured_settings,
        workload=get_workload,
    resources:
        # One unit exists (common.smk registers it): never two measurements at once.
        bench_slot=1,
    conda:
        "../envs/bench.yaml"
    shell:
        "datarax-bench run --profile {wildcards.profile} --scenario {wildcards.scenario}"
        " --variant {wildcards.variant} --adapter {wildcards.adapter} --output {output:q}"
        " > {log:q} 2>&1"
