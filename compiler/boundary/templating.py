"""The Jinja2 side of rendering: sandboxed, strict environments, and how values reach the shell.

Three environments, all `ImmutableSandboxedEnvironment`s (a type file cannot reach
Python: `__globals__`, `__class__`, `mro`, ... are refused and reported at the type
file's line) with `StrictUndefined`:
- `shell`: shell lines and container commands. Each `{{ value }}` becomes a
  placeholder; the rendered text is lexed as bash (`shellscan`) and each value is
  then written for the context it stands in (`ShellValues.write`), or refused.
- `text`: file contents, written through quoted here-documents (never interpreted).
- `script`: the job template of `templates/`, which fails closed: it prints only
  code built by orchc (`Raw`), integers and plain words; anything else is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import OrchcError, did_you_mean
from ..core.load import current_sources
from ..core.paths import templates_dir
from ..core.session import CompileSession
from ..core.source import FrozenDict, Node, SourceLoc
from .commands import IDIOM
from .quote import Raw, SiteCode, excerpt_of, shell_word, text_value
from .scan import MARK, RUN_MARK, ScanError, Use, scan

SAFE_WORD = re.compile(r"[A-Za-z0-9_./:@%+-]+")
"""Text that means the same, unquoted, in every shell context: written as it is."""

_SOURCES: dict[str, str] = {}
"""The source of a template while the environment compiles it (see _compiled): empty between compiles."""
_SINK: list[Any] = []
_HOSTS: list[str] = []
"""What the render under way collected (the values of its placeholders, the hosts it filled in): emptied after each."""
_MAX_REPEAT = 1 << 20
_CODE_FORMAT = 4
"""Bumped whenever the environments change how templates compile, so no stale cached code is used."""
_JINJA_SYNTAX = re.compile(r"\{[{%]|\{##")


class PathValue(str):
    """A value whose `$VAR`s expand when the job runs (the `| path` filter)."""


AUTO_PORT = "auto"
"""A port field's value that has the job choose a free port as it starts (runtime.sh, orchc_ports)."""


def port_variable(name: str) -> str:
    """The shell variable of the job that holds the port chosen for port field `name` (ports_0 for ports[0])."""
    return f"ORCHC_PORT_{name}"


def port_placeholder(token: str, name: str) -> str:
    return f"@ORCHC_PORT_{token}:{name}@"


PORT_PLACEHOLDER = re.compile(r"@ORCHC_PORT_([0-9a-f]+):([a-z][a-z0-9_]*)@")


class PortRef(str):
    """A port the job chooses as it starts (`auto`), made by orchc only, never from a value's text: in a shell line it
    is written as a reference to the job's variable ("${ORCHC_PORT_ports_0}"); in text (a file, an env: value) it is a
    placeholder carrying the job's token (like the hosts'), which the job fills in (orchc_fill_ports), so no value can
    forge one."""

    variable: str

    def __new__(cls, token: str, name: str) -> PortRef:
        ref = super().__new__(cls, port_placeholder(token, name))
        ref.variable = port_variable(name)
        return ref


def _bytecode_cache(kind: str) -> Any:
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
        # One folder per environment: sandboxed and plain code compiled from the same text differ.
        folder = base / "orchc" / f"templates-{__version__}-{_CODE_FORMAT}-{kind}"
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # RuntimeError: no home directory to be found
        return None
    return QuietCache(str(folder))


def _placeholder(context: Any, value: Any) -> str:
    """The shell environment's output filter. It takes the context only so that Jinja never
    evaluates it at compile time for a constant expression: each render numbers its own values."""
    if isinstance(value, SiteCode):
        return RUN_MARK
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, _undefined()):
        str(value)  # StrictUndefined: raises here, inside the render, where the error is located
    _SINK.append(value)
    return f"{MARK}{len(_SINK) - 1}{MARK}"


@cache
def _macro() -> type:
    from jinja2.runtime import Macro

    return Macro


@cache
def _undefined() -> type:
    from jinja2 import Undefined

    return Undefined


def _script_value(value: Any) -> str:
    """The job template's output filter: fail closed."""
    if isinstance(value, Raw) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    if isinstance(value, str) and SAFE_WORD.fullmatch(value):
        return value
    raise ValueError(f"the job template would write {excerpt_of(text_value(value))!r}, which is neither code built by orchc "
                     "nor a plain word")


def _script_lines(lines: Any) -> Raw:
    """A list of the job template's lines as one block, each through the output filter (fail closed)."""
    return Raw("\n".join(_script_value(line) for line in lines))


