"""What people read: located errors with source excerpts, tables, resolved YAML.

Colour and box drawing only on a terminal (through rich, imported only then);
plain, stable text otherwise, so output can be piped, diffed and tested.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Collection, Iterable
from typing import Any, TextIO

from .errors import OrchcError, Problem
from .load import current_sources
from .source import Node, SourceLoc, Sources

# Plain only when no YAML reader can take it for anything but this string: no indicator first,
# no digit or sign first (numbers, dates, 1.1's sexagesimals), no word YAML 1.1 or 1.2 types.
_PLAIN_SCALAR = re.compile(r"[A-Za-z_$/][A-Za-z0-9_./$@%+=:-]*")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~", ""}
_YAML_ESCAPE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")
_LITERAL_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")
_COMMENT_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")


# A cell a spreadsheet would run as a formula (OWASP "CSV injection"): first character = + - @ tab or CR.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CSV_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def csv_cell(value: Any) -> str:
    """A CSV cell no spreadsheet runs: text that starts like a formula gets a leading `'` (shown, not run);
    a number (-3.5, -1e-05) stays a number, since a spreadsheet reads it as one and never as a formula, and so
    does orchc's "-" (nothing), which holds no formula."""
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START) and text != "-" and not _CSV_NUMBER.fullmatch(text):
        return "'" + text
    return text


def write_csv(rows: Iterable[Iterable[Any]], stream: TextIO | None = None) -> None:
    """Rows as CSV, every cell through `csv_cell`: every CSV orchc writes goes through here."""
    import csv

    csv.writer(stream or sys.stdout).writerows([csv_cell(value) for value in row] for row in rows)


# What must not reach a terminal raw: C0 and C1 controls (ESC starts CSI and OSC sequences: colours, cursor moves,
# clipboard writes, window titles), DEL, and the invisible marks that reorder or split what is shown.
_TERMINAL_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff]")


def terminal_text(text: Any, lines: bool = False) -> str:
    """Text from a run folder (results, run.json, manifest.json) as it may reach a terminal: every control
    character shown escaped, as Python writes it (ESC as \\x1b, U+202E as \\u202e); `lines`: a message of
    several lines keeps its line ends and tabs."""
    text = text if isinstance(text, str) else str(text)
    if text.isprintable():  # the usual case, checked in C: no control character, no invisible mark
        return text
    if lines:
        return "\n".join(_TERMINAL_UNSAFE.sub(_kept_tab, line) for line in text.split("\n"))
    return _TERMINAL_UNSAFE.sub(_escaped, text)


def _kept_tab(match: re.Match[str]) -> str:
    return "\t" if match.group() == "\t" else _escaped(match)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def json_text(value: Any, **options: Any) -> str:
    """JSON that any reader takes: NaN and infinities (which a results.json may hold, and Python's json writes as
    bare NaN/Infinity) become null; nesting too deep to write is an error, not a traceback."""
    from .errors import ClusterError

    try:
        return json.dumps(_finite_copy(value), allow_nan=False, **options)
    except RecursionError:
        raise ClusterError("the results are nested too deeply to write as JSON") from None


def _finite_copy(value: Any) -> Any:
    """`value` with every non-finite float replaced by None; iterative, so any depth the reader allowed is fine."""
    holder = [value]
    stack: list[tuple[Any, Any, Any]] = [(holder, 0, value)]
    while stack:
        parent, key, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            parent[key] = None
        elif isinstance(item, dict):
            parent[key] = mapping = dict(item)
            stack.extend((mapping, name, child) for name, child in mapping.items())
        elif isinstance(item, (list, tuple)):
            parent[key] = items = list(item)
            stack.extend((items, index, child) for index, child in enumerate(items))
    return holder[0]


