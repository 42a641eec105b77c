"""Remote cells measured in batches (`cloud_mode: cluster`): one `sky exec` for several cells.

A `sky exec` round trip on a real cloud costs 15-30 s of billed machine time (the CLI, the API
server, ssh through a gateway, Ray's scheduling, the log tail, the pull), whatever the cell
measures. A batch shares that cost: its cells are consecutive cells of one scenario, variant and
style (they share their data and the remote command names them with one `--scenarios` and one
`--style`), at most `remote_batch_cells` of them, split evenly. Each cell stays its own
Snakemake job: the first job of a batch measures the cells that have no result yet, and each
pulled result waits in the run's batch cache (`<cloud dir>/batches/raw/...`) until its own job
takes it (`cluster.measure_remote_cell`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datarax_bench.errors import UserError
from datarax_bench.run.cell import CellId, cell_identity, measured_with, resolve_cell

#: `remote_batch_cells` when the config does not say (config/config.yaml says the same).
DEFAULT_CELLS = 12


#: The batch cache under a run's cloud directory: results pulled for cells whose jobs come later.
CACHE_DIR = "batches"


def plan(cells: Sequence[CellId], size: int) -> list[list[CellId]]:
    """`cells` (in the matrix's order) in batches: each of one scenario, variant and style, at
    most `size` cells, a group larger than `size` split into near-equal consecutive batches
    (20 cells at 12 per batch: two of 10, not 12 and 8, so that no batch is the long pole)."""
    if size < 1:
        raise UserError(f"remote_batch_cells: got {size}, expected a whole number of at least 1")
    groups: dict[tuple[str, str, str], list[CellId]] = {}
    for cell in cells:
        groups.setdefault((cell.scenario, cell.variant, cell.style), []).append(cell)
    batches = []
    for group in groups.values():
        count = math.ceil(len(group) / size)
        base, extra = divmod(len(group), count)
        start = 0
        for k in range(count):
            end = start + base + (1 if k < extra else 0)
            batches.append(group[start:end])
            start = end
    return batches


def remote_plan(profile, catalog, cells: Sequence[CellId], size: int) -> list[list[CellId]]:
    """The batches of the cells that go to the cluster: a cell that is decided without a
    machine (`runner.static_status`: unsupported, not implemented) is written locally by its own
    job and takes no place in a batch."""
    from datarax_bench.run.runner import static_status

    remote = [c for c in cells if static_status(resolve_cell(profile, catalog, *c)) is None]
    return plan(remote, size)


def batch_of(batches: Sequence[Sequence[CellId]], cell: CellId) -> list[CellId]:
    """The batch holding `cell` (just the cell when no batch does)."""
    for batch in batches:
        if cell in batch:
            return list(batch)
    return [cell]


def cache_path(work_dir: Path, cell: CellId) -> Path:
    """Where a pulled result of `cell` waits for its own job, under the run's cloud directory."""
    return cell.path(Path(work_dir) / CACHE_DIR)


def same_measurement(result: dict[str, Any], cell) -> bool:
    """Whether `result` is the resolved `cell`'s, measured with its workload and settings
    (`run.cell.measured_with`, what the workflow's rerun trigger compares); the commit aside."""
    expected = json.loads(
        json.dumps(
            {
                "cell": cell_identity(cell.profile, cell.workload, cell.adapter),
                **measured_with(cell.profile, cell.workload),
            }
        )
    )
    # The data digest is the data's, generated from the workload and the seed (in settings).
    workload = {k: v for k, v in result.get("workload", {}).items() if k != "data_digest"}
    return (
        result.get("cell") == expected["cell"]
        and workload == expected["workload"]
        and result.get("settings") == expected["settings"]
    )
