"""Stage 1, load: YAML text -> `Node` trees that know the line and column of every value.

YAML syntax errors, duplicate keys, non-string keys, tags and documents that are
not mappings become located problems. The text of every loaded file is kept so
error reports can quote the lines around a problem.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import Collector, OrchcError
from .source import Node, SourceLoc

_TEXTS: dict[str, str] = {}


def source_text(file: str) -> str | None:
    """The text of a file loaded in this process (for error excerpts)."""
    return _TEXTS.get(file)


def remember_text(file: str, text: str) -> None:
    _TEXTS[file] = text


@lru_cache(maxsize=1)
def _composer() -> Callable[[str], Any]:
    """text -> YAML node tree, each node with its start mark (line and column).

    orchc builds values itself from the nodes, so it needs only ruamel's composer,
    never its slower round-trip loader. With ruamel.yaml.clib the composer runs in C
    and a resolver pinned to YAML 1.2 spares it a version lookup per scalar.
    """
    from ruamel.yaml.resolver import VersionedResolver

    class Resolver(VersionedResolver):
        @property
        def processing_version(self) -> tuple[int, int]:
            return (1, 2)

    try:
        from ruamel.yaml.cyaml import CParser
    except ImportError:
        from ruamel.yaml import YAML

        fallback = YAML(typ="safe", pure=True)
        fallback.Resolver = Resolver
        return fallback.compose

    class Composer(CParser, Resolver):  # type: ignore[misc]
        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            self._parser = self._composer = self
            Resolver.__init__(self, loadumper=self)

    def compose(text: str) -> Any:
        composer = Composer(text)
        try:
            return composer.get_single_node()
        finally:
            composer.dispose()

    return compose


def display_path(path: Path) -> str:
    """How a file is named in messages: as given when relative, else relative to the working directory when inside it."""
    text = str(path)
    if not os.path.isabs(text):
        return os.path.normpath(text)
    cwd = os.getcwd()
    return os.path.relpath(text, cwd) if text.startswith(cwd + os.sep) else text


def load_file(path: Path, what: str = "file") -> Node:
    """Load a YAML file that must hold one mapping."""
    name = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OrchcError.at(SourceLoc(name), f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OrchcError.at(SourceLoc(name), f"cannot read {what}: {exc}") from None
    return load_text(text, name)


def load_text(text: str, name: str) -> Node:
    remember_text(name, text)
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        doc = _composer()(text)
    except MarkedYAMLError as exc:
        marks = [m for m in (exc.problem_mark, exc.context_mark) if m is not None]
        locs = [_mark_loc(name, m) for m in marks] or [SourceLoc(name)]
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise OrchcError.at(locs[0], f"invalid YAML: {_one_line(message)}", related=locs[1:]) from None
    except YAMLError as exc:
        raise OrchcError.at(SourceLoc(name), f"invalid YAML: {_one_line(str(exc))}") from None
    if doc is None:
        raise OrchcError.at(SourceLoc(name), "the document is empty; expected a mapping")
    root = _mark_loc(name, doc.start_mark)
    if _kind(doc) != "map":
        raise OrchcError.at(root, f"the document is a {_KIND_NAMES[_kind(doc)]}; expected a mapping")
    problems = Collector()
    node = _convert(doc, name, problems)
    problems.raise_if_any()
    return node


_KIND_NAMES = {"map": "mapping", "seq": "list", "scalar": "single value"}
_BOOLS = {"true": True, "false": False}


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _mark_loc(name: str, mark: Any) -> SourceLoc:
    return SourceLoc(name, mark.line + 1, mark.column + 1)


def _kind(node: Any) -> str:
    return {"MappingNode": "map", "SequenceNode": "seq"}.get(type(node).__name__, "scalar")


def _tag(node: Any) -> str:
    return str(getattr(node.tag, "value", node.tag))


def _convert(node: Any, name: str, problems: Collector, key_loc: SourceLoc | None = None) -> Node:
    loc = _mark_loc(name, node.start_mark)
    kind, tag = _kind(node), _tag(node)
    if not tag.startswith("tag:yaml.org,2002:"):
        problems.add(loc, f"unsupported YAML tag {tag}; orchc marks merge rules with key suffixes (key+, key-, key!)")
        return Node(None, loc, key_loc)
    if kind == "seq":
        return Node([_convert(item, name, problems) for item in node.value], loc, key_loc)
    if kind == "map":
        return Node(_mapping(node, name, problems), loc, key_loc)
    return Node(_scalar(node, tag.rsplit(":", 1)[-1], loc, problems), loc, key_loc)


def _mapping(node: Any, name: str, problems: Collector) -> dict[str, Node]:
    items: dict[str, Node] = {}
    for key_node, value_node in node.value:
        kloc = _mark_loc(name, key_node.start_mark)
        if _kind(key_node) != "scalar" or _tag(key_node) != "tag:yaml.org,2002:str":
            problems.add(kloc, f"keys must be strings, got {getattr(key_node, 'value', key_node)!r}")
            continue
        if key_node.value in items:
            first = items[key_node.value].key_loc
            problems.add(kloc, f"duplicate key '{key_node.value}' (first at line {first.line if first else '?'})",
                         related=[first] if first else [])
            continue
        items[key_node.value] = _convert(value_node, name, problems, kloc)
    return items


def _scalar(node: Any, kind: str, loc: SourceLoc, problems: Collector) -> Any:
    text = node.value
    if kind == "null":
        return None
    if kind == "bool":
        return _BOOLS[text.lower()]
    if kind == "int":
        digits = text.replace("_", "")
        return int(digits, 10) if digits.lstrip("+-").isdigit() else int(digits, 0)
    if kind == "float":
        lowered = text.lower()
        return float(lowered.replace(".inf", "inf").replace(".nan", "nan"))
    if kind in ("str", "timestamp"):
        return text
    problems.add(loc, f"unsupported YAML value of type {kind}")
    return None
