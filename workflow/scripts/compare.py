"""Snakemake `script:` for rule compare; the logic is datarax_bench.report.compare."""

import sys
import traceback
from pathlib import Path

from datarax_bench.errors import UserError
from datarax_bench.report.compare import compare_runs, comparison_text, load_run, write_outputs
from datarax_bench.report.compare_plot import plot_comparison

sm = snakemake  # noqa: F821 - injected by Snakemake

with open(sm.log[0], "w") as log:
    try:
        result = compare_runs(
            load_run(Path(sm.input.baseline).parent),
            load_run(Path(sm.input.index).parent),
            sm.params.threshold,
            sm.params.alpha,
            allow_different_hardware=sm.params.allow_different_hardware,
        )
        plot_comparison(result, sm.output.plot)
        write_outputs(result, Path(sm.output.markdown), Path(sm.output.table))
        print(comparison_text(result), file=log)
    except UserError as exc:
        # Bad input (a baseline that is no results directory, other hardware): one line.
        print(f"error: {exc}", file=log)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception:
        traceback.print_exc(file=log)
        raise
    line = f"compared with {sm.input.baseline}: {len(result.regressions)} regressions"
    print(line, file=sys.stderr)
