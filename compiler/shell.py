"""Quoting for the shell: how text orchc builds reaches a command line as one literal word."""

from __future__ import annotations

import json
import re
import shlex
from functools import lru_cache
from typing import Any

_VARIABLE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")


class Raw(str):
    """Text that already is shell code built by orchc (or opted into with `| raw`): written as it is."""


@lru_cache(maxsize=8192)  # a pure function of its text, asked again for every job of a recipe
def shell_word(text: str) -> str:
    """One shell word for `text`: `$VAR`/`${VAR}` still expand (quoted), everything else is literal."""
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



def text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def excerpt_of(text: str, limit: int = 60) -> str:
    """At most `limit` characters of a value, for messages (a 5 MB value must not fill the terminal)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"
