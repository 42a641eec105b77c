"""Loading YAML/JSON files and validating them against the JSON Schemas in workflow/schemas/."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from datarax_bench import paths
from datarax_bench.errors import UserError


@cache
def load_schema(name: str) -> dict[str, Any]:
    with open(paths.schema_path(name)) as fh:
        return yaml.safe_load(fh)


def error_location(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def best_error(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    # For oneOf/anyOf the top error says little; the deepest sub-error names the real problem.
    return jsonschema.exceptions.best_match([error]) if error.context else error


def validation_message(error: jsonschema.ValidationError) -> str:
    error = best_error(error)
    if error.validator == "additionalProperties":
        return str(error.message)
    if error.validator in {"enum", "const"}:
        expected = error.validator_value if error.validator == "enum" else [error.validator_value]
        return f"got {error.instance!r}, expected one of {', '.join(map(repr, expected))}"
    if error.validator == "required":
        return str(error.message)
    # A pattern's plain-words meaning, where the schema gives one, instead of the regex.
    if (
        error.validator == "pattern"
        and isinstance(error.schema, dict)
        and "x-expected" in error.schema
    ):
        return f"got {error.instance!r}, expected {error.schema['x-expected']}"
    return f"got {error.instance!r}: {error.message}"


def validate(document: Any, schema_name: str, source: str | Path) -> None:
    """Raise UserError naming the file, the key path and what was expected."""
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    errors = list(validator.iter_errors(document))
    if errors:
        # Errors from conditional (if/then) branches follow from another error; report that one.
        direct = [e for e in errors if "then" not in e.schema_path and "else" not in e.schema_path]
        first = best_error(min(direct or errors, key=lambda e: list(map(str, e.absolute_path))))
        raise UserError(f"{source}: {error_location(first)}: {validation_message(first)}")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.setdefault(key, line)
                except TypeError:
                    continue  # an unhashable key: construct_mapping itself reports it
                if first != line:
                    raise DuplicateKeyError(key, first, line)
        return super().construct_mapping(node, deep)


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"duplicate key {key!r} at lines {first} and {second}")
        self.key, self.first, self.second = key, first, second


def read_yaml(path: Path) -> Any:
    """A YAML file; a syntax error or a key given twice is a UserError naming file and line."""
    try:
        with open(path) as fh:
            return yaml.load(fh, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except DuplicateKeyError as exc:
        raise UserError(
            f"{path}: line {exc.second}: duplicate key {exc.key!r} (first at line {exc.first}); "
            "expected each key once"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None


class _NonFinite(str):
    """Stands in for NaN or an infinity while a JSON file is parsed, so its key can be named."""


def _non_finite_constant(text: str) -> _NonFinite:
    return _NonFinite(text)


def _finite_float(text: str) -> float | _NonFinite:
    value = float(text)  # a literal such as 1e999 overflows to infinity
    return value if math.isfinite(value) else _NonFinite(text)


def first_non_finite(document: Any, where: tuple[str, ...] = ()) -> tuple[str, Any] | None:
    """(key path, value) of the first NaN or infinity in a JSON-like document, else None."""
    if isinstance(document, _NonFinite) or (
        isinstance(document, float) and not math.isfinite(document)
    ):
        return ".".join(where) or "(top level)", document
    items = (
        document.items()
        if isinstance(document, dict)
        else enumerate(document)
        if isinstance(document, list | tuple)
        else ()
    )
    for key, value in items:
        found = first_non_finite(value, (*where, str(key)))
        if found:
            return found
    return None


def read_json(path: Path) -> Any:
    """A JSON file; NaN and infinities are refused (no result or manifest may hold one)."""
    try:
        with open(path) as fh:
            document = json.load(fh, parse_constant=_non_finite_constant, parse_float=_finite_float)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    found = first_non_finite(document)
    if found:
        raise UserError(f"{path}: {found[0]}: got {found[1]}, expected a finite number")
    return document
