"""The merge rules, shared by type inheritance and by every layer of a job.

`merge(base, over)` lays `over` on top of `base`:
- maps merge deeply, key by key;
- scalars and lists replace what they override;
- a key suffix changes that for one key:
    `key+: [...]` appends to the inherited list,
    `key-: [...]` removes the listed items from the inherited list (or keys from a map),
    `key!: value` replaces the inherited value wholesale (no deep merge); `key!: null` deletes it.
Nodes are never mutated: a merged tree shares untouched subtrees with its inputs, and
each value keeps the position of the layer that set it.
"""

from __future__ import annotations

from dataclasses import replace

from ..core.errors import Collector
from ..core.load import split_key
from ..core.source import Node


def merge(base: Node | None, over: Node, problems: Collector) -> Node:
    if not isinstance(over.value, dict):
        return over
    if base is None or not isinstance(base.value, dict):
        base = Node({}, over.loc, over.key_loc)
    out = dict(base.value)
    for raw_key, child in over.value.items():
        key, rule = split_key(raw_key)
        inherited = out.get(key)
        merged = _apply(rule, key, inherited, child, problems)
        if merged is None:
            out.pop(key, None)
        else:
            out[key] = merged if merged.key_loc is child.key_loc or merged.key_loc == child.key_loc \
                else replace(merged, key_loc=child.key_loc)
    return Node(out, base.loc if base.value else over.loc, base.key_loc or over.key_loc)


def _apply(rule: str, key: str, inherited: Node | None, child: Node, problems: Collector) -> Node | None:
    if rule == "!":
        return None if child.value is None else normalize(child, problems)
    if rule == "+":
        return _append(key, inherited, child, problems)
    if rule == "-":
        return _remove(key, inherited, child, problems)
    if isinstance(child.value, dict) and inherited is not None and isinstance(inherited.value, dict):
        return merge(inherited, child, problems)
    return normalize(child, problems)


def normalize(node: Node, problems: Collector) -> Node:
    """Apply the suffix rules inside a value that has nothing to merge with."""
    if isinstance(node.value, dict) and any(split_key(k)[1] for k in node.value):
        return merge(None, node, problems)
    return node


def _append(key: str, inherited: Node | None, child: Node, problems: Collector) -> Node | None:
    if not isinstance(child.value, list):
        problems.add(child.loc, f"'{key}+' appends to a list, so its value must be a list")
        return inherited
    if inherited is None or inherited.value is None:
        return Node(list(child.value), child.loc, child.key_loc)
    if not isinstance(inherited.value, list):
        problems.add(child.key_loc or child.loc, f"'{key}+' appends to a list, but the inherited '{key}' is not a list",
                     related=[inherited.loc])
        return inherited
    return Node(inherited.value + child.value, inherited.loc, child.key_loc)


def _remove(key: str, inherited: Node | None, child: Node, problems: Collector) -> Node | None:
    doomed = child.value if isinstance(child.value, list) else [child]
    doomed_values = [d.plain() for d in doomed]
    if inherited is None:
        problems.add(child.key_loc or child.loc, f"'{key}-' removes from an inherited value, but nothing named '{key}' is inherited")
        return None
    if isinstance(inherited.value, list):
        kept = [item for item in inherited.value if item.plain() not in doomed_values]
        return Node(kept, inherited.loc, inherited.key_loc)
    if isinstance(inherited.value, dict):
        kept_map = {k: v for k, v in inherited.value.items() if k not in doomed_values}
        return Node(kept_map, inherited.loc, inherited.key_loc)
    problems.add(child.key_loc or child.loc, f"'{key}-' removes items from a list or keys from a map, but the inherited '{key}' is neither",
                 related=[inherited.loc])
    return inherited


def merge_layers(layers: list[Node], problems: Collector) -> Node:
    """Merge layers lowest precedence first."""
    result: Node | None = None
    for layer in layers:
        result = merge(result, layer, problems)
    assert result is not None
    return result
