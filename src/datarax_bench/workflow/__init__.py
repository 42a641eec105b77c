"""The Snakemake workflow's logic: its config, its engine settings and its progress line; the
rules and scripts under workflow/ only wire these together."""
