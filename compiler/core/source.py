"""Source positions and located values: the currency every stage passes on.

A `Node` is a plain value (scalar, dict of Nodes, list of Nodes) that remembers
the file, line and column it was written at. The loader builds Nodes from YAML,
the resolver merges them (so a merged value still points at the layer that set
it), and validation maps a JSON path back to a Node to locate its errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

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


def _read_only(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError("a resolved value is read-only")


class FrozenDict(dict[str, Any]):
    """A dict nobody can change: what a resolved job holds. Still a dict to templates, schemas and JSON."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only


class FrozenList(list[Any]):
    """A list nobody can change: what a resolved job holds. Still a list to templates, schemas and JSON."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = reverse = sort = clear = _read_only


def to_frozen(node: Node) -> Any:
    """The value with every position stripped, as FrozenDicts and FrozenLists."""
    value = node.value
    if isinstance(value, dict):
        return FrozenDict({k: to_frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return FrozenList([to_frozen(v) for v in value])
    return value


def freeze(value: Any) -> Any:
    """A plain value as FrozenDicts and FrozenLists."""
    if isinstance(value, dict):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return FrozenList([freeze(v) for v in value])
    return value


class Origins:
    """Where each value of a resolved job was set, kept apart from the values themselves.

    `loc(path)` is the position of the value at `path` (of the nearest value that contains it, when the
    path names something no layer set, such as a default decided by orchc); `template(path)` is the
    positioned string a template is rendered from, so a template error names the type file's line.
    """

    __slots__ = ("root",)
    root: Node

    def __init__(self, root: Node) -> None:
        object.__setattr__(self, "root", root)

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError("origins are read-only")

    def loc(self, path: tuple[PathItem, ...] = ()) -> SourceLoc:
        return self.root.at(path).loc

    def key_loc(self, path: tuple[PathItem, ...]) -> SourceLoc:
        """Where the key of the value at `path` is written (the value's own position if it has no key)."""
        node = self.root.at(path)
        return node.key_loc or node.loc

    def template(self, path: tuple[PathItem, ...]) -> Node:
        return self.root.at(path)

    def __getitem__(self, path: tuple[PathItem, ...]) -> SourceLoc:
        node = self.root
        for item in path:
            child = _child(node, item)
            if child is None:
                raise KeyError(path)
            node = child
        return node.loc

    def items(self) -> Iterator[tuple[tuple[PathItem, ...], SourceLoc]]:
        """(path, position) of every value, in document order."""
        for path, leaf in walk_leaves(self.root):
            yield path, leaf.loc


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
