"""Stage 1: YAML text -> located values."""

from __future__ import annotations

import pytest

from compiler.core.errors import OrchcError
from compiler.core.load import load_text


def test_values_are_typed_as_yaml_1_2_says():
    doc = load_text("a: 010\nb: 0x1F\nc: 1_000\nd: 1.5\ne: true\nf: on\ng: ~\nh: '7'\ni: 02:00:00\n", "t.yaml")
    assert doc.plain() == {"a": 10, "b": 31, "c": 1000, "d": 1.5, "e": True, "f": "on", "g": None, "h": "7",
                           "i": "02:00:00"}


def test_every_value_and_key_knows_its_line_and_column():
    doc = load_text("service:\n  name: redis\n  ports:\n    - 6379\n", "t.yaml")
    ports = doc.at(("service", "ports"))
    assert str(ports.key_loc) == "t.yaml:3:3"
    assert str(ports.at((0,)).loc) == "t.yaml:4:7"
    assert str(doc.at(("service", "name")).loc) == "t.yaml:2:9"


def test_anchors_and_aliases_resolve():
    doc = load_text("base: &b {nodes: 2}\njob: *b\n", "t.yaml")
    assert doc.plain()["job"] == {"nodes": 2}


@pytest.mark.parametrize("text,where,message", [
    ("a: 1\na: 2\n", "t.yaml:2:1", "duplicate key 'a' (first at line 1)"),
    ("? [1, 2]\n: x\n", "t.yaml:1:3", "keys must be strings"),
    ("a: !custom 1\n", "t.yaml:1:4", "unsupported YAML tag !custom"),
    ("a: [1\n", "t.yaml:2:1", "invalid YAML"),
    ("just text\n", "t.yaml:1:1", "the document is a single value; expected a mapping"),
])
def test_malformed_documents_are_located(text, where, message):
    with pytest.raises(OrchcError) as info:
        load_text(text, "t.yaml")
    problem = info.value.problems[0]
    assert str(problem.loc) == where and message in problem.message


def test_the_pure_python_parser_gives_the_same_values_and_positions(monkeypatch):
    import sys

    from compiler.core import load

    text = "service:\n  name: redis\n  ports: [1, 2]\n  on: yes\n  x: &a {y: 0x1F}\n  z: *a\n"
    native = load_text(text, "t.yaml")
    monkeypatch.setitem(sys.modules, "ruamel.yaml.cyaml", None)  # as without ruamel.yaml.clib
    monkeypatch.setattr(load, "_event_source", load._event_source.__wrapped__)
    from ruamel.yaml import YAML

    calls = []
    real_parse = YAML.parse
    monkeypatch.setattr(YAML, "parse", lambda self, stream: calls.append(1) or real_parse(self, stream))
    pure = load_text(text, "t.yaml")
    assert calls, "the pure-Python parser was not the one used"
    assert pure.plain() == native.plain() == {"service": {"name": "redis", "ports": [1, 2], "on": "yes",
                                                          "x": {"y": 31}, "z": {"y": 31}}}
    for path in [("service",), ("service", "name"), ("service", "ports", 1), ("service", "z", "y")]:
        assert (pure.at(path).loc, pure.at(path).key_loc) == (native.at(path).loc, native.at(path).key_loc)
    assert str(pure.at(("service", "z")).key_loc) == "t.yaml:6:3"


@pytest.mark.slow
def test_the_pure_python_parser_refuses_deep_nesting_without_recursing(monkeypatch):
    import sys

    from compiler.core import load

    monkeypatch.setitem(sys.modules, "ruamel.yaml.cyaml", None)
    monkeypatch.setattr(load, "_event_source", load._event_source.__wrapped__)
    with pytest.raises(OrchcError) as info:
        load_text("a: " + "[" * 100_000, "t.yaml")
    assert str(info.value.problems[0].loc) == "t.yaml:1:67"
    assert "nested deeper than 64 levels" in info.value.problems[0].message


@pytest.mark.slow
def test_the_tag_of_a_plain_scalar_is_the_yaml_1_2_resolvers_whatever_the_shortcut():
    """load.py answers `str` without asking ruamel's resolver for text whose first character no implicit
    resolver starts with: differential, over random text and the words YAML 1.1 and 1.2 give meaning to."""
    import random
    import string

    from ruamel.yaml.nodes import ScalarNode
    from ruamel.yaml.resolver import VersionedResolver

    from compiler.core.load import _resolver

    class Resolver(VersionedResolver):
        @property
        def processing_version(self):
            return (1, 2)

    reference, tag_of = Resolver(), _resolver()()
    words = ["yes", "no", "on", "off", "null", "Null", "~", "true", "False", ".inf", "-.Inf", ".nan", "0x1F", "0o17",
             "1e3", "<<", "=", "2001-12-14", "1_000", "+1", "", "!x", "&a", "*b"]
    rng = random.Random(1)
    for number in range(50_000):
        if number % 2:
            text = "".join(rng.choice(string.printable + "é٣²" if number % 4 == 1 else "0123456789_.e-x+ ")
                           for _ in range(rng.randint(0, 6)))
        else:
            text = rng.choice(words) + rng.choice(["", "x", "1", " "])
        assert tag_of(text) == str(reference.resolve(ScalarNode, text, (True, False))), text
