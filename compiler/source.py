"""Source positions and located values: the currency every stage passes on.

A `Node` is a plain value (scalar, dict of Nodes, list of Nodes) that remembers
the file, line and column it was written at. The loader builds Nodes from YAML,
the resolver merges them (so a merged value still points at the layer that set
it), and validation maps a JSON path back to a Node to locate its errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

PathItem = str | int


@dataclass(frozen=True, order=True)
class SourceLoc:
    """A 1-based position in a file; a whole-file problem points at 1:1."""

    file: str
    line: int = 1
    col: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Node:
    value: Any
    loc: SourceLoc
    key_loc: SourceLoc | None = field(default=None, compare=False)

    def plain(self) -> Any:
        """The value with every position stripped: what templates and schemas see."""
        return to_plain(self)

    def get(self, key: str) -> Node | None:
        return self.value.get(key) if isinstance(self.value, dict) else None

    def at(self, path: tuple[PathItem, ...]) -> Node:
        """The deepest node along `path` (stops early where the path leaves the tree)."""
        node = self
        for item in path:
            child = _child(node, item)
            if child is None:
                break
            node = child
        return node


def _child(node: Node, item: PathItem) -> Node | None:
    if isinstance(node.value, dict) and isinstance(item, str):
        return node.value.get(item)
    if isinstance(node.value, list) and isinstance(item, int) and 0 <= item < len(node.value):
        return node.value[item]
    return None


def to_plain(node: Node) -> Any:
    value = node.value
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value


def from_plain(value: Any, loc: SourceLoc) -> Node:
    """Wrap a plain value (e.g. from `--set` or a computed default) so every part carries `loc`."""
    if isinstance(value, dict):
        return Node({k: from_plain(v, loc) for k, v in value.items()}, loc, loc)
    if isinstance(value, list):
        return Node([from_plain(v, loc) for v in value], loc)
    return Node(value, loc)


def walk_leaves(node: Node, path: tuple[PathItem, ...] = ()) -> Iterator[tuple[tuple[PathItem, ...], Node]]:
    """Every scalar (and empty container) under `node` with its path, in document order."""
    value = node.value
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from walk_leaves(child, path + (key,))
    elif isinstance(value, list) and value:
        for index, child in enumerate(value):
            yield from walk_leaves(child, path + (index,))
    else:
        yield path, node


def format_path(path: tuple[PathItem, ...]) -> str:
    out = ""
    for item in path:
        out += f"[{item}]" if isinstance(item, int) else (f".{item}" if out else str(item))
    return out