@cache   # three environments, process-wide: orchc's own; Jinja's cache in each keeps at most 400 templates
def environment(kind: str) -> Any:
    from jinja2 import ChoiceLoader, Environment, FileSystemLoader, FunctionLoader, StrictUndefined, pass_context
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        """No Python internals, and no string or number blown up to exhaust memory or time (see _Budget)."""

        intercepted_binops = frozenset(["*", "**", "%", "+"])

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _BUDGET.step()
            if operator == "**" and isinstance(right, int) and abs(right) > 64:
                raise OverflowError("an exponent over 64")
            _check_binop(operator, left, right)
            return _BUDGET.made(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # Jinja's names: no clash with a keyword argument
            _BUDGET.step(_MACRO_STEPS if isinstance(__obj, _macro()) else 1)
            args = _checked_call(__obj, args)
            return _BUDGET.made(super().call(__context, __obj, *args, **kwargs))

        def _parse(self, source: str, name: str | None, filename: str | None) -> Any:
            return _counting().visit(super()._parse(source, name, filename))

    strings = FunctionLoader(lambda name: (_SOURCES[name], None, lambda: True) if name in _SOURCES else None)
    # The job template is orchc's own code: it needs no sandbox, only its fail-closed output filter.
    env = (Environment if kind == "script" else Sandbox)(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
        comment_start_string="{##",  # so shell's ${#array[@]} is not a Jinja comment
        comment_end_string="##}",
        finalize=_FINALIZE[kind] if kind != "shell" else pass_context(_placeholder),
        loader=ChoiceLoader([FileSystemLoader(str(templates_dir())), strings]) if kind == "script" else strings,
        bytecode_cache=_bytecode_cache(kind),
        auto_reload=False,
    )
    if kind != "script":
        _bound_filters(env)
    env.globals.pop("lipsum", None)  # random text: output must depend on the input only
    env.filters.pop("random", None)
    env.filters["path"] = lambda value: PathValue(text_value(value))
    env.filters["json"] = lambda value: json.dumps(value, sort_keys=True)
    env.filters["hosts"] = pass_context(_hosts_filter)
    if kind == "script":  # orchc's own job template: these write code, so a type's template cannot have them
        env.filters["lines"] = _script_lines
        env.filters["comment"] = lambda value: Raw("".join(c if c.isprintable() else "?" for c in text_value(value)))
    else:
        env.filters["raw"] = _no_raw
    return env


def _no_raw(value: Any) -> Any:
    raise ValueError("'| raw' is not available: a value is never written as shell code; pass it as data (it is "
                     "quoted for where it stands), or in the environment (the type's `env:`)")


_UNSAFE_NAMES = {"self", "lipsum", "cycler", "joiner", "namespace"}
_UNSAFE_ATTRIBUTES = {"format", "format_map", "mro", "gi_frame", "gi_code", "cr_frame", "f_globals", "f_locals",
                      "func_globals", "func_code"}


def python_reaches(node: Node) -> list[tuple[SourceLoc, str]]:
    """Where a template string reaches for Python internals, found without rendering it.

    The sandbox refuses these when a template renders; this finds them in every template
    of a type when the type is loaded, so that `orchc show` and `orchc types`, which render
    nothing, refuse a type that carries one too.
    """
    from jinja2 import TemplateSyntaxError, nodes
    from jinja2.nodes import Impossible

    source = str(node.value)
    if not _JINJA_SYNTAX.search(source):
        return []
    try:
        tree = environment("shell").parse(source)
    except TemplateSyntaxError as exc:
        return [(_line_in_template(node, exc.lineno or 1), f"template syntax error: {exc.message}")]
    # Another template is reachable by the name it was compiled under: what it prints would depend on what this
    # process compiled before, and the names it reads are not this template's (the render cache keys on those).
    found = [(_line_in_template(node, item.lineno), "a template cannot include, import or extend another template")
             for item in tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends))]
    for item in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name, nodes.Filter)):
        name = None
        if isinstance(item, nodes.Getattr):
            name = item.attr
        elif isinstance(item, nodes.Getitem):
            try:
                name = item.arg.as_const()
            except (Impossible, Exception):  # a subscript computed at render time: the sandbox checks it then
                name = None
        elif isinstance(item, nodes.Name) and item.ctx == "load" and item.name in _UNSAFE_NAMES:
            name = item.name
        elif isinstance(item, nodes.Filter) and item.name == "attr":
            name = "attr"
        if isinstance(name, str) and (name.startswith("_") or name in _UNSAFE_ATTRIBUTES or
                                      (isinstance(item, (nodes.Name, nodes.Filter)))):
            found.append((_line_in_template(node, item.lineno),
                          f"template reaches for Python internals ({name!r}), which templates may not use"))
    return found


_FINALIZE: dict[str, Callable[[Any], str]] = {"text": lambda value: _BUDGET.made(text_value(value)), "script": _script_value}


