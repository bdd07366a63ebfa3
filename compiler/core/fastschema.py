"""JSON Schema checks without jsonschema on the common path.

`compile_predicate(schema)` turns a schema into a plain function `instance -> bool` that answers exactly
what `validate.build_validator(schema).is_valid(instance)` answers: Draft 2020-12 as jsonschema implements
it, with orchc's `pattern` / `patternProperties` (ECMA 262 `$`, ASCII `\\d` / `\\w`: `ecma_regex` below)
and no format checker. It returns None for a schema using anything it does not implement exactly; the
caller then always asks jsonschema. The function itself answers False whenever it meets something it
is unsure of (a schema applied to a value of a type JSON does not have, an operation that fails, such as
multipleOf on infinity): False only costs the caller a call to jsonschema, True is a promise that
jsonschema would find no error. Dict and list subclasses (FrozenDict, FrozenList) are objects and arrays,
as for jsonschema.

`surely_valid_schema(schema)` is True only for a schema that the Draft 2020-12 metaschema certainly
accepts (what `validate.schema_problems_in` checks); False means "ask the metaschema".

Standard library only: nothing here imports jsonschema or referencing. The semantics follow jsonschema
4.26 (`_keywords.py`, `_types.py`, `_utils.py`); tests/test_fastschema.py compares both on many
schemas and instances.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from itertools import islice
from typing import Any

Predicate = Callable[[Any], bool]

__all__ = ["compile_predicate", "surely_valid_schema"]


class _Unsupported(Exception):
    """The schema uses something compile_predicate does not implement exactly."""


class _Unsure(Exception):
    """The instance holds a value whose meaning to jsonschema is not modelled here."""


# Kinds of instance values. A dict or list subclass (FrozenDict, FrozenList) is what jsonschema's
# isinstance checks make of it; any other type outside JSON's is UNKNOWN.
_OBJECT, _ARRAY, _STRING, _INT, _FLOAT, _BOOL, _NULL, _UNKNOWN = range(8)
_KINDS: dict[type, int] = {dict: _OBJECT, list: _ARRAY, str: _STRING, int: _INT, float: _FLOAT, bool: _BOOL,
                           type(None): _NULL}


def _kind_of(cls: type) -> int:
    kind = _OBJECT if issubclass(cls, dict) else _ARRAY if issubclass(cls, list) else _UNKNOWN
    _KINDS[cls] = kind
    return kind


# `type` names -> for each kind: 0 no, 1 yes, 2 yes if the float is integral (jsonschema: 1.0 is an integer).
_TYPE_TABLE: dict[str, tuple[int, ...]] = {
    #          obj arr str int flt bool null
    "object":  (1, 0, 0, 0, 0, 0, 0),
    "array":   (0, 1, 0, 0, 0, 0, 0),
    "string":  (0, 0, 1, 0, 0, 0, 0),
    "integer": (0, 0, 0, 1, 2, 0, 0),
    "number":  (0, 0, 0, 1, 1, 0, 0),
    "boolean": (0, 0, 0, 0, 0, 1, 0),
    "null":    (0, 0, 0, 0, 0, 0, 1),
}
SIMPLE_TYPES = frozenset(_TYPE_TABLE)

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

_ANNOTATIONS = frozenset({
    "description", "title", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly", "format",
    "contentMediaType", "contentEncoding",
    # only reachable through $ref / $dynamicRef, which are refused: never applied to an instance
    "$defs",
    # applied only by `if`, which reads them itself
    "then", "else",
})
_KEYWORDS = frozenset({
    "type", "enum", "const", "properties", "patternProperties", "additionalProperties", "propertyNames", "required",
    "dependentRequired", "minProperties", "maxProperties", "items", "minItems", "maxItems", "uniqueItems",
    "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "allOf", "anyOf", "oneOf", "not", "if",
})


# jsonschema's `_utils.equal` and `_utils.uniq`, reproduced operation for operation (MIT, Julian Berman):
# enum, const and uniqueItems must give the same answers, quirks included.

def _equal(one: Any, two: Any) -> bool:
    if one is two:
        return True
    if isinstance(one, str) or isinstance(two, str):
        return bool(one == two)
    if isinstance(one, Sequence) and isinstance(two, Sequence):
        return len(one) == len(two) and all(_equal(i, j) for i, j in zip(one, two))
    if isinstance(one, Mapping) and isinstance(two, Mapping):
        return len(one) == len(two) and all(key in two and _equal(value, two[key]) for key, value in one.items())
    return bool(_unbool(one) == _unbool(two))


_TRUE, _FALSE = object(), object()


def _unbool(element: Any) -> Any:
    if element is True:
        return _TRUE
    if element is False:
        return _FALSE
    return element


def _uniq(container: Any) -> bool:
    try:
        ordered = sorted(_unbool(i) for i in container)
        for i, j in zip(ordered, islice(ordered, 1, None)):
            if _equal(i, j):
                return False
    except (NotImplementedError, TypeError):
        seen: list[Any] = []
        for e in container:
            e = _unbool(e)
            for i in seen:
                if _equal(i, e):
                    return False
            seen.append(e)
    return True


def compile_predicate(schema: Any) -> Predicate | None:
    """`instance -> bool`, equal to orchc's jsonschema validator's `is_valid(instance)` for this schema;
    None when the schema uses a keyword (or a keyword value) not implemented here exactly."""
    try:
        check = _compile(schema, root=True)
    except Exception:  # _Unsupported, an invalid pattern (re.error), a schema nested too deep, or the unforeseen
        return None

    def predicate(instance: Any) -> bool:
        try:
            return check(instance)
        except Exception:  # unsure (_Unsure), or an operation jsonschema would fail on as well
            return False

    return predicate


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


Handler = Callable[[Any], bool] | bool
"""What a schema does with a value of one kind: a constant answer, or a check to run."""


def _dispatching(handlers: tuple[Handler, ...]) -> Predicate:
    """A schema's predicate: the handler for the value's kind, found by its class (a class met for the
    first time is classified once, then found directly); a class of no JSON kind is "unsure"."""
    by_class: dict[type, Handler] = {cls: handlers[kind] for cls, kind in _KINDS.items() if kind != _UNKNOWN}
    missing = object()

    def classify(cls: type) -> Handler:
        kind = _KINDS.get(cls)
        if kind is None:
            kind = _kind_of(cls)
        if kind == _UNKNOWN:
            raise _Unsure
        by_class[cls] = handlers[kind]
        return handlers[kind]

    get = by_class.get

    def node(instance: Any) -> bool:
        handler = get(instance.__class__, missing)
        if handler is missing:
            handler = classify(instance.__class__)
        if handler is True:
            return True
        if handler is False:
            return False
        return handler(instance)  # type: ignore[operator]

    return node


def _compile(schema: Any, root: bool = False) -> Predicate:
    if schema is True or schema is False:
        return _dispatching((schema,) * _UNKNOWN)
    if not isinstance(schema, dict):
        raise _Unsupported("a schema is an object or a boolean")
    for key, value in schema.items():
        if key in _KEYWORDS or key in _ANNOTATIONS:
            continue
        if root and (key == "$schema" or key == "$id") and isinstance(value, str):
            continue
        raise _Unsupported(key)

    type_table = _type_table(schema["type"]) if "type" in schema else (1,) * _UNKNOWN
    by_kind: list[list[Predicate]] = [[] for _ in range(_UNKNOWN)]
    object_check = _object_check(schema)
    if object_check is not None:
        by_kind[_OBJECT].append(object_check)
    by_kind[_ARRAY] += _array_checks(schema)
    by_kind[_STRING] += _string_checks(schema)
    numeric = _number_checks(schema)
    by_kind[_INT] += numeric
    by_kind[_FLOAT] += numeric
    generic = _value_checks(schema) + _applicator_checks(schema)
    handlers: list[Handler] = []
    for kind, checks in enumerate(by_kind):
        allowed = type_table[kind]
        if not allowed:
            handlers.append(False)
            continue
        every = ([_is_integer] if allowed == 2 else []) + checks + generic
        handlers.append(_all_of(tuple(every)))
    return _dispatching(tuple(handlers))


def _is_integer(instance: float) -> bool:
    return instance.is_integer()


def _all_of(checks: tuple[Predicate, ...]) -> Handler:
    if not checks:
        return True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda instance: first(instance) and second(instance)

    def every(instance: Any) -> bool:
        for check in checks:  # noqa: SIM110 -- a plain loop: faster than all() over a generator
            if not check(instance):
                return False
        return True

    return every


def _type_table(value: Any) -> tuple[int, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) and name in _TYPE_TABLE for name in names):
        raise _Unsupported("type")
    answers = [{_TYPE_TABLE[name][kind] for name in names} for kind in range(_UNKNOWN)]
    return tuple(1 if 1 in each else 2 if 2 in each else 0 for each in answers)


def _schema_map(value: Any, what: str) -> dict[str, Predicate]:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise _Unsupported(what)
    return {key: _compile(sub) for key, sub in value.items()}


def _string_list(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Unsupported(what)
    return tuple(value)


def _count(schema: dict[str, Any], key: str) -> Any:
    value = schema.get(key)
    if value is not None and not _is_number(value):
        raise _Unsupported(key)
    return value


def _object_check(schema: dict[str, Any]) -> Predicate | None:
    properties = _schema_map(schema["properties"], "properties") if "properties" in schema else {}
    patterns: tuple[tuple[Callable[[str], Any], Predicate], ...] = ()
    if "patternProperties" in schema:

        patterns = tuple((ecma_regex(pattern).search, sub)
                         for pattern, sub in _schema_map(schema["patternProperties"], "patternProperties").items())
    additional: Predicate | None = None
    refuse_additional = False
    python_patterns: Callable[[str], Any] | None = None
    if "additionalProperties" in schema:
        value = schema["additionalProperties"]
        if value is False:
            refuse_additional = True
        elif isinstance(value, dict):
            additional = _compile(value)
        elif value is not True:
            raise _Unsupported("additionalProperties")
        if (additional is not None or refuse_additional) and patterns:
            # jsonschema decides what is "additional" with Python's re and the patterns joined by `|`,
            # not with the patternProperties keyword (ECMA semantics) orchc puts in its place.
            python_patterns = re.compile("|".join(schema["patternProperties"])).search
    names = _compile(schema["propertyNames"]) if "propertyNames" in schema else None
    required = _string_list(schema["required"], "required") if "required" in schema else ()
    dependent: tuple[tuple[str, tuple[str, ...]], ...] = ()
    if "dependentRequired" in schema:
        value = schema["dependentRequired"]
        if not isinstance(value, dict):
            raise _Unsupported("dependentRequired")
        dependent = tuple((key, _string_list(each, "dependentRequired")) for key, each in value.items())
    least, most = _count(schema, "minProperties"), _count(schema, "maxProperties")
    if not (properties or patterns or additional is not None or refuse_additional or names or required or dependent
            or least is not None or most is not None):
        return None
    get = properties.get
    limit_additional = refuse_additional or additional is not None
    counted = not (least is None and most is None and not required and not dependent)

    def counts(instance: dict[Any, Any]) -> bool:
        if least is not None and len(instance) < least:
            return False
        if most is not None and len(instance) > most:
            return False
        for key in required:
            if key not in instance:
                return False
        for key, needed in dependent:
            if key in instance:
                for each in needed:
                    if each not in instance:
                        return False
        return True

    if not patterns and names is None:
        # the common shape (properties, additionalProperties): one lookup per member
        def simple_members(instance: dict[Any, Any]) -> bool:
            if counted and not counts(instance):
                return False
            for key, value in instance.items():
                sub = get(key)
                if sub is None:
                    if refuse_additional or (additional is not None and not additional(value)):
                        return False
                elif not sub(value):
                    return False
            return True

        return simple_members

    def members(instance: dict[Any, Any]) -> bool:
        if counted and not counts(instance):
            return False
        for key, value in instance.items():
            sub = get(key)
            if sub is not None and not sub(value):
                return False
            for search, pattern_sub in patterns:
                if search(key) and not pattern_sub(value):
                    return False
            if (sub is None and limit_additional and not (python_patterns is not None and python_patterns(key))
                    and (refuse_additional or not additional(value))):  # type: ignore[misc]
                return False
            if names is not None and not names(key):
                return False
        return True

    return members


def _array_checks(schema: dict[str, Any]) -> list[Predicate]:
    checks: list[Predicate] = []
    if "prefixItems" in schema:
        raise _Unsupported("prefixItems")
    if "items" in schema:
        value = schema["items"]
        if value is False:
            checks.append(lambda instance: not instance)
        elif value is not True:
            if not isinstance(value, dict):
                raise _Unsupported("items")
            items = _compile(value)

            def each_item(instance: list[Any]) -> bool:
                for item in instance:  # noqa: SIM110 -- faster than all()
                    if not items(item):
                        return False
                return True

            checks.append(each_item)
    checks += _length_checks(schema, "minItems", "maxItems")
    if "uniqueItems" in schema:
        if not isinstance(schema["uniqueItems"], bool):
            raise _Unsupported("uniqueItems")
        if schema["uniqueItems"]:
            checks.append(_uniq)
    return checks


def _length_checks(schema: dict[str, Any], low: str, high: str) -> list[Predicate]:
    """Bounds on len(): minItems/maxItems of an array, minLength/maxLength of a string (code points)."""
    checks: list[Predicate] = []
    least, most = _count(schema, low), _count(schema, high)
    if least is not None:
        checks.append(lambda instance: not len(instance) < least)
    if most is not None:
        checks.append(lambda instance: not len(instance) > most)
    return checks


def _string_checks(schema: dict[str, Any]) -> list[Predicate]:
    checks = _length_checks(schema, "minLength", "maxLength")
    if "pattern" in schema:
        if not isinstance(schema["pattern"], str):
            raise _Unsupported("pattern")
        search = _lazy_search(schema["pattern"])
        checks.append(lambda instance: search[0](instance) is not None)
    return checks


def _lazy_search(pattern: str) -> list[Callable[[str], Any]]:
    """A one-item list holding `ecma_regex(pattern).search`, compiled when first used (as jsonschema
    compiles it): a check of a small document does not compile the patterns of the schema's parts it
    never reaches. An invalid pattern raises there, as it does in jsonschema; the predicate answers False."""
    cell: list[Callable[[str], Any]] = []

    def first(instance: str) -> Any:

        cell[0] = ecma_regex(pattern).search
        return cell[0](instance)

    cell.append(first)
    return cell


def _number_checks(schema: dict[str, Any]) -> list[Predicate]:
    checks: list[Predicate] = []
    low, high = _count(schema, "minimum"), _count(schema, "maximum")
    above, below = _count(schema, "exclusiveMinimum"), _count(schema, "exclusiveMaximum")
    if low is not None:
        checks.append(lambda instance: not instance < low)
    if high is not None:
        checks.append(lambda instance: not instance > high)
    if above is not None:
        checks.append(lambda instance: not instance <= above)
    if below is not None:
        checks.append(lambda instance: not instance >= below)
    divisor = _count(schema, "multipleOf")
    if divisor is not None:
        checks.append(lambda instance: _multiple_of(instance, divisor))
    return checks


def _multiple_of(instance: Any, divisor: Any) -> bool:
    """jsonschema's `multipleOf`, operation for operation."""
    if isinstance(divisor, float):
        quotient = instance / divisor
        try:
            failed: Any = int(quotient) != quotient
        except OverflowError:
            from fractions import Fraction  # rare: not imported at start-up

            failed = (Fraction(instance) / Fraction(divisor)).denominator != 1
    else:
        failed = instance % divisor
    return not failed


