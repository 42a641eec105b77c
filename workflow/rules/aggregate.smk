# Every cell of a profile into one table, a ranked summary and the run index.


rule aggregate:
    input:
        cells=get_cell_results,
        # On a cloud infra, the verified teardown too, so the bill in summary.md is complete.
        teardown=get_teardown_inputs,
    output:
        table=report(
            f"{RUN_DIR}/results.csv",
            caption="../report/results.rst",
            category="Summary",
            labels={"table": "one row per cell"},
        ),
        repetitions=f"{RUN_DIR}/repetitions.csv",
        summary=report(
            f"{RUN_DIR}/summary.md",
            caption="../report/summary.rst",
            category="Summary",
            labels={"table": "ranking per scenario"},
        ),
        manifest=f"{RUN_DIR}/manifest.json",
        index=f"{RUN_DIR}/summary.json",
    log:
        "logs/{profile}/{infra}/aggregate.log",
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/aggregate.py"
