"""Stage 4, render: a resolved job -> the text of its sbatch script.

Two strict Jinja environments, built once per process:
- `shell`: for shell lines and commands. Every `{{ value }}` is quoted for the
  shell on output (safe by default); `| raw` opts out for trusted shell code and
  `| path` keeps `$VAR` expansions while quoting everything else.
- `text`: for file contents written through quoted here-documents, which the
  shell does not interpret.
A template error names the type file and line that holds the template.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from functools import cache, lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .directives import directives
from .errors import OrchcError
from .load import source_text
from .resolve import Job, Recipe
from .resources import templates_dir
from .source import Node, SourceLoc

_PLACEHOLDER = re.compile(r"@ORCHC_HOST:([A-Za-z0-9][A-Za-z0-9_.-]*)@")
_VARIABLE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")
PHASE_ORDER = {"service": ("setup", "health_check"), "client": ("setup", "health_check", "benchmark", "results")}


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


def _shell_finalize(value: Any) -> str:
    if isinstance(value, Raw):
        return value
    return shlex.quote(_text_finalize(value))


def _text_finalize(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


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
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "orchc" / f"templates-{__version__}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return QuietCache(str(folder))


@cache
def _environment(kind: str) -> Any:
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
        finalize={"shell": _shell_finalize, "text": _text_finalize, "script": None}[kind],
        loader=ChoiceLoader([FileSystemLoader(str(templates_dir())), strings]) if kind == "script" else strings,
        bytecode_cache=_bytecode_cache(),
        auto_reload=False,
    )
    env.filters["raw"] = lambda value: Raw(_text_finalize(value))
    env.filters["path"] = lambda value: Raw(shell_word(_text_finalize(value)))
    env.filters["json"] = lambda value: json.dumps(value, sort_keys=True)
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
    parts = urlsplit(text if "://" in text else f"tcp://{text}")
    host = parts.hostname or ""
    if host not in context.get("jobs", ()):
        return value
    replacement = "localhost" if host == context["job"]["name"] else f"@ORCHC_HOST:{host}@"
    return text.replace(host, replacement, 1)


@lru_cache(maxsize=4096)
def _compiled(kind: str, source: str) -> Any:
    env = _environment(kind)
    name = f"{kind}-{hashlib.sha1(source.encode()).hexdigest()}"
    _SOURCES[name] = source
    return env.get_template(name)


@lru_cache(maxsize=4096)
def _names_read(kind: str, source: str) -> tuple[str, ...]:
    from jinja2 import meta

    return tuple(sorted(meta.find_undeclared_variables(_environment(kind).parse(source))))


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


_RENDERED: dict[tuple[str, str, str], str] = {}
_SEEN: set[tuple[str, str]] = set()


def render_string(node: Node, context: dict[str, Any], kind: str = "shell") -> str:
    """Render one template string of a type or recipe, errors located at the string.

    Output depends only on the values the template reads, so from its second use on a
    string's output is memoized on them: a batch of similar jobs renders each line once.
    """
    from jinja2 import TemplateError, TemplateSyntaxError

    source = str(node.value)
    quoted = quoted_expressions(source) if kind == "shell" else ()
    if quoted:
        raise OrchcError.at(node.loc, f"{{{{ {quoted[0]} }}}} stands inside shell quotes, where its automatic quoting "
                            "cannot protect it: remove the quotes around it (values are quoted for you), or end it "
                            "with | raw if its schema pattern makes it safe")
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


def render_job(job: Job, recipe: Recipe) -> str:
    context = _context(job, recipe)
    parts: dict[str, Any] = {
        "directives": directives(job.name, job.job_id, job.data.get("resources", {})),
        "modules": recipe.site.modules,
        "environment": [f"export {k}={shlex.quote(_text_finalize(v))}" for k, v in sorted(job.data.get("environment", {}).items())],
        "secrets": [_secret_line(name, job.data[name]) for name in sorted(job.typedef.secrets) if name in job.data],
        "images": _image_lines(job, recipe, context),
        "sidecars": _sidecar_lines(job, recipe, context),
        "service_command": _service_command(job, recipe, context),
        "phases": {phase: _phase_lines(job, phase, context) for phase in PHASE_ORDER[job.role]},
        "target": _target_lines(job, recipe) if job.role == "client" else [],
        "clients": [c.name for c in recipe.jobs if c.role == "client" and c.data.get("target") == job.name],
    }
    parts["fills_hosts"] = any(line.startswith("orchc_fill_hosts ") for lines in parts["phases"].values() for line in lines)
    template = _environment("script").get_template("job.sbatch.j2")
    return template.render(job=job, recipe=recipe, site=recipe.site, **parts)


def _context(job: Job, recipe: Recipe) -> dict[str, Any]:
    context: dict[str, Any] = {name: None for name in job.typedef.fields}
    context.update(job.data)
    context.update(
        job={"name": job.name, "id": job.job_id, "type": job.typedef.name, "role": job.role},
        recipe=recipe.name,
        jobs=[other.name for other in recipe.jobs],
        site={"name": recipe.site.name, "runtime": recipe.site.runtime},
    )
    container = job.data.get("container")
    assignments, words = _exec_parts(job, container, recipe, context) if container else ([], [])
    context["run"] = Raw(" ".join([*assignments, *words]))
    return context


def _image_path(image: str, recipe: Recipe) -> str:
    return shell_word(f"{recipe.site.image_dir}/{image}.sif")


def _containers(job: Job, context: dict[str, Any]) -> list[tuple[Node, dict[str, Any]]]:
    """(node, plain) of the job's main container and of each sidecar that is switched on."""
    found = []
    if job.data.get("container"):
        found.append((job.node.at(("container",)), job.data["container"]))
    for name, sidecar in sorted(job.data.get("sidecars", {}).items()):
        if not sidecar.get("when") or context.get(sidecar["when"]):
            found.append((job.node.at(("sidecars", name, "container")), sidecar["container"]))
    return found