def _value_checks(schema: dict[str, Any]) -> list[Predicate]:
    checks: list[Predicate] = []
    if "enum" in schema:
        options = schema["enum"]
        if not isinstance(options, list):
            raise _Unsupported("enum")
        options = tuple(options)
        strings = frozenset(option for option in options if type(option) is str)
        plain = all(type(option) in _PLAIN for option in options)

        def one_of_values(instance: Any) -> bool:
            if plain and instance.__class__ is str:
                # _equal(option, a str) is `option == instance`: only an equal str can match
                return instance in strings
            for option in options:  # noqa: SIM110 -- faster than any()
                if _equal(option, instance):
                    return True
            return False

        checks.append(one_of_values)
    if "const" in schema:
        expected = schema["const"]
        checks.append(lambda instance: _equal(instance, expected))
    return checks


_PLAIN = frozenset({str, int, float, bool, type(None), list, dict})


def _schema_list(value: Any, what: str) -> tuple[Predicate, ...]:
    if not isinstance(value, list):
        raise _Unsupported(what)
    return tuple(_compile(sub) for sub in value)


def _applicator_checks(schema: dict[str, Any]) -> list[Predicate]:
    checks: list[Predicate] = []
    if "allOf" in schema:
        every = _schema_list(schema["allOf"], "allOf")
        checks.append(lambda instance: all(sub(instance) for sub in every))
    if "anyOf" in schema:
        some = _schema_list(schema["anyOf"], "anyOf")
        checks.append(lambda instance: any(sub(instance) for sub in some))
    if "oneOf" in schema:
        alternatives = _schema_list(schema["oneOf"], "oneOf")

        def exactly_one(instance: Any) -> bool:
            found = False
            for sub in alternatives:
                if sub(instance):
                    if found:
                        return False
                    found = True
            return found

        checks.append(exactly_one)
    if "not" in schema:
        negated = _compile(schema["not"])
        checks.append(lambda instance: not negated(instance))
    if "if" in schema:
        condition = _compile(schema["if"])
        then = _compile(schema["then"]) if "then" in schema else None
        otherwise = _compile(schema["else"]) if "else" in schema else None

        def conditional(instance: Any) -> bool:
            if condition(instance):
                return then is None or then(instance)
            return otherwise is None or otherwise(instance)

        checks.append(conditional)
    return checks


