"""Packaging: exact pins everywhere, and environment.yml agrees with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
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
