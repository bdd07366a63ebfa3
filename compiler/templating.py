"""The Jinja2 side of rendering: strict environments built once, compiled templates cached.

Two environments for the strings of type definitions and recipes:
- `shell`: shell lines and commands. Every `{{ value }}` is quoted for the shell on
  output (safe by default); `| raw` opts out for trusted shell code, `| path` keeps
  `$VAR` expansions while quoting everything else.
- `text`: file contents written through quoted here-documents, which the shell does
  not interpret.
A third, `script`, renders the job template of `templates/`. A template error names
the type file and line that holds the template.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from . import __version__
from .errors import OrchcError
from .load import source_text
from .resources import templates_dir
from .shell import Raw, in_double_quotes, in_single_quotes, requote, shell_value, shell_word, text_value
from .source import Node, SourceLoc

PLACEHOLDER = re.compile(r"@ORCHC_HOST:([A-Za-z0-9][A-Za-z0-9_.-]*)@")

_SOURCES: dict[str, str] = {}


def _bytecode_cache() -> Any:
    """Jinja's on-disk cache of compiled templates (like .pyc files): start-up stays fast.

    Keyed by each template's checksum, so a changed type file never reuses stale code.
    ORCHC_NO_CACHE=1 turns it off; an unwritable cache folder silently does too.
    """
    from jinja2 import FileSystemBytecodeCache

    class QuietCache(FileSystemBytecodeCache):
        """A cache that cannot be read or written is no cache, not an error."""

        def load_bytecode(self, bucket: Any) -> None:
            try:
                super().load_bytecode(bucket)
            except (OSError, EOFError, ValueError):
                bucket.reset()

        def dump_bytecode(self, bucket: Any) -> None:
            try:
                super().dump_bytecode(bucket)
            except OSError:
                pass

    if os.environ.get("ORCHC_NO_CACHE"):
        return None
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = base / "orchc" / f"templates-{__version__}"
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # RuntimeError: no home directory to be found
        return None
    return QuietCache(str(folder))


@cache
def environment(kind: str) -> Any:
    from jinja2 import (
        ChoiceLoader,
        Environment,
        FileSystemLoader,
        FunctionLoader,
        StrictUndefined,
        pass_context,
    )

    strings = FunctionLoader(lambda name: (_SOURCES[name], None, lambda: True) if name in _SOURCES else None)
    env = Environment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
        comment_start_string="{##",  # so shell's ${#array[@]} is not a Jinja comment
        comment_end_string="##}",
        finalize={"shell": shell_value, "text": text_value, "script": None}[kind],
        loader=ChoiceLoader([FileSystemLoader(str(templates_dir())), strings]) if kind == "script" else strings,
        bytecode_cache=_bytecode_cache(),
        auto_reload=False,
    )
    env.filters["raw"] = lambda value: Raw(text_value(value))
    env.filters["path"] = lambda value: Raw(shell_word(text_value(value)))
    env.filters["json"] = lambda value: json.dumps(value, sort_keys=True)
    env.filters["in_double_quotes"] = in_double_quotes
    env.filters["in_single_quotes"] = in_single_quotes
    env.filters["hosts"] = pass_context(_hosts_filter)
    return env


def _hosts_filter(context: Any, value: Any) -> Any:
    """`host:port`s or URLs whose host names a job of the recipe -> placeholders filled in at run time.

    A service's node is only known once it runs: the file is written with
    `@ORCHC_HOST:<job>@` and `orchc_fill_hosts` puts in the host that job publishes.
    """
    if isinstance(value, list):
        return [_hosts_filter(context, item) for item in value]
    text = str(value)
    host = re.split(r"[:/]", text.split("://", 1)[-1], maxsplit=1)[0]
    if host not in context.get("jobs", ()):
        return value
    replacement = "localhost" if host == context["job"]["name"] else f"@ORCHC_HOST:{host}@"
    return text.replace(host, replacement, 1)


@lru_cache(maxsize=4096)
def _compiled(kind: str, source: str) -> Any:
    env = environment(kind)
    name = f"{kind}-{hashlib.sha1(source.encode()).hexdigest()}"
    _SOURCES[name] = requote(source) if kind == "shell" else source
    return env.get_template(name)


@lru_cache(maxsize=4096)
def _names_read(kind: str, source: str) -> tuple[str, ...]:
    from jinja2 import meta

    return tuple(sorted(meta.find_undeclared_variables(environment(kind).parse(requote(source) if kind == "shell" else source))))


_RENDERED: dict[tuple[str, str, str], str] = {}
_SEEN: set[tuple[str, str]] = set()


def render_string(node: Node, context: dict[str, Any], kind: str = "shell") -> str:
    """Render one template string of a type or recipe, errors located at the string.

    Output depends only on the values the template reads, so from its second use on a
    string's output is memoized on them: a batch of similar jobs renders each line once.
    """
    from jinja2 import TemplateError, TemplateSyntaxError

    source = str(node.value)
    try:
        template = _compiled(kind, source)
        if (kind, source) not in _SEEN:
            _SEEN.add((kind, source))
            return template.render(context)
        values = [(name, type(context.get(name)), context.get(name)) for name in _names_read(kind, source)]
        key = (kind, source, repr(values))
        if key not in _RENDERED:
            _RENDERED[key] = template.render(context)
        return _RENDERED[key]
    except TemplateSyntaxError as exc:
        raise OrchcError.at(_line_in_template(node, exc.lineno), f"template syntax error: {exc.message}") from None
    except TemplateError as exc:
        raise OrchcError.at(_line_in_template(node, _failing_line(exc)), f"template error: {exc.message}") from None


def _failing_line(exc: BaseException) -> int:
    """The template line an error was raised at (Jinja maps its frames to template lines)."""
    line, tb = 1, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _line_in_template(node: Node, line: int) -> SourceLoc:
    """Where line `line` of a template string stands in its YAML file."""
    if line <= 1 and "\n" not in str(node.value):
        return node.loc
    text = source_text(node.loc.file)
    lines = text.splitlines() if text else []
    opener = lines[node.loc.line - 1][node.loc.col - 1:] if 0 < node.loc.line <= len(lines) else ""
    target = node.loc.line + line if opener[:1] in ("|", ">") else node.loc.line + line - 1
    if not 0 < target <= len(lines):
        return node.loc
    content = lines[target - 1]
    return SourceLoc(node.loc.file, target, len(content) - len(content.lstrip()) + 1)