# --- surely_valid_schema -------------------------------------------------------------------------------

def surely_valid_schema(schema: Any) -> bool:
    """True only if the Draft 2020-12 metaschema certainly accepts `schema` (as
    `validate.schema_problems_in` checks it, without format assertions); False means "don't know"."""
    try:
        return _meta_ok(schema)
    except RecursionError:
        return False


def _meta_ok(schema: Any) -> bool:
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict):
        return False
    for key, value in schema.items():
        rule = _META_RULES.get(key) if isinstance(key, str) else None
        if rule is None or not rule(value):
            return False
    return True


def _non_negative_integer(value: Any) -> bool:
    """The metaschema's nonNegativeInteger as jsonschema reads it: an int (not a bool), or an integral
    float, that is not below 0."""
    if type(value) is int:
        return value >= 0
    return type(value) is float and value.is_integer() and value >= 0


def _unique_strings(value: Any) -> bool:
    return (isinstance(value, list) and all(type(item) is str for item in value)
            and len(set(value)) == len(value))


def _schema_object(value: Any) -> bool:
    return isinstance(value, dict) and all(type(key) is str and _meta_ok(sub) for key, sub in value.items())


def _schema_array(value: Any) -> bool:
    return isinstance(value, list) and len(value) >= 1 and all(_meta_ok(sub) for sub in value)


