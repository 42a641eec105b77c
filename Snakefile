# datarax-bench: benchmark the data loaders that feed JAX.
#   snakemake                      # profile first_look on this machine
#   snakemake --cores all --config profile=smoke scenarios=[CV-1]
#   snakemake --report results/report.html     # after a run
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# Where a cell runs is the one swappable step: each branch produces the same raw result files.
if config["infra"] == "local":

    include: "workflow/rules/measure_local.smk"

elif config["cloud_mode"] == "managed":

    include: "workflow/rules/managed.smk"

else:

    include: "workflow/rules/cloud.smk"


include: "workflow/rules/aggregate.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/compare.smk"


rule all:
    input:
        get_final_targets(),
    default_target: True
