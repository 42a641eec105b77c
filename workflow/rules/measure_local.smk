# Measure one cell on this machine. Included when config["infra"] == "local"; cloud.smk
# produces the same files for other infras.


rule measure_process:
    input:
        get_earlier_processes,
    output:
        PROCESS,
    log:
        "logs/{profile}/{infra}/measure/{scenario}/{variant}/{adapter}{style_suffix}/process-{process}.log",
    params:
        style=get_style,
        settings=get_settings,
        workload=get_workload,
    priority: get_process_priority
    resources:
        # One unit exists (common.smk registers it): never two measurements at once.
        bench_slot=1,
    conda:
        "../envs/bench.yaml"
    shell:
        "datarax-bench run --profile {wildcards.profile} --scenario {wildcards.scenario}"
        " --variant {wildcards.variant} --adapter {wildcards.adapter}"
        " --style {params.style} --process {wildcards.process} --earlier {input:q}"
        " --output {output:q} > {log:q} 2>&1"
        f" && python -m datarax_bench.workflow.progress {PLAN}"


# The cell's last process (its only one, for most profiles), pooled with the ones before it.
rule measure:
    input:
        get_earlier_processes,
    output:
        CELL_REPORT,
    log:
        "logs/{profile}/{infra}/measure/{scenario}/{variant}/{adapter}{style_suffix}.log",
    params:
        style=get_style,
        settings=get_settings,
        workload=get_workload,
    resources:
        bench_slot=1,
    conda:
        "../envs/bench.yaml"
    shell:
        "datarax-bench run --profile {wildcards.profile} --scenario {wildcards.scenario}"
        " --variant {wildcards.variant} --adapter {wildcards.adapter}"
        " --style {params.style} --earlier {input:q} --output {output:q}"
        " > {log:q} 2>&1"
        f" && python -m datarax_bench.workflow.progress {PLAN}"
