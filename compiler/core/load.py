"""Stage 1, load: YAML text -> `Node` trees that know the line and column of every value.

YAML syntax errors, duplicate keys, non-string keys, tags outside the core schema,
hostile input (self-referencing or exponential aliases, deep nesting, huge files,
invalid UTF-8, control characters, FIFOs and devices) and documents that are not
mappings become located problems. The text of every loaded file is kept so error
reports can quote the lines around a problem.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import Collector, OrchcError, shorten
from .source import Node, SourceLoc, Sources

MAX_BYTES = 8 * 1024 * 1024
"""The largest file orchc reads; real recipes and types are a few kilobytes."""
MAX_DEPTH = 64
"""The deepest nesting of lists and mappings (aliases included) in one document."""
MAX_VALUES = 1_000_000
"""The most values (scalars, keys and collections, each alias counted at its full size) in one document: what memory
allows (a value costs ~290 bytes loaded: a million ~300 MB), four times a plain recipe of 10,000 jobs (~240,000
values, 1.9 MB)."""
MAX_ALIAS_VALUES = 200_000
"""The most values aliases may add to one document, each use counted at its full size: what amplification allows."""
MAX_TEXT = 32 * 1024 * 1024
"""The most characters of text (scalars and keys, each alias counted at its full size) in one document: four times the
largest file, so aliases cannot blow a small file up to gigabytes of text (real recipes have a few kilobytes)."""

_PROCESS_SOURCES = Sources(limit=1024)
"""The texts loaded outside a compile session (`--set` options, commands that compile nothing): few files,
and a bound all the same for a process that loads file after file without a session."""
_SOURCES: ContextVar[Sources] = ContextVar("orchc_sources", default=_PROCESS_SOURCES)
"""Where the texts loaded now go: the compile session's while it reads (reading_into), else the process's."""

# Characters refused in the text of a file: C0 controls but tab and line ends, DEL, C1 controls,
# a CR not followed by LF, line and paragraph separators (line breaks for some readers, not for editors),
# and a byte order mark anywhere but at the start (removed there).
_BAD_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ufeff]|\r(?!\n)")
# Characters refused in any value or key (double-quoted scalars can write them as escapes).
_BAD_VALUE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CHARACTER_NAMES = {"\x00": "NUL", "\x1b": "ESC", "\x7f": "DEL", "\x85": "NEL", "\u2028": "LINE SEPARATOR",
                    "\u2029": "PARAGRAPH SEPARATOR", "\r": "CR", "\x0b": "VT", "\x0c": "FF"}


def new_sources() -> Sources:
    """The texts of a compile session: its own, and those loaded outside it (the command line's) as well."""
    return Sources(parent=_PROCESS_SOURCES)


@contextmanager
def reading_into(sources: Sources) -> Iterator[None]:
    """Within it, the texts loaded go to `sources` (a compile session's), and an OrchcError that leaves it
    carries them: its excerpts are printed after the session has gone."""
    token = _SOURCES.set(sources)
    try:
        yield
    except OrchcError as error:
        if error.sources is None:
            error.sources = sources
        raise
    finally:
        _SOURCES.reset(token)


def current_sources() -> Sources:
    """The texts loaded in the compile session under way, else in this process (for error excerpts)."""
    return _SOURCES.get()


def source_text(file: str) -> str | None:
    """The text of a loaded file (for error excerpts)."""
    return _SOURCES.get().text(file)


def remember_text(file: str, text: str) -> None:
    _SOURCES.get().remember(file, text)


def conceal(loc: SourceLoc, lines: int = 1) -> None:
    """Never show the text from `loc` to the end of its line (and `lines - 1` more lines) in an excerpt."""
    _SOURCES.get().conceal(loc, lines)


def character_name(char: str) -> str:
    name = _CHARACTER_NAMES.get(char)
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


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
    return load_text(read_source(path, name, what), name)


_FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def read_source(path: Path, name: str, what: str) -> str:
    """The text of a regular file of at most MAX_BYTES, as UTF-8 (a leading byte order mark dropped).

    Checked before reading so that a FIFO or a device is refused instead of hanging or filling memory;
    opened without blocking and checked again, in case the file was swapped in between."""
    where = SourceLoc(name)
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise OrchcError.at(where, f"{what} is not a regular file ({_FILE_KINDS.get(stat.S_IFMT(mode), 'a special file')})")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise OrchcError.at(where, f"{what} is not a regular file")
            if info.st_size > MAX_BYTES:
                raise OrchcError.at(where, f"{what} is larger than {MAX_BYTES // 1024 // 1024} MiB "
                                    f"({info.st_size} bytes)")
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise OrchcError.at(where, f"{what} not found") from None
    except OSError as exc:
        raise OrchcError.at(where, f"cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise OrchcError.at(where, f"{what} is larger than {MAX_BYTES // 1024 // 1024} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        remember_text(name, data.decode("utf-8", "replace").removeprefix("\ufeff"))
        before = data[:exc.start]
        line_start = before.rfind(b"\n") + 1
        column = len(before[line_start:].decode("utf-8", "replace").removeprefix("\ufeff")) + 1
        raise OrchcError.at(SourceLoc(name, before.count(b"\n") + 1, column),
                            f"invalid UTF-8 (byte 0x{data[exc.start]:02X}); orchc reads UTF-8 text") from None
    return text.removeprefix("\ufeff")


def load_text(text: str, name: str) -> Node:
    """Parse `text` (the content of file `name`), which must hold one mapping."""
    node = load_value(text, name)
    if node is None:
        raise OrchcError.at(SourceLoc(name), "the document is empty; expected a mapping")
    if not isinstance(node.value, dict):
        kind = "list" if isinstance(node.value, list) else "single value"
        raise OrchcError.at(node.loc, f"the document is a {kind}; expected a mapping")
    return node


def load_value(text: str, name: str) -> Node | None:
    """Parse one YAML document of any shape; None when it is empty."""
    text = text.removeprefix("\ufeff")
    remember_text(name, text)
    if len(text) > MAX_BYTES:
        raise OrchcError.at(SourceLoc(name), f"the text is larger than {MAX_BYTES // 1024 // 1024} MiB")
    problems = Collector()
    _check_characters(text, name, problems)
    problems.raise_if_any()
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    next_event, done = _event_source()(text)
    try:
        return _Builder(name, problems).build(next_event)
    except MarkedYAMLError as exc:
        marks = [m for m in (exc.problem_mark, exc.context_mark) if m is not None]
        locs = [_mark_loc(name, m) for m in marks] or [SourceLoc(name)]
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        problems.add(locs[0], f"invalid YAML: {_one_line(message)}", related=locs[1:])
        raise OrchcError(problems.problems) from None
    except YAMLError as exc:
        problems.add(SourceLoc(name), f"invalid YAML: {_one_line(str(exc))}")
        raise OrchcError(problems.problems) from None
    finally:
        done()


def _check_characters(text: str, name: str, problems: Collector, limit: int = 20) -> None:
    for count, match in enumerate(_BAD_TEXT.finditer(text)):
        if count == limit:
            break
        char, start = match.group(), match.start()
        line_start = text.rfind("\n", 0, start) + 1
        loc = SourceLoc(name, text.count("\n", 0, start) + 1, start - line_start + 1)
        if char == "\r":
            problems.add(loc, "a carriage return not followed by a line feed; end lines with LF or CR LF")
        elif char == "\ufeff":
            problems.add(loc, "a byte order mark (U+FEFF) is allowed only at the start of a file")
        elif char in "\u2028\u2029":
            problems.add(loc, f"{character_name(char)} is not allowed (a line break for some YAML readers only)")
        else:
            problems.add(loc, f"control character {character_name(char)} is not allowed")


@lru_cache(maxsize=1)
def _event_source() -> Callable[[str], tuple[Callable[[], Any], Callable[[], None]]]:
    """text -> (next parser event, clean-up).

    orchc builds values itself from parser events, so it needs only ruamel's parser, never its
    composer (which recurses once per nesting level and crashes on deep input) nor its slower
    round-trip loader. With ruamel.yaml.clib the parser runs in C (libyaml's state machine,
    which does not recurse)."""
    try:
        from ruamel.yaml.cyaml import CParser
    except ImportError:
        from ruamel.yaml import YAML

        pure = YAML(typ="safe", pure=True)
        return lambda text: (iter(pure.parse(text)).__next__, lambda: None)

    def source(text: str) -> tuple[Callable[[], Any], Callable[[], None]]:
        parser = CParser(text)
        return parser.get_event, parser.dispose

    return source


@lru_cache(maxsize=1)
def _resolver() -> Callable[[], Callable[[str], str]]:
    """A maker of `text -> tag`: a plain scalar's text -> its tag under YAML 1.2 (`on` and `yes` are strings),
    memoised for one document (each document gets its own memo: nothing of one document outlives it)."""
    from ruamel.yaml.nodes import ScalarNode
    from ruamel.yaml.resolver import VersionedResolver

    class Resolver(VersionedResolver):
        @property
        def processing_version(self) -> tuple[int, int]:
            return (1, 2)

    resolver = Resolver()
    resolve = resolver.resolve
    # The resolver picks its candidate patterns by the text's first character: text that starts with any
    # other character (most names and words) is a string without asking it.
    special = frozenset(key for key in resolver.versioned_resolver if key)
    plain, integer = f"{_CORE}str", f"{_CORE}int"
    decimal = re.compile(r"[0-9]+").fullmatch   # an integer under YAML 1.2's core schema, whatever its zeros

    def maker() -> Callable[[str], str]:
        cache: dict[str, str] = {}

        def tag_of(text: str) -> str:
            if text and text[0] not in special:
                return plain
            if decimal(text):
                return integer
            tag = cache.get(text)
            if tag is None:
                tag = cache[text] = str(resolve(ScalarNode, text, (True, False)))
            return tag

        return tag_of

    return maker


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _mark_loc(name: str, mark: Any) -> SourceLoc:
    return SourceLoc(name, mark.line + 1, mark.column + 1)


_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {"str", "int", "float", "bool", "null"}
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_SKIP = object()


class _TooMuch(Exception):
    """Building stops at once: the document is too deep or too large to go on."""


class _Frame:
    """A list or mapping being built."""

    __slots__ = ("anchor", "height", "is_map", "key", "key_loc", "node", "start_count", "start_text", "suffixed")

    def __init__(self, node: Node, is_map: bool, anchor: str | None, start_count: int, start_text: int) -> None:
        self.node = node
        self.is_map = is_map
        self.anchor = anchor
        self.start_count = start_count
        self.start_text = start_text
        self.height = 1
        self.key: Any = None
        self.key_loc: SourceLoc | None = None
        self.suffixed = False


class _Builder:
    """Parser events -> a Node tree, without recursion.

    Aliases share the anchored value (so expanding them costs nothing here), but every later stage
    walks the expanded tree: the number of values is counted with each alias at its full size, and
    the nesting depth with each alias at its full height, so that exponential aliases are refused."""

    def __init__(self, name: str, problems: Collector) -> None:
        self.name = name
        self.problems = problems
        self.count = 0
        self.aliased = 0
        self.text = 0
        self.anchors: dict[str, tuple[Node, int, int, int]] = {}
        self.open_anchors: set[str] = set()
        self.stack: list[_Frame] = []
        self.root: Node | None = None
        self.tag_of = _resolver()()

    def build(self, next_event: Callable[[], Any]) -> Node | None:
        from ruamel.yaml import events as ev

        scalar, alias = ev.ScalarEvent, ev.AliasEvent
        map_start, seq_start = ev.MappingStartEvent, ev.SequenceStartEvent
        map_end, seq_end = ev.MappingEndEvent, ev.SequenceEndEvent
        documents = 0
        try:
            while True:
                event = next_event()
                kind = type(event)
                if kind is scalar:
                    self._scalar(event)
                elif kind is map_start or kind is seq_start:
                    self._start(event, kind is map_start)
                elif kind is map_end or kind is seq_end:
                    self._end()
                elif kind is alias:
                    self._alias(event)
                elif kind is ev.DocumentStartEvent:
                    documents += 1
                    if documents > 1:
                        self.problems.add(self._loc(event.start_mark), "orchc reads one document per file; "
                                          "remove this `---` and what follows, or make it a file of its own")
                        break
                elif kind is ev.StreamEndEvent:
                    break
        except _TooMuch:
            pass
        self.problems.raise_if_any()
        return self.root

    def _loc(self, mark: Any) -> SourceLoc:
        return SourceLoc(self.name, mark.line + 1, mark.column + 1)

    def _count(self, size: int, mark: Any) -> None:
        self.count += size
        if self.count > MAX_VALUES:
            self.problems.add(self._loc(mark), f"the document has more than {MAX_VALUES} values (aliases counted at "
                              "every use); split it into several recipes")
            raise _TooMuch

    def _count_aliased(self, size: int, mark: Any) -> None:
        self.aliased += size
        if self.aliased > MAX_ALIAS_VALUES:
            self.problems.add(self._loc(mark), f"aliases add more than {MAX_ALIAS_VALUES} values to the document "
                              "(each use counted at its full size)")
            raise _TooMuch
        self._count(size, mark)

    def _count_text(self, size: int, mark: Any) -> None:
        self.text += size
        if self.text > MAX_TEXT:
            self.problems.add(self._loc(mark), f"the document has more than {MAX_TEXT // 1024 // 1024} MiB of text "
                              "(aliases counted at every use)")
            raise _TooMuch

    def _scalar(self, event: Any) -> None:
        self.count += 1
        if self.count > MAX_VALUES:
            self._count(0, event.start_mark)
        mark = event.start_mark
        loc = SourceLoc(self.name, mark.line + 1, mark.column + 1)
        text = event.value
        self.text += len(text)
        if self.text > MAX_TEXT:
            self._count_text(0, mark)
        tag = event.tag
        value: Any
        if tag is None and event.implicit[0]:
            kind = self.tag_of(text)[18:]
            value = text if kind == "str" else self._value(kind, text, loc)
        elif tag is None or tag == "!":
            value = text
            if event.style == '"' and _BAD_VALUE.search(text):
                self.problems.add(loc, f"control character {character_name(_BAD_VALUE.search(text).group())} "  # type: ignore[union-attr]
                                  "is not allowed")
        else:
            explicit = self._explicit(str(getattr(tag, "value", tag)), text, loc, "scalar")
            value = _SKIP if explicit is None else self._value(explicit, text, loc)
            if event.style == '"' and _BAD_VALUE.search(text):
                self.problems.add(loc, f"control character {character_name(_BAD_VALUE.search(text).group())} "  # type: ignore[union-attr]
                                  "is not allowed")
        if event.anchor is not None:
            self.anchors[event.anchor] = (Node(value, loc), 1, 0, len(text))
        stack = self.stack
        if stack:
            frame = stack[-1]
            if not frame.is_map:
                if value is not _SKIP:
                    frame.node.value.append(Node(value, loc))
                return
            if frame.key is not None:
                key = frame.key
                if key is not _SKIP and value is not _SKIP:
                    frame.node.value[key] = Node(value, loc, frame.key_loc)
                frame.key = frame.key_loc = None
                return
        self._attach(value, loc, isinstance(value, str))

    def _explicit(self, tag: str, text: str, loc: SourceLoc, shape: str) -> str | None:
        """The core-schema kind an explicit tag gives, or None after a problem."""
        short = "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag
        kind = tag[len(_CORE):] if tag.startswith(_CORE) else ""
        if kind not in _SCALAR_TAGS | {"map", "seq"}:
            self.problems.add(loc, f"unsupported YAML tag {shorten(short, quoted=False)}; orchc reads strings, numbers, "
                              "booleans, null, lists and mappings, and marks merge rules with key suffixes "
                              "(key+, key-, key!)")
            return None
        fits = {"scalar": _SCALAR_TAGS, "map": {"map"}, "seq": {"seq"}}[shape]
        if kind not in fits:
            self.problems.add(loc, f"the tag {short} does not fit a {_SHAPE_NAMES[shape]}")
            return None
        if kind == "str" or shape != "scalar":
            return kind
        resolved = self.tag_of(text)[18:]
        if resolved != kind and not (kind == "float" and resolved == "int"):
            self.problems.add(loc, f"{shorten(text)} is not a valid {short}")
            return None
        return kind

    def _value(self, kind: str, text: str, loc: SourceLoc) -> Any:
        try:
            if kind == "null":
                return None
            if kind == "bool":
                return _BOOLS[text]
            if kind == "int":
                digits = text.replace("_", "")
                return int(digits, 10) if digits.lstrip("+-").isdigit() else int(digits, 0)
            if kind == "float":
                return float(text.lower().replace("_", "").replace(".inf", "inf").replace(".nan", "nan"))
        except (ValueError, KeyError):
            self.problems.add(loc, f"{shorten(text)} is not a valid {'integer' if kind == 'int' else kind}")
            return _SKIP
        return text  # str, and kinds YAML 1.2 does not type (timestamps, `=`, `<<`) stay text

    def _start(self, event: Any, is_map: bool) -> None:
        self._count(1, event.start_mark)
        loc = self._loc(event.start_mark)
        if len(self.stack) >= MAX_DEPTH:
            self.problems.add(loc, f"lists and mappings are nested deeper than {MAX_DEPTH} levels")
            raise _TooMuch
        tag = event.tag
        if tag is not None and tag != "!":
            self._explicit(str(getattr(tag, "value", tag)), "", loc, "map" if is_map else "seq")
        parent = self.stack[-1] if self.stack else None
        key_loc = parent.key_loc if parent is not None and parent.is_map and parent.key is not None else None
        frame = _Frame(Node({} if is_map else [], loc, key_loc), is_map, event.anchor, self.count, self.text)
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)
        self.stack.append(frame)

    def _end(self) -> None:
        frame = self.stack.pop()
        node = frame.node
        if frame.suffixed:
            self._check_spellings(node.value)
        if frame.anchor is not None:
            self.open_anchors.discard(frame.anchor)
            self.anchors[frame.anchor] = (node, self.count - frame.start_count + 1, frame.height, self.text - frame.start_text)
        if self.stack:
            parent = self.stack[-1]
            if frame.height + 1 > parent.height:
                parent.height = frame.height + 1
        self._attach_node(node, node.loc, False)

    def _alias(self, event: Any) -> None:
        loc = self._loc(event.start_mark)
        name = event.anchor
        if name in self.open_anchors:
            self.problems.add(loc, f"alias *{name} refers to a value that contains it (&{name} is not finished here)")
            raise _TooMuch
        if name not in self.anchors:
            self.problems.add(loc, f"alias *{name} has no anchor &{name} before it")
            self._attach(_SKIP, loc, False)
            return
        target, size, height, text = self.anchors[name]
        self._count_aliased(size, event.start_mark)
        self._count_text(text, event.start_mark)
        if height and len(self.stack) + height > MAX_DEPTH:
            self.problems.add(loc, f"lists and mappings are nested deeper than {MAX_DEPTH} levels "
                              f"(alias *{name} adds {height})")
            raise _TooMuch
        if self.stack and height + 1 > self.stack[-1].height:
            self.stack[-1].height = height + 1
        self._attach_node(target, target.loc, isinstance(target.value, str))

    def _attach(self, value: Any, loc: SourceLoc, is_text: bool) -> None:
        frame = self.stack[-1] if self.stack else None
        if frame is not None and frame.is_map and frame.key is None:
            self._set_key(frame, value, loc, is_text)
            return
        self._attach_node(Node(value, loc, frame.key_loc if frame is not None else None), loc, is_text)

    def _attach_node(self, node: Node, loc: SourceLoc, is_text: bool) -> None:
        """Put a finished value into the collection being built (or make it the root)."""
        if not self.stack:
            self.root = node
            return
        frame = self.stack[-1]
        if not frame.is_map:
            if node.value is not _SKIP:
                frame.node.value.append(node if node.key_loc is None else Node(node.value, node.loc))
            return
        if frame.key is None:
            self._set_key(frame, node.value, loc, is_text)
            return
        key, key_loc = frame.key, frame.key_loc
        frame.key = frame.key_loc = None
        if key is _SKIP or node.value is _SKIP:
            return
        frame.node.value[key] = node if node.key_loc is key_loc else Node(node.value, node.loc, key_loc)

    def _set_key(self, frame: _Frame, value: Any, loc: SourceLoc, is_text: bool) -> None:
        items = frame.node.value
        frame.key_loc = loc
        if value is _SKIP:
            frame.key = _SKIP
        elif not is_text:
            what = shorten(value) if not isinstance(value, (dict, list)) else ("a mapping" if isinstance(value, dict) else "a list")
            self.problems.add(loc, f"keys must be strings, got {what}")
            frame.key = _SKIP
        elif value == "<<":
            self.problems.add(loc, "YAML merge keys (<<) are not supported; write the values, or let the "
                              "type or the recipe's top level provide them")
            frame.key = _SKIP
        elif value in items:
            first = items[value].key_loc
            self.problems.add(loc, f"duplicate key {shorten(value)} (first at line {first.line if first else '?'})",
                              related=[first] if first else [])
            frame.key = _SKIP
        else:
            frame.key = value
            if len(value) > 1 and value[-1] in "+-!":
                frame.suffixed = True

    def _check_spellings(self, items: dict[str, Node]) -> None:
        """`l:` beside `l+:` (or any two of l, l+, l-, l!) in one mapping contradict each other."""
        first: dict[str, str] = {}
        for key, child in items.items():
            base = split_key(key)[0]
            if base in first:
                earlier = items[first[base]].key_loc
                line = earlier.line if earlier else "?"
                self.problems.add(child.key_loc or child.loc, f"{shorten(key)} and {shorten(first[base])} (line {line}) "
                                  "name the same key; a mapping may spell a key only one way (key, key+, key- or key!)",
                                  related=[earlier] if earlier else [])
            else:
                first[base] = key


_SHAPE_NAMES = {"scalar": "single value", "map": "mapping", "seq": "list"}


SUFFIXES = "+-!"


def split_key(key: str) -> tuple[str, str]:
    """`'setup+'` -> `('setup', '+')`; a key without a rule suffix -> `(key, '')`."""
    if len(key) > 1 and key[-1] in SUFFIXES:
        return key[:-1], key[-1]
    return key, ""
