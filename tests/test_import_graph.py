"""The package's import graph has no cycle and no upward arrow, counting imports inside functions
too (a lazy import that closes a cycle hides the cycle, it does not remove it); each module
imports on its own, in a fresh interpreter."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datarax_bench

PACKAGE = "datarax_bench"
ROOT = Path(datarax_bench.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports anywhere in its body (parents included: importing
    a.b runs a/__init__.py first)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the package itself is everyone's parent
                prefix = ".".join(parts[:i])
                if prefix in known and prefix != name:
                    found.add(prefix)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    # A parent package imports its registry's modules dynamically, which the graph cannot see;
    # what it can see must still be acyclic.
    assert len(graph) > 30
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# The package's rooms, lowest first (docs/layout.md): a module may import its own room and the
# rooms below it, never one above. The root's leaves are one room; `results` and `provenance`
# (the result contract) another; the command line is the top.
LAYERS: list[set[str]] = [
    {"errors", "paths", "files", "stats", "machine_load", "plugins", "console", "accelerator"},
    {"workload"},
    {"provenance", "results"},
    {"adapters"},
    {"measures"},
    {"run"},
    {"report"},
    {"cloud"},
    {"workflow"},
    {"cli"},
]


def _layer(name: str) -> int:
    """The rank of the room that `name` is in (the package itself, everyone's parent: -1)."""
    parts = name.split(".")
    if len(parts) == 1:
        return -1
    for rank, rooms in enumerate(LAYERS):
        if parts[1] in rooms:
            return rank
    raise AssertionError(f"{name} is in no room of LAYERS: place it there (and in docs/layout.md)")


def _upward(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Every arrow into a room above the importer's; of the modules and their parent packages
    that one import names, only the deepest."""
    out = set()
    for name, targets in graph.items():
        up = {t for t in targets if _layer(t) > _layer(name)}
        out |= {(name, t) for t in up if not any(u.startswith(t + ".") for u in up)}
    return out


def test_no_module_imports_a_room_above_its_own():
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    upward = _upward(graph)
    assert not upward, "upward imports: " + ", ".join(f"{a} -> {b}" for a, b in sorted(upward))


def test_the_layer_check_finds_an_upward_arrow():
    graph = {
        "datarax_bench.workload.catalog": {"datarax_bench.errors", "datarax_bench.workload"},
        "datarax_bench.results": {"datarax_bench.measures", "datarax_bench.measures.feed"},
        "datarax_bench.cli": {"datarax_bench.run.runner", "datarax_bench.run"},
    }
    assert _upward(graph) == {("datarax_bench.results", "datarax_bench.measures.feed")}


def _import_alone(name: str, cwd: Path) -> tuple[str, subprocess.CompletedProcess]:
    proc = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=dict(os.environ),
    )  # fmt: skip
    return name, proc


def test_every_module_imports_on_its_own(tmp_path):
    """No module depends on another having been imported first: each is imported in a fresh
    interpreter of its own (in one process, an earlier import would hide the dependence)."""
    names = sorted(n for n in _modules() if not n.endswith("__main__"))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        done = list(pool.map(lambda n: _import_alone(n, tmp_path), names))
    failed = {name: proc.stderr.strip().splitlines()[-1:] for name, proc in done if proc.returncode}
    assert not failed, failed
