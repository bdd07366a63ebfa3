"""Stage 3, validate: JSON Schema checks whose every error points at a file:line.

Validators are built once per process. Errors are collected with `iter_errors`
(never just the first) and located through the `Node` tree, which knows which
file and line set each value, whichever layer that was.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from typing import Any

from .errors import Collector, did_you_mean
from .resources import schemas_dir
from .source import Node, format_path


@cache
def _schema(kind: str) -> dict[str, Any]:
    """A shipped schema with its `$ref`s inlined: validating then needs no reference lookups."""
    with open(schemas_dir() / f"{kind}.schema.json", encoding="utf-8") as handle:
        raw = json.load(handle)
    return _inline(raw, raw)


def _inline(value: Any, document: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_inline(item, document) for item in value]
    if not isinstance(value, dict):
        return value
    inlined = {k: _inline(v, document) for k, v in value.items() if k != "$ref"}
    ref = value.get("$ref")
    if ref is None:
        return inlined
    target_file, _, pointer = ref.partition("#/$defs/")
    source = _schema(target_file.rsplit("/", 1)[-1].removesuffix(".schema.json")) if target_file else document
    target = source["$defs"][pointer] if target_file else _inline(source["$defs"][pointer], document)
    return {**target, **inlined}


def common_def(name: str) -> dict[str, Any]:
    """A shared definition, for schemas built at run time."""
    return _schema("common")["$defs"][name]


@cache
def validator(kind: str) -> Any:
    return build_validator(_schema(kind))


def build_validator(schema: dict[str, Any]) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema)


@lru_cache(maxsize=1)
def _meta_validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(Draft202012Validator.META_SCHEMA)


def schema_problems_in(schema: dict[str, Any]) -> list[str]:
    """Why `schema` is not a valid JSON Schema (empty when it is)."""
    return [error.message for error in _meta_validator().iter_errors(schema)]


def check(node: Node, checker: Any, what: str, problems: Collector, instance: Any = None) -> None:
    """Validate `node` (or `instance`, its plain value when the caller has it) and add one
    located problem per schema error."""
    for error in checker.iter_errors(node.plain() if instance is None else instance):
        _report(error, node, what, problems)


def _report(error: Any, root: Node, what: str, problems: Collector) -> None:
    path = tuple(error.absolute_path)
    target = root.at(path)
    where = format_path(path)
    if error.validator == "additionalProperties" and isinstance(target.value, dict):
        known = error.schema.get("properties", {}).keys()
        container = f"{where} of {what}" if where else what
        for key in sorted(set(target.value) - set(known)):
            child = target.value[key]
            problems.add(child.key_loc or child.loc, f"unknown field '{key}' in {container}{did_you_mean(key, known)}")
        return
    if error.validator in ("oneOf", "anyOf") and error.context:
        from jsonschema.exceptions import best_match

        error = best_match(error.context)
        path = path + tuple(error.path)
        target, where = root.at(path), format_path(path)
    if _is_key_error(error, target):
        child = target.value[error.instance]
        problems.add(child.key_loc or child.loc, f"invalid name '{error.instance}' in {where or what}: {_reason(error)}")
        return
    prefix = f"{where}: " if where else f"{what}: "
    problems.add(target.loc, prefix + _reason(error))


def _is_key_error(error: Any, target: Node) -> bool:
    return ("propertyNames" in error.schema_path and isinstance(target.value, dict)
            and isinstance(error.instance, str) and error.instance in target.value)


def _reason(error: Any) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    hint = schema.get("description")
    if error.validator == "pattern":
        return f"{error.instance!r} is not valid" + (f"; expected {hint}" if hint else f" (pattern {schema['pattern']})")
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"expected {expected}, got {_json_type(error.instance)} {json.dumps(error.instance)}"
    if error.validator == "enum":
        return f"{error.instance!r} is not one of " + ", ".join(repr(v) for v in error.validator_value)
    if error.validator == "not" and "propertyNames" in error.schema_path:
        return "this name is reserved"
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    return error.message


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number" if isinstance(value, float) else "integer"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "map"