def host_placeholder(token: str, job: str) -> str:
    return f"@ORCHC_HOST_{token}:{job}@"


def _hosts_filter(context: Any, value: Any) -> Any:
    """`host:port`s or URLs whose host names a job of the recipe -> placeholders filled in at run time.

    A service's node is only known once it runs: the file is written with a
    placeholder and `orchc_fill_hosts` puts in the host that job publishes. The
    placeholder carries a token hashed from the whole job, so no value can forge one.
    """
    if isinstance(value, list):
        return [_hosts_filter(context, item) for item in value]
    text = str(value)
    host = re.split(r"[:/]", text.split("://", 1)[-1], maxsplit=1)[0]
    if host not in context.get("jobs", ()):
        return value
    if host == context["job"]["name"]:
        return text.replace(host, "localhost", 1)
    _HOSTS.append(host)
    return text.replace(host, host_placeholder(context["job"]["hosts_token"], host), 1)


def _compiled(kind: str, source: str, session: CompileSession) -> Any:
    """The template compiled once per session; the environment's own cache (400 templates, its default) and its
    on-disk bytecode cache keep it across sessions. Its source is with the loader only while it compiles."""
    known = session.templates.get((kind, source))
    if known is None:
        name = f"{kind}-{hashlib.sha1(source.encode()).hexdigest()}"
        _SOURCES[name] = source
        try:
            known = session.templates[(kind, source)] = environment(kind).get_template(name)
        finally:
            del _SOURCES[name]
    return known


def _render(node: Node, context: dict[str, Any], kind: str, session: CompileSession) -> tuple[str, tuple[Any, ...]]:
    """(text, what the render collected: the values of placeholders, or the hosts filled in).

    A render depends only on the values of the names its template reads (plus the job and
    the recipe's jobs when it uses the `hosts` filter, which reads them itself), so a batch
    of similar jobs renders each template once per distinct set of those values. In a shell
    template, a value that is only printed (`{{ x }}`, `{{ job.name }}`) or only tested
    (`{% if x %}`) changes nothing but the value collected for its placeholder: it is left out
    of the key (its truth kept, where it is tested) and put back after the render (`_Slot`).
    """
    source = str(node.value)
    if not _JINJA_SYNTAX.search(source):  # most lines are plain shell: what Jinja would give, without Jinja
        return (source[:-1] if source.endswith("\n") else source), ()
    key: tuple[Any, ...] | None = None
    slotted: list[Any] = []
    if session.caching and (kind, source) in session.seen:
        reads = _names_read(node, kind, source, session)
        key = (kind, source, *_key_parts(reads, context, slotted))
        found = session.renders.get(key)
        if found is not None:
            return _filled(found, slotted)
    elif session.caching:
        # A template met once (the common case of a small compile) is rendered without finding the names
        # it reads: parsing it for them costs more than the render. The second time, it is worth a key.
        session.seen.add((kind, source))
    sink = _SINK if kind == "shell" else _HOSTS
    sink.clear()
    if slotted:
        context = _with_slots(context, reads, slotted)
    try:
        found = (_render_now(node, context, kind, source, session), tuple(sink))
    finally:
        sink.clear()
    if key is not None:
        if len(session.renders) > 20000:
            session.renders.clear()
        session.renders[key] = found
    return _filled(found, slotted) if slotted else found


class _Slot:
    """Stands in a render for a value the template only prints or tests: what it collects is put back."""

    __slots__ = ("number", "truth")

    def __init__(self, number: int, truth: bool) -> None:
        self.number, self.truth = number, truth

    def __bool__(self) -> bool:
        return self.truth


@dataclass(frozen=True)
class _Reads:
    """What a template reads of its context: each name with the attributes it reads (None: it may read all),
    and the names and (name, attribute)s it only prints or tests, each with whether it tests it."""

    names: tuple[tuple[str, tuple[str, ...] | None], ...]
    slots: dict[str, bool]
    attribute_slots: dict[tuple[str, str], bool]


def _key_parts(reads: _Reads, context: dict[str, Any], slotted: list[Any]) -> Iterator[Any]:
    """The part of the cache key for each name the template reads; values left out of it go to `slotted`.
    A value printed raw (`Raw`, code built by orchc) becomes text, not a placeholder: it is keyed."""
    for name, attributes in reads.names:
        value = context.get(name, _MISSING)
        tested = reads.slots.get(name)
        if tested is not None and value is not _MISSING and not isinstance(value, Raw):
            slotted.append((name, None, value))
            yield "slot", bool(value) if tested else None
        elif attributes is not None and type(value) in (dict, FrozenDict):
            for attribute in attributes:
                item = value.get(attribute, _MISSING)
                tested = reads.attribute_slots.get((name, attribute))
                if tested is not None and item is not _MISSING and not isinstance(item, Raw):
                    slotted.append((name, attribute, item))
                    yield "slot", bool(item) if tested else None
                else:
                    yield _fingerprint(item)
        else:
            yield _fingerprint(_part(value, attributes))