def _type_value(value: Any) -> bool:
    if type(value) is str:
        return value in SIMPLE_TYPES
    return (isinstance(value, list) and len(value) >= 1 and all(type(item) is str and item in SIMPLE_TYPES
                                                                  for item in value)
            and len(set(value)) == len(value))


_ID = re.compile("^[^#]*#?$")
_ANCHOR = re.compile("^[A-Za-z_][-A-Za-z0-9._]*$")


def _is_str(value: Any) -> bool:
    return type(value) is str


def _anything(value: Any) -> bool:
    return True


_META_RULES: dict[str, Callable[[Any], bool]] = {
    # core
    "$id": lambda value: type(value) is str and _ID.search(value) is not None,
    "$schema": _is_str,
    "$ref": _is_str,
    "$dynamicRef": _is_str,
    "$anchor": lambda value: type(value) is str and _ANCHOR.search(value) is not None,
    "$dynamicAnchor": lambda value: type(value) is str and _ANCHOR.search(value) is not None,
    "$comment": _is_str,
    "$defs": _schema_object,
    # applicator
    "prefixItems": _schema_array,
    "items": _meta_ok,
    "contains": _meta_ok,
    "additionalProperties": _meta_ok,
    "properties": _schema_object,
    "patternProperties": _schema_object,  # `format: regex` on its names is not asserted
    "dependentSchemas": _schema_object,
    "propertyNames": _meta_ok,
    "if": _meta_ok,
    "then": _meta_ok,
    "else": _meta_ok,
    "allOf": _schema_array,
    "anyOf": _schema_array,
    "oneOf": _schema_array,
    "not": _meta_ok,
    # unevaluated
    "unevaluatedItems": _meta_ok,
    "unevaluatedProperties": _meta_ok,
    # validation
    "type": _type_value,
    "const": _anything,
    "enum": lambda value: isinstance(value, list),
    "multipleOf": lambda value: _is_number(value) and value > 0,
    "maximum": _is_number,
    "exclusiveMaximum": _is_number,
    "minimum": _is_number,
    "exclusiveMinimum": _is_number,
    "maxLength": _non_negative_integer,
    "minLength": _non_negative_integer,
    "pattern": _is_str,  # `format: regex` is not asserted
    "maxItems": _non_negative_integer,
    "minItems": _non_negative_integer,
    "uniqueItems": lambda value: isinstance(value, bool),
    "maxContains": _non_negative_integer,
    "minContains": _non_negative_integer,
    "maxProperties": _non_negative_integer,
    "minProperties": _non_negative_integer,
    "required": _unique_strings,
    "dependentRequired": lambda value: isinstance(value, dict) and all(_unique_strings(each) for each in value.values()),
    # meta-data, format-annotation, content
    "title": _is_str,
    "description": _is_str,
    "default": _anything,
    "deprecated": lambda value: isinstance(value, bool),
    "readOnly": lambda value: isinstance(value, bool),
    "writeOnly": lambda value: isinstance(value, bool),
    "examples": lambda value: isinstance(value, list),
    "format": _is_str,
    "contentEncoding": _is_str,
    "contentMediaType": _is_str,
    "contentSchema": _meta_ok,
}


