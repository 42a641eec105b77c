"""Rule teardown: `sky down` the run's cluster (unless keep_cluster), verified, with its bill."""

import sys
from contextlib import redirect_stderr

from datarax_bench.cloud import billing
from datarax_bench.cloud import cluster as cloud
from datarax_bench.results import utc_now, write_json_atomic

with open(snakemake.log[0], "a", buffering=1) as log_file, redirect_stderr(log_file):  # noqa: F821
    p = snakemake.params  # noqa: F821
    ledger = billing.ledger_for(p.work_dir)
    if p.keep_cluster:
        record = {"clusters": [], "kept": [p.cluster], "at": utc_now()}
        ledger.add("kept", p.cluster)  # the bill then says that it still bills
        print(f"keep_cluster: true; {p.cluster} stays up and bills", file=sys.stderr)
    else:
        record = cloud.teardown([p.cluster], snakemake.log[0], ledger)  # noqa: F821
    record["billing"] = billing.billing(p.work_dir, p.cluster, record.get("cost_report", []))
    write_json_atomic(snakemake.output[0], record)  # noqa: F821
