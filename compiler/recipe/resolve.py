"""Stage 2, resolve: a recipe -> its jobs, each the merge of every layer that speaks of it.

Layers, lowest precedence first: site profile defaults, the type chain (field
defaults and the type's job keys), the recipe's top level, the job's own entry,
`--set` options. Each value is checked against its schema here; defaults orchc
decides (a client's only target) are set before the job is frozen into a
ResolvedJob: typed parts (resources, environment, container, sidecars, phases,
the type's fields) whose values are read-only. Where each value came from is
kept apart, in the recipe's `origins` (path -> file:line, and the positioned
template strings render needs), for errors and `orchc show --origin`.
Semantic checks are the next stage's (checks.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from ..core.errors import Collector, OrchcError, Problem, did_you_mean, shorten
from ..core.load import conceal, display_path, load_file, load_value, remember_text, split_key
from ..core.paths import sites_dir
from ..core.schema import check, check_characters, validator
from ..core.session import CompileSession
from ..core.source import FrozenDict, Node, Origins, SourceLoc, from_plain, to_frozen, walk_leaves
from .merge import merge, merge_layers
from .typedefs import JOB_KEYS, Registry, TypeDef

DEFAULT_SITE = "meluxina"
COMMAND_LINE = "<command line>"
_ENTRY_KEYS = {"service": "service", "services": "service", "client": "client", "clients": "client"}
TARGET_KEYS = ("target", "target_endpoint", "target_service_id")
_RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_IDENTITY = ("name", "type")
"""Keys that identify a job in the recipe; `--set` cannot change them."""


STORAGE_KEYS = ("images", "apptainer_cache", "apptainer_tmp", "models", "data", "local")
"""What a site profile (and a recipe's `storage:`) places: see schemas/site.schema.json#/$defs/storage."""
_STORAGE_PATH = re.compile(r"^[A-Za-z0-9_./${}-]+$")
DEFAULT_STORAGE = {"images": "$HOME/containers", "models": "$HOME/.orchc/models", "data": "$ORCHC_RUN_DIR/data", "local": "/tmp"}
"""Where nothing else is known; the Apptainer cache and temp folders then stay Apptainer's own defaults; a node's own
disk is its /tmp."""


@dataclass(frozen=True)
class Site:
    name: str
    file: str
    runtime: str
    modules: tuple[str, ...]
    image_dir: str
    partitions: tuple[str, ...]
    defaults: Node = field(repr=False)
    shell: str = "/bin/bash"
    module_purge: str = "module purge"
    qos: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    storage: Mapping[str, str] = field(default_factory=lambda: FrozenDict(DEFAULT_STORAGE))
    """images, apptainer_cache, apptainer_tmp, models, data, local: the site's, with a recipe's `storage:` over them"""
    billing: str = "shared"
    """whole_node (a job pays for its whole nodes while it runs) or shared"""
    nodes: Mapping[str, Mapping[str, Any]] = field(default_factory=FrozenDict)
    """partition -> what one of its nodes holds: cores, gpus, memory"""
    limits: Mapping[str, int] = field(default_factory=FrozenDict)
    """max_submit, max_running: the site's per-user job limits"""
    gpu_vendor: str = "nvidia"
    """nvidia or amd: a GPU container gets --nv or --rocm"""
    gpu_exporter: str = "nvidia-smi"
    """the GPU exporter of services whose `gpu_exporter` is `site` (their default): dcgm where the nodes have dcgm-exporter"""
    reservations: Mapping[str, Mapping[str, str]] = field(default_factory=FrozenDict)
    """QoS -> partition -> the reservation a job of that QoS on that partition names (MeluXina: dev on gpu, gpudev)"""

    @property
    def containers(self) -> bool:
        """Whether jobs run their containers' images (apptainer or singularity: the same CLI, `runtime` names it)."""
        return self.runtime != "native"

    def reservation_for(self, resources: Mapping[str, Any]) -> str | None:
        """The reservation the site adds for a job's QoS and partition; None when none applies or the job names one."""
        if any(str(option).startswith("--reservation") for option in resources.get("extra") or ()):
            return None
        return self.reservations.get(str(resources.get("qos")), {}).get(str(resources.get("partition")))

    def with_storage(self, storage: Mapping[str, str]) -> Site:
        """The site as one recipe sees it: its `storage:` over the site's, key by key."""
        merged = FrozenDict({**self.storage, **storage})
        return replace(self, storage=merged, image_dir=merged["images"])


@dataclass(frozen=True)
class Container:
    """A container of a job: its main one, or a sidecar's."""

    path: tuple[str, ...]
    """where it sits in the job: ("container",) or ("sidecars", NAME, "container")"""
    spec: Mapping[str, Any] = field(repr=False)

    @property
    def image(self) -> str | None:
        return self.spec.get("image")

    @property
    def source(self) -> str | None:
        return self.spec.get("source")

    @property
    def gpu(self) -> bool:
        return bool(self.spec.get("gpu"))

    @property
    def binds(self) -> Sequence[str]:
        return self.spec.get("binds", ())

    @property
    def env(self) -> Mapping[str, Any]:
        return self.spec.get("env", {})

    @property
    def command(self) -> str | None:
        return self.spec.get("command")


@dataclass(frozen=True)
class Sidecar:
    name: str
    when: str | None
    """the boolean field that switches it on; None: always on"""
    container: Container
    metrics: tuple[str, str] | None = None
    """(source label, the integer field holding its port) when it serves Prometheus metrics"""


@dataclass(frozen=True)
class ResolvedJob:
    """One job with every layer merged and every default decided: what checks read and render renders.

    Frozen, and its values are read-only (FrozenDict, FrozenList): nothing changes a job once resolved.
    Where each value came from is kept apart, in the recipe's `origins`.
    """

    name: str
    typedef: TypeDef
    resources: Mapping[str, Any]
    environment: Mapping[str, Any]
    env: Mapping[str, Any]
    """the type's `env:`: name -> template, exported to the job's programs as data"""
    container: Container | None
    sidecars: tuple[Sidecar, ...]
    phases: Mapping[str, Sequence[Any]]
    """phase -> its items: shell lines (str) and {file, content, mode} blocks"""
    fields: Mapping[str, Any]
    """the values of the type's fields"""
    job_id: str
    digest: str
    """sha256 of the resolved job; `job_id` is its first 8 hex digits"""
    point: str | None = None
    """the sweep point of a client of a sweep (p01, ...); None otherwise"""
    repeat: int | None = None
    """which repeat of its point a client of a sweep is (1, 2, ...)"""

    @property
    def role(self) -> str:
        return self.typedef.role

    @property
    def target(self) -> str | None:
        target = self.fields.get("target")
        return target if isinstance(target, str) else None

    def active_sidecars(self) -> tuple[Sidecar, ...]:
        """The sidecars that are switched on."""
        return tuple(s for s in self.sidecars if not s.when or self.fields.get(s.when))

    def values(self) -> dict[str, Any]:
        """The job as one mapping, as templates and `orchc show` see it."""
        out: dict[str, Any] = {"type": self.typedef.name, **self.fields, "resources": self.resources,
                               "environment": self.environment}
        if self.env:
            out["env"] = self.env
        if self.container is not None:
            out["container"] = self.container.spec
        if self.sidecars:
            out["sidecars"] = {s.name: {**({"when": s.when} if s.when else {}), "container": s.container.spec}
                               for s in self.sidecars}
        out["phases"] = self.phases
        out["name"] = self.name
        return out


@dataclass(frozen=True)
class Recipe:
    name: str
    file: str
    site: Site
    jobs: tuple[ResolvedJob, ...]
    origins: Mapping[str, Origins] = field(repr=False)
    """job name -> where each of its values was set"""
    removed_secrets: Mapping[str, frozenset[str]] = field(repr=False, default_factory=dict)
    """job name -> the secrets a layer removed: resolve reported those, the checks stage does not again"""
    references: Mapping[str, Any] = field(repr=False, default_factory=dict)
    """the recipe's `references:` (CLIENT.METRIC -> expected value or bounds), for `orchc results --check`"""
    points: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    """a sweep's points: (name, ((swept key, value), ...)); empty for a recipe of one configuration"""
    repeat: int = 1
    allocation: Node | None = field(repr=False, default=None)
    """the recipe's `allocation:` entry as written (compiler/script/allocation.py reads it)"""
    session: CompileSession = field(repr=False, compare=False, default_factory=CompileSession)
    """the compile session the recipe was resolved in: rendering and writing it share its caches"""

    def job(self, name: str) -> ResolvedJob:
        return self._by_name[name]

    @cached_property
    def _by_name(self) -> dict[str, ResolvedJob]:
        return {job.name: job for job in self.jobs}

    @cached_property
    def job_names(self) -> list[str]:
        return [job.name for job in self.jobs]

    @cached_property
    def client_names(self) -> tuple[str, ...]:
        """Every client of the recipe, sorted (the services no client targets stop when all of them ended)."""
        return tuple(sorted(job.name for job in self.jobs if job.role == "client"))

    @cached_property
    def clients_of(self) -> dict[str, list[str]]:
        """Service name -> the clients of the recipe that target it."""
        clients: dict[str, list[str]] = {}
        for job in self.jobs:
            if job.role == "client" and job.target:
                clients.setdefault(job.target, []).append(job.name)
        return clients

    @cached_property
    def waits_for(self) -> dict[str, tuple[str, ...]]:
        """Client -> the clients that must have ended before it starts: its `after`, or by default the client
        listed before it that has the same target, so clients of one service run one after another."""
        last: dict[str, str] = {}
        order: dict[str, tuple[str, ...]] = {}
        for job in self.jobs:
            if job.role != "client":
                continue
            target = next((f"{key}={job.fields[key]}" for key in TARGET_KEYS if job.fields.get(key) is not None), "")
            after = job.fields.get("after")
            order[job.name] = tuple(after) if after is not None else (last[target],) if target in last else ()
            last[target] = job.name
        return order


@dataclass(frozen=True)
class Setting:
    """One `--set KEY.PATH=VALUE` option."""

    path: tuple[str, ...]
    value: Any
    loc: SourceLoc
    value_loc: SourceLoc | None = None
    key_loc: SourceLoc | None = None
    """where the key was written, when not at `loc` (a sweep's key, above its values)"""


def parse_settings(options: list[str]) -> list[Setting]:
    """Parse `--set` options; VALUE is read as YAML (`35` is a number, `[a, b]` a list)."""
    from ..core.errors import UsageError

    remember_text(COMMAND_LINE, "\n".join(f"--set {option}" for option in options))
    settings = []
    problems = Collector()
    for index, option in enumerate(options, start=1):
        key, sep, raw = option.partition("=")
        path = tuple(key.split("."))
        if not sep or not all(path):
            raise UsageError(f"--set {shorten(option)}: expected KEY.PATH=VALUE")
        loc = SourceLoc(COMMAND_LINE, index, 7)
        try:
            value = _setting_value(raw, f"{COMMAND_LINE} {index}")
        except OrchcError as error:
            problems.problems += [Problem(loc, problem.message, topic=problem.topic) for problem in error.problems]
            continue
        settings.append(Setting(path, value, loc, SourceLoc(COMMAND_LINE, index, 8 + len(key))))
    problems.raise_if_any()
    return settings


def _setting_value(raw: str, name: str) -> Any:
    """VALUE of `--set KEY=VALUE` read as YAML, with the same limits as a file; text that is not YAML stays text."""
    try:
        node = load_value(raw, name)
    except OrchcError as error:
        if all(problem.message.startswith("invalid YAML") for problem in error.problems):
            return raw
        raise
    return None if node is None else node.plain()


def load_site(ref: str, base: Path, used_at: SourceLoc, session: CompileSession) -> Site:
    """The site profile `ref`, read once per compile session (each compile reads the file as it is then)."""
    path = Path(os.path.abspath(_site_path(ref, base, used_at)))
    return session.once("site", path, lambda: _load_site_file(path))


def _load_site_file(path: Path) -> Site:
    doc = load_file(path, "site profile")
    problems = Collector()
    check(doc, validator("site"), f"site '{path.stem}'", problems)
    problems.raise_if_any()
    _check_node_partitions(doc, problems)
    data = doc.plain()
    defaults = doc.get("defaults") or Node({}, doc.loc)
    storage = {**DEFAULT_STORAGE, **({"images": data["image_dir"]} if "image_dir" in data else {}),
               **data.get("storage", {})}
    return Site(
        name=data["site"],
        file=display_path(path),
        runtime=data["runtime"],
        modules=tuple(data.get("modules", ())),
        image_dir=storage["images"],
        partitions=tuple(data.get("partitions", ())),
        defaults=defaults,
        shell=data.get("shell", "/bin/bash"),
        module_purge=data.get("module_purge", "module purge"),
        qos=tuple(entry if isinstance(entry, str) else entry["name"] for entry in data.get("qos", ())),
        requires=tuple(data.get("requires", ())),
        storage=FrozenDict(storage),
        billing=data.get("billing", "shared"),
        gpu_vendor=data.get("gpu_vendor", "nvidia"),
        gpu_exporter=data.get("gpu_exporter", "nvidia-smi"),
        limits=FrozenDict(data.get("limits", {})),
        nodes=FrozenDict({name: FrozenDict(shape) for name, shape in data.get("nodes", {}).items()}),
        reservations=FrozenDict({entry["name"]: FrozenDict(entry["reservations"]) for entry in data.get("qos", ())
                                 if isinstance(entry, dict) and entry.get("reservations")}),
    )


def _check_node_partitions(doc: Node, problems: Collector) -> None:
    """Each partition under `nodes:`, and each a QoS entry names a reservation for, is one the site lists (a typo
    would silently shape no node, or add no reservation)."""
    nodes, listed = doc.get("nodes"), doc.plain().get("partitions", [])
    for name, child in (nodes.value.items() if nodes is not None and isinstance(nodes.value, dict) else ()):
        if name not in listed:
            problems.add(child.key_loc or child.loc, f"nodes: '{name}' is not one of the site's partitions "
                         f"({', '.join(listed) or 'none listed'}){did_you_mean(name, listed)}")
    qos = doc.get("qos")
    for entry in (qos.value if qos is not None and isinstance(qos.value, list) else ()):
        reservations = entry.get("reservations") if isinstance(entry.value, dict) else None
        for name, child in (reservations.value.items() if reservations is not None else ()):
            if listed and name not in listed:
                problems.add(child.key_loc or child.loc, f"qos {entry.plain()['name']}: reservations: '{name}' is not one "
                             f"of the site's partitions ({', '.join(listed)}){did_you_mean(name, listed)}")
    problems.raise_if_any()


def _recipe_storage(doc: Node) -> dict[str, str]:
    """The recipe's `storage:` places that are well-formed (the recipe schema reports the others)."""
    node = doc.get("storage")
    if node is None or not isinstance(node.value, dict):
        return {}
    return {key: child.value for key, child in node.value.items()
            if key in STORAGE_KEYS and isinstance(child.value, str) and _STORAGE_PATH.match(child.value)}


def _site_path(ref: str, base: Path, used_at: SourceLoc) -> Path:
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        candidate = Path(ref)
        return candidate if candidate.is_absolute() or candidate.exists() else base / candidate
    path = sites_dir() / f"{ref}.yaml"
    if not path.is_file():
        known = [p.stem for p in sites_dir().glob("*.yaml")]
        raise OrchcError.at(used_at, f"unknown site '{ref}'{did_you_mean(ref, known)} (known: {', '.join(sorted(known))})")
    return path


def load_recipe(path: Path, problems: Collector) -> Node:
    """The recipe file, checked against the recipe schema (problems collected, the document returned)."""
    doc = load_file(path, "recipe")
    check(doc, validator("recipe"), "the recipe", problems)
    return doc


def resolve_recipe(path: Path, registry: Registry, site_ref: str | None = None,
                   settings: Sequence[Setting] = (), problems: Collector | None = None,
                   doc: Node | None = None, session: CompileSession | None = None) -> Recipe:
    """The recipe's jobs, resolved and frozen. Problems go to `problems` (raised here when None is given);
    the checks stage adds its own before anything is rendered. `doc`: the recipe already loaded. `session`: the
    compile's (`pipeline.resolve_all`), else one of the recipe's own."""
    session = CompileSession() if session is None else session
    own = problems is None
    problems = Collector() if problems is None else problems
    if doc is None:
        doc = load_recipe(path, problems)
    name = _string(doc.get("name")) or path.stem
    if not _RECIPE_NAME.match(name):
        problems.add(doc.loc, f"the recipe needs a `name:` (its file name '{path.stem}' is not a valid one: "
                     "letters, digits, '_', '.', '-')")
    site_node = doc.get("site")
    try:
        site = load_site(site_ref or _string(site_node) or DEFAULT_SITE, path.parent,
                         site_node.loc if site_node and not site_ref else SourceLoc(COMMAND_LINE), session)
    except OrchcError as error:
        problems.absorb(error)
        problems.raise_if_any()
    storage = _recipe_storage(doc)
    if storage:
        site = site.with_storage(storage)
    drafts = _resolve_jobs(doc, registry, site, settings, problems, session)
    _default_targets(drafts)
    recipe = Recipe(name=name, file=doc.loc.file, site=site,
                    jobs=tuple(_frozen_job(draft, name, site.name) for draft in drafts),
                    origins={draft.name: Origins(draft.node) for draft in drafts},
                    removed_secrets={draft.name: draft.removed_secrets for draft in drafts},
                    references=_references(doc), allocation=doc.get("allocation"), session=session)
    if own:
        problems.raise_if_any()
    return recipe


def _references(doc: Node) -> Mapping[str, Any]:
    node = doc.get("references")
    return to_frozen(node) if node is not None and isinstance(node.value, dict) else FrozenDict()


def _string(node: Node | None) -> str | None:
    return node.value if node is not None and isinstance(node.value, str) else None


def _entries(doc: Node) -> list[tuple[str, Node]]:
    """(role the recipe expects, entry) for every job, in document order."""
    out: list[tuple[str, Node]] = []
    for key, node in doc.value.items():
        role = _ENTRY_KEYS.get(key)
        if role is not None:
            candidates = node.value if isinstance(node.value, list) else [node]
            out.extend((role, entry) for entry in candidates if _is_entry(entry))
    return out


def _is_entry(entry: Node) -> bool:
    """A job entry well-formed enough to resolve (the recipe schema reports the others)."""
    if not isinstance(entry.value, dict):
        return False
    ids = [entry.value.get(key) for key in ("name", "type")]
    return any(ids) and all(node is None or isinstance(node.value, str) for node in ids)


def _top_layer(doc: Node) -> Node:
    top = {k: doc.value[k] for k in ("resources", "environment") if k in doc.value}
    account = doc.get("account")
    resources = top.get("resources")
    if account is not None and (resources is None or isinstance(resources.value, dict)):
        merged = dict(resources.value) if resources else {}
        merged["account"] = account
        top["resources"] = Node(merged, resources.loc if resources else account.loc)
    return Node(top, doc.loc)


def _resolve_jobs(doc: Node, registry: Registry, site: Site, settings: Sequence[Setting],
                  problems: Collector, session: CompileSession) -> list[_Draft]:
    top = _top_of(doc, session)
    seen: dict[str, Node] = {}
    jobs = []
    entries = _entries(doc)
    names = {str((e.get("name") or e.get("type")).value) for _, e in entries}  # type: ignore[union-attr]
    settings = _usable_settings(settings, names, _known_keys(entries, registry), problems)
    for role, entry in entries:
        name_node = entry.get("name") or entry.get("type")
        type_node = entry.get("type") or entry.get("name")
        assert name_node is not None and type_node is not None
        name = str(name_node.value)
        if name in seen:
            problems.add(name_node.loc, f"duplicate job name '{name}' (first at line {seen[name].loc.line}); "
                         "give each job a unique `name`", related=[seen[name].loc])
            continue
        seen[name] = name_node
        try:
            typedef = registry.resolve(str(type_node.value), type_node.loc)
        except OrchcError as error:
            problems.absorb(error)
            continue
        if typedef.abstract or typedef.role != role:
            what = "abstract" if typedef.abstract else f"a {typedef.role} type"
            problems.add(type_node.loc, f"type '{typedef.name}' is {what}; a {role} needs a concrete {role} type")
            continue
        identity = Node({"name": name_node, "type": type_node}, entry.loc)
        overrides = [top, entry, identity, *_setting_layers(settings, name, names, typedef)]
        what = f"{role} '{name}'"
        removed = _secret_removals(overrides, typedef, what, problems)
        base = _type_base(site, typedef, top, problems, session)
        node = base.node
        for layer in overrides[1:]:
            if layer is identity and entry.value.get("name") is name_node and entry.value.get("type") is type_node \
                    and isinstance(name_node.value, str) and isinstance(type_node.value, str):
                continue   # the entry gave both as strings: laying them again changes nothing
            node = merge(node, _secrets_replace(layer, typedef), problems)
        node = Node(node.value, entry.loc, node.key_loc)
        data = _validated(node, typedef, base, what, problems, removed)
        if data.get("gpu_exporter") == "site":   # service.yaml's default: the site's exporter
            data["gpu_exporter"] = site.gpu_exporter
        jobs.append(_Draft(name, typedef, node, data, frozenset(removed), base))
    return jobs


def _top_of(doc: Node, session: CompileSession) -> Node:
    """The recipe's top level as a layer: the same object for every point of a sweep (which shares `doc`)."""
    return session.of_object("top", doc, lambda: _top_layer(doc))


class _Shared:
    """The values the bases of a compile session share, read-only: each value's frozen form made once per value
    (a type's values are the same objects in every recipe's base), and its canonical JSON for the job digest
    once per frozen value; each held with the object whose id keys it, so the id stays its own."""

    __slots__ = ("canonical", "frozen", "keys")

    def __init__(self) -> None:
        self.frozen: dict[int, tuple[Node, Any]] = {}
        self.canonical: dict[int, tuple[Any, list[str]]] = {}
        self.keys: dict[str, str] = {}

    def frozen_of(self, node: Node) -> Any:
        hit = self.frozen.get(id(node))
        if hit is None:
            hit = self.frozen[id(node)] = (node, to_frozen(node))
            self.canonical[id(hit[1])] = (hit[1], [])
        return hit[1]

    def canonical_of(self, value: Any) -> str | None:
        """The canonical JSON of `value` when it is a shared frozen value, else None."""
        known = self.canonical.get(id(value))
        if known is None or known[0] is not value:
            return None
        if not known[1]:
            known[1].append(_ENCODE(value))
        return known[1][0]

    def key_text(self, key: str) -> str:
        """A field name as JSON (the jobs use the same few)."""
        known = self.keys.get(key)
        if known is None:
            known = self.keys[key] = _ENCODE_STRING(key)
        return known


class _Base:
    """The site's defaults, a type's layer and the recipe's top level merged (`node`), and the keys whose values
    in it passed their checks in one job of the type (`passed`; None until a job passed). Its values are the
    same objects for every job of the type in the recipe: their frozen forms are `shared`'s."""

    __slots__ = ("node", "passed", "shared")

    def __init__(self, node: Node, shared: _Shared | None = None) -> None:
        self.node = node
        self.passed: frozenset[str] | None = None
        self.shared = _Shared() if shared is None else shared

    def frozen_value(self, key: str) -> Any:
        """The read-only form of the base's value of `key`, the same object each time."""
        return self.shared.frozen_of(self.node.value[key])


def _type_base(site: Site, typedef: TypeDef, top: Node, problems: Collector, session: CompileSession) -> _Base:
    """The base of the type's jobs: the same for every job of the type in a recipe (and every point of a sweep),
    so merged once in a session; merging never mutates a node, and the key's nodes are held so their ids stay
    theirs (a type's layer is its own: the same layer is the same type). A merge with problems is not kept: each
    job reports them as it would alone."""
    bases = session.table("bases")
    key = (id(site.defaults), id(typedef.layer), id(top))
    known = bases.get(key)
    if known is not None:
        return known[3]
    found = Collector()
    base = _Base(merge_layers([site.defaults, typedef.layer, _secrets_replace(top, typedef)], found),
                 session.once("shared", None, _Shared))
    if found.problems:
        problems.problems += found.problems
    else:
        bases[key] = (site.defaults, typedef.layer, top, base)
    return base


class _Draft:
    """A job while it is being resolved; frozen into a ResolvedJob once its defaults are decided."""

    __slots__ = ("base", "data", "name", "node", "removed_secrets", "typedef")

    def __init__(self, name: str, typedef: TypeDef, node: Node, data: dict[str, Any],
                 removed_secrets: frozenset[str], base: _Base) -> None:
        self.name, self.typedef, self.node, self.data, self.removed_secrets = name, typedef, node, data, removed_secrets
        self.base = base


def _frozen_job(draft: _Draft, recipe: str, site: str) -> ResolvedJob:
    data = draft.data
    digest = _job_digest(recipe, site, data, draft.base.shared)
    container = _container(data.get("container"), ("container",))
    sidecars = data.get("sidecars")
    return ResolvedJob(
        name=draft.name,
        typedef=draft.typedef,
        resources=_mapping(data.get("resources")),
        environment=_mapping(data.get("environment")),
        env=_mapping(data.get("env")),
        container=container,
        sidecars=tuple(Sidecar(name, spec.get("when"), _container(spec.get("container"), ("sidecars", name, "container"))
                                or Container(("sidecars", name, "container"), FrozenDict()), _sidecar_metrics(spec))
                       for name, spec in (sidecars.items() if isinstance(sidecars, dict) else ())
                       if isinstance(spec, dict)),
        phases=_mapping(data.get("phases")),
        fields=FrozenDict({k: v for k, v in data.items() if k not in _NOT_FIELDS}),
        job_id=digest[:8],
        digest=digest,
    )


def _sidecar_metrics(spec: Mapping[str, Any]) -> tuple[str, str] | None:
    metrics = spec.get("metrics")
    return (str(metrics["source"]), str(metrics["port"])) if isinstance(metrics, Mapping) else None


_NOT_FIELDS = frozenset(("name", "type", *JOB_KEYS))


def _mapping(value: Any) -> Mapping[str, Any]:
    """A part that should be a mapping (one that is not was reported by its schema)."""
    return value if isinstance(value, dict) else FrozenDict()


def _container(spec: Any, path: tuple[str, ...]) -> Container | None:
    return Container(path, spec) if isinstance(spec, dict) and spec else None


def _secrets_replace(layer: Node, typedef: TypeDef) -> Node:
    """A secret reference replaces the inherited one whole: `{env: X}` must not merge with a default `{file: Y}`."""
    if not typedef.secrets.intersection(layer.value):
        return layer
    return Node({f"{k}!" if k in typedef.secrets else k: v for k, v in layer.value.items()}, layer.loc, layer.key_loc)


def _known_keys(entries: list[tuple[str, Node]], registry: Registry) -> set[str]:
    """Every key some job of the recipe has (a type whose name is wrong is reported elsewhere)."""
    known = set(JOB_KEYS)
    for _, entry in entries:
        type_node = entry.get("type") or entry.get("name")
        try:
            known.update(registry.resolve(str(type_node.value)).fields)  # type: ignore[union-attr]
        except OrchcError:
            pass
    return known


def _usable_settings(settings: Sequence[Setting], jobs: set[str], known: set[str],
                     problems: Collector) -> list[Setting]:
    """The settings that name something a job of the recipe has; a located problem for each other one."""
    usable = []
    for setting in settings:
        path = setting.path
        field = path[1] if path[0] in jobs and len(path) > 1 else path[0]
        where = setting.key_loc or setting.loc
        if field in _IDENTITY:
            problems.add(where, f"the {field} of a job cannot be set with --set; it is what names the job "
                         "in the recipe (change the recipe instead)")
        elif path[0] not in jobs and path[0] not in known:
            hint = did_you_mean(path[0][:100], jobs) or did_you_mean(path[0][:100], known)
            problems.add(where, f"{shorten(path[0])} is neither a job of this recipe nor a field of one{hint} "
                         f"(jobs: {', '.join(sorted(jobs))})")
        else:
            usable.append(setting)
    return usable


def _setting_layers(settings: Sequence[Setting], job: str, jobs: set[str], typedef: TypeDef) -> list[Node]:
    """The `--set` layers of one job: those naming it, and those without a job naming a key it has."""
    layers = []
    for setting in settings:
        path = setting.path
        if path[0] in jobs:
            if path[0] != job:
                continue
            path = path[1:]
        elif path[0] not in typedef.fields and path[0] not in JOB_KEYS:
            continue
        if not path:
            raise OrchcError.at(setting.loc, f"--set {job}=...: name a field of the job, as in --set {job}.FIELD=VALUE")
        if path[0] in typedef.secrets and setting.value_loc is not None:
            conceal(setting.value_loc)
        value: Any = setting.value
        for key in reversed(path):
            value = {key: value}
        layers.append(from_plain(value, setting.loc))
    return layers


def _secret_removals(layers: list[Node], typedef: TypeDef, what: str, problems: Collector) -> set[str]:
    """The secrets a layer removes or empties (each a located problem); every value given to a secret is
    hidden from error excerpts."""
    removed = set()
    for layer in layers:
        for key, child in layer.value.items():
            name, rule = split_key(key)
            if name not in typedef.secrets:
                continue
            for _, leaf in walk_leaves(child):
                text = leaf.value if isinstance(leaf.value, str) else ""
                conceal(leaf.loc, text.count("\n") + 2 if text else 1)
            if child.value is None or rule in ("-", "+"):
                removed.add(name)
                problems.add(child.loc if child.value is None else child.key_loc or child.loc,
                             f"{name} of {what} is a secret and cannot be removed or left empty: give "
                             f"`{name}: {{env: VARIABLE}}` or `{name}: {{file: PATH}}`")
    return removed


def _validated(node: Node, typedef: TypeDef, base: _Base, what: str, problems: Collector,
               removed: set[str]) -> dict[str, Any]:
    """The job's values, read-only, each checked against its schema. Secrets given as literals are left to the
    checks stage, which refuses them with a message of their own."""
    # Values inherited unchanged from the type were checked once, with the type; check the rest. Values of the
    # base (site defaults, type, recipe top) are the same objects for every job of the type in the recipe: being
    # read-only, their frozen form is made once, and once they passed their checks they are not checked again.
    inherited, common = typedef.layer.value, base.node.value
    data: dict[str, Any] = {}
    given = []
    for k, v in node.value.items():
        if common.get(k) is v:
            data[k] = base.frozen_value(k)
            if inherited.get(k) is not v:
                given.append(k)
        else:
            data[k] = v.value if not isinstance(v.value, (dict, list)) else to_frozen(v)
            given.append(k)
    literal_secrets = [k for k in typedef.secrets if isinstance(data.get(k), str)]
    fresh = [k for k in given if k not in literal_secrets and k not in removed]
    if base.passed is not None:
        fresh = [k for k in fresh if k not in base.passed or common[k] is not node.value[k]]
    found = Collector()
    check(node, typedef.job_validator, what, found, instance={k: data[k] for k in fresh}, secrets=typedef.secrets)
    for key in fresh:
        schema = typedef.fields.get(key)
        if schema is not None and key not in typedef.secrets:
            check_characters(node.value[key], (key,), schema.get("multiline") is True, found)
    if not found.problems and base.passed is None:
        base.passed = frozenset(k for k in fresh if common.get(k) is node.value[k])
    problems.problems += found.problems
    return data


_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
_ENCODE_STRING: Callable[[str], str] = json.encoder.encode_basestring_ascii
"""What _ENCODE writes for a str (its ensure_ascii default), without the encoder's dispatch."""


def _default_targets(drafts: list[_Draft]) -> None:
    """A client that names no target targets the recipe's only service (the checks stage reports the rest)."""
    services = [draft.name for draft in drafts if draft.typedef.role == "service"]
    for draft in drafts:
        if draft.typedef.role == "client" and len(services) == 1 \
                and all(draft.data.get(key) is None for key in TARGET_KEYS):
            draft.data["target"] = services[0]


def _job_digest(recipe: str, site: str, data: dict[str, Any], shared: _Shared) -> str:
    """A hash of the resolved job: the same input always yields the same digest. The text hashed is
    `json.dumps({"recipe": recipe, "site": site, "job": data}, sort_keys=True, separators=(",", ":"))`,
    built from the canonical JSON of each value, that of values shared with the type's base written once."""
    members = []
    for key in sorted(data):
        value = data[key]
        kind = type(value)
        if kind is str:
            text = _ENCODE_STRING(value)
        elif kind is int:
            text = int.__repr__(value)
        else:
            text = shared.canonical_of(value) or _ENCODE(value)
        members.append(f"{shared.key_text(key)}:{text}")
    canonical = f'{{"job":{{{",".join(members)}}},"recipe":{_ENCODE(recipe)},"site":{_ENCODE(site)}}}'
    return hashlib.sha256(canonical.encode()).hexdigest()