def _with_slots(context: dict[str, Any], reads: _Reads, slotted: list[Any]) -> dict[str, Any]:
    """The context with a `_Slot` in place of each value left out of the key (in a copy of its mapping, of the
    same type: a FrozenDict stays one)."""
    changed = dict(context)
    attributes: dict[str, dict[str, _Slot]] = {}
    for number, (name, attribute, value) in enumerate(slotted):
        tested = reads.slots.get(name) if attribute is None else reads.attribute_slots[(name, attribute)]
        slot = _Slot(number, bool(value) if tested else True)
        if attribute is None:
            changed[name] = slot
        else:
            attributes.setdefault(name, {})[attribute] = slot
    for name, slots in attributes.items():
        changed[name] = type(context[name])({**context[name], **slots})
    return changed


def _filled(found: tuple[str, tuple[Any, ...]], slotted: list[Any]) -> tuple[str, tuple[Any, ...]]:
    """A cached render with this context's values in place of its slots."""
    if not slotted:
        return found
    return found[0], tuple(slotted[item.number][2] if type(item) is _Slot else item for item in found[1])


_MISSING = object()


def _fingerprint(value: Any) -> tuple[str, Any]:
    """A value as a key: its exact type (Raw is not str, bool is not int) and its content."""
    if value is None or isinstance(value, (str, int, float)):
        return type(value).__name__, value
    if value is _MISSING:
        return "missing", None
    # Field values are plain data (no str subclasses inside), so repr tells them apart exactly;
    # mappings of equal content in another key order only cost a second render.
    return type(value).__name__, repr(value)


def _part(value: Any, attributes: tuple[str, ...] | None) -> Any:
    """The part of a mapping a template reads, when it reads only some attributes (`job.name`)."""
    if attributes is None or not isinstance(value, dict):
        return value
    return [value.get(attribute, _MISSING) for attribute in attributes]


def _names_read(node: Node, kind: str, source: str, session: CompileSession) -> _Reads:
    known: _Reads | None = session.reads.get((kind, source))
    if known is not None:   # every render of a template met before: no import statement on this path
        return known
    from jinja2 import TemplateSyntaxError

    try:
        known = session.reads[(kind, source)] = _names_in(kind, source)
        return known
    except TemplateSyntaxError as exc:
        raise OrchcError.at(_line_in_template(node, exc.lineno), f"template syntax error: {exc.message}") from None


def _names_in(kind: str, source: str) -> _Reads:
    """The names a template reads, each with the attributes it reads of it (None: it may read all), and
    those of them (or of their attributes) it only prints or tests, in a shell template."""
    from jinja2 import meta, nodes

    tree = environment(kind).parse(source)
    names = set(meta.find_undeclared_variables(tree))
    whole = set()
    if any(item.name == "hosts" for item in tree.find_all(nodes.Filter)):   # the filter reads them itself
        names |= {"jobs", "job"}
        whole |= {"jobs", "job"}
    read_by_filter = set(whole)
    attributes: dict[str, set[str]] = {name: set() for name in names}
    parents = {id(child): parent for parent in tree.find_all(nodes.Node) for child in parent.iter_child_nodes()}
    uses: dict[str | tuple[str, str], set[str | None]] = {}
    for item in tree.find_all(nodes.Name):
        if not isinstance(item, nodes.Name) or item.ctx != "load" or item.name not in attributes:
            continue
        parent = parents.get(id(item))
        if isinstance(parent, nodes.Getattr) and parent.node is item:
            attributes[item.name].add(parent.attr)
            uses.setdefault((item.name, parent.attr), set()).add(_use_of(parent, parents))
        else:
            whole.add(item.name)
            uses.setdefault(item.name, set()).add(_use_of(item, parents))
    reads = tuple((name, None if name in whole or not attributes[name] else tuple(sorted(attributes[name])))
                  for name in sorted(names))
    if kind != "shell":
        return _Reads(reads, {}, {})
    # A name the template also binds (a loop variable, `set`, a macro's parameter) may not be the context's.
    bound = {item.name for item in tree.find_all(nodes.Name) if isinstance(item, nodes.Name) and item.ctx != "load"}
    only = {ref: "test" in kinds for ref, kinds in uses.items() if None not in kinds}
    return _Reads(reads,
                  {name: tested for name, tested in only.items()
                   if isinstance(name, str) and name not in bound and name not in read_by_filter and not attributes[name]},
                  {ref: tested for ref, tested in only.items()
                   if isinstance(ref, tuple) and ref[0] not in bound and ref[0] not in whole
                   and not ref[1].startswith("_") and not hasattr(dict, ref[1])})


