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


class Sources:
    """The text of each file loaded, for error excerpts and template lines; what excerpts hide of it (secrets);
    its lines, split once per text. A compile session has its own (`load.reading_into`); texts read outside one
    (the command line's `--set` options, commands that are not compiles) are the process's, which `parent` names."""

    __slots__ = ("_concealed", "_lines", "_texts", "limit", "parent")

    def __init__(self, parent: Sources | None = None, limit: int | None = None) -> None:
        self.parent = parent
        self.limit = limit
        """the most files kept (the oldest go first); None: all of them"""
        self._texts: dict[str, str] = {}
        self._concealed: dict[str, dict[int, int]] = {}
        self._lines: dict[tuple[str, Any], tuple[str, list[str]]] = {}

    def remember(self, file: str, text: str) -> None:
        self._texts.pop(file, None)
        self._texts[file] = text
        self._concealed.pop(file, None)
        if self.limit is not None and len(self._texts) > self.limit:
            oldest = next(iter(self._texts))
            del self._texts[oldest]
            self._concealed.pop(oldest, None)
            self._lines = {key: value for key, value in self._lines.items() if key[0] != oldest}

    def text(self, file: str) -> str | None:
        found = self._texts.get(file)
        if found is None and self.parent is not None:
            return self.parent.text(file)
        return found

    def lines(self, file: str, split: Any = str.splitlines) -> list[str] | None:
        """The text of `file` split by `split` (once per text), or None when it was not loaded."""
        text = self.text(file)
        if text is None:
            return None
        known = self._lines.get((file, split))
        if known is None or known[0] is not text:
            known = self._lines[(file, split)] = (text, split(text))
        return known[1]

    def conceal(self, loc: SourceLoc, lines: int = 1) -> None:
        """Never show the text from `loc` to the end of its line (and `lines - 1` more lines) in an excerpt."""
        spans = self._concealed.setdefault(loc.file, {})
        spans[loc.line] = min(loc.col, spans.get(loc.line, loc.col))
        for extra in range(loc.line + 1, loc.line + lines):
            spans[extra] = 1

    def concealed_from(self, file: str, line: int) -> int | None:
        """The column from which line `line` of `file` is hidden in excerpts, or None."""
        spans = self._concealed.get(file)
        found = spans.get(line) if spans else None
        if found is None and self.parent is not None:
            return self.parent.concealed_from(file, line)
        return found
