"""Snakemake `script:` for rules plot_scenario, plot_feed and plot_overview; the logic is
datarax_bench.report.plots."""

import traceback

from datarax_bench.report.plots import plot_feed, plot_overview, plot_scenario

sm = snakemake  # noqa: F821 - injected by Snakemake

with open(sm.log[0], "w") as log:
    try:
        if sm.rule == "plot_overview":
            plot_overview(sm.input.table, sm.output.overview)
            print("plotted the overview", file=log)
        elif sm.rule == "plot_feed":
            plot_feed(sm.input.table, sm.wildcards.scenario, sm.output.feed)
            print(f"plotted the feed of {sm.wildcards.scenario}", file=log)
        else:
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