def _use_of(item: Any, parents: dict[int, Any]) -> str | None:
    """How a template uses a value: printed ("out"), tested by an `if` ("test"), or otherwise (None)."""
    from jinja2 import nodes

    parent = parents.get(id(item))
    if isinstance(parent, nodes.Output):
        return "out"
    if isinstance(parent, nodes.If) and parent.test is item:
        return "test"
    return None


def _render_now(node: Node, context: dict[str, Any], kind: str, source: str, session: CompileSession) -> str:
    from jinja2 import TemplateError, TemplateSyntaxError

    try:
        template = _compiled(kind, source, session)
        _BUDGET.reset()
        return str(template.render(context))
    except TemplateSyntaxError as exc:
        raise OrchcError.at(_line_in_template(node, exc.lineno), f"template syntax error: {exc.message}") from None
    except TemplateError as exc:
        from jinja2.exceptions import SecurityError

        what = "template reaches for Python internals, which templates may not use" if isinstance(exc, SecurityError) \
            else "template error"
        loc = _line_in_template(node, _failing_line(exc))
        undefined = _UNDEFINED_NAME.fullmatch(exc.message or "")
        if undefined is None:
            raise OrchcError.at(loc, f"{what}: {exc.message}") from None
        name = undefined.group(1)
        known = [key for key in context if not key.startswith("_")]
        raise OrchcError.at(_at_name(loc, node, name), f"{what}: {exc.message}{did_you_mean(name, known)}") from None
    except (OverflowError, MemoryError, RecursionError, ValueError, TypeError, ArithmeticError) as exc:
        raise OrchcError.at(_line_in_template(node, _failing_line(exc)), f"template error: {exc}") from None


def render_text(node: Node, context: dict[str, Any], session: CompileSession) -> tuple[str, list[str]]:
    """A template for file content: (text, the jobs whose hosts the `hosts` filter put in)."""
    text, hosts = _render(node, context, "text", session)
    return text, sorted(set(hosts))


def render_shell(node: Node, context: dict[str, Any], values: ShellValues, session: CompileSession) -> str:
    """A type's shell template with every value written for its place, or a located error."""
    text, collected = _render(node, context, "shell", session)
    found = list(collected)
    if found:
        _check_printed(node, found)
    if found or ">(" in text or "coproc" in text:  # (a shell fed by a later line is refused with or without values)
        try:
            uses = _scanned(text, session)
        except ScanError as error:
            raise OrchcError.at(_line_in_template(node, text.count("\n", 0, error.offset) + 1),
                                f"cannot follow this shell line: {error}") from None
        text = values.substitute(node, text, uses, found)
    return text.replace(RUN_MARK, str(context.get("run", ""))) if RUN_MARK in text else text


def _scanned(text: str, session: CompileSession) -> tuple[Use, ...]:
    """`scan(text)`, once per text in a session (every job of a type asks for the same lines)."""
    known: tuple[Use, ...] | None = session.scans.get(text)
    if known is None:
        known = session.scans[text] = scan(text)
    return known


