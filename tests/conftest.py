"""Shared test setup: a private data cache, the package's bytecode, paths to the project's files."""

from __future__ import annotations

import compileall
import fcntl
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
from support import CLI, ROOT, run_cli
from support.smoke import run_smoke_matrix, union_of

# Fixtures of more than one test module (a real smoke run's results, a private wandb environment)
# and the `alone` marker of the tests that must not share the machine with another.
pytest_plugins = [
    "support.wandb_offline",
    "support.managed_loopback",
    "support.stand_in_jobs",
    "support.alone",
]


def pytest_configure(config):
    """The `docker` marker; Ctrl-C reaches the processes the tests start as from a terminal.

    A process that inherits SIGINT ignored keeps ignoring it (Python too: no KeyboardInterrupt),
    as every background job of a non-interactive shell does, and a CI runner may start pytest
    so. Handled here, the children start with SIGINT at its default, like a terminal's
    foreground job, and the tests that press Ctrl-C do not depend on how pytest was started.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line(
        "markers", "docker: builds and runs the benchmark images on a Docker daemon (run last)"
    )


def pytest_sessionstart(session):
    """The package's bytecode (and that of the test code other processes import: the loopback,
    plugins, helpers) written once, beside the sources as Python caches it (ignored by git).
    Where PYTHONDONTWRITEBYTECODE is set, as on the project's machines, every process the tests
    start (the CLI, each cell's worker, each Snakemake job) would compile it again; it still
    reads a cache that exists, and recompiles a source that changed."""
    for folder in (ROOT / "src", ROOT / "tests"):
        compileall.compile_dir(folder, quiet=1)


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory) -> Path:
    """Every test (and every subprocess it starts) generates data into one private cache."""
    cache = tmp_path_factory.mktemp("data-cache")
    old = os.environ.get("DATARAX_BENCH_CACHE")
    os.environ["DATARAX_BENCH_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("DATARAX_BENCH_CACHE", None)
    else:
        os.environ["DATARAX_BENCH_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def isolated_wandb(tmp_path_factory):
    """No test (nor the workflows they start) touches the real W&B cache, config or key."""
    root = tmp_path_factory.mktemp("wandb-home")
    saved = {k: os.environ.get(k) for k in _WANDB_DIRS + ("WANDB_API_KEY",)}
    for name in _WANDB_DIRS:
        os.environ[name] = str(root / name.lower())
    os.environ.pop("WANDB_API_KEY", None)
    yield root
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


_WANDB_DIRS = ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")


@pytest.fixture(autouse=True)
def no_test_leaves_the_benchmarks_variables_changed():
    """A `DATARAX_BENCH_*` variable that a test sets in this process's environment (by calling
    code that sets it, not through `monkeypatch`) reaches every later test of the process and
    every process they start (the workflow's invocation id made a later run's cells trust an
    earlier run's cluster). Such a leak is put back and fails the test that left it. (The
    frameworks set variables of their own as they are imported: not ours to police.)"""
    before = _own_variables()
    yield
    after = _own_variables()
    if after == before:
        return
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    for name in changed:
        if name in before:
            os.environ[name] = before[name]
        else:
            del os.environ[name]
    pytest.fail(f"the test left the environment changed: {', '.join(changed)}")


def _own_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("DATARAX_BENCH_")}


@pytest.fixture(scope="module", autouse=True)
def no_local_ray_outlives_its_module():
    """The Ray Data adapter starts a local Ray in the process that runs it (here: pytest) and
    keeps it for the process's life. Its processes use CPU all along, which later tests would
    count as this process's own (machine-load checks) or feel as a busier machine."""
    yield
    raydata = sys.modules.get("datarax_bench.adapters.raydata")
    if raydata is not None:
        raydata.stop_ray()


