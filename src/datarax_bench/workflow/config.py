"""The workflow's configuration (config/config.yaml and `--config`), checked like the CLI's input.

A bad value is one line naming where it came from (the file or `--config`), the key, the value
and what was expected, and the workflow stops with exit code 2 before any job runs.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema

from datarax_bench.cloud.buckets import unmountable_problem
from datarax_bench.errors import UserError
from datarax_bench.workload.schemas import (
    best_error,
    error_location,
    load_schema,
    read_yaml,
    validation_message,
)


def _fill_defaults(document: dict[str, Any], schema: Mapping[str, Any]) -> None:
    """Missing keys get the schema's defaults, nested objects included (as Snakemake's
    `validate` does), so that the rules can index every key."""
    for key, spec in schema.get("properties", {}).items():
        if key not in document and "default" in spec:
            document[key] = copy.deepcopy(spec["default"])
        if isinstance(document.get(key), dict) and "properties" in spec:
            _fill_defaults(document[key], spec)


def _display(path: str | Path) -> str:
    path = Path(path)
    with contextlib.suppress(ValueError):
        return str(path.absolute().relative_to(Path.cwd()))
    return str(path)


def _source(key: str | None, command_line: Mapping[str, Any], files: Sequence[str | Path]) -> str:
    """Where a top-level key's value came from: `--config`, else the last file that sets it."""
    if key is not None and key in command_line:
        return "--config"
    for path in reversed(files):
        doc = read_yaml(Path(path))
        if key is None or (isinstance(doc, dict) and key in doc):
            return _display(path)
    return _display(files[-1]) if files else "config"


def _check_results_dir(value: str) -> str | None:
    if os.path.isabs(value):
        return "expected a path relative to the working directory"
    normal = os.path.normpath(value)
    if normal == os.pardir or normal.startswith(os.pardir + os.sep):
        return "expected a path inside the working directory"
    return None


def check_config(
    config: dict[str, Any],
    command_line: Mapping[str, Any] | None = None,
    files: Sequence[str | Path] = (),
) -> None:
    """Validate the merged config in place (defaults filled in) or raise a one-line UserError.

    `command_line` is what `--config` set, `files` the config files in the order Snakemake read
    them; they only say where a bad value came from. A key given twice in a file is an error too.
    """
    command_line = dict(command_line or {})
    for path in files:
        read_yaml(Path(path))  # duplicate keys, which Snakemake's loader silently merges
    schema = load_schema("config")
    _fill_defaults(config, schema)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if errors:
        error = best_error(min(errors, key=lambda e: list(map(str, e.absolute_path))))
        path = [str(p) for p in error.absolute_path]
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {})
            unknown = sorted(set(error.instance) - set(known))
            where = [*path, unknown[0]]
            source = _source(where[0], command_line, files)
            raise UserError(
                f"{source}: {'.'.join(where)}: unknown key; expected one of {', '.join(known)}"
            )
        source = _source(path[0] if path else None, command_line, files)
        raise UserError(f"{source}: {error_location(error)}: {validation_message(error)}")
    problem = _check_results_dir(config["results_dir"])
    if problem:
        source = _source("results_dir", command_line, files)
        raise UserError(f"{source}: results_dir: got {config['results_dir']!r}, {problem}")
    problem = _check_cloud_mode(config)
    if problem:
        key, message = problem
        raise UserError(f"{_source(key, command_line, files)}: {key}: {message}")


def _check_cloud_mode(config: dict[str, Any]) -> tuple[str, str] | None:
    """What the managed mode needs beyond each key's own schema: (key, message) or None."""
    mode = config.get("cloud_mode", "cluster")
    if mode != "managed":
        if config.get("shards", 1) != 1:
            return "shards", f"got {config['shards']}, expected 1 unless cloud_mode is managed"
        return None
    infra = config["infra"]
    if infra == "local":
        return "cloud_mode", "got 'managed' with infra local; expected a cloud infra"
    bucket = config.get("results_bucket") or ""
    if not bucket:
        return "results_bucket", (
            "got '' with cloud_mode managed; expected s3://BUCKET[/PREFIX] or "
            "gs://BUCKET[/PREFIX], where every cell is kept as soon as it is measured"
        )
    problem = unmountable_problem(bucket, infra)
    if problem:
        return "results_bucket", problem
    pin = {k: v for k, v in (config.get("managed_controller") or {}).items() if v not in (None, "")}
    if pin:
        from datarax_bench.cloud.managed import controller_pin_problem

        problem = controller_pin_problem(pin)
        if problem:
            return "managed_controller", problem
    return None


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """For the workflow's setup: a UserError is printed as one line and exits with code 2,
    as `datarax-bench` does, instead of Snakemake's traceback and schema dump."""
    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(UserError.exit_code) from None
