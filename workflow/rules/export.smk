# The aggregated run to Weights & Biases: one W&B run (table, keyed summary, plots, artifact).
# Without WANDB_API_KEY, or with W&B unreachable, it writes an offline run under the results
# directory and records the `wandb sync` command in the marker; only bad results fail the rule.
# With a baseline, the comparison (workflow/rules/compare.smk) goes into the run too.


rule export_wandb:
    input:
        lambda wildcards: get_run_outputs(wildcards.profile),
    output:
        marker=f"{RUN_DIR}/wandb_export.json",
    log:
        "logs/{profile}/{infra}/export_wandb.log",
    params:
        # Names only: the API key reaches wandb through the environment, never as a param.
        project=config["wandb"]["project"],
        entity=config["wandb"]["entity"],
        mode=config["wandb"]["mode"],
    conda:
        "../envs/orchestrate.yaml"
    script:
        "../scripts/export_wandb.py"
