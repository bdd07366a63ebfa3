"""What people read: located errors with source excerpts, tables, resolved YAML.

Colour and box drawing only on a terminal (through rich, imported only then);
plain, stable text otherwise, so output can be piped, diffed and tested.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any, TextIO

from .errors import OrchcError, Problem
from .load import source_text
from .source import Node, SourceLoc

_PLAIN_SCALAR = re.compile(r"^[A-Za-z0-9_./$@%+-][A-Za-z0-9_./$@%+:, -]*$")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "~", ""}


def is_terminal(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def excerpt(loc: SourceLoc, context: int = 1) -> list[str]:
    """The lines around `loc` with a caret under its column."""
    text = source_text(loc.file)
    if text is None:
        return []
    lines = text.splitlines() or [""]
    if loc.line > len(lines):
        loc = SourceLoc(loc.file, len(lines), len(lines[-1]) + 1)
    if loc.line < 1:
        return []
    first, last = max(1, loc.line - context), min(len(lines), loc.line + context)
    width = len(str(last))
    out = []
    for number in range(first, last + 1):
        marker = ">" if number == loc.line else " "
        out.append(f" {marker} {number:>{width}} | {lines[number - 1]}")
        if number == loc.line:
            out.append(f"   {' ' * width} | {' ' * (loc.col - 1)}^")
    return out


def format_problem(problem: Problem) -> list[str]:
    lines = [problem.headline(), *excerpt(problem.loc)]
    lines += [f"{loc}: note: see here" for loc in problem.related if loc != problem.loc]
    return lines


def print_error(error: OrchcError, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    count = len(error.problems)
    text = [line for problem in error.problems for line in format_problem(problem)]
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


def print_table(title: str, headers: list[str], rows: list[list[str]], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if is_terminal(stream):
        from rich.console import Console

        Console(file=stream).print(rich_table(title, headers, rows))
        return
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        stream.write("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")


def rich_table(title: str, headers: list[str], rows: list[list[str]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*row)
    return table


def yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if _PLAIN_SCALAR.match(text) and text.lower() not in _YAML_WORDS and not _looks_numeric(text) \
            and not text.endswith(" ") and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def yaml_lines(node: Node, annotate: Callable[[Node], str] | None = None, indent: int = 0) -> list[str]:
    """A resolved tree as YAML, optionally with `# origin` after each value."""
    pad = "  " * indent
    out: list[str] = []
    note = (lambda n: f"  # {annotate(n)}") if annotate else (lambda n: "")
    items = node.value.items() if isinstance(node.value, dict) else enumerate(node.value)
    for key, child in items:
        head = f"{pad}{key}:" if isinstance(node.value, dict) else f"{pad}-"
        if isinstance(child.value, (dict, list)) and child.value:
            out.append(head)
            out.extend(yaml_lines(child, annotate, indent + 1))
        elif isinstance(child.value, (dict, list)):
            out.append(f"{head} {'{}' if isinstance(child.value, dict) else '[]'}{note(child)}")
        elif isinstance(child.value, str) and "\n" in child.value:
            indicator = "|" if child.value.endswith("\n") else "|-"
            out.append(f"{head} {indicator}{note(child)}")
            out.extend(f"{pad}  {line}" if line else "" for line in child.value.rstrip("\n").split("\n"))
        else:
            out.append(f"{head} {yaml_scalar(child.value)}{note(child)}")
    return out
