#!/usr/bin/env bash
# Install the datarax-bench package of this checkout into the new env; its pinned
# dependencies are already there. Snakemake runs this from the working directory;
# DATARAX_BENCH_ROOT is set by workflow/rules/common.smk.
set -euo pipefail
python -m pip install --no-deps --editable "${DATARAX_BENCH_ROOT:-.}"
