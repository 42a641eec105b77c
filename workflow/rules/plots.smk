# Per-scenario figures from the aggregated tables.


rule plot_scenario:
    input:
        table=f"{RUN_DIR}/results.csv",
        repetitions=f"{RUN_DIR}/repetitions.csv",
    output:
        throughput=report(
            f"{RUN_DIR}/plots/{{scenario}}/throughput.png",
            caption="../report/throughput.rst",
            category="{scenario}",
            subcategory="Plots",
            labels={"plot": "throughput"},
        ),
        latency=report(
            f"{RUN_DIR}/plots/{{scenario}}/latency.png",
            caption="../report/latency.rst",
            category="{scenario}",
            subcategory="Plots",
            labels={"plot": "latency"},
        ),
        first_batch=report(
            f"{RUN_DIR}/plots/{{scenario}}/first_batch.png",
            caption="../report/first_batch.rst",
            category="{scenario}",
            subcategory="Plots",
            labels={"plot": "time to first batch"},
        ),
    log:
        "logs/{profile}/{infra}/plots/{scenario}.log",
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/plots.py"


rule plot_feed:
    input:
        table=f"{RUN_DIR}/results.csv",
    output:
        feed=report(
            f"{RUN_DIR}/plots/{{scenario}}/feed.png",
            caption="../report/feed.rst",
            category="{scenario}",
            subcategory="Plots",
            labels={"plot": "keeping an accelerator fed"},
        ),
    log:
        "logs/{profile}/{infra}/plots/{scenario}.feed.log",
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/plots.py"


rule plot_overview:
    input:
        table=f"{RUN_DIR}/results.csv",
    output:
        overview=report(
            f"{RUN_DIR}/plots/overview.png",
            caption="../report/overview.rst",
            category="Summary",
            labels={"plot": "overview"},
        ),
    log:
        "logs/{profile}/{infra}/plots/overview.log",
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/plots.py"
