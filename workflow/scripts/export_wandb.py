"""Snakemake `script:` for rule export_wandb; the logic is datarax_bench.report.wandb_export."""

import contextlib
import sys
import traceback
from pathlib import Path

from datarax_bench.report.wandb_export import export_for_workflow

sm = snakemake  # noqa: F821 - injected by Snakemake

with open(sm.log[0], "w") as log:
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            report = export_for_workflow(
                Path(sm.output.marker).parent,
                marker=Path(sm.output.marker),
                project=sm.params.project,
                entity=sm.params.entity,
                mode=sm.params.mode,
                infra=sm.wildcards.infra,
            )
    except Exception:
        traceback.print_exc(file=log)
        raise
    line = f"W&B export ({report['mode']}): {report.get('reason') or report.get('run_path')}"
    if report.get("sync_command"):
        line += f"; upload with: {report['sync_command']}"
    print(line, file=log)
    print(line, file=sys.stderr)
