"""Snakemake `script:` for rule plot_scenario; the logic is datarax_bench.plots."""

import traceback

from datarax_bench.plots import plot_scenario

sm = snakemake  # noqa: F821 - injected by Snakemake

with open(sm.log[0], "w") as log:
    try:
        plot_scenario(
            sm.input.table,
            sm.input.repetitions,
            sm.wildcards.scenario,
            throughput=sm.output.throughput,
            latency=sm.output.latency,
            first_batch=sm.output.first_batch,
        )
        print(f"plotted {sm.wildcards.scenario}", file=log)
    except Exception:
        traceback.print_exc(file=log)
        raise