@dataclass
class ShellValues:
    """The values of one job that are written as references: each assigned once, near the top of the script."""

    names: dict[tuple[str, bool], str] = field(default_factory=dict)
    assignments: list[str] = field(default_factory=list)
    port_token: str = ""
    """the job's token, which its port placeholders carry (PortRef): one inside other text is a chosen port joined into it"""

    def reference(self, text: str, expand: bool) -> str:
        key = (text, expand)
        if key not in self.names:
            name = f"orchc_v{len(self.names) + 1}"
            self.names[key] = name
            self.assignments.append(f"{name}={shell_word(text) if expand else _single_quoted(text)}")
        return self.names[key]

    def substitute(self, node: Node, text: str, uses: tuple[Use, ...], found: list[Any]) -> str:
        out: list[str] = []
        last = 0
        start = 0   # the length of what `out` holds
        literal_spans: list[tuple[int, int, Use]] = []
        for use in uses:
            before = text[last:use.offset]
            out.append(before)
            start += len(before)
            try:
                written = self.write(use, found[use.index])
            except _Refused as refused:
                line = text.count("\n", 0, use.offset) + 1
                raise OrchcError.at(_line_in_template(node, line), str(refused)) from None
            out.append(written)
            if use.heredoc is not None:
                literal_spans.append((start, start + len(written), use))
            start += len(written)
            last = text.index(MARK, use.offset + 1) + 1
        out.append(text[last:])
        result = "".join(out)
        for start, end, use in literal_spans:
            _check_heredoc_lines(node, result, start, end, use, text)
        return result

    def write(self, use: Use, value: Any) -> str:
        """How one value is written where `use` says it stands."""
        text = text_value(value)
        if use.refusals:
            raise _Refused(f"the value {excerpt_of(text)!r} cannot stand here: {use.refusals[0]}")
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, PortRef):
            return _port_reference(use, value)
        if self.port_token and any(match.group(1) == self.port_token for match in PORT_PLACEHOLDER.finditer(text)):
            raise _Refused(f"the value {excerpt_of(text)!r} joins a port the job chooses (auto) into other text, which a "
                           "shell line cannot hold; write the port on its own ({{ port }}), or give the field a fixed port")
        expand = isinstance(value, PathValue)
        if "\x00" in text:
            raise _Refused(f"the value {excerpt_of(text)!r} contains a NUL character")
        if use.integer_only:
            raise _Refused(f"the value {excerpt_of(text)!r} cannot stand here: {use.integer_only[0]}; "
                           "only integers can (give the field `type: integer`)")
        if use.shell_reach:
            raise _Refused(f"the value {excerpt_of(text)!r} cannot stand here: {use.shell_reach[0]}; {IDIOM}")
        # In an unquoted here-document a reference is always right, and cannot make the terminator line.
        safe = bool(SAFE_WORD.fullmatch(text)) and not text.startswith("~") and not (use.in_test and text.startswith("-")) \
            and not (use.heredoc is not None and use.quoting == "dq")
        if safe:
            return text
        if use.plain_only:
            raise _Refused(f"the value {excerpt_of(text)!r} cannot stand here: {use.plain_only[0]}; only integers "
                           f"and plain words can; {IDIOM}")
        if use.splitting:
            raise _Refused(f"the value {excerpt_of(text)!r} is inside an unquoted $(...) or `...`, whose output the "
                           "shell splits into words and glob-expands; quote the substitution: \"$(...)\"")
        if use.quoting == "literal":
            if expand:
                raise _Refused(f"the value {excerpt_of(text)!r} should expand $VARs (| path), which a quoted "
                               "here-document never does")
            if use.in_backticks:
                raise _Refused(f"the value {excerpt_of(text)!r} is in a here-document inside backticks; use $(...)")
            return text
        if use.quoting == "ansi":
            raise _Refused(f"the value {excerpt_of(text)!r} cannot stand inside $'...'; use \"...\"")
        name = self.reference(text, expand)
        return {"bare": f'"${{{name}}}"', "dq": f"${{{name}}}", "sq": f"'\"${{{name}}}\"'",
                "comment": f"${{{name}}}"}[use.quoting]


class _Refused(Exception):
    pass


def _port_reference(use: Use, value: PortRef) -> str:
    """A chosen port (auto) where `use` says it stands: a reference to the job's variable, which orchc_ports sets."""
    if use.refusals or use.shell_reach or use.plain_only or use.quoting in ("literal", "ansi"):
        reason = (use.refusals or use.shell_reach or use.plain_only or
                  ["inside a quoted here-document or $'...', which never expands it"])[0]
        raise _Refused(f"a port the job chooses (auto) cannot stand here: {reason}; give the field a fixed port")
    name = value.variable
    if use.integer_only:   # arithmetic: the variable holds digits only (orchc_ports)
        return f"${{{name}}}"
    return {"bare": f'"${{{name}}}"', "dq": f"${{{name}}}", "sq": f"'\"${{{name}}}\"'", "comment": f"${{{name}}}"}[use.quoting]


def _single_quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _check_heredoc_lines(node: Node, result: str, start: int, end: int, use: Use, template: str) -> None:
    """A value in a quoted here-document must not end it early (or lose its tabs to `<<-`)."""
    assert use.heredoc is not None
    terminator, strip = use.heredoc
    first = result.rfind("\n", 0, start) + 1
    last = result.find("\n", end)
    lines = result[first:len(result) if last < 0 else last].split("\n")
    value = result[start:end]
    if any((line.lstrip("\t") if strip else line) == terminator for line in lines) or (strip and "\n\t" in value):
        line = template.count("\n", 0, use.offset) + 1
        raise OrchcError.at(_line_in_template(node, line), f"the value {excerpt_of(value)!r} would end the here-document "
                            f"early (a line {terminator!r}) or lose its tabs; it cannot stand here")


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
    lines = _lines_of(node.loc.file)
    opener = lines[node.loc.line - 1][node.loc.col - 1:] if 0 < node.loc.line <= len(lines) else ""
    target = node.loc.line + line if opener[:1] in ("|", ">") else node.loc.line + line - 1
    if not 0 < target <= len(lines):
        return node.loc
    content = lines[target - 1]
    return SourceLoc(node.loc.file, target, len(content) - len(content.lstrip()) + 1)