@pytest.fixture(scope="session")
def smoke_results(request, tmp_path_factory, data_cache) -> Path:
    """One real `datarax-bench run --profile smoke --output-dir` of every cell that the modules
    of the session's tests that use it name in their `SMOKE_RUN` (support/smoke.py), made once
    per session. Read only: a module takes its own copy with `support.smoke.smoke_view`."""
    # Every selected module that names cells (also where a fixture asks for the run
    # indirectly, as test_plots' `figures` does through getfixturevalue).
    modules = {
        item.module: None
        for item in request.session.items
        if hasattr(getattr(item, "module", None), "SMOKE_RUN")
    }
    from support.alone import shared_dir  # a plugin (pytest_plugins): imported by pytest first

    matrix = union_of(modules)
    folder = shared_dir(request.config)
    if folder is None:
        return run_smoke_matrix(tmp_path_factory.mktemp("smoke-results") / "run", matrix)
    # Several processes: the first to need it measures it for all (each collected every test).
    out, done = folder / "smoke-results" / "run", folder / "smoke-results" / "measured"
    with open(folder / "smoke-results.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            shutil.rmtree(out, ignore_errors=True)
            run_smoke_matrix(out, matrix)
            done.touch()
    return out


@pytest.fixture
def cli_path() -> str:
    """The installed `datarax-bench` console script of this interpreter's environment."""
    return CLI


@pytest.fixture
def project_copy(tmp_path) -> Path:
    """A copy of config/ and workflow/schemas/ that a test may break on purpose."""
    root = tmp_path / "project"
    shutil.copytree(ROOT / "config", root / "config")
    shutil.copytree(ROOT / "workflow" / "schemas", root / "workflow" / "schemas")
    return root


@pytest.fixture
def run_smoke_cell():
    """`datarax-bench run` of one smoke-profile cell into `out`, as a user would type it."""

    def run(scenario: str, adapter: str, out: Path, timeout: float = 120, variant=None):
        args = ["run", "--profile", "smoke", "--scenario", scenario]
        args += ["--variant", variant] if variant else []
        return run_cli(*args, "--adapter", adapter, "--output", str(out), timeout=timeout)

    return run


def _framework_adapter(item) -> str | None:
    """The adapter a test is parametrized with (`adapter_id`, `adapter`, or a `cell` tuple
    (adapter, scenario, variant)), if any."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    cell = params.get("cell")
    adapter = params.get("adapter_id") or params.get("adapter")
    if adapter is None and isinstance(cell, tuple) and cell:
        adapter = cell[0]
    return adapter if isinstance(adapter, str) else None


# The framework adapters' own modules (src/datarax_bench/adapters/FRAMEWORK.py), each tested by
# tests/adapters/test_FRAMEWORK.py.
_FRAMEWORKS = {
    p.stem
    for p in (ROOT / "src" / "datarax_bench" / "adapters").glob("*.py")
    if not p.stem.startswith("_") and p.stem not in ("base", "numpy_ref")
}


def _runs_a_framework(item) -> bool:
    """A test of a framework adapter's own module (tests/adapters/test_FRAMEWORK.py), or one
    parametrized over a framework's adapter (anything but the NumPy reference): it imports and
    runs that framework's loader."""
    path = Path(str(item.fspath))
    if path.parent.name == "adapters" and path.stem.removeprefix("test_") in _FRAMEWORKS:
        return True
    adapter = _framework_adapter(item)
    return adapter is not None and adapter != "numpy"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    """A test that runs a framework's loader (`_runs_a_framework`) is `slow`, wherever it is
    written (the NumPy reference's cells of the same tests stay in the fast tier). The Docker
    tests (one image build for all of them, minutes) last in one process, after everything
    else has run; first where the suite runs in several, beside everything else."""
    for item in items:
        if _runs_a_framework(item) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
    from support.alone import shared_dir  # a plugin (pytest_plugins): imported by pytest first

    several = shared_dir(config) is not None
    items.sort(key=lambda item: (item.get_closest_marker("docker") is not None) != several)
