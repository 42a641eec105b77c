"""The job script SkyPilot 0.14.1 makes of a task's `run` text, for the loopback `sky`.

SkyPilot does not run the text bare: `TaskCodeGen.build_task_bash_script`
(sky/backends/task_codegen.py) puts its own commands before it and its MOUNT_CACHED wait after
it, in the same bash script: `__skypilot_user_exit_code=$?`, then, where `findmnt` lists an rclone
mount and `~/.sky/rclone_log/` has logs, a loop until every log's last status line says nothing
is left to upload, then `exit` with that code. So an `exit` in the text skips the wait, and the
text's shell options (`set -e`, `pipefail`) are in force inside it.

Importing SkyPilot takes seconds, too long for every loopback call: the script is built once
with SkyPilot's own function around a placeholder (kept in the loopback's state), and the text is
put in the placeholder's place (the function only concatenates; `matches_skypilot` checks that).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

_PLACEHOLDER = "__LOOPBACK_RUN_TEXT_7f3a__"


def _built(run_text: str) -> str:
    from sky.backends.task_codegen import UNSET_RAY_ENV_VARS, TaskCodeGen

    # What the Ray code generator passes (a single-node job on a cluster).
    unset_ray = " && ".join(f"unset {var}" for var in UNSET_RAY_ENV_VARS)
    return TaskCodeGen.build_task_bash_script(run_text, env_prefix=unset_ray)


@functools.cache
def _parts(cache: Path | None) -> tuple[str, str]:
    if cache is not None:
        try:
            before, after = json.loads(cache.read_text())
            return before, after
        except (OSError, ValueError):
            pass
    before, after = _built(_PLACEHOLDER).split(_PLACEHOLDER)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps([before, after]))
        os.replace(tmp, cache)
    return before, after


def task_script(run_text: str, cache: Path | None = None) -> str:
    """`run_text` as SkyPilot runs it: its prefix, the text, its exit-code capture and wait.
    `cache`: a file that keeps the parts for later processes (the loopback's state)."""
    before, after = _parts(cache)
    return before + run_text + after


def matches_skypilot(run_text: str) -> bool:
    return task_script(run_text) == _built(run_text)
