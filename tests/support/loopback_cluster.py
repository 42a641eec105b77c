"""What the workflow runs on the loopback cluster share (tests/cloud/test_*_loopback.py): a
committed copy of this checkout, the cells a run left, every `sky` command line parsed by the
real SkyPilot CLI, and a WANDB_API_KEY sentinel that must leave no trace."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from datarax_bench.results import load_result
from support import ROOT

SENTINEL = "wandb-sentinel-0123456789abcdef0123456789abcdef"


INFRA = "ssh/loopback"


GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]


def checkout_copy(dest: Path) -> Path:
    """This working tree (tracked and untracked, not ignored files) with its .git, committed."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    if (ROOT / ".git").is_dir():
        shutil.copytree(ROOT / ".git", dest / ".git")
    else:  # a `git worktree`, whose .git is a file naming the shared repository: clone its HEAD
        clone = dest.parent / f".{dest.name}-clone"
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(clone)], check=True)
        (clone / ".git").rename(dest / ".git")
        shutil.rmtree(clone)
    commit(dest, "the working tree under test")
    return dest


def commit(repo: Path, message: str) -> str:
    subprocess.run([*GIT, "-C", str(repo), "add", "-A"], check=True, capture_output=True)
    subprocess.run(
        [*GIT, "-C", str(repo), "commit", "-q", "--allow-empty", "-m", message],
        check=True, capture_output=True,
    )  # fmt: skip
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def raw_cells(run_dir: Path) -> dict[tuple[str, str, str], str]:
    out = {}
    for path in sorted((run_dir / "raw").rglob("*.json")):
        result = load_result(path)
        c = result["cell"]
        out[(c["scenario"], c["variant"], c["adapter"])] = result["status"]
    return out


def check_against_real_sky_cli(calls: list[dict]) -> None:
    """Each recorded argv must parse with SkyPilot's own click command (options, types)."""
    from sky.client.cli import command

    for call in calls:
        argv = call["argv"]
        if argv[0] == "api":
            continue
        if argv[0] == "jobs":  # a group: `sky jobs launch|queue|cancel|logs ...`
            cmd = command.cli.commands["jobs"].commands[argv[1]]
            cmd.make_context(f"sky jobs {argv[1]}", list(argv[2:]))
            continue
        cmd = command.cli.commands[argv[0]]
        cmd.make_context(f"sky {argv[0]}", list(argv[1:]))  # raises on a bad option


def assert_no_secret(*roots: Path) -> None:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert SENTINEL.encode() not in path.read_bytes(), f"secret leaked into {path}"
