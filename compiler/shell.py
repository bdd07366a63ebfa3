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


def in_double_quotes(value: Any, keep_variables: bool = False) -> Raw:
    """`value` as text that stays literal inside "...": \\ " $ and ` escaped."""
    return Raw(_map_pieces(text_value(value), keep_variables, lambda text: re.sub(r'([\\"$`])', r"\\\1", text),
                           lambda variable: variable))


def in_single_quotes(value: Any, keep_variables: bool = False) -> Raw:
    """`value` as text that stays literal inside '...': each ' closes, escapes and reopens."""
    return Raw(_map_pieces(text_value(value), keep_variables, lambda text: text.replace("'", "'\\''"),
                           lambda variable: f"'\"{variable}\"'"))


def _map_pieces(text: str, keep_variables: bool, literal: Any, variable: Any) -> str:
    if not keep_variables:
        return str(literal(text))
    out, last = [], 0
    for match in _VARIABLE.finditer(text):
        out += [literal(text[last:match.start()]), variable(match.group(0))]
        last = match.end()
    return "".join(out) + literal(text[last:])


_FILTER = {'"': "in_double_quotes", "'": "in_single_quotes"}


@lru_cache(maxsize=4096)
def requote(source: str) -> str:
    """A shell template whose `{{ }}` inside shell quotes escape for those quotes.

    Outside quotes a value is quoted as one shell word; inside "..." or '...' that
    quoting could not protect it, so such an expression gets the escaping of its
    quotes instead (`| path` there keeps its `$VAR` expansions, `| raw` stays raw).
    """
    out: list[str] = []
    quote, i, n = "", 0, len(source)
    while i < n:
        if source.startswith(("{%", "{##"), i):
            closer = "%}" if source[i + 1] == "%" else "##}"
            end = source.find(closer, i)
            stop = n if end < 0 else end + len(closer)
            out.append(source[i:stop])
            i = stop
            continue
        if source.startswith("{{", i):
            end = source.find("}}", i)
            stop = n if end < 0 else end + 2
            out.append(_requoted(source[i:stop], quote))
            i = stop
            continue
        char = source[i]
        if char == "\\" and quote != "'":
            out.append(source[i:i + 2])
            i += 2
            continue
        if not quote and char == "#" and (i == 0 or source[i - 1] in " \t\n;"):
            end = source.find("\n", i)
            stop = n if end < 0 else end
            out.append(source[i:stop])
            i = stop
            continue
        if char in "'\"" and quote in ("", char):
            quote = "" if quote else char
        out.append(char)
        i += 1
    return "".join(out)


def _requoted(tag: str, quote: str) -> str:
    expression = tag[2:-2].strip() if tag.endswith("}}") else ""
    if not quote or not expression or re.search(r"\|\s*raw\s*$", expression):
        return tag
    path = re.search(r"\|\s*path\s*$", expression)
    inner = expression[:path.start()] if path else expression
    return f"{{{{ ({inner}) | {_FILTER[quote]}({'true' if path else 'false'}) }}}}"
