"""Quoting for the shell: how values reach a command line without becoming code."""

from __future__ import annotations

import json
import re
import shlex
from functools import lru_cache
from typing import Any

_VARIABLE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")


class Raw(str):
    """Text that already is shell code: passes the shell environment's quoting untouched."""


def shell_word(text: str) -> str:
    """One shell word for `text`: `$VAR`/`${VAR}` still expand, everything else is literal."""
    if not text:
        return "''"
    out, last = [], 0
    for match in _VARIABLE.finditer(text):
        if match.start() > last:
            out.append(shlex.quote(text[last:match.start()]))
        out.append(f'"{match.group(0)}"')
        last = match.end()
    if last < len(text):
        out.append(shlex.quote(text[last:]))
    return "".join(out)


def shell_value(value: Any) -> str:
    if isinstance(value, Raw):
        return value
    return shlex.quote(text_value(value))


def text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


_SOURCES: dict[str, str] = {}


@lru_cache(maxsize=4096)
def quoted_expressions(source: str) -> tuple[str, ...]:
    """The `{{ }}` expressions of a shell template that stand inside shell quotes.

    Inside quotes the automatic quoting of a value cannot protect it (a value that
    closes the quote would run as code), so such a template is refused unless the
    expression ends in `| raw`, the author's statement that its pattern makes it safe.
    """
    found: list[str] = []
    quote, i, n = "", 0, len(source)
    while i < n:
        if source.startswith(("{%", "{##"), i):
            end = source.find("%}" if source[i + 1] == "%" else "##}", i)
            i = n if end < 0 else end + 2
            continue
        if source.startswith("{{", i):
            end = source.find("}}", i)
            expression = source[i + 2:n if end < 0 else end].strip()
            if quote and not re.search(r"\|\s*raw$", expression):
                found.append(expression)
            i = n if end < 0 else end + 2
            continue
        char = source[i]
        if char == "\\" and quote != "'":
            i += 2
            continue
        if not quote and char == "#" and (i == 0 or source[i - 1] in " \t\n;"):
            end = source.find("\n", i)
            i = n if end < 0 else end
            continue
        if char in "'\"" and quote in ("", char):
            quote = "" if quote else char
        i += 1
    return tuple(found)
