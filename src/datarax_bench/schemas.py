"""Loading YAML/JSON files and validating them against the JSON Schemas in workflow/schemas/."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import paths
from .errors import UserError


@cache
def load_schema(name: str) -> dict[str, Any]:
    with open(paths.schema_path(name)) as fh:
        return yaml.safe_load(fh)


def _location(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _best_error(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    # For oneOf/anyOf the top error says little; the deepest sub-error names the real problem.
    return jsonschema.exceptions.best_match([error]) if error.context else error


def validation_message(error: jsonschema.ValidationError) -> str:
    error = _best_error(error)
    if error.validator == "additionalProperties":
        return str(error.message)
    if error.validator in {"enum", "const"}:
        expected = error.validator_value if error.validator == "enum" else [error.validator_value]
        return f"got {error.instance!r}, expected one of {', '.join(map(repr, expected))}"
    if error.validator == "required":
        return str(error.message)
    return f"got {error.instance!r}: {error.message}"


def validate(document: Any, schema_name: str, source: str | Path) -> None:
    """Raise UserError naming the file, the key path and what was expected."""
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    errors = list(validator.iter_errors(document))
    if errors:
        # Errors from conditional (if/then) branches follow from another error; report that one.
        direct = [e for e in errors if "then" not in e.schema_path and "else" not in e.schema_path]
        first = _best_error(min(direct or errors, key=lambda e: list(map(str, e.absolute_path))))
        raise UserError(f"{source}: {_location(first)}: {validation_message(first)}")


def read_yaml(path: Path) -> Any:
    try:
        with open(path) as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None


def read_json(path: Path) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
