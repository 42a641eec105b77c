"""The task files a cloud run launches: the profile's template, checked by SkyPilot's own
loader, rendered with the run's setup and environment; the remote cell's command line."""

from __future__ import annotations

import copy
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from datarax_bench import paths
from datarax_bench.errors import UserError
from datarax_bench.files import write_text_atomic
from datarax_bench.results import cell_path

#: Where the remote machine keeps results, relative to its home (`~` expands there).
REMOTE_RESULTS = "~/datarax-bench-results"


#: Written by the task's setup; every remote command sources it.
REMOTE_ENV_FILE = "~/.datarax-bench-env"


#: The pinned stack inside the benchmark images (benchmarks/docker/Dockerfile.*).
IMAGE_VENV = "/opt/datarax-bench/venv"


#: Written (epoch seconds) when the rendered task's setup has finished.
REMOTE_SETUP_DONE = "~/.datarax-bench-setup-done"


def task_template_path(profile) -> Path:
    path = paths.project_root() / "benchmarks" / "sky" / profile.cloud["template"]
    if not path.is_file():
        raise UserError(
            f"profile {profile.name}: cloud.template {profile.cloud['template']!r} not found; "
            "expected a file in benchmarks/sky/"
        )
    return path


def load_task(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read SkyPilot task: {exc}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a SkyPilot task (a YAML mapping)")
    return doc


def validate_task(config: dict[str, Any], source: str | Path) -> None:
    """SkyPilot's own loader: rejects unknown or misspelled fields, nested ones too."""
    import sky

    try:
        sky.Task.from_yaml_config(copy.deepcopy(config))
    except Exception as exc:  # SkyPilot raises ValueError, SchemaError, ...
        message = " ".join(str(exc).split())
        raise UserError(f"{source}: invalid SkyPilot task: {message}") from None


def run_body(*commands: str) -> str:
    """A task's `run` text, or a `sky exec` command: `commands` in a subshell that stops at the
    first failure (errexit, nounset, pipefail).

    SkyPilot appends its own code to the run text in the same bash script
    (`TaskCodeGen.build_task_bash_script`): it takes the exit status of the text, then waits
    until MOUNT_CACHED writes are uploaded, and exits with that status. In a subshell neither an
    `exit` nor these shell options reach that code: with pipefail its `tac LOG | grep -m 1` dies
    of SIGPIPE once rclone's log is large, which would fail the job before the upload is done.
    """
    return f"( set -euo pipefail; {'; '.join(commands)} )"


def doctor_commands(profile_name: str) -> list[str]:
    out = f"{REMOTE_RESULTS}/{profile_name}"
    return [
        f"source {REMOTE_ENV_FILE}",
        f"mkdir -p {out}",
        f"datarax-bench doctor --profile {profile_name} --json {out}/doctor.json",
    ]


def render_provision_task(profile, image: str = "", instance_type: str = "") -> dict[str, Any]:
    """The profile's task with the same setup; its `run` only checks the hardware (`doctor`).

    The cells then run one by one with `sky exec`, so that each becomes a Snakemake job. The
    commit is not passed along: SkyPilot syncs `.git` with the workdir, so provenance is read
    on the cluster from the tree that really runs there. With an `image` the cluster runs in
    that container, whose venv the setup uses instead of installing; every result names it.
    An `instance_type` pins the machine type, so that shards and recoveries rent the same one.
    """
    template = task_template_path(profile)
    task = load_task(template)
    task["name"] = f"datarax-bench-{profile.name}".replace("_", "-")
    task["workdir"] = str(paths.project_root())
    envs = dict(task.get("envs") or {})
    envs.pop("DATARAX_BENCH_GIT_COMMIT", None)
    envs["DATARAX_BENCH_PROFILE"] = profile.name
    if instance_type:
        task["resources"] = {**(task.get("resources") or {}), "instance_type": instance_type}
    if image:
        task["resources"] = {**(task.get("resources") or {}), "image_id": f"docker:{image}"}
        envs["DATARAX_BENCH_IMAGE"] = image
        envs["DATARAX_BENCH_PREINSTALLED_VENV"] = IMAGE_VENV
    task["envs"] = envs
    if task.get("setup"):
        task["setup"] = task["setup"].rstrip("\n") + f"\ndate +%s > {REMOTE_SETUP_DONE}\n"
    task["run"] = run_body(*doctor_commands(profile.name))
    validate_task(task, f"task rendered from {template}")
    return task


def write_task(task: dict[str, Any], path: Path) -> None:
    write_text_atomic(Path(path), yaml.safe_dump(task, sort_keys=False, default_flow_style=False))


def remote_cell_path(
    profile: str, scenario: str, variant: str, adapter: str, style: str = "plain"
) -> str:
    return str(cell_path(f"{REMOTE_RESULTS}/{profile}", scenario, variant, adapter, style))


def remote_cell_command(
    profile: str, scenario: str, variant: str, adapter: str, style: str = "plain"
) -> str:
    q = shlex.quote
    return run_body(
        f"source {REMOTE_ENV_FILE}",
        f"datarax-bench run --profile {q(profile)} --scenario {q(scenario)} "
        f"--variant {q(variant)} --adapter {q(adapter)} --style {q(style)} "
        f"--output {remote_cell_path(profile, scenario, variant, adapter, style)}",
    )


def remote_batch_command(profile: str, cells: Sequence[Any]) -> str:
    """Several cells (`CellId`s of one scenario and style) in one remote `run`, each result
    written to its `remote_cell_path` as soon as the cell is measured. Their earlier results
    there are removed first: after a job that dies, what is left was measured by this one."""
    q = shlex.quote
    scenarios = list(dict.fromkeys(c.scenario for c in cells))
    styles = list(dict.fromkeys(c.style for c in cells))
    style = f"--style {q(styles[0])} " if len(styles) == 1 else ""
    return run_body(
        f"source {REMOTE_ENV_FILE}",
        "rm -f " + " ".join(remote_cell_path(profile, *c) for c in cells),
        f"datarax-bench run --profile {q(profile)} --scenarios {' '.join(map(q, scenarios))} "
        f"{style}--output-dir {REMOTE_RESULTS}/{profile} "
        f"--cells {' '.join(q(str(c)) for c in cells)}",
    )


def task_envs(task: dict[str, Any]) -> dict[str, str]:
    """The rendered task's envs: `sky exec` jobs do not inherit them from the launch."""
    return {k: "" if v is None else str(v) for k, v in (task.get("envs") or {}).items()}


def _environment(image: str | None) -> str:
    return f"image {image}" if image else "the setup's install"
