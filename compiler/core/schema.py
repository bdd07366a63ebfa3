"""JSON Schema checks (used by resolve and by the site and type loaders) whose every error points at a file:line.

Validators are built once per process. Errors are collected with `iter_errors`
(never just the first) and located through the `Node` tree, which knows which
file and line set each value, whichever layer that was.
"""

from __future__ import annotations

import json
import re
from functools import cache, lru_cache
from typing import Any

from .errors import Collector, did_you_mean, shorten
from .fastschema import compile_predicate, ecma_regex, surely_valid_schema
from .paths import schemas_dir
from .source import Node, format_path


# The shipped schemas (recipe, site, type) and their validators: process-wide, as few as the files in schemas/,
# and the same whatever is compiled. The validators of types are each TypeDef's own (a compile session's).
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
    ref = value.get("$ref")
    if not isinstance(ref, str):  # no reference here (a `$ref` that is not a string is a property name: {"$ref": {}})
        return {k: _inline(v, document) for k, v in value.items()}
    inlined = {k: _inline(v, document) for k, v in value.items() if k != "$ref"}
    target_file, _, pointer = ref.partition("#/$defs/")
    source = _schema(target_file.rsplit("/", 1)[-1].removesuffix(".schema.json")) if target_file else document
    target = source["$defs"][pointer] if target_file else _inline(source["$defs"][pointer], document)
    return {**target, **inlined}


def common_def(name: str) -> dict[str, Any]:
    """A shared definition, for schemas built at run time."""
    return _schema("common")["$defs"][name]


class Checker:
    """A schema's checks: a plain-Python predicate first (fastschema.py), and jsonschema only
    when that predicate says no or cannot say, to find and word every error. A valid document, the
    common case, never imports jsonschema; an invalid one gets exactly the errors jsonschema gives."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._fast = compile_predicate(schema)
        self._full: Any = None

    def passes(self, instance: Any) -> bool:
        """True only when the instance is valid; False may also mean "ask jsonschema"."""
        return self._fast is not None and self._fast(instance)

    @property
    def full(self) -> Any:
        if self._full is None:
            self._full = _validator_class()(self.schema, registry=_offline_registry())
        return self._full

    def iter_errors(self, instance: Any) -> Any:
        return iter(()) if self.passes(instance) else self.full.iter_errors(instance)

    def is_valid(self, instance: Any) -> bool:
        return self.passes(instance) or self.full.is_valid(instance)


@cache
def validator(kind: str) -> Checker:
    return build_validator(_schema(kind))


def build_validator(schema: dict[str, Any]) -> Checker:
    return Checker(schema)


@lru_cache(maxsize=1)
def _offline_registry() -> Any:
    """References resolve inside the schema only: nothing is ever fetched (over the network or from disk)."""
    from referencing import Registry
    from referencing.exceptions import NoSuchResource

    def refuse(uri: str) -> Any:
        raise NoSuchResource(ref=uri)  # type: ignore[call-arg]

    return Registry(retrieve=refuse)  # type: ignore[call-arg]


@lru_cache(maxsize=1)
def _validator_class() -> Any:
    """Draft 2020-12 with `pattern` as JSON Schema means it (ECMA 262): `$` only at the very end."""
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import ValidationError

    def pattern(validator: Any, expected: str, instance: Any, schema: Any) -> Any:
        if validator.is_type(instance, "string") and not ecma_regex(expected).search(instance):
            yield ValidationError(f"{shorten(instance)} does not match {expected!r}")

    def pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Any:
        if not validator.is_type(instance, "object"):
            return
        for expected, subschema in patterns.items():
            regex = ecma_regex(expected)
            for key, value in instance.items():
                if regex.search(key):
                    yield from validator.descend(value, subschema, path=key, schema_path=expected)

    return validators.extend(Draft202012Validator, {"pattern": pattern, "patternProperties": pattern_properties})



@lru_cache(maxsize=1)
def _meta_validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(Draft202012Validator.META_SCHEMA)


def schema_problems_in(schema: dict[str, Any]) -> list[str]:
    """Why `schema` is not a valid JSON Schema (empty when it is). The metaschema is asked only
    about a schema the plain-Python check cannot vouch for (fastschema.surely_valid_schema)."""
    if surely_valid_schema(schema):
        return []
    return [error.message for error in _meta_validator().iter_errors(schema)]


def check(node: Node, checker: Checker, what: str, problems: Collector, instance: Any = None,
          secrets: frozenset[str] = frozenset()) -> None:
    """Validate `node` (or `instance`, its plain value when the caller has it) and add one
    located problem per schema error. Errors under a field of `secrets` never quote a value."""
    value = node.plain() if instance is None else instance
    if checker.passes(value):
        return
    from referencing.exceptions import Unresolvable

    try:
        for error in checker.full.iter_errors(value):
            _report(error, node, what, problems, secrets)
    except Unresolvable as exc:
        problems.add(node.loc, f"{what}: a $ref of its schema cannot be resolved: {shorten(str(exc))}")


def _report(error: Any, root: Node, what: str, problems: Collector, secrets: frozenset[str] = frozenset()) -> None:
    path = tuple(error.absolute_path)
    target = root.at(path)
    where = format_path(path)
    if path and path[0] in secrets:
        problems.add(target.loc, f"{where}: {_secret_reason(error)}")
        return
    if error.validator == "additionalProperties" and isinstance(target.value, dict):
        known = error.schema.get("properties", {}).keys()
        # a nested schema with a title (a type's field definition) names its members keys: "unknown field" would mislead
        title = error.schema.get("title") if path else None
        noun, container = ("key", f"{title} {path[-1]} of {what}") if title else ("field", f"{where} of {what}" if where else what)
        for key in sorted(set(target.value) - set(known)):
            child = target.value[key]
            problems.add(child.key_loc or child.loc,
                         f"unknown {noun} {shorten(key)} in {container}{did_you_mean(key[:100], known)}",
                         topic=f"unknown {noun} {shorten(key)}")
        return
    if error.validator in ("oneOf", "anyOf") and error.context:
        error = _closest(error.context)
        path = path + tuple(error.path)
        target, where = root.at(path), format_path(path)
    if _is_key_error(error, target):
        child = target.value[error.instance]
        problems.add(child.key_loc or child.loc, f"invalid name {shorten(error.instance)} in {where or what}: {_reason(error)}")
        return
    prefix = f"{where}: " if where else f"{what}: "
    problems.add(target.loc, prefix + _reason(error))


_JSON_TYPES: dict[str, Any] = {"integer": int, "number": (int, float), "string": str, "boolean": bool, "array": list,
                               "object": dict, "null": type(None)}


def _closest(errors: Any) -> Any:
    """The error of an anyOf/oneOf to show: among the branches of the value's own kind (an integer against {type:
    integer, maximum: 65535} rather than against {const: auto}), jsonschema's best match."""
    from jsonschema.exceptions import best_match

    errors = list(errors)
    fitting = [error for error in errors if _of_its_kind(error)]
    return best_match(fitting or errors)