_UNDEFINED_NAME = re.compile(r"'([A-Za-z_][A-Za-z0-9_]*)' is undefined")
"""Jinja's message for a name the context does not have (not for a missing attribute or key)."""


def _at_name(loc: SourceLoc, node: Node, name: str) -> SourceLoc:
    """`loc` (a template line in its file) moved to the first use of `name` on that line from its first `{{` or
    `{%` (so that the same word in the YAML key or in plain shell before it is passed over), when it is there."""
    lines = _lines_of(loc.file)
    if not 0 < loc.line <= len(lines):
        return loc
    line = lines[loc.line - 1]
    start = loc.col - 1 if loc == node.loc else 0
    start = min((index for index in (line.find("{{", start), line.find("{%", start)) if index >= 0), default=start)
    found = re.compile(rf"(?<![\w.]){re.escape(name)}(?!\w)").search(line, start)
    return SourceLoc(loc.file, loc.line, found.start() + 1) if found else loc


def _lines_of(file: str) -> list[str]:
    """The lines of a loaded file, split once per text (every job of a type asks for the same file's)."""
    return current_sources().lines(file) or []


def template_line(node: Node, line: int) -> SourceLoc:
    """Public form of the template-line lookup, for fail-fast locations in the job script."""
    return _line_in_template(node, line)


# --- Bounds on rendering: a type template cannot take unbounded memory or time -----------------------------------
# Every loop iteration, call (function, method, macro, filter) and intercepted operator is a step; every string, list
# or mapping an operation makes, and all a file template prints, counts its length. Operations that could make a
# huge value in one go (formatting widths, padding, repetition, joins, replacements, big integers) are checked before
# they run. Real templates take a few hundred steps and kilobytes; the bounds are far above that.

MAX_STEPS = 1_000_000
"""Loop iterations and calls in one render."""
_MACRO_STEPS = 10
"""The steps a call of a macro counts (it costs about ten loop iterations)."""
MAX_MADE = 32 * 1024 * 1024
"""Characters and items of the values one render makes and prints (the largest document has 32 MiB of text)."""
MAX_WIDTH = 4096
"""A formatting width or precision, a padding width, a count of batches or slices, a length of bytes."""
MAX_INT_BITS = 1 << 16
"""The largest integer an operator may make (about 20,000 digits)."""


class TemplateBound(OverflowError):
    """A render that would pass a bound (reported as a located template error)."""


class _Budget:
    __slots__ = ("size", "steps")

    def __init__(self) -> None:
        self.steps = self.size = 0

    def reset(self) -> None:
        self.steps = self.size = 0

    def step(self, steps: int = 1) -> None:
        self.steps += steps
        if self.steps > MAX_STEPS:
            raise TemplateBound(f"the template takes more than {MAX_STEPS} steps (loop iterations and calls)")

    def made(self, value: Any) -> Any:
        if isinstance(value, (str, bytes, list, tuple, dict)):
            self.add(len(value))
        return value

    def add(self, size: int) -> None:
        self.size += size
        if self.size > MAX_MADE:
            raise TemplateBound(f"the template makes more than {MAX_MADE // 1024 // 1024} MiB of text and items")


_BUDGET: _Budget = _Budget()
"""The render under way's (reset by each): a counter, not a cache."""


def _counted_iter(context: Any, iterable: Any) -> Iterator[Any]:
    """A loop's items, each a step."""
    for item in iterable:
        _BUDGET.step()
        yield item


def _counted_concat(context: Any, text: Any) -> Any:
    return _BUDGET.made(text)


@cache
def _counting() -> Any:
    """What makes a parsed template's loops count their iterations and its `~` count what it makes."""
    from jinja2 import nodes
    from jinja2.visitor import NodeTransformer

    class Counting(NodeTransformer):
        def visit_For(self, node: Any) -> Any:
            node = self.generic_visit(node)
            node.iter = nodes.Filter(node.iter, "orchc_steps", [], [], None, None, lineno=node.lineno)
            return node

        def visit_Concat(self, node: Any) -> Any:
            return nodes.Filter(self.generic_visit(node), "orchc_made", [], [], None, None, lineno=node.lineno)

    return Counting()


def _width(value: Any) -> None:
    if isinstance(value, int) and abs(value) > MAX_WIDTH:
        raise TemplateBound(f"a width or count of {value} (at most {MAX_WIDTH})")


def _would_make(size: int) -> None:
    if size > MAX_MADE:
        raise TemplateBound(f"the operation would make more than {MAX_MADE // 1024 // 1024} MiB ({size} characters or items)")


_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?.")


