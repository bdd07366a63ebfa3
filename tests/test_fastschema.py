"""compiler/core/fastschema.py against jsonschema itself: the fast predicate must give jsonschema's answer on
every instance (never "valid" where jsonschema finds an error), and surely_valid_schema must never call a
schema valid that the Draft 2020-12 metaschema refuses.

Instances: the plain values of real recipes, sites, type files and resolved jobs, many seeded random
mutations of them, hand-picked edge values and random JSON-like values. Schemas: every shipped schema
(and each of its definitions), every built-in type's job schema, hand-written edge cases and random
schemas. Everything is seeded (random.Random), so a failure reproduces.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, ROOT

from compiler.core import fastschema
from compiler.core import schema as validate
from compiler.core.errors import Collector
from compiler.core.fastschema import compile_predicate, surely_valid_schema
from compiler.core.load import load_file
from compiler.core.source import FrozenDict, FrozenList, freeze
from compiler.recipe.resolve import resolve_recipe
from compiler.recipe.typedefs import ORCHC_KEYWORDS, Registry

KINDS = ("common", "recipe", "site", "typedef")
CUSTOM_DEFS = EXAMPLES / "custom" / "defs"

# --- what the instances are made of -----------------------------------------------------------------------

KEYS = ["a", "b", "file", "content", "mode", "name", "type", "x", "a1", "1", "a\n", "é", "A", "_", "", "٣"]
STRINGS = ["", "a", "ab", "abc", "a\n", "\n", "x" * 5, "123", "12\n", "١٢٣", "٣", "é", "e\u0301", "😀😀", "0644",
           "644", "0x", "redis", "get", "set", "cpu", "00:30:00", "8G", "file", "a b", "$x", "\\d", "ab\nc"]
NUMBERS: list[Any] = [0, 1, -1, 2, 3, 5, 10, 1.0, 0.5, -0.5, 2.0, 1.5, 0.1, 0.30000000000000004, 2**53 + 1, 2**70,
                      -(2**70), 1e308, float("inf"), float("-inf"), float("nan"), 100, 65535, 65536, 4096]
ATOMS: list[Any] = [None, True, False, *NUMBERS, *STRINGS]
UNKNOWN: list[Any] = [decimal.Decimal("1"), (1, 2), datetime.date(2024, 1, 1), b"a", frozenset(), 1j]
"""Values of types no YAML or JSON loader gives orchc: the predicate must never call them valid unless
jsonschema does too (it answers False for them: "ask jsonschema")."""


def random_value(rng: random.Random, depth: int = 3, unknown: bool = False) -> Any:
    roll = rng.random()
    if depth <= 0 or roll < 0.55:
        if unknown and rng.random() < 0.05:
            return rng.choice(UNKNOWN)
        return rng.choice(ATOMS)
    if roll < 0.75:
        return [random_value(rng, depth - 1, unknown) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS): random_value(rng, depth - 1, unknown) for _ in range(rng.randrange(4))}


def mutate(value: Any, rng: random.Random, names: list[str]) -> Any:
    """`value` with a few random changes somewhere inside it (a fresh copy; `value` is unchanged)."""
    value = thaw(value)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        value = _mutate_once(value, rng, names)
    return value


def _mutate_once(value: Any, rng: random.Random, names: list[str]) -> Any:
    # walk down to a random place, then change it
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        value[key] = _mutate_once(value[key], rng, names)
        return value
    if isinstance(value, list) and value and rng.random() < 0.7:
        index = rng.randrange(len(value))
        value[index] = _mutate_once(value[index], rng, names)
        return value
    return _change(value, rng, names)


def _change(value: Any, rng: random.Random, names: list[str]) -> Any:
    roll = rng.random()
    if roll < 0.15:
        return random_value(rng, 2)
    if isinstance(value, dict):
        if value and roll < 0.45:
            del value[rng.choice(list(value))]
        elif roll < 0.75 and names:
            value[rng.choice(names)] = random_value(rng, 2)
        else:
            value[rng.choice(KEYS)] = random_value(rng, 2)
        return value
    if isinstance(value, list):
        if value and roll < 0.4:
            value.append(copy.deepcopy(rng.choice(value)))
        elif value and roll < 0.6:
            value.pop(rng.randrange(len(value)))
        else:
            value.append(random_value(rng, 1))
        return value
    if isinstance(value, bool):
        return rng.choice([not value, int(value), float(value), str(value).lower()])
    if isinstance(value, int):
        return rng.choice([value + 1, value - 1, -value, float(value), value + 0.5, value * 1000, 0, 2**70,
                           str(value), bool(value % 2)])
    if isinstance(value, float):
        return rng.choice([value + 1, -value, int(value) if value == value and abs(value) != float("inf") else 0,
                           value / 3, float("nan"), str(value)])
    if isinstance(value, str):
        return rng.choice([value + "\n", "", value * 3, value.upper(), value + "١", value[:1], value + " x",
                           "0" + value, value.replace("_", "-"), 7, None, [value]])
    return rng.choice(ATOMS)


def thaw(value: Any) -> Any:
    """A plain (mutable) copy of a value that may hold FrozenDicts and FrozenLists."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value


