"""Snakemake `script:` for rule aggregate; the logic is datarax_bench.report.aggregate."""

import traceback
from pathlib import Path

from datarax_bench.report.aggregate import aggregate_run

sm = snakemake  # noqa: F821 - injected by Snakemake

with open(sm.log[0], "w") as log:
    try:
        table = aggregate_run(
            sm.input.cells,
            run_dir=Path(sm.output.manifest).parent,
            profile=sm.wildcards.profile,
            infra=sm.wildcards.infra,
            table_path=sm.output.table,
            repetitions_path=sm.output.repetitions,
            summary_path=sm.output.summary,
        )
        counts = table["status"].value_counts().to_dict() if len(table) else {}
        print(f"aggregated {len(table)} cells: {counts}", file=log)
    except Exception:
        traceback.print_exc(file=log)
        raise
