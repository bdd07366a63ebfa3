"""The merge rules, one test each, on documents loaded with positions."""

from __future__ import annotations

import pytest

from compiler.core.errors import Collector, OrchcError
from compiler.core.load import load_text
from compiler.recipe.merge import merge_layers


def merged(*texts: str):
    problems = Collector()
    result = merge_layers([load_text(text, f"layer{i}.yaml") for i, text in enumerate(texts)], problems)
    problems.raise_if_any()
    return result


def test_maps_merge_deeply():
    result = merged("resources: {nodes: 1, mem: 4G}\n", "resources: {mem: 8G}\n")
    assert result.plain() == {"resources": {"nodes": 1, "mem": "8G"}}


def test_scalars_replace_and_remember_their_layer():
    result = merged("a: 1\nb: 2\n", "b: 3\n")
    assert result.plain() == {"a": 1, "b": 3}
    assert str(result.at(("a",)).loc) == "layer0.yaml:1:4"
    assert str(result.at(("b",)).loc) == "layer1.yaml:1:4"


def test_lists_replace_by_default():
    assert merged("l: [1, 2]\n", "l: [3]\n").plain() == {"l": [3]}


def test_plus_appends_to_the_inherited_list():
    result = merged("l: [1, 2]\n", "l+: [3]\n")
    assert result.plain() == {"l": [1, 2, 3]}
    assert result.at(("l", 2)).loc.file == "layer1.yaml"
    assert result.at(("l", 0)).loc.file == "layer0.yaml"


def test_plus_without_inherited_value_starts_the_list():
    assert merged("a: 1\n", "l+: [3]\n").plain() == {"a": 1, "l": [3]}


def test_minus_removes_items_from_a_list_and_keys_from_a_map():
    assert merged("l: [a, b, c]\n", "l-: [b]\n").plain() == {"l": ["a", "c"]}
    assert merged("m: {x: 1, y: 2}\n", "m-: [x]\n").plain() == {"m": {"y": 2}}


def test_bang_replaces_a_map_wholesale_and_null_deletes():
    assert merged("m: {x: 1, y: 2}\n", "m!: {z: 3}\n").plain() == {"m": {"z": 3}}
    assert merged("m: {x: 1}\nk: 1\n", "m!: null\n").plain() == {"k": 1}


def test_rules_apply_inside_nested_maps_across_three_layers():
    result = merged("phases: {setup: [a]}\n", "phases: {setup+: [b]}\n", "phases: {setup+: [c]}\n")
    assert result.plain() == {"phases": {"setup": ["a", "b", "c"]}}


def test_rules_in_a_first_layer_are_normalized():
    assert merged("phases: {setup+: [a]}\n").plain() == {"phases": {"setup": ["a"]}}


@pytest.mark.parametrize("over,message", [
    ("l+: 3\n", "'l+' appends to a list, so its value must be a list"),
    ("m+: [1]\n", "the inherited 'm' is not a list"),
    ("s-: [1]\n", "the inherited 's' is neither"),
    ("nothing-: [1]\n", "nothing named 'nothing' is inherited"),
])
def test_misused_rules_are_located_errors(over, message):
    with pytest.raises(OrchcError) as info:
        merged("l: [1]\nm: {a: 1}\ns: 5\n", over)
    (problem,) = info.value.problems
    assert problem.loc.file == "layer1.yaml" and message in problem.message


def test_inputs_are_not_mutated():
    base = load_text("m: {x: 1}\nl: [1]\n", "base.yaml")
    before = base.plain()
    merge_layers([base, load_text("m: {y: 2}\nl+: [2]\n", "over.yaml")], Collector())
    assert base.plain() == before