def maybe_frozen(value: Any, rng: random.Random) -> Any:
    """Resolved jobs hold FrozenDict / FrozenList: give the predicate those too."""
    return freeze(value) if rng.random() < 0.3 else value


def holds_unknown(value: Any) -> bool:
    if isinstance(value, dict):
        return any(holds_unknown(k) or holds_unknown(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_unknown(v) for v in value)
    return type(value) not in (str, int, float, bool, type(None))


# --- the schemas and instances of the project -------------------------------------------------------------

@cache
def registry() -> Registry:
    return Registry([CUSTOM_DEFS])


@cache
def builtin_registry() -> Registry:
    return Registry([])


def type_names() -> list[str]:
    return builtin_registry().names()


@cache
def recipe_paths() -> list[Path]:
    return [*sorted(EXAMPLES.glob("*.yaml")), *sorted((EXAMPLES / "custom").glob("*.yaml"))]


@cache
def documents() -> dict[str, list[Any]]:
    """Plain values of the project's YAML files, by what they are."""
    return {
        "recipe": [load_file(path).plain() for path in recipe_paths()],
        "site": [load_file(path).plain() for path in sorted((ROOT / "sites").glob("*.yaml"))],
        "typedef": [load_file(path).plain() for path in [*sorted((ROOT / "service_defs").glob("*.yaml")),
                                                           *sorted(CUSTOM_DEFS.glob("*.yaml"))]],
    }


@cache
def jobs() -> list[tuple[str, Any]]:
    """(type name, the job's values as its job schema sees them: FrozenDicts and FrozenLists) of every job
    of every example recipe."""
    found = []
    for path in recipe_paths():
        recipe = resolve_recipe(path, registry(), problems=Collector())
        for job in recipe.jobs:
            values = dict(job.values())
            if job.typedef.secrets:
                continue  # a secret's value is {env: ...} / {file: ...}, which values() shows resolved
            found.append((job.typedef.name, values))
    assert found
    return found


def shipped_schemas() -> list[tuple[str, Any]]:
    """(label, schema) of the shipped schemas ($ref inlined, as validate uses them), each of their
    definitions, and every type's job schema."""
    out: list[tuple[str, Any]] = []
    for kind in KINDS:
        schema = validate._schema(kind)
        out.append((kind, schema))
        out += [(f"{kind}#{name}", definition) for name, definition in sorted(schema.get("$defs", {}).items())
                if "$ref" not in str(definition)]
    for name in registry().names():
        out.append((f"job:{name}", registry().resolve(name).job_validator.schema))
    return out


def instances_for(label: str) -> list[Any]:
    if label in documents():
        return documents()[label]
    if label.startswith("job:"):
        return [values for name, values in jobs() if name == label[4:]]
    return []


# --- comparing ---------------------------------------------------------------------------------------------

class Disagreements:
    """Where the predicate and jsonschema differ. The predicate may say False without meaning "invalid" only
    when it is unsure: its check raised (a value of a type JSON does not have, or an operation that fails,
    such as multipleOf on infinity, which jsonschema may or may not reach depending on keyword order).
    Everywhere else its answer must be jsonschema's, and True must always be jsonschema's answer."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.compared = 0
        self.valid = 0
        self.unsure_plain = 0

    def compare(self, label: str, predicate: Callable[[Any], bool], raw: Callable[[Any], bool], validator: Any,
                instance: Any) -> None:
        self.compared += 1
        try:
            expected: bool | None = bool(validator.is_valid(instance))
        except Exception:  # jsonschema fails on it: the predicate must not call it valid
            expected = None
        got = predicate(instance)
        try:
            raw(instance)
            unsure = False
        except Exception:
            unsure = True
            self.unsure_plain += expected is not None and not holds_unknown(instance)
        self.valid += bool(expected)
        wrong = got is not False and got != expected if expected is None or unsure else got is not expected
        if wrong:
            self.found.append(f"{label}: predicate {got!r}, jsonschema {expected!r} for {instance!r:.300}")

    def check(self) -> None:
        assert not self.found, f"{len(self.found)} of {self.compared} disagree:\n" + "\n".join(self.found[:15])
        assert self.unsure_plain <= self.compared // 50, f"unsure on {self.unsure_plain} plain JSON values"


def differential(label: str, schema: Any, instances: Iterator[Any], disagreements: Disagreements) -> None:
    predicate = compile_predicate(schema)
    assert predicate is not None, f"{label}: compile_predicate gave None"
    raw = fastschema._compile(schema, root=True)
    # jsonschema itself (orchc's Draft 2020-12 class), not validate's Checker, which asks fastschema first
    validator = validate.build_validator(schema).full if isinstance(schema, dict) else _bool_validator(schema)
    assert type(validator).__module__.startswith("jsonschema."), type(validator)
    for instance in instances:
        disagreements.compare(label, predicate, raw, validator, instance)


def _bool_validator(schema: bool) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema)


def metaschema_problems(schema: Any) -> list[str]:
    """The metaschema's verdict from jsonschema itself (validate.schema_problems_in asks fastschema first)."""
    from jsonschema import Draft202012Validator

    return [error.message for error in Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(schema)]


def property_names(schema: Any) -> list[str]:
    """Every property name a schema mentions (mutations add them, so that deep parts get reached)."""
    names: set[str] = set()
    stack = [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key in ("properties", "patternProperties"):
                if isinstance(value.get(key), dict):
                    names.update(value[key])
            for key in ("required",):
                if isinstance(value.get(key), list):
                    names.update(n for n in value[key] if isinstance(n, str))
            stack += value.values()
        elif isinstance(value, list):
            stack += value
    return sorted(names)


# --- shipped schemas ---------------------------------------------------------------------------------------

def test_every_shipped_and_job_schema_compiles():
    labels = [label for label, schema in shipped_schemas() if compile_predicate(schema) is None]
    assert not labels, f"no fast predicate for {labels}: compile would always fall back to jsonschema"
    assert {f"job:{name}" for name in type_names()} <= {label for label, _ in shipped_schemas()}


def test_real_documents_and_jobs_are_valid_on_the_fast_path():
    """The examples compile, so every real recipe, site, type file and job is valid: the fast path must
    say so itself (or it would never save a call to jsonschema)."""
    for label, schema in shipped_schemas():
        predicate = compile_predicate(schema)
        assert predicate is not None
        for instance in instances_for(label):
            if label == "typedef":
                continue  # a type file alone is checked merged with its parents; compared below
            assert predicate(instance), f"{label}: a real value is not valid on the fast path: {instance!r:.200}"
    assert jobs()


def mutated(base: list[Any], rng: random.Random, names: list[str], samples: int) -> Iterator[Any]:
    """The values of `base`, `samples` random mutations of them, and a few random values."""
    yield from base
    for _ in range(samples):
        yield maybe_frozen(mutate(rng.choice(base), rng, names), rng)
    for _ in range(samples // 4):
        yield random_value(rng, 3, unknown=True)


def test_shipped_schemas_agree_with_jsonschema_on_mutated_real_values():
    rng = random.Random(20261126)
    disagreements = Disagreements()
    all_values = [v for values in documents().values() for v in values] + [dict(v) for _, v in jobs()]
    for label, schema in shipped_schemas():
        names = property_names(schema)
        base = instances_for(label) or all_values
        samples = 500 if label in ("recipe", "site", "typedef") else 120 if label.startswith("job:") else 40
        differential(label, schema, mutated(base, rng, names, samples), disagreements)
    disagreements.check()
    # An absolute floor: each new field or job key (env:, api_key, ...) gives the mutations more ways to be invalid,
    # so the share of valid instances moves (582 of 6,453 at the seed above); a few hundred still tell.
    assert disagreements.valid >= 300, "too few valid instances to tell anything"
    assert disagreements.valid < disagreements.compared, "no invalid instance at all"


# --- hand-written edge cases -------------------------------------------------------------------------------

EDGE_SCHEMAS: list[Any] = [
    True, False, {}, {"description": "anything", "default": 3, "examples": [1], "$comment": "x", "title": "t"},
    {"type": "integer"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"}, {"type": "string"},
    {"type": "array"}, {"type": "object"}, {"type": ["integer", "null"]}, {"type": ["string", "object"]},
    {"type": []}, {"type": ["number", "integer"]},
    {"enum": [1]}, {"enum": [True]}, {"enum": [False, 0]}, {"enum": [1.0, "a", None, [1], {"a": 1}]},
    {"enum": [[0], [True]]}, {"enum": []}, {"enum": ["get", "set", "incr"]}, {"enum": ["1", 1]},
    {"const": 1}, {"const": False}, {"const": [0]}, {"const": {"a": [1, True]}}, {"const": None}, {"const": "a"},
    {"const": 2.0},
    {"uniqueItems": True}, {"uniqueItems": False, "type": "array"},
    {"type": "array", "uniqueItems": True, "items": {"type": "integer"}},
    {"minimum": 0, "maximum": 10}, {"exclusiveMinimum": 0}, {"exclusiveMaximum": 1.5}, {"minimum": 2**64},
    {"maximum": 1e308}, {"type": "integer", "minimum": 1, "maximum": 65535},
    {"multipleOf": 3}, {"multipleOf": 0.1}, {"multipleOf": 0.5, "type": "number"}, {"multipleOf": 1e-300},
    {"minLength": 2, "maxLength": 3}, {"minLength": 1}, {"maxLength": 0}, {"minLength": 1.0},
    {"pattern": "^[0-9]+$"}, {"pattern": "^\\d+$"}, {"pattern": "^a$"}, {"pattern": "\\w"}, {"pattern": "[^\\d]"},
    {"pattern": "^0?[0-7]{3}$"}, {"pattern": "^[^\\n]*$"}, {"type": "string", "pattern": "\\D"},
    {"propertyNames": {"pattern": "^[a-z]+$"}}, {"propertyNames": {"not": {"enum": ["x", "name"]}}, "type": "object"},
    {"propertyNames": {"maxLength": 1}}, {"propertyNames": False},
    {"patternProperties": {"^a$": {"type": "integer"}, "\\d": {"minimum": 3}}, "additionalProperties": False},
    {"patternProperties": {"^a$": {"type": "integer"}}, "additionalProperties": {"type": "string"}},
    {"properties": {"a": {"type": "string"}}, "patternProperties": {"^a": {"minLength": 2}},
     "additionalProperties": {"type": "integer"}},
    {"properties": {"a": True, "b": False}}, {"additionalProperties": False}, {"additionalProperties": True},
    {"additionalProperties": {}}, {"properties": {"file": {"type": "string"}}, "additionalProperties": False},
    {"oneOf": [{"type": "integer"}, {"type": "number"}]}, {"oneOf": [{"minimum": 0}, {"maximum": 10}]},
    {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    {"oneOf": [True, True]}, {"oneOf": [True]}, {"anyOf": [False, {"type": "null"}]},
    {"anyOf": [{"type": "string", "maxLength": 1}, {"type": "integer"}]},
    {"anyOf": [{"required": ["a"]}, {"required": ["b"]}]},
    {"allOf": [{"minimum": 1}, {"multipleOf": 2}]}, {"allOf": [{"anyOf": [{"oneOf": [{"const": 1}, {"enum": [1, 2]}]}]}]},
    {"if": {"type": "object"}, "then": {"required": ["file"], "additionalProperties": False,
                                        "properties": {"file": {"type": "string"}}}, "else": {"type": "string"}},
    {"if": {"minimum": 5}, "then": {"multipleOf": 5}}, {"if": False, "else": {"type": "null"}},
    {"then": {"type": "null"}}, {"else": False}, {"if": True},
    {"not": {"type": "null"}}, {"not": {}}, {"not": False},
    {"items": False}, {"items": True, "minItems": 1}, {"items": {"items": {"type": "number"}}, "maxItems": 2},
    {"required": ["a", "b"], "minProperties": 1, "maxProperties": 2}, {"dependentRequired": {"a": ["b"], "b": []}},
    {"maxProperties": 0}, {"minItems": 2, "uniqueItems": True},
    {"format": "email", "type": "string"}, {"format": "date", "deprecated": True, "readOnly": False},
    {"$defs": {"x": {"type": "integer"}}, "type": "string"},
    {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:x", "type": "object"},
]

EDGE_INSTANCES: list[Any] = [
    *ATOMS, [], [1], [1, 1.0], [1, True], [0, False], [True, True], [[0], [False], [0]], [[1], [True]],
    [{"a": 1}, {"a": 1}], [{"a": 1}, {"a": 1.0}], [{"a": True}, {"a": 1}], ["a", 1, "a"], [None, None],
    [float("nan"), float("nan")], [1, "1"], [[]], [2, 4], [1, 2, 3], ["x"], ["get", 1],
    {}, {"a": 1}, {"a": "x"}, {"a": "xy"}, {"a": 1.0}, {"a": True}, {"file": "x"}, {"file": "x", "content": "y"},
    {"file": 1}, {"a": "x", "b": 2}, {"b": 2}, {"1": 1}, {"a1": 5}, {"a1": 2}, {"a\n": 1}, {"a\n": "s"},
    {"x": 1}, {"name": 1}, {"é": 1}, {"٣": 4}, {"aa": 3}, {"aa": "a"}, {"": None}, {"a": [1]}, {"a": {"a": 1}},
    {1: "int key"}, {"a": None, "b": None, "c": None},
]


@pytest.mark.parametrize("index", range(len(EDGE_SCHEMAS)))
def test_edge_schemas_agree_with_jsonschema(index):
    schema = EDGE_SCHEMAS[index]
    rng = random.Random(index)
    disagreements = Disagreements()

    def instances() -> Iterator[Any]:
        for value in EDGE_INSTANCES:
            yield value
            yield freeze(value)
        for value in UNKNOWN:
            yield value
            yield [value]
            yield {"a": value}
        for _ in range(150):
            yield maybe_frozen(random_value(rng, 3, unknown=True), rng)
    differential(f"edge {schema!r}", schema, instances(), disagreements)
    disagreements.check()


def test_edge_answers_are_the_ones_jsonschema_gives():
    """A few answers spelled out, so the semantics are visible here (jsonschema's: 1.0 is an integer, True
    is not 1, `$` is the very end, `\\d` is ASCII, `format` is not asserted)."""
    def valid(schema: Any, instance: Any) -> bool:
        predicate = compile_predicate(schema)
        assert predicate is not None
        return predicate(instance)

    assert valid({"type": "integer"}, 1.0) and not valid({"type": "integer"}, True)
    assert not valid({"type": "number"}, False) and valid({"type": "number"}, 2**70)
    assert not valid({"enum": [1]}, True) and valid({"enum": [1]}, 1.0) and not valid({"enum": [True]}, 1)
    assert not valid({"uniqueItems": True}, [1, 1.0]) and valid({"uniqueItems": True}, [1, True])
    assert not valid({"pattern": "^a$"}, "a\n") and not valid({"pattern": "^\\d$"}, "٣")
    assert valid({"type": "string", "format": "email"}, "not an email")
    assert valid({"maxLength": 2}, "😀😀") and not valid({"maxLength": 1}, "e\u0301")
    assert not valid({"oneOf": [{"type": "integer"}, {"type": "number"}]}, 1)
    assert valid({"oneOf": [{"type": "integer"}, {"type": "number"}]}, 1.5)
    # a value of a type JSON does not have: "don't know" wherever a schema applies to it
    assert not valid({}, decimal.Decimal(1)) and not valid({"properties": {"a": {}}}, {"a": datetime.date(2024, 1, 1)})
    assert not valid(True, (1,)) and not valid({"items": {}}, [b"a"])


# --- random schemas ----------------------------------------------------------------------------------------

PATTERNS = ["^a", "a$", "^[a-z][a-z0-9_]*$", "\\d", "^\\d+$", "[^a]", "^$", "b|^a$", "\\w+", "^0?[0-7]{3}$",
            "é", "^.{2}$"]


def random_schema(rng: random.Random, depth: int = 2) -> Any:
    if rng.random() < 0.08:
        return rng.random() < 0.7
    schema: dict[str, Any] = {}
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
        key, value = _random_keyword(rng, depth)
        schema[key] = value
    return schema


def _random_keyword(rng: random.Random, depth: int) -> tuple[str, Any]:
    leaf: list[Callable[[], tuple[str, Any]]] = [
        lambda: ("type", rng.choice(["integer", "number", "string", "boolean", "null", "array", "object"])),
        lambda: ("type", rng.sample(["integer", "number", "string", "boolean", "null", "array", "object"],
                                    rng.randrange(1, 4))),
        lambda: ("enum", [rng.choice(ATOMS[:12] + STRINGS[:6] + [[0], [False], {"a": 1}]) for _ in range(rng.randrange(1, 4))]),
        lambda: ("const", rng.choice(ATOMS[:12] + [[1, True], {"a": 1.0}, "a"])),
        lambda: (rng.choice(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]),
                 rng.choice([0, 1, 2, 1.5, -1, 2**70, 10])),
        lambda: ("multipleOf", rng.choice([1, 2, 3, 0.5, 0.1, 1.5])),
        lambda: (rng.choice(["minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"]),
                 rng.choice([0, 1, 2, 3, 1.0])),
        lambda: ("pattern", rng.choice(PATTERNS)),
        lambda: ("uniqueItems", rng.random() < 0.8),
        lambda: ("required", rng.sample(KEYS[:8], rng.randrange(0, 3))),
        lambda: ("dependentRequired", {rng.choice(KEYS[:6]): rng.sample(KEYS[:6], rng.randrange(0, 2))}),
        lambda: ("additionalProperties", rng.random() < 0.5),
        lambda: ("format", "email"),
        lambda: ("description", "d"),
    ]
    nested: list[Callable[[], tuple[str, Any]]] = [
        lambda: ("properties", {rng.choice(KEYS[:8]): random_schema(rng, depth - 1) for _ in range(rng.randrange(1, 4))}),
        lambda: ("patternProperties", {rng.choice(PATTERNS): random_schema(rng, depth - 1)
                                       for _ in range(rng.randrange(1, 3))}),
        lambda: ("additionalProperties", random_schema(rng, depth - 1)),
        lambda: ("propertyNames", random_schema(rng, depth - 1)),
        lambda: ("items", random_schema(rng, depth - 1)),
        lambda: (rng.choice(["anyOf", "oneOf", "allOf"]), [random_schema(rng, depth - 1)
                                                           for _ in range(rng.randrange(1, 4))]),
        lambda: ("not", random_schema(rng, depth - 1)),
        lambda: ("if", random_schema(rng, depth - 1)),
        lambda: ("then", random_schema(rng, depth - 1)),
        lambda: ("else", random_schema(rng, depth - 1)),
    ]
    choices = leaf + nested * 2 if depth > 0 else leaf
    return rng.choice(choices)()


def test_random_schemas_agree_with_jsonschema():
    rng = random.Random(7)
    disagreements = Disagreements()
    for index in range(600):
        schema = random_schema(rng, 3)
        pool = [random_value(rng, 3) for _ in range(25)]
        differential(f"random #{index} {schema!r}", schema, mutated(pool, rng, property_names(schema), 16),
                     disagreements)
    disagreements.check()
    assert 0 < disagreements.valid < disagreements.compared


# --- what the predicate does not take ----------------------------------------------------------------------

@pytest.mark.parametrize("schema", [
    {"$ref": "#/$defs/x", "$defs": {"x": {}}}, {"properties": {"a": {"$ref": "#"}}}, {"$dynamicRef": "#meta"},
    {"prefixItems": [{"type": "integer"}]}, {"contains": {"type": "integer"}}, {"unevaluatedProperties": False},
    {"unevaluatedItems": False}, {"dependentSchemas": {"a": {}}}, {"x-unknown": 1}, {"secret": True},
    {"properties": {"a": {"$id": "urn:nested"}}}, {"items": [{"type": "string"}]}, {"minimum": "1"},
    {"maxLength": True}, {"type": "float"}, {"required": "a"}, {"enum": "abc"},
    {"patternProperties": {"(": {}}}, {"properties": {"a": 1}}, {"allOf": {}}, {"$anchor": "a"}, 3, None,
])
def test_what_is_not_implemented_gives_none(schema):
    assert compile_predicate(schema) is None


def test_an_invalid_pattern_is_compiled_and_fails_where_jsonschema_compiles_it():
    """`pattern` is compiled on first use, as jsonschema does: a value it never reaches is valid for both;
    a string it reaches makes jsonschema raise, and the predicate answers False ("ask jsonschema")."""
    schema = {"anyOf": [{"type": "integer"}, {"pattern": "("}]}
    predicate = compile_predicate(schema)
    reference = validate.build_validator(schema).full
    assert predicate is not None and predicate(3) and reference.is_valid(3)
    assert predicate(None) and reference.is_valid(None)
    assert not predicate("x")
    with pytest.raises(re.error):
        reference.is_valid("x")


def test_fastschema_imports_no_jsonschema():
    code = ("import sys, compiler.core.fastschema as f; p = f.compile_predicate({'type': 'object', 'patternProperties': "
            "{'^a$': {'pattern': '\\\\d'}}, 'additionalProperties': False}); assert p({'a': '1'}) and not p({'b': 1}); "
            "assert f.surely_valid_schema({'type': 'integer'}); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jsonschema', 'referencing')); "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


# --- surely_valid_schema -----------------------------------------------------------------------------------

def field_schemas() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name in registry().names():
        for field, schema in registry().resolve(name).fields.items():
            out.append((f"{name}.{field}", {k: v for k, v in schema.items() if k not in ORCHC_KEYWORDS}))
    return out


def test_every_builtin_field_schema_is_surely_valid():
    schemas = field_schemas()
    assert len(schemas) > 50
    refused = [label for label, schema in schemas if not surely_valid_schema(schema)]
    assert not refused, f"not surely valid: {refused}"
    for label, schema in schemas:
        assert not metaschema_problems(schema), label


META_VALUES: list[Any] = [*ATOMS[:14], "string", "integer", "object", ["string"], ["string", "string"], [],
                          ["a", "b"], ["a", "a"], [1], {}, {"a": {}}, {"a": 1}, {"a": ["b"]}, {"a": True}, [{}],
                          [True, {"type": "null"}], -1, 0.0, -0.0, 1.5, 2.0, -2.0, 1e400, "#", "a#", "a#b", "urn:x",
                          "a\n", "_a", "1a"]
META_KEYWORDS = ["type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
                 "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "maxContains",
                 "minContains", "maxProperties", "minProperties", "required", "dependentRequired", "properties",
                 "patternProperties", "additionalProperties", "propertyNames", "items", "prefixItems", "contains",
                 "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas", "unevaluatedItems",
                 "unevaluatedProperties", "title", "description", "default", "deprecated", "readOnly",
                 "writeOnly", "examples", "format", "contentEncoding", "contentMediaType", "contentSchema",
                 "$id", "$schema", "$ref", "$dynamicRef", "$anchor", "$dynamicAnchor", "$comment", "$defs",
                 "$vocabulary", "definitions", "dependencies", "x-other"]


def _mutate_schema(schema: Any, rng: random.Random) -> Any:
    schema = copy.deepcopy(schema)
    if isinstance(schema, dict) and schema and rng.random() < 0.5:
        key = rng.choice(list(schema))
        if isinstance(schema[key], dict) and rng.random() < 0.5:
            schema[key] = _mutate_schema(schema[key], rng)
        elif isinstance(schema[key], list) and schema[key] and rng.random() < 0.5:
            index = rng.randrange(len(schema[key]))
            schema[key][index] = _mutate_schema(schema[key][index], rng)
        else:
            schema[key] = rng.choice(META_VALUES)
        return schema
    if isinstance(schema, dict):
        schema[rng.choice(META_KEYWORDS)] = rng.choice(META_VALUES)
        return schema
    return rng.choice([schema, {}, rng.choice(META_VALUES)])


def test_surely_valid_schema_never_accepts_what_the_metaschema_refuses():
    rng = random.Random(11)
    candidates: list[Any] = [schema for _, schema in field_schemas()] + EDGE_SCHEMAS
    candidates += [random_schema(rng, 3) for _ in range(200)]
    candidates += [_mutate_schema(rng.choice(candidates), rng) for _ in range(1200)]
    candidates += [{key: value} for key in META_KEYWORDS for value in META_VALUES]
    candidates += [{"anyOf": [{key: value}]} for key in META_KEYWORDS for value in META_VALUES[::5]]
    wrong, accepted, refused_by_meta = [], 0, 0
    for schema in candidates:
        problems = metaschema_problems(schema)
        refused_by_meta += bool(problems)
        if surely_valid_schema(schema):
            accepted += 1
            if problems:
                wrong.append(f"{schema!r:.200}: {problems[0]}")
    assert not wrong, f"{len(wrong)} accepted but invalid:\n" + "\n".join(wrong[:10])
    assert accepted > len(candidates) // 4 and refused_by_meta > len(candidates) // 10


def test_surely_valid_schema_examples():
    assert surely_valid_schema({"type": ["integer", "null"], "minimum": 1.0, "maxLength": 2.0, "enum": [1, "a"]})
    assert surely_valid_schema(True) and surely_valid_schema({"items": False})
    assert not surely_valid_schema({"type": ["string", "string"]})  # not unique: the metaschema refuses it
    assert not surely_valid_schema({"minLength": -1}) and not surely_valid_schema({"minLength": 1.5})
    assert not surely_valid_schema({"minimum": True}) and not surely_valid_schema({"multipleOf": 0})
    assert not surely_valid_schema({"anyOf": []}) and not surely_valid_schema({"required": ["a", "a"]})
    assert not surely_valid_schema({"x-unknown": 1})  # valid to the metaschema, but not known here: ask it
    assert not surely_valid_schema(FrozenList()) and surely_valid_schema(FrozenDict({"type": "string"}))
