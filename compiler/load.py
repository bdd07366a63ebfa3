"""Stage 1, load: YAML text -> `Node` trees that know the line and column of every value.

YAML syntax errors, duplicate keys, non-string keys, tags and documents that are
not mappings become located problems. The text of every loaded file is kept so
error reports can quote the lines around a problem.
"""

from __future__ import annotations

import datetime
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
def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    return yaml


def display_path(path: Path) -> str:
    """How a file is named in messages: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


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
        doc = _yaml().load(text)
    except MarkedYAMLError as exc:
        marks = [m for m in (exc.problem_mark, exc.context_mark) if m is not None]
        locs = [_loc(name, m.line, m.column) for m in marks] or [SourceLoc(name)]
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise OrchcError.at(locs[0], f"invalid YAML: {_first_line(message)}", related=locs[1:]) from None
    except YAMLError as exc:
        raise OrchcError.at(SourceLoc(name), f"invalid YAML: {_first_line(str(exc))}") from None
    root = SourceLoc(name, 1, 1)
    if doc is None:
        raise OrchcError.at(root, "the document is empty; expected a mapping")
    if not isinstance(doc, dict):
        raise OrchcError.at(_loc(name, doc.lc.line, doc.lc.col) if hasattr(doc, "lc") else root,
                            f"the document is a {_kind(doc)}; expected a mapping")
    problems = Collector()
    node = _convert(doc, name, _loc(name, doc.lc.line, doc.lc.col), problems)
    problems.raise_if_any()
    return node


def _first_line(message: str) -> str:
    return " ".join(message.split())


def _loc(name: str, line: int | None, col: int | None) -> SourceLoc:
    return SourceLoc(name, (line or 0) + 1, (col or 0) + 1)


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _convert(value: Any, name: str, loc: SourceLoc, problems: Collector, key_loc: SourceLoc | None = None) -> Node:
    tag = getattr(getattr(value, "tag", None), "value", None)
    if tag and isinstance(value, (dict, list)):
        problems.add(loc, f"unsupported YAML tag {tag}; orchc marks merge rules with key suffixes (key+, key-, key!)")
    if isinstance(value, dict):
        items: dict[str, Node] = {}
        for key in value:
            kloc = _loc(name, *value.lc.key(key))
            vloc = _loc(name, *value.lc.value(key))
            if not isinstance(key, str):
                problems.add(kloc, f"keys must be strings, got {key!r}")
                continue
            items[key] = _convert(value[key], name, vloc, problems, kloc)
        return Node(items, loc, key_loc)
    if isinstance(value, list):
        return Node([_convert(item, name, _loc(name, *value.lc.item(i)), problems)
                     for i, item in enumerate(value)], loc, key_loc)
    return Node(_scalar(value, loc, problems), loc, key_loc)


def _scalar(value: Any, loc: SourceLoc, problems: Collector) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    tag = getattr(getattr(value, "tag", None), "value", None) or type(value).__name__
    problems.add(loc, f"unsupported YAML tag {tag}; orchc marks merge rules with key suffixes (key+, key-, key!)")
    return None
