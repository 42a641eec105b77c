# This run against an earlier one (`--config baseline=DIR`): comparison.md, comparison.csv and
# plots/comparison.png in the run directory, in the report and, through the export, in W&B.
# A regression does not fail the rule (the comparison is the output); gate CI on the exit code
# of `datarax-bench compare`.
from datarax_bench.report.compare import check_baseline_option


with one_line_errors():
    check_baseline_option(config["baseline"], [p.name for p in PROFILES], INFRA)


rule compare:
    input:
        # This run's index (written by aggregate) and the baseline's: a re-measured baseline
        # compares again.
        index=f"{RUN_DIR}/manifest.json",
        baseline=lambda wildcards: f"{at(config['baseline'], wildcards)}/manifest.json",
    output:
        markdown=report(
            f"{RUN_DIR}/comparison.md",
            caption="../report/comparison.rst",
            category="Comparison",
            labels={"table": "against the baseline"},
        ),
        table=report(
            f"{RUN_DIR}/comparison.csv",
            caption="../report/comparison_csv.rst",
            category="Comparison",
            labels={"table": "one row per cell and metric"},
        ),
        plot=report(
            f"{RUN_DIR}/plots/comparison.png",
            caption="../report/comparison_plot.rst",
            category="Comparison",
            labels={"plot": "speed ratio per cell"},
        ),
    log:
        "logs/{profile}/{infra}/compare.log",
    params:
        threshold=config["comparison_threshold"],
        alpha=config["comparison_alpha"],
        allow_different_hardware=config["comparison_allow_different_hardware"],
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/compare.py"
