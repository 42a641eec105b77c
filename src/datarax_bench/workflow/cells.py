"""The workflow's cells: the matrix under its config, a cell from a job's wildcards, what makes a
cell stale, its worker processes, and a managed run's split of the cells over its shards.

`workflow/rules/common.smk` only wires these to rules (input functions, params, targets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datarax_bench.run.cell import CellId, matrix, measured_with, resolve_cell
from datarax_bench.workload.catalog import Catalog, Profile, Workload, load_profile


def infra_dir(infra: str) -> str:
    """An `--infra` such as gcp/us-central1 as one directory name, as results/ and a managed
    run's bucket name it: gcp_us-central1."""
    return infra.replace("/", "_")


def style_of(style_suffix: str) -> str:
    """A cell's style from its file name's suffix: '' is plain, '.tuned' tuned."""
    return style_suffix.lstrip(".") or "plain"


def cell_of(wildcards: Any) -> CellId:
    """The cell a job's wildcards name (scenario, variant, adapter, style_suffix)."""
    w = wildcards
    return CellId(w.scenario, w.variant, w.adapter, style_of(w.style_suffix))


@dataclass
class Matrix:
    """The cells a workflow run measures: each selected profile's matrix (`run.cell.matrix`, the
    one `datarax-bench run` measures) narrowed by the config's scenarios, adapters, styles."""

    catalog: Catalog
    scenarios: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    _profiles: dict[str, Profile] = field(default_factory=dict, repr=False)
    _cells: dict[str, list[CellId]] = field(default_factory=dict, repr=False)
    _processes: dict[tuple[str, CellId], int] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, config: dict[str, Any], catalog: Catalog) -> Matrix:
        return cls(catalog, config["scenarios"], config["adapters"], config["styles"])

    def profile(self, name: str) -> Profile:
        if name not in self._profiles:
            self._profiles[name] = load_profile(name, self.catalog)
        return self._profiles[name]

    def scenarios_for(self, profile: str) -> list[str]:
        """The scenarios measured: the config's, or else the profile's own list."""
        return list(self.scenarios or self.profile(profile).scenarios)

    def cells(self, profile: str) -> list[CellId]:
        """Every cell of the profile under this config, in the matrix's order."""
        if profile not in self._cells:
            self._cells[profile] = matrix(
                self.profile(profile),
                self.catalog,
                self.scenarios_for(profile),
                self.adapters or None,
                self.styles or None,
            )
        return self._cells[profile]

    def workload(self, profile: str, cell: CellId) -> Workload:
        return self.catalog.get(cell.scenario).resolve(cell.variant, self.profile(profile).size)

    def measured_with(self, profile: str, cell: CellId) -> dict[str, Any]:
        """What makes the cell's result stale (`run.cell.measured_with`): its workload and
        settings, which the workflow's rerun trigger compares as `--resume-dir` does."""
        return measured_with(self.profile(profile), self.workload(profile, cell))

    def processes(self, profile: str, cell: CellId) -> int:
        """How many worker processes measure the cell (1 for a cell that runs no loader)."""
        from datarax_bench.run.runner import processes_of

        if (profile, cell) not in self._processes:
            resolved = resolve_cell(self.profile(profile), self.catalog, *cell)
            self._processes[profile, cell] = processes_of(resolved)
        return self._processes[profile, cell]

    def fed_scenarios(self, profile: str) -> list[str]:
        """The scenarios whose feed the profile measures (each has a feed plot)."""
        from datarax_bench.measures.feed import fed_scenarios

        return fed_scenarios(self.profile(profile), self.catalog, self.scenarios_for(profile))


@dataclass(frozen=True)
class ShardPlan:
    """A managed run's fixed split of a profile's cells over its shards (numbered from 1): each
    shard's cells, the shard of a cell, the files a shard's job reads and writes."""

    shards: dict[int, list[CellId]]

    @classmethod
    def split(cls, cells: list[CellId], shards: int) -> ShardPlan:
        """Shard k gets every shards-th cell in the matrix's order (`managed.assign_shards`)."""
        from datarax_bench.cloud.managed import assign_shards

        plan = assign_shards([str(c) for c in cells], shards)
        return cls({k: [CellId.parse(c) for c in ids] for k, ids in plan.items()})

    def numbers(self) -> list[int]:
        return list(self.shards)

    def cells(self, shard: int) -> list[CellId]:
        return self.shards[int(shard)]

    def shard_of(self, cell: CellId) -> int:
        for shard, cells in self.shards.items():
            if cell in cells:
                return shard
        raise ValueError(f"cell {cell} is in no shard of this plan")

    def cell_files(self, shard: int) -> dict[str, str]:
        """Cell id -> its file under a results directory (raw/S/V/A[.STYLE].json), as the
        shard's job keeps it in the bucket."""
        return {str(c): str(c.path()) for c in self.cells(shard)}

    @staticmethod
    def report(work_dir: str, shard: int) -> str:
        """Where shard `shard`'s job report is written under the run's cloud directory."""
        return f"{work_dir}/managed/shard-{shard}.json"
