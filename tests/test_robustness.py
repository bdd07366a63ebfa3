"""Any malformed input ends in located errors and exit 1, never a traceback.

Every node of every example recipe, and of two type definitions, is replaced in turn by
values of the wrong shape; each compile must succeed or fail cleanly.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, ROOT
from ruamel.yaml import YAML

pytestmark = pytest.mark.slow   # thousands of compiles: every node of every example, replaced in turn

WRONG_SHAPES = [None, [], {"x": 1}]
HEADLINE = re.compile(r"^\S+:\d+:\d+: error: ")


def node_paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in children:
        yield from node_paths(child, path + (key,))


def replaced(doc: Any, path: tuple, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


def mutations(file: Path, wrong: list[Any]) -> Iterator[tuple[str, Any]]:
    doc = YAML(typ="safe").load(file.read_text())
    for path in list(node_paths(doc))[1:]:
        for value in wrong:
            yield f"{file.name}:{'.'.join(map(str, path))}={value!r}", replaced(doc, path, value)


def assert_clean(result, label: str) -> None:
    assert result.code in (0, 1), f"{label}: {result.err}"
    if result.code == 1:
        assert HEADLINE.match(result.err.splitlines()[0]), f"{label}: {result.err}"


@pytest.mark.parametrize("recipe", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_mutated_recipes_fail_cleanly(orchc, tmp_path, recipe):
    target = tmp_path / "r.yaml"
    for label, doc in mutations(recipe, WRONG_SHAPES):
        target.write_text(json.dumps(doc))
        assert_clean(orchc("validate", target, cwd=tmp_path), label)


@pytest.mark.parametrize("typedef", ["ollama.yaml", "redis_client.yaml", "service.yaml"])
def test_mutated_type_definitions_fail_cleanly(orchc, tmp_path, typedef):
    defs = tmp_path / "defs"
    defs.mkdir()
    examples = [EXAMPLES / "ollama.yaml", EXAMPLES / "redis.yaml"]
    for label, doc in mutations(ROOT / "service_defs" / typedef, [*WRONG_SHAPES, "{{ nosuch }}"]):
        (defs / typedef).write_text(json.dumps(doc))
        assert_clean(orchc("validate", *examples, "--defs", defs, cwd=tmp_path), label)