def is_terminal(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


_COLUMN_LIMIT = 120
MAX_SHOWN = 50
"""Errors shown in full; the rest are counted ("... and N more errors")."""
_MESSAGE_LIMIT = 500
_LINE_WINDOW = 100
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
def _excerpt_lines(text: str) -> list[str]:
    """A file's lines as excerpts show them (split once per text by Sources.lines, so reporting many errors stays
    linear)."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines[-1] == "" and len(lines) > 1:
        lines.pop()
    return lines


def _visible(text: str) -> str:
    """Control characters shown as one visible character each, so columns stay put and nothing reaches the terminal."""
    return _UNPRINTABLE.sub(lambda m: chr(0x2400 + ord(m.group())) if m.group() < " " else "\ufffd", text)


def _display_line(sources: Sources, file: str, number: int, line: str) -> str:
    hidden = sources.concealed_from(file, number)
    if hidden is not None and hidden <= len(line):
        line = line[:hidden - 1] + "******"
    return line


def _caret_pad(prefix: str) -> str:
    """Blanks as wide on screen as `prefix`: tabs kept, wide characters two columns."""
    import unicodedata

    return "".join("\t" if c == "\t" else "  " if unicodedata.east_asian_width(c) in "WF" else " " for c in prefix)


def excerpt(loc: SourceLoc, sources: Sources, context: int = 1) -> list[str]:
    """The lines around `loc` with a caret under its column (long lines cut to a window around it)."""
    lines = sources.lines(loc.file, _excerpt_lines)
    if lines is None:
        return []
    lines = lines or [""]
    if loc.line > len(lines):
        loc = SourceLoc(loc.file, len(lines), len(lines[-1]) + 1)
    if loc.line < 1:
        return []
    first, last = max(1, loc.line - context), min(len(lines), loc.line + context)
    width = len(str(last))
    start = max(0, loc.col - 1 - _LINE_WINDOW // 2)
    out = []
    for number in range(first, last + 1):
        marker = ">" if number == loc.line else " "
        line = _display_line(sources, loc.file, number, lines[number - 1])
        shown = line[start:start + _LINE_WINDOW]
        shown = ("..." if start else "") + shown + ("..." if len(line) > start + _LINE_WINDOW else "")
        out.append(f" {marker} {number:>{width}} | {_visible(shown)}".rstrip())
        if number == loc.line:
            prefix = ("..." if start else "") + line[start:loc.col - 1]
            out.append(f"   {' ' * width} | {_caret_pad(_visible(prefix))}^")
    return out


def _clip(message: str) -> str:
    if len(message) > _MESSAGE_LIMIT:
        message = message[:_MESSAGE_LIMIT] + "…"
    return _visible(message.replace("\n", " "))


def format_problem(problem: Problem, sources: Sources) -> list[str]:
    lines = [_clip(problem.headline()), *excerpt(problem.loc, sources)]
    lines += [f"{_visible(str(loc))}: note: see here" for loc in problem.related if loc != problem.loc]
    return lines


def print_warning(loc: SourceLoc, message: str, stream: TextIO | None = None, sources: Sources | None = None) -> None:
    """`FILE:LINE:COL: warning: MESSAGE` and the source excerpt: something worth knowing that is not an error.
    `sources`: the texts of the compile session that found it (a recipe's `session.sources`)."""
    stream = stream or sys.stderr
    stream.write("\n".join([_clip(f"{loc}: warning: {message}"), *excerpt(loc, sources or current_sources())]) + "\n")


def print_error(error: OrchcError, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    count = len(error.problems)
    sources = error.sources or current_sources()   # the texts of the compile session the error left, if any
    text = [line for problem in error.problems[:MAX_SHOWN] for line in format_problem(problem, sources)]
    if count > MAX_SHOWN:
        text.append(f"... and {count - MAX_SHOWN} more errors")
    if count > 1:
        text.append(f"{count} errors")
    if is_terminal(stream):
        from rich.console import Console
        from rich.markup import escape

        console = Console(file=stream, highlight=False)
        for line in text:
            styled = escape(line).replace(": error:", ": [bold red]error:[/]", 1)
            console.print(styled, style="dim" if line.startswith(("  ", " >")) else None)
    else:
        stream.write("\n".join(text) + "\n")


def print_table(title: str, headers: list[str], rows: list[list[str]], stream: TextIO | None = None,
                keep: Collection[str] = ()) -> None:
    """A table: drawn by rich on a terminal (the columns named in `keep` never cut), else plain aligned text."""
    stream = stream or sys.stdout
    if is_terminal(stream):
        from rich.console import Console

        Console(file=stream).print(rich_table(title, headers, rows, keep))
        return
    stream.writelines(line + "\n" for line in plain_lines(headers, rows))


def plain_lines(headers: list[str], rows: list[list[str]]) -> list[str]:
    """The header line and a line per row, aligned in columns, control characters shown escaped."""
    headers = [terminal_text(header) for header in headers]
    rows = [[terminal_text(cell) for cell in row] for row in rows]
    # A column is as wide as its widest cell up to a limit: one long name overflows its row instead of padding all.
    widths = [min(max(len(x) for x in column), _COLUMN_LIMIT) for column in zip(headers, *rows, strict=True)]
    return ["  ".join([cell.ljust(width) for cell, width in zip(row, widths, strict=True)]).rstrip()
            for row in [headers, *rows]]


def rich_table(title: str, headers: list[str], rows: list[list[str]], keep: Collection[str] = ()) -> Any:
    """A rich table of plain text: no cell is read as rich markup, control characters shown escaped. A narrow
    terminal cuts the other columns before those named in `keep` (a job's name and state: `RUNN…` says nothing)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(terminal_text(title)), title_justify="left")
    for index, header in enumerate(headers):
        if header in keep:
            whole = max(len(terminal_text(text)) for text in [header, *(row[index] for row in rows)])
            table.add_column(Text(terminal_text(header)), no_wrap=True, min_width=min(whole, _COLUMN_LIMIT))
        else:
            table.add_column(Text(terminal_text(header)))
    for row in rows:
        table.add_row(*(Text(terminal_text(cell)) for cell in row))
    return table


def yaml_scalar(value: Any) -> str:
    """One value as YAML that reads back to the same value under YAML 1.2 and 1.1 readers alike."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _yaml_float(value)
    text = str(value)
    if _PLAIN_SCALAR.fullmatch(text) and not text.endswith(":") and text.lower() not in _YAML_WORDS:
        return text
    return _double_quoted(text)


def _yaml_float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "e" in text and "." not in text:  # YAML 1.1 reads 1e+20 as text
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def _double_quoted(text: str) -> str:
    """A double-quoted YAML scalar: JSON's escapes, plus the characters YAML must not see raw."""
    return _YAML_ESCAPE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(text, ensure_ascii=False))


def _literal_fits(text: str) -> bool:
    """Whether a block literal (`|` or `|-`) reads back exactly as `text`."""
    body = text[:-1] if text.endswith("\n") else text
    lines = body.split("\n")
    return (len(lines) > 1 and not _LITERAL_UNSAFE.search(text) and lines[0][:1] not in ("", " ", "\t")
            and lines[-1].strip(" \t") != "" and lines[-1][-1:] not in (" ", "\t"))


def _comment(text: str) -> str:
    return _COMMENT_UNSAFE.sub("?", text)


def yaml_lines(node: Node, annotate: Callable[[Node], str] | None = None, indent: int = 0) -> list[str]:
    """A resolved tree as YAML, optionally with `# origin` after each value."""
    pad = "  " * indent
    out: list[str] = []
    note = (lambda n: f"  # {_comment(annotate(n))}") if annotate else (lambda n: "")
    items = node.value.items() if isinstance(node.value, dict) else enumerate(node.value)
    for key, child in items:
        head = f"{pad}{yaml_scalar(key)}:" if isinstance(node.value, dict) else f"{pad}-"
        if isinstance(child.value, (dict, list)) and child.value:
            out.append(head)
            out.extend(yaml_lines(child, annotate, indent + 1))
        elif isinstance(child.value, (dict, list)):
            out.append(f"{head} {'{}' if isinstance(child.value, dict) else '[]'}{note(child)}")
        elif isinstance(child.value, str) and "\n" in child.value and _literal_fits(child.value):
            indicator = "|" if child.value.endswith("\n") else "|-"
            out.append(f"{head} {indicator}{note(child)}")
            body = child.value[:-1] if child.value.endswith("\n") else child.value
            out.extend(f"{pad}  {line}" if line else "" for line in body.split("\n"))
        else:
            out.append(f"{head} {yaml_scalar(child.value)}{note(child)}")
    return out


def cell(value: Any) -> str:
    """A result value as text, the way JSON writes it (true, false, null, 1.5), strings as they are."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
