"""Packaging: exact pins everywhere, environment.yml agrees with pyproject.toml, and the docs
name every module of the package."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from support import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)$")


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(requirements):
    out = {}
    for req in requirements:
        if req.startswith("datarax-bench["):
            continue
        match = PIN.match(req)
        assert match, f"{req!r} is not pinned to an exact version"
        out[match.group(1).lower()] = match.group(3)
    return out


def test_every_dependency_is_pinned_exactly():
    project = _pyproject()
    _pins(project["dependencies"])
    for reqs in project["optional-dependencies"].values():
        _pins(reqs)
    assert set(project["optional-dependencies"]) >= {
        "bench",
        "orchestrate",
        "gpu",
        "tpu",
        "dev",
        "all",
    }


def test_environment_yml_carries_the_same_pins():
    project = _pyproject()
    expected = _pins(project["dependencies"])
    for extra in ("bench", "orchestrate", "dev"):
        expected.update(_pins(project["optional-dependencies"][extra]))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = _pins([line for line in pip_section if not line.startswith("-")])
    assert listed == expected
    assert "-c constraints.txt" in pip_section and "-e ." in pip_section
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"


def test_constraints_agree_with_the_pins():
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            constraints[name.lower().replace("_", "-")] = version
    project = _pyproject()
    pins = _pins(project["dependencies"])
    for extra in ("bench", "orchestrate", "dev"):
        pins.update(_pins(project["optional-dependencies"][extra]))
    for name, version in pins.items():
        assert constraints.get(name.replace("_", "-")) == version, name


@pytest.mark.parametrize("extra", ["bench", "orchestrate"])
def test_workflow_conda_envs_carry_their_extra(extra):
    # The measuring rules' env must match what a cloud machine installs (bench: loaders + wandb).
    project = _pyproject()
    expected = _pins(project["dependencies"])
    expected.update(_pins(project["optional-dependencies"][extra]))
    env = yaml.safe_load((ROOT / "workflow" / "envs" / f"{extra}.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == expected


def test_a_cloud_machine_can_export_its_results():
    # The standalone task files install `.[bench,...]` and export to W&B from the machine.
    bench = _pins(_pyproject()["optional-dependencies"]["bench"])
    assert bench["wandb"] == _pins(_pyproject()["optional-dependencies"]["orchestrate"])["wandb"]


def _layout_tables() -> dict[str, set[str]]:
    """docs/layout.md's module tables: the folder each heading names -> the names its rows give."""
    tables: dict[str, set[str]] = {}
    folder = None
    for line in (ROOT / "docs" / "layout.md").read_text().splitlines():
        heading = re.match(r"^#+ `(src/datarax_bench/[^`]*)`", line)
        if heading:
            folder = heading.group(1).rstrip("/")
            tables[folder] = set()
        elif folder and (row := re.match(r"^\| `([^`]+)` \|", line)):
            tables[folder].add(row.group(1))
    return tables


def test_the_layout_doc_names_every_module_of_the_package():
    # The README links to docs/layout.md for the package's modules; a module added or removed
    # without it makes the layout a lie.
    tables = _layout_tables()
    package = ROOT / "src" / "datarax_bench"
    folders = [package, *(p for p in package.rglob("*") if (p / "__init__.py").is_file())]
    for folder in folders:
        key = folder.relative_to(ROOT).as_posix()
        on_disk = {p.name for p in folder.glob("*.py")}
        on_disk |= {f"{p.name}/" for p in folder.iterdir() if (p / "__init__.py").is_file()}
        assert key in tables, f"docs/layout.md has no table for {key}/"
        assert tables[key] == on_disk, (
            f"docs/layout.md, {key}/: missing {sorted(on_disk - tables[key])}, "
            f"not in the package {sorted(tables[key] - on_disk)}"
        )
    assert set(tables) == {f.relative_to(ROOT).as_posix() for f in folders}


def test_the_readme_links_to_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README.md does not link to docs/{page.name}"
