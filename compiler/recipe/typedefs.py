"""The registry of job types: YAML files in `service_defs/` and `--defs` folders.

A type names its parent with `extends`; its resolved form is the chain
base -> ... -> leaf merged with the merge rules, then checked against
`schemas/typedef.schema.json`. Folders given with `--defs` are searched before
the built-ins (a type there shadows a built-in of the same name); two files of
one folder that define the same type are an error naming both.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path
from typing import Any

from ..core.errors import Collector, OrchcError, did_you_mean, shorten
from ..core.fastschema import ecma_regex
from ..core.load import display_path, load_file
from ..core.paths import builtin_types_dir
from ..core.schema import build_validator, check, check_characters, common_def, schema_problems_in, validator
from ..core.source import Node, SourceLoc, walk_leaves
from .merge import merge

JOB_KEYS = ("resources", "environment", "env", "container", "sidecars", "phases")
"""Keys of a type definition that become part of every job of that type."""

ORCHC_KEYWORDS = ("secret", "multiline")
"""orchc's own keywords in a field's schema, removed before the schema reaches jsonschema."""

SHADOWED_VARIABLES = (
    "PATH", "HOME", "IFS", "SHELL", "USER", "LOGNAME", "PWD", "OLDPWD", "TMPDIR", "TERM", "LANG", "LC_*",
    "BASH*", "SHELLOPTS", "PS1", "PS2", "PS3", "PS4", "ENV", "CDPATH", "GLOBIGNORE", "HOSTNAME", "UID",
    "EUID", "PPID", "RANDOM", "SECONDS", "LINENO", "OPTIND", "OPTARG", "REPLY", "PIPESTATUS", "FUNCNAME",
    "GROUPS", "HISTFILE", "MAIL", "TZ", "LD_*", "SLURM_*", "ORCHC_*", "APPTAINER*", "SINGULARITY*",
    "TARGET_*", "PYTHON*", "MODULEPATH", "LMOD_*", "_*",
)
"""Shell variables a secret field's variable (its name upper-cased: `root_password` -> `$ROOT_PASSWORD`)
may not be: ones the shell, the generated script, SLURM, Apptainer or the tools it runs rely on."""


@dataclass
class TypeDef:
    """A type with its chain resolved: what recipes instantiate."""

    name: str
    role: str
    abstract: bool
    description: str
    chain: tuple[str, ...]
    files: tuple[str, ...]
    fields: dict[str, dict[str, Any]]
    secrets: frozenset[str]
    layer: Node = field(repr=False)
    """The job-level defaults the type contributes: field defaults and JOB_KEYS."""
    doc: Node = field(repr=False)
    headline: tuple[str, ...] = ()
    """the metrics compare shows by default (names or globs, results.metrics.metric_matches); () for the rule"""
    multi_node: Node | None = field(default=None, repr=False)
    """how the type spans nodes (schemas/typedef.schema.json multi_node), None for a type that runs on one node"""
    replicas: tuple[str, ...] = ()
    """the replicas a service of this type can run (schemas/typedef.schema.json replicas: per_gpu); () for one engine"""

    @cached_property
    def job_validator(self) -> Any:
        properties: dict[str, Any] = {
            "name": common_def("name"),
            "type": {"type": "string"},
            **{key: common_def(key) for key in JOB_KEYS},
        }
        for name, schema in self.fields.items():
            properties[name] = common_def("secret_ref") if name in self.secrets else _field_schema(schema, name)
        return build_validator({"type": "object", "properties": properties, "additionalProperties": False})


def _field_schema(schema: dict[str, Any], name: str = "") -> dict[str, Any]:
    """A field's schema as jsonschema sees it: without orchc's keywords, and with an `$id` of its own so
    that a `$ref: '#/...'` in it resolves inside it."""
    out = {k: v for k, v in schema.items() if k not in ORCHC_KEYWORDS}
    if name and _refs(schema):
        out["$id"] = f"urn:orchc:field:{name}"
    return out


def _refs(schema: Any) -> list[tuple[tuple[str | int, ...], Any]]:
    """(path, value) of every `$ref` and `$dynamicRef` in a schema."""
    found: list[tuple[tuple[str | int, ...], Any]] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(schema, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            found += [((*path, key), value[key]) for key in ("$ref", "$dynamicRef") if key in value]
            stack += [(child, (*path, key)) for key, child in value.items()]
        elif isinstance(value, list):
            stack += [(child, (*path, index)) for index, child in enumerate(value)]
    return found


TYPE_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""The name a `source:` phase item gives: one file of the `files/` folder, no path separators."""
TYPE_FILE_MAX_BYTES = 1024 * 1024
_TYPE_FILE_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def type_file_text(source: Node) -> str:
    """The text of the file a `{file: PATH, source: NAME}` phase item ships: `files/NAME` in the folder of
    the file that declares the item (built-in types: service_defs/files/), verbatim, never a template.

    Errors are located at the `source:` value. Refused: a name with a path separator or a leading dot,
    anything but a regular file (a symbolic link too), more than TYPE_FILE_MAX_BYTES, invalid UTF-8,
    control characters other than tab and line ends."""
    name = source.value
    if not isinstance(name, str) or not TYPE_FILE_NAME.match(name):
        raise OrchcError.at(source.loc, f"source: {shorten(name)} is not a file name of the type's files/ folder "
                            "(letters, digits, `_`, `.`, `-`, starting with a letter or digit; no path separators)")
    folder = Path(os.path.abspath(source.loc.file)).parent / "files"
    path = folder / name
    where = f"{display_path(folder)}/{name}"
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
            raise OrchcError.at(source.loc, f"source: {where} is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise OrchcError.at(source.loc, f"source: {where} is not a regular file")
            data = handle.read(TYPE_FILE_MAX_BYTES + 1)
    except FileNotFoundError:
        raise OrchcError.at(source.loc, f"source: {where} not found (a `source:` file lives in the files/ folder "
                            "beside the type file that names it)") from None
    except OSError as exc:
        raise OrchcError.at(source.loc, f"source: cannot read {where}: {exc.strerror or exc}") from None
    if len(data) > TYPE_FILE_MAX_BYTES:
        raise OrchcError.at(source.loc, f"source: {where} is larger than {TYPE_FILE_MAX_BYTES // 1024 // 1024} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OrchcError.at(source.loc, f"source: {where} is not UTF-8 text (byte 0x{data[exc.start]:02X} "
                            f"at offset {exc.start})") from None
    bad = _TYPE_FILE_CONTROL.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise OrchcError.at(source.loc, f"source: {where} is not a text file (control character "
                            f"0x{ord(bad.group()):02X} on line {line})")
    return text


def _check_type_files(merged: Node, problems: Collector) -> None:
    """Every `source:` phase item of a type names a readable file (checked when the type loads, so
    `orchc validate` reports it); the schema refuses `content:` beside it."""
    for items in (merged.get("phases") or Node({}, merged.loc)).value.values():
        for item in items.value if isinstance(items.value, list) else []:
            source = item.get("source")
            if source is None:
                continue
            try:
                type_file_text(source)
            except OrchcError as error:
                problems.absorb(error)


def secret_variable(name: str) -> str:
    """The shell variable that holds a secret field's value when the job runs."""
    return name.upper()


def shadowed_variable(variable: str) -> str | None:
    """The entry of SHADOWED_VARIABLES that `variable` matches, or None."""
    return next((pattern for pattern in SHADOWED_VARIABLES if fnmatchcase(variable, pattern)), None)


class Registry:
    """Type names are found by a quick scan of each file's `type:` line; a file is parsed
    when its type is used. User folders (`--defs`) are parsed at once, so a mistake in any
    of their files is reported even if no recipe uses that type."""

    def __init__(self, folders: list[Path]):
        self.folders = [*folders, builtin_types_dir()]
        self._files: dict[str, Path] = {}
        self._docs: dict[str, Node] = {}
        self._resolved: dict[str, TypeDef | OrchcError] = {}
        self._scan_all()

    def _scan_all(self) -> None:
        problems = Collector()
        for folder in self.folders:
            if not folder.is_dir():
                problems.add(SourceLoc(display_path(folder)), "type definition folder not found")
                continue
            eager = folder != builtin_types_dir()
            for name, (path, doc) in _folder_types(folder, eager, problems).items():
                if name not in self._files:
                    self._files[name] = path
                    if doc is not None:
                        self._docs[name] = doc
        problems.raise_if_any()

    def _doc(self, name: str) -> Node:
        if name not in self._docs:
            doc = load_file(self._files[name], "type definition")
            type_node = doc.get("type")
            if type_node is None or type_node.value != name:
                raise OrchcError.at((type_node or doc).loc, f"expected `type: {name}` at the top of this file")
            self._docs[name] = doc
        return self._docs[name]

    def names(self) -> list[str]:
        return sorted(self._files)

    def resolve(self, name: str, used_at: SourceLoc | None = None) -> TypeDef:
        if name not in self._files:
            where = used_at or SourceLoc("<command line>")
            raise OrchcError.at(where, f"unknown type '{name}'{did_you_mean(name, self._files)}")
        if name not in self._resolved:
            try:
                self._resolved[name] = self._build(name)
            except OrchcError as error:
                self._resolved[name] = error
        result = self._resolved[name]
        if isinstance(result, OrchcError):
            raise result
        return result

    def _chain(self, name: str) -> list[Node]:
        """The documents from the root type down to `name`."""
        chain: list[Node] = []
        seen: list[str] = []
        current: str | None = name
        while current is not None:
            doc = self._doc(current)
            if current in seen:
                files = [self._docs[n].loc for n in seen[seen.index(current):]]
                cycle = " -> ".join(seen[seen.index(current):] + [current])
                raise OrchcError.at(_extends_loc(self._docs[seen[-1]]), f"inheritance cycle: {cycle} (files: "
                                    + ", ".join(loc.file for loc in files) + ")", related=files)
            seen.append(current)
            chain.append(doc)
            parent = doc.get("extends")
            if parent is not None and not isinstance(parent.value, str):
                raise OrchcError.at(parent.loc, f"`extends` of type '{current}' must name a type, got {parent.plain()!r}")
            if parent is not None and parent.value not in self._files:
                raise OrchcError.at(parent.loc, f"type '{current}' extends unknown type '{parent.value}'"
                                    f"{did_you_mean(str(parent.value), self._files)} (in {doc.loc.file})")
            current = parent.value if parent is not None else None
        return chain[::-1]

    def _build(self, name: str) -> TypeDef:
        chain = self._chain(name)
        problems = Collector()
        merged: Node | None = None
        for doc in chain:
            merged = merge(merged, _without(doc, "abstract", "extends", "description"), problems)
        assert merged is not None
        leaf = chain[-1]
        merged.value.update({k: leaf.value[k] for k in ("abstract", "extends", "description") if k in leaf.value})
        problems.raise_if_any()
        check(merged, validator("typedef"), f"type '{name}'", problems)
        problems.raise_if_any()
        _check_templates(merged, problems)
        _check_type_files(merged, problems)
        problems.raise_if_any()
        fields_node = merged.get("fields") or Node({}, merged.loc)
        for field_name, schema in fields_node.value.items():
            _check_field(name, field_name, schema, problems)
        for sidecar, node in (merged.get("sidecars") or Node({}, merged.loc)).value.items():
            when = node.get("when")
            switch = fields_node.value.get(when.value) if when is not None else None
            if when is not None and (switch is None or switch.plain().get("type") != "boolean"):
                problems.add(when.loc, f"sidecar '{sidecar}' of type '{name}' is switched by '{when.value}', "
                             f"which is not a boolean field of the type{did_you_mean(str(when.value), fields_node.value)}")
            port = node.at(("metrics", "port")) if node.get("metrics") is not None else None
            field_schema = fields_node.value.get(port.value) if port is not None else None
            if port is not None and (field_schema is None or not _port_field(field_schema.plain())):
                problems.add(port.loc, f"sidecar '{sidecar}' of type '{name}' serves metrics on the port in '{port.value}', "
                             f"which is not an integer (or auto) field of the type{did_you_mean(str(port.value), fields_node.value)}")
        _check_multi_node(name, merged, problems)
        problems.raise_if_any()
        typedef = _typedef(name, merged, fields_node, chain)
        check(typedef.layer, typedef.job_validator, f"type '{name}'", problems, secrets=typedef.secrets)
        problems.raise_if_any()
        return typedef


def _check_multi_node(name: str, merged: Node, problems: Collector) -> None:
    """A service's multi_node gives the command of its ranks; a client's gives none (its benchmark phase runs
    under orchc_tasks_run), nor the other keys only ranks of a service use."""
    multi_node = merged.get("multi_node")
    if multi_node is None:
        return
    role = merged.plain()["role"]
    given = [key for key in ("command", "worker_args", "publishes") if key in multi_node.value]
    if role == "service" and "command" not in given:
        problems.add(multi_node.loc, f"multi_node of type '{name}' needs `command:`, what each rank of the service runs")
    elif role != "service" and given:
        problems.add(multi_node.value[given[0]].loc, f"multi_node.{given[0]} of type '{name}': only a service's ranks "
                     "run a command; a client's benchmark phase runs its tasks (orchc_tasks_run, README \"Across nodes\")")


def _check_templates(merged: Node, problems: Collector) -> None:
    """Templates of user types that reach for Python internals are refused when the type loads.

    The built-in types are orchc's own: they are not parsed again on every start.
    """
    from ..boundary.templating import python_reaches

    builtin = str(builtin_types_dir())
    for key in ("container", "sidecars", "phases"):
        part = merged.get(key)
        if part is None:
            continue
        for _, leaf in walk_leaves(part):
            if isinstance(leaf.value, str) and not os.path.abspath(leaf.loc.file).startswith(builtin + os.sep):
                for loc, message in python_reaches(leaf):
                    problems.add(loc, message)


def _check_field(type_name: str, name: str, schema: Node, problems: Collector) -> None:
    plain = schema.plain()
    for reason in schema_problems_in(_field_schema(plain)):
        problems.add(schema.loc, f"field '{name}' of type '{type_name}' is not a valid JSON Schema: {reason}")
    for path, ref in _refs(plain):
        where = schema.at(path).loc
        if not isinstance(ref, str) or not ref.startswith("#"):
            problems.add(where, f"field '{name}' of type '{type_name}': {shorten(ref)} is not a reference inside the "
                         "field's schema; orchc never fetches schemas: write `$ref: '#/$defs/NAME'` with `$defs` in the field")
        elif not _resolves(plain, ref):
            problems.add(where, f"field '{name}' of type '{type_name}': {shorten(ref)} names nothing in the field's schema")
    for path, pattern in _patterns(plain):
        try:
            ecma_regex(pattern)
        except re.error as exc:
            problems.add(schema.at(path).loc, f"field '{name}' of type '{type_name}': invalid pattern {shorten(pattern)}: {exc}")
    if plain.get("secret") is True:
        variable = secret_variable(name)
        shadowed = shadowed_variable(variable)
        if shadowed:
            problems.add(schema.key_loc or schema.loc, f"secret field '{name}' of type '{type_name}' would be held in "
                         f"${variable}, which the job's shell or tools rely on ({shadowed}); rename the field")
    default = schema.get("default")
    if default is not None and plain.get("secret") is not True:
        check_characters(default, (name,), plain.get("multiline") is True, problems)


def _resolves(schema: dict[str, Any], ref: str) -> bool:
    from referencing import Registry
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    uri = "urn:orchc:field"
    resource = DRAFT202012.create_resource({**_field_schema(schema), "$id": uri})
    try:
        Registry().with_resource(uri, resource).resolver(base_uri=uri).lookup(ref)
    except (Unresolvable, ValueError, LookupError):
        return False
    return True


def _patterns(schema: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """(path, pattern) of every `pattern` and `patternProperties` key in a schema."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(schema, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            if isinstance(value.get("pattern"), str):
                found.append(((*path, "pattern"), value["pattern"]))
            if isinstance(value.get("patternProperties"), dict):
                found += [((*path, "patternProperties"), key) for key in value["patternProperties"]]
            stack += [(child, (*path, key)) for key, child in value.items()]
        elif isinstance(value, list):
            stack += [(child, (*path, index)) for index, child in enumerate(value)]
    return found


def _typedef(name: str, merged: Node, fields_node: Node, chain: list[Node]) -> TypeDef:
    plain = merged.plain()
    fields = {k: v.plain() for k, v in fields_node.value.items()}
    defaults = {k: v.value["default"] for k, v in fields_node.value.items() if "default" in v.value}
    layer = Node({**defaults, **{k: merged.value[k] for k in JOB_KEYS if k in merged.value}}, merged.loc)
    return TypeDef(
        name=name,
        role=plain["role"],
        abstract=bool(plain.get("abstract", False)),
        description=plain.get("description", ""),
        chain=tuple(doc.value["type"].value for doc in chain),
        files=tuple(doc.loc.file for doc in chain),
        fields=fields,
        secrets=frozenset(k for k, v in fields.items() if v.get("secret")),
        layer=layer,
        doc=merged,
        headline=tuple(plain.get("headline", ())),
        multi_node=merged.get("multi_node"),
        replicas=tuple(plain.get("replicas", ())),
    )


def _without(doc: Node, *keys: str) -> Node:
    return Node({k: v for k, v in doc.value.items() if k not in keys}, doc.loc, doc.key_loc)


def _extends_loc(doc: Node) -> SourceLoc:
    extends = doc.get("extends")
    return extends.loc if extends is not None else doc.loc


_TYPE_LINE = re.compile(r"""^type:[ \t]*(["']?)([a-z][a-z0-9_]*)\1[ \t]*(?:#.*)?$""", re.M)


def _folder_types(folder: Path, eager: bool, problems: Collector) -> dict[str, tuple[Path, Node | None]]:
    """name -> (file, parsed document or None when not parsed yet) for the type files of `folder`."""
    found: dict[str, tuple[Path, Node | None]] = {}
    locations: dict[str, SourceLoc] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        names = _TYPE_LINE.findall(path.read_text(encoding="utf-8", errors="replace")) if not eager else []
        doc: Node | None = None
        if len(names) == 1:
            name, loc = names[0][1], SourceLoc(display_path(path))
        else:
            try:
                doc = load_file(path, "type definition")
            except OrchcError as error:
                problems.absorb(error)
                continue
            type_node = doc.get("type")
            if type_node is None or not isinstance(type_node.value, str):
                problems.add((type_node or doc).loc, "a type definition needs `type: NAME` (a string)")
                continue
            name, loc = type_node.value, type_node.loc
        if name in found:
            problems.add(loc, f"duplicate type name '{name}': defined in {locations[name].file} and {loc.file}",
                         related=[locations[name]])
            continue
        found[name], locations[name] = (path, doc), loc
    return found


def _port_field(schema: Any) -> bool:
    """Whether a field holds a port: an integer, or (service.yaml's port fields) an integer or `auto`. A field
    definition of another shape (a mutated type file) is not one: the schema check then says what is wrong."""
    if not isinstance(schema, dict):
        return False
    if schema.get("type") == "integer":
        return True
    choices = schema.get("anyOf")
    if not isinstance(choices, list):
        return False
    return any(isinstance(choice, dict) and choice.get("type") == "integer" for choice in choices) and {"const": "auto"} in choices