def _image_lines(job: Job, recipe: Recipe, context: dict[str, Any]) -> list[str]:
    if recipe.site.runtime != "apptainer":
        return []
    lines = []
    for node, container in _containers(job, context):
        if not container.get("image"):
            continue
        source = container.get("source")
        if not source:
            raise OrchcError.at(node.loc, f"container image '{container['image']}' needs a `source` to build it from")
        lines.append(f"orchc_image {_image_path(container['image'], recipe)} {shlex.quote(source)}")
    return sorted(set(lines), key=lines.index)


def _exec_parts(job: Job, container: dict[str, Any], recipe: Recipe, context: dict[str, Any],
                node: Node | None = None) -> tuple[list[str], list[str]]:
    """(environment assignments, command words) that run a program in `container`."""
    node = node or job.node.at(("container",))
    env = [(k, shell_word(render_string(node.at(("env", k)), context, "text"))) for k in sorted(container.get("env", {}))]
    if recipe.site.runtime != "apptainer" or not container.get("image"):
        return [f"{k}={v}" for k, v in env], []
    # Values that expand variables (secrets among them) travel in apptainer's environment,
    # not on its command line, where `ps` would show them to everyone on the node.
    assignments = [f"APPTAINERENV_{k}={v}" for k, v in env if "$" in v]
    words = ["apptainer", "exec"]
    if container.get("gpu"):
        words.append("--nv")
    for index, _ in enumerate(container.get("binds", ())):
        words += ["--bind", shell_word(render_string(node.at(("binds", index)), context, "text"))]
    words += [f"--env {k}={v}" for k, v in env if "$" not in v]
    words.append(_image_path(container["image"], recipe))
    return assignments, words


def _start_line(job: Job, node: Node, container: dict[str, Any], recipe: Recipe, context: dict[str, Any]) -> str:
    """The command that starts a container in the background, in a process group of its own."""
    if not container.get("command"):
        raise OrchcError.at(node.loc, f"{job.role} '{job.name}': the container has no `command` to start")
    assignments, words = _exec_parts(job, container, recipe, context, node)
    command = render_string(node.at(("command",)), context)
    return " ".join([*assignments, "setsid", *words, command, "&"])


def _sidecar_lines(job: Job, recipe: Recipe, context: dict[str, Any]) -> list[str]:
    if job.role != "service":
        return []
    sidecars = _containers(job, context)[1 if job.data.get("container") else 0:]
    return [_start_line(job, node, container, recipe, context) for node, container in sidecars]


def _service_command(job: Job, recipe: Recipe, context: dict[str, Any]) -> str:
    if job.role != "service":
        return ""
    if not job.data.get("container"):
        raise OrchcError.at(job.node.loc, f"service '{job.name}' has no container to start")
    return _start_line(job, job.node.at(("container",)), job.data["container"], recipe, context)


def _phase_lines(job: Job, phase: str, context: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    items = job.node.at(("phases", phase))
    if not isinstance(items.value, list) or phase not in job.data.get("phases", {}):
        return lines
    for item in items.value:
        if isinstance(item.value, dict):
            lines.extend(_file_block(item, context))
        else:
            lines.append(render_string(item, context).strip())
    return [line for line in lines if line]


def _file_block(item: Node, context: dict[str, Any]) -> list[str]:
    """A file written by a quoted here-document, so the shell never interprets its content."""
    path = render_string(item.at(("file",)), context, "text")
    content = render_string(item.at(("content",)), context, "text").rstrip("\n")
    delimiter = "ORCHC_EOF"
    while delimiter in content.splitlines():
        delimiter += "_"
    lines = [f"mkdir -p \"$(dirname {shell_word(path)})\"", f"cat > {shell_word(path)} <<'{delimiter}'", content, delimiter]
    hosts = sorted(set(_PLACEHOLDER.findall(content)))
    if hosts:
        lines.append(f"orchc_fill_hosts {shell_word(path)} {' '.join(hosts)}")
    mode = item.value.get("mode")
    if mode is not None:
        lines.append(f"chmod {mode.value} {shell_word(path)}")
    return lines


def _secret_line(name: str, ref: dict[str, str]) -> str:
    variable = name.upper()
    if "env" in ref:
        return f'{variable}="${{{ref["env"]}:?orchc: environment variable {ref["env"]} (secret {name}) is not set}}"'
    return f"{variable}=$(orchc_secret_file {shell_word(ref['file'])})"


def _target_lines(job: Job, recipe: Recipe) -> list[str]:
    data = job.data
    timeout = int(data.get("target_timeout", 600))
    if data.get("target"):
        return [f"orchc_wait_endpoint {shlex.quote(data['target'])} {timeout}"]
    port = data.get("target_port")
    if data.get("target_service_id"):
        return [f"TARGET_HOST=$(orchc_job_host {shlex.quote(str(data['target_service_id']))} {timeout})",
                f"TARGET_PORT={shlex.quote(str(port or ''))}"]
    host, endpoint_port = split_endpoint(str(data["target_endpoint"]))
    return [f"TARGET_HOST={shlex.quote(host)}", f"TARGET_PORT={shlex.quote(str(endpoint_port or port or ''))}"]


def split_endpoint(endpoint: str) -> tuple[str, int | None]:
    """`host:port` or a URL -> (host, port or None)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"tcp://{endpoint}")
    return parts.hostname or "", parts.port