def _of_its_kind(error: Any) -> bool:
    """Whether the branch that raised `error` takes values of the instance's JSON type (its complaint is about the
    value, not its kind)."""
    branch = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    if isinstance(branch.get("type"), str) and branch["type"] in _JSON_TYPES:
        if isinstance(instance, bool) and branch["type"] != "boolean":
            return False
        return isinstance(instance, _JSON_TYPES[branch["type"]])
    if "const" in branch:
        return type(branch["const"]) is type(instance)
    return False


def _is_key_error(error: Any, target: Node) -> bool:
    return ("propertyNames" in error.schema_path and isinstance(target.value, dict)
            and isinstance(error.instance, str) and error.instance in target.value)


def _reason(error: Any) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    hint = schema.get("description")
    if error.validator == "pattern":
        return f"{shorten(error.instance)} is not valid" + (f"; expected {hint}" if hint else f" (pattern {schema['pattern']})")
    if error.validator == "type":
        return f"expected {_expected_type(error)}, got {_json_type(error.instance)} {_json_excerpt(error.instance)}"
    if error.validator == "enum":
        return f"{shorten(error.instance)} is not one of " + ", ".join(shorten(v) for v in error.validator_value)
    if error.validator == "not" and "propertyNames" in error.schema_path:
        return "this name is reserved"
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    quoted = repr(error.instance)
    if len(quoted) > 80 and quoted in error.message:
        return error.message.replace(quoted, shorten(error.instance))
    return error.message


def _secret_reason(error: Any) -> str:
    """Why a secret is invalid, without its value."""
    if error.validator == "type":
        return f"expected {_expected_type(error)}, got {_json_type(error.instance)} (a secret: its value is not shown)"
    if error.validator in ("minProperties", "maxProperties", "required"):
        return "give exactly one of {env: VARIABLE} or {file: PATH}"
    if error.validator == "additionalProperties":
        return "a secret is {env: VARIABLE} or {file: PATH}, nothing else"
    hint = error.schema.get("description") if isinstance(error.schema, dict) else None
    return "is not valid (a secret: its value is not shown)" + (f"; expected {hint}" if hint else "")


def _expected_type(error: Any) -> str:
    expected = error.validator_value
    return " or ".join(expected) if isinstance(expected, list) else str(expected)


def _json_excerpt(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value[:60]) + ("…" if len(value) > 60 else "")
    if isinstance(value, (dict, list)):
        return shorten(value)
    return json.dumps(value)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def check_characters(node: Node, path: tuple[str | int, ...], multiline: bool, problems: Collector) -> None:
    """Every string under `node` (keys too) free of control characters; a `multiline` field allows
    newline and tab. NUL is never allowed."""
    bad = (_CONTROL_BUT_LINES if multiline else _CONTROL).search
    stack = [(node, path)]
    while stack:
        current, where = stack.pop()
        value = current.value
        if isinstance(value, str):
            found = bad(value)
            if found:
                problems.add(current.loc, f"{format_path(where)}: {_character_reason(found.group())}")
        elif isinstance(value, dict):
            for key, child in value.items():
                found = bad(key)
                if found:
                    problems.add(child.key_loc or child.loc, f"{format_path(where)}: {_character_reason(found.group())} "
                                 "in a key")
                stack.append((child, (*where, key)))
        elif isinstance(value, list):
            stack.extend((child, (*where, index)) for index, child in enumerate(value))


def _character_reason(char: str) -> str:
    from .load import character_name

    if char == "\n":
        return "a newline is not allowed (only in a field whose schema says `multiline: true`)"
    if char == "\t":
        return "a tab is not allowed (only in a field whose schema says `multiline: true`)"
    return f"control character {character_name(char)} is not allowed"


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
