"""The adapter registry: every module in this package that defines an `Adapter` subclass
decorated with `@register` adds a framework. Adding a framework means adding one file.

Adapters outside this package use the same `@register` and load as plugins (`plugins`): from
the `datarax_bench.adapters` entry point group, and from the modules named in
`DATARAX_BENCH_PLUGINS` (test doubles).

Adapter modules must not import their framework at module level: `list` and the workflow's
planning import every adapter, and must stay fast.
"""

from __future__ import annotations

import importlib
import pkgutil

from datarax_bench.adapters.base import Adapter, CellContext, Loader
from datarax_bench.errors import UserError
from datarax_bench.plugins import load_entry_points, load_named_modules

__all__ = ["Adapter", "CellContext", "Loader", "all_adapters", "get_adapter", "register"]

ENTRY_POINT_GROUP = "datarax_bench.adapters"

_REGISTRY: dict[str, Adapter] = {}
_ORDER: dict[str, int] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    _REGISTRY[cls.id] = cls()
    return cls


def _discover() -> None:
    if _ORDER:
        return
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    load_entry_points(ENTRY_POINT_GROUP)
    load_named_modules()
    # The reference first, then frameworks alphabetically by display name.
    ordered = sorted(_REGISTRY.values(), key=lambda a: (a.id != "numpy", a.display_name.lower()))
    _ORDER.update({a.id: i for i, a in enumerate(ordered)})


def all_adapters() -> list[Adapter]:
    _discover()
    return sorted(_REGISTRY.values(), key=lambda a: _ORDER[a.id])


def get_adapter(name: str) -> Adapter:
    """By id, display name or alias, case-insensitively."""
    wanted = name.strip().lower()
    for adapter in all_adapters():
        names = {adapter.id, adapter.display_name, *adapter.aliases}
        if wanted in {n.lower() for n in names}:
            return adapter
    choices = ", ".join(f"{a.id} ({a.display_name})" for a in all_adapters())
    raise UserError(f"unknown adapter {name!r}; expected one of {choices}")