def _check_printf(text: str) -> None:
    for match in _PRINTF.finditer(text):
        for part in match.groups():
            if part == "*" or (part and int(part) > MAX_WIDTH):
                raise TemplateBound(f"a formatting width or precision of {part} (at most {MAX_WIDTH})")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "%" and isinstance(left, str):
        _check_printf(left)
    elif operator == "*":
        sized, count = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(sized, (str, bytes, list, tuple)) and isinstance(count, int) and len(sized) * count > _MAX_REPEAT:
            raise OverflowError("a repetition over 1 MiB")
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateBound(f"an integer over {MAX_INT_BITS} bits")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > MAX_INT_BITS:
        raise TemplateBound(f"an integer over {MAX_INT_BITS} bits")


def _joined(separator: Any, items: Any) -> Any:
    """The items of a join, as a list when they came as an iterator; what the separators would make is checked."""
    items = items if isinstance(items, (str, list, tuple, dict)) else list(items)
    _would_make(len(separator) * max(len(items) - 1, 0) if isinstance(separator, (str, bytes)) else 0)
    return items


def _replaced_size(text: Any, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(text, (str, bytes)) or not isinstance(old, type(text)) or not isinstance(new, type(text)):
        return 0
    times = text.count(old) if len(old) else len(text) + 1  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    return len(text) + times * max(len(new) - len(old), 0)


def _checked_call(function: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A method of a str, bytes or int that could make a huge value in one go: its arguments checked first."""
    owner = getattr(function, "__self__", None)
    if not isinstance(owner, (str, bytes, int)):
        return args
    name = getattr(function, "__name__", "")
    if name in ("center", "ljust", "rjust", "zfill", "to_bytes") and args:
        _width(args[0])
    elif name == "expandtabs" and isinstance(owner, (str, bytes)):
        size = args[0] if args else 8
        _width(size)
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        _would_make(len(owner) + tabs * size if isinstance(size, int) else 0)
    elif name == "replace" and len(args) >= 2:
        _would_make(_replaced_size(owner, *args[:3]))
    elif name == "join" and args:
        return (_joined(owner, args[0]), *args[1:])
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(item) for item in args[0].values() if isinstance(item, (str, bytes))), default=1)
        _would_make(len(owner) * longest if isinstance(owner, (str, bytes)) else 0)
    return args


def _check_filter(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """A filter that could make a huge value in one go: its arguments checked first (positional or by keyword)."""
    def arg(position: int, keyword: str, default: Any = None) -> Any:
        return args[position] if len(args) > position else kwargs.get(keyword, default)

    if name == "format" and args and isinstance(args[0], str):
        _check_printf(args[0])
    elif name == "center":
        _width(arg(1, "width", 80))
    elif name in ("batch", "slice"):
        _width(arg(1, "linecount" if name == "batch" else "slices"))
    elif name == "indent" and args:
        width = arg(1, "width", 4)
        size = len(width) if isinstance(width, str) else width
        _width(size)
        _would_make(len(str(args[0])) + str(args[0]).count("\n") * size if isinstance(size, int) else 0)
    elif name == "wordwrap" and args:
        text, width, wrap = str(args[0]), arg(1, "width", 79), arg(3, "wrapstring", None)
        if isinstance(width, int) and isinstance(wrap, str):
            _would_make(len(text) + (len(text) // max(width, 1) + 1) * len(wrap))
    elif name == "join" and args:
        return (_joined(arg(1, "d", ""), args[0]), *args[1:])
    elif name == "replace" and len(args) >= 3:
        _would_make(_replaced_size(str(args[0]), *args[1:4]))
    return args


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose every call is a step, checked before it runs and counted after."""
    passed = 1 if hasattr(function, "jinja_pass_arg") else 0

    def bounded(*args: Any, **kwargs: Any) -> Any:
        _BUDGET.step()
        args = (*args[:passed], *_check_filter(name, args[passed:], kwargs))
        return _BUDGET.made(function(*args, **kwargs))

    if passed:
        bounded.jinja_pass_arg = function.jinja_pass_arg  # type: ignore[attr-defined]
    return bounded


def _bound_filters(env: Any) -> None:
    from jinja2 import pass_context

    for name, function in list(env.filters.items()):
        env.filters[name] = _bounded_filter(name, function)
    env.filters["orchc_steps"] = pass_context(_counted_iter)
    env.filters["orchc_made"] = pass_context(_counted_concat)


def _check_printed(node: Node, values: list[Any]) -> None:
    """The values a shell template prints, in all, within MAX_MADE (each is written out; a cached render too)."""
    sizes: dict[int, int] = {}
    total = 0
    for value in values:
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, (list, dict)):
            size = sizes.get(id(value))
            if size is None:
                size = sizes[id(value)] = len(text_value(value))
            total += size
        if total > MAX_MADE:
            raise OrchcError.at(node.loc, f"template error: the template prints more than {MAX_MADE // 1024 // 1024} "
                                "MiB of values")