_ASCII_CLASSES = {"d": ("[0-9]", "0-9"), "D": ("[^0-9]", None), "w": ("[A-Za-z0-9_]", "A-Za-z0-9_"),
                  "W": ("[^A-Za-z0-9_]", None)}


@lru_cache(maxsize=512)   # bounded, as `re` bounds its own cache of patterns: a pure function of the pattern
def ecma_regex(pattern: str) -> re.Pattern[str]:
    """A JSON Schema pattern (ECMA 262 syntax) as a Python regex with the same meaning for orchc's uses:
    `$` matches only at the very end (Python's also matches before a final newline), and `\\d`, `\\w`
    are ASCII. Raises re.error for an invalid pattern."""
    out: list[str] = []
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            escaped = pattern[index + 1]
            ascii_class = _ASCII_CLASSES.get(escaped)
            replacement = ascii_class and (ascii_class[1] if in_class else ascii_class[0])
            out.append(replacement or pattern[index:index + 2])
            index += 2
            continue
        if in_class:
            in_class = char != "]" or out[-1] in ("[", "[^")
        elif char == "[":
            in_class = True
            if pattern.startswith("[^", index):
                out.append("[^")
                index += 2
                continue
        elif char == "$":
            char = r"\Z"
        out.append(char)
        index += 1
    return re.compile("".join(out))
