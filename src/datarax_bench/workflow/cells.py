"""The workflow's cells: the matrix under its config, a cell from a job's wildcards, what makes a
cell stale, its worker processes, and a managed run's split of the cells over its shards.

`workflow/rules/common.smk` only wires these to rules (input functions, params, targets).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from datarax_bench.errors import UserError
from datarax_bench.results import cell_path, infra_dir, process_path
from datarax_bench.run.cell import CellId, matrix, measured_with, resolve_cell
from datarax_bench.workload.catalog import (
    STYLES,
    Catalog,
    Profile,
    Workload,
    load_profile,
    profile_names,
)


def run_dir_pattern(results_dir: str) -> str:
    """A run's results directory, results/{profile}/{infra}: what `run --output-dir` writes."""
    return f"{os.path.normpath(results_dir)}/{{profile}}/{{infra}}"


def cell_pattern(run_dir: str) -> str:
    """A cell's result file, for Snakemake: raw/S/V/A.json or raw/S/V/A.STYLE.json (the style
    suffix is empty or ".STYLE")."""
    return str(cell_path(run_dir, "{scenario}", "{variant}", "{adapter}{style_suffix}"))


def process_pattern(run_dir: str) -> str:
    """The result of worker process {process} of a cell measured in several, kept until the cell
    pools them: processes/S/V/A[.STYLE]/K.json."""
    cell = "{adapter}{style_suffix}"
    return str(process_path(run_dir, "{scenario}", "{variant}", cell, "plain", "{process}"))


def wildcard_constraints(catalog: Catalog, infra: str) -> dict[str, str]:
    """Each wildcard of the workflow's file patterns matches only the names it can take."""
    from datarax_bench.adapters import all_adapters

    def alternatives(names) -> str:
        return "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))

    variants = (v for scenario in catalog.scenarios.values() for v in scenario.variants)
    return {
        "profile": alternatives(profile_names()),
        "infra": re.escape(infra_dir(infra)),
        "scenario": alternatives(catalog.scenarios),
        "variant": alternatives(variants),
        "adapter": alternatives(adapter.id for adapter in all_adapters()),
        "style_suffix": "|" + alternatives(f".{s}" for s in STYLES if s != "plain"),
        "process": r"[1-9][0-9]*",
    }


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
    #: Profiles by name, loaded from config/profiles/ when first asked for (or given).
    profiles: dict[str, Profile] = field(default_factory=dict, repr=False)
    _cells: dict[str, list[CellId]] = field(default_factory=dict, repr=False)
    _processes: dict[tuple[str, CellId], int] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(
        cls, config: dict[str, Any], catalog: Catalog, profiles: dict[str, Profile] | None = None
    ) -> Matrix:
        """The config's scenarios, adapters and styles (empty: the profile's, every one)."""
        selected = (config["scenarios"], config["adapters"], config["styles"])
        return cls(catalog, *selected, profiles=dict(profiles or {}))

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            self.profiles[name] = load_profile(name, self.catalog)
        return self.profiles[name]

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

    def result_files(self, profile: str, root: str) -> list[str]:
        """Every cell's result file under the results directory `root`, in the matrix's order."""
        return [str(cell.path(root)) for cell in self.cells(profile)]

    def workload(self, profile: str, cell: CellId) -> Workload:
        return self.catalog.get(cell.scenario).resolve(cell.variant, self.profile(profile).size)

    def measured_with(self, profile: str, cell: CellId) -> dict[str, Any]:
        """What makes the cell's result stale (`run.cell.measured_with`): its workload and
        settings, which the workflow's rerun trigger compares as `--resume-dir` does."""
        return measured_with(self.profile(profile), self.workload(profile, cell))

    def measured_with_each(self, profile: str, cells: list[CellId]) -> dict[str, dict[str, Any]]:
        """Cell id -> `measured_with`: what a managed shard's cells measure."""
        return {str(cell): self.measured_with(profile, cell) for cell in cells}

    def processes(self, profile: str, cell: CellId) -> int:
        """How many worker processes measure the cell (1 for a cell that runs no loader)."""
        from datarax_bench.run.runner import processes_of

        if (profile, cell) not in self._processes:
            resolved = resolve_cell(self.profile(profile), self.catalog, *cell)
            self._processes[profile, cell] = processes_of(resolved)
        return self._processes[profile, cell]

    def earlier_processes(self, profile: str, cell: CellId, process: int | str | None) -> list[int]:
        """The numbers of the cell's worker processes before `process`, in order; with None,
        those before its last, which the cell's own job measures before pooling them all."""
        last = self.processes(profile, cell) if process is None else int(process)
        return list(range(1, last))

    def process_priority(self, profile: str, cell: CellId, process: int | str) -> int:
        """The scheduling priority of the cell's worker process `process`: in rounds, every
        cell's first process before any cell's second, and so on (the last has 0, the default),
        so that a cell's processes spread over the run and sample the machine's drift."""
        return self.processes(profile, cell) - int(process)

    def fed_scenarios(self, profile: str) -> list[str]:
        """The scenarios whose feed the profile measures (each has a feed plot)."""
        from datarax_bench.measures.feed import fed_scenarios

        return fed_scenarios(self.profile(profile), self.catalog, self.scenarios_for(profile))


@dataclass(frozen=True)
class ShardPlan:
    """A managed run's fixed split of a profile's cells over its shards (numbered from 1): each
    shard's cells, the shard of a cell, the files a shard's job reads and writes. The one
    definition of the split."""

    shards: dict[int, list[CellId]]

    @classmethod
    def split(cls, cells: Sequence[CellId], shards: int) -> ShardPlan:
        """Shard k (from 1) gets every shards-th cell in the matrix's order: each shard sees every
        scenario, so their lengths stay close, and a cell's shard depends only on the matrix."""
        if shards < 1:
            raise UserError(f"shards: got {shards}, expected a whole number of at least 1")
        plan: dict[int, list[CellId]] = {k: [] for k in range(1, shards + 1)}
        for i, cell in enumerate(cells):
            plan[i % shards + 1].append(cell)
        return cls(plan)

    def cells(self, shard: int | str) -> list[CellId]:
        return self.shards[int(shard)]

    def ids(self, shard: int | str) -> list[str]:
        """The shard's cells as `run --cells` names them, as its job is given them."""
        return [str(c) for c in self.cells(shard)]

    def shard_of(self, cell: CellId) -> int:
        for shard, cells in self.shards.items():
            if cell in cells:
                return shard
        raise ValueError(f"cell {cell} is in no shard of this plan")

    def cell_files(self, shard: int | str) -> dict[str, str]:
        """Cell id -> its file under a results directory (raw/S/V/A[.STYLE].json), as the
        shard's job keeps it in the bucket."""
        return {str(c): str(c.path()) for c in self.cells(shard)}

    def files_by_shard(self, root: str) -> dict[int, list[str]]:
        """Shard number -> its cells' result files under the results directory `root` (for the
        check that every shard ran on the same hardware)."""
        return {k: [str(c.path(root)) for c in cells] for k, cells in self.shards.items()}

    def reports(self, work_dir: str) -> list[str]:
        """Every shard's job report, in shard order."""
        return [self.report(work_dir, k) for k in self.shards]

    @staticmethod
    def report(work_dir: str, shard: int) -> str:
        """Where shard `shard`'s job report is written under the run's cloud directory."""
        return f"{work_dir}/managed/shard-{shard}.json"
