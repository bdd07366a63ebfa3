"""Quoting for the shell: how text orchc builds reaches a command line as one literal word."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

_VARIABLE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")

# Variables whose value bash (or the dynamic loader, or a child bash) reads as code, a path to run or a name.
SPECIAL_VARIABLES = frozenset({
    "PS0", "PS1", "PS2", "PS3", "PS4", "PROMPT_COMMAND", "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "IFS", "PATH",
    "CDPATH", "GLOBIGNORE", "EXECIGNORE", "BASH_LOADABLES_PATH", "BASH_XTRACEFD", "BASH_COMPAT", "FUNCNEST",
    "HISTFILE", "INPUTRC", "MAILPATH", "TMOUT", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONSTARTUP",
    "PYTHONPATH", "PYTHONHOME", "PERL5OPT", "PERL5LIB", "RUBYOPT", "NODE_OPTIONS", "SHELL", "TERMINFO", "LOCPATH",
    "GCONV_PATH"
})


def special_variable(name: str) -> bool:
    """Whether bash, the dynamic loader or an interpreter reads the variable `name` as code, a path or a name."""
    return name in SPECIAL_VARIABLES or name.startswith("BASH_FUNC_")


class Raw(str):
    """Text that already is shell code built by orchc: written as it is."""


class SiteCode(Raw):
    """Code built by orchc that differs from site to site (`{{ run }}`): the shell lexer judges a line with a
    placeholder in its place, so a type gets the same verdict under every site profile."""


def shell_word(text: str) -> str:
    """One shell word for `text`: `$VAR`/`${VAR}` still expand (quoted), everything else is literal."""
    if "$" not in text:   # most words (no memo: one would grow with the values of every compile of a process)
        return shlex.quote(text)
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
