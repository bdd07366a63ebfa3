"""Stage 2, resolve: a recipe -> its jobs, each the merge of every layer that speaks of it.

Layers, lowest precedence first: site profile defaults, the type chain (field
defaults and the type's job keys), the recipe's top level, the job's own entry,
`--set` options. Each resolved value keeps the position of the layer that set
it, so validation errors and `orchc show --origin` can name file:line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from .errors import Collector, OrchcError, did_you_mean
from .load import display_path, load_file, remember_text
from .merge import merge_layers
from .resources import sites_dir
from .source import Node, SourceLoc, from_plain
from .typedefs import Registry, TypeDef
from .validate import check, validator

DEFAULT_SITE = "meluxina"
COMMAND_LINE = "<command line>"
_ENTRY_KEYS = {"service": "service", "services": "service", "client": "client", "clients": "client"}
_TARGET_KEYS = ("target", "target_endpoint", "target_service_id")
_RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class Site:
    name: str
    file: str
    runtime: str
    modules: tuple[str, ...]
    image_dir: str
    partitions: tuple[str, ...]
    defaults: Node = field(repr=False)


@dataclass
class Job:
    name: str
    typedef: TypeDef
    node: Node = field(repr=False)
    """The resolved job with the position of every value."""
    data: dict[str, Any] = field(repr=False)
    job_id: str = ""

    @property
    def role(self) -> str:
        return self.typedef.role


@dataclass
class Recipe:
    name: str
    file: str
    site: Site
    jobs: list[Job]

    def job(self, name: str) -> Job:
        return next(job for job in self.jobs if job.name == name)


@dataclass(frozen=True)
class Setting:
    """One `--set KEY.PATH=VALUE` option."""

    path: tuple[str, ...]
    value: Any
    loc: SourceLoc


def parse_settings(options: list[str]) -> list[Setting]:
    """Parse `--set` options; VALUE is read as YAML (`35` is a number, `[a, b]` a list)."""
    from .errors import UsageError

    remember_text(COMMAND_LINE, "\n".join(f"--set {option}" for option in options))
    settings = []
    for index, option in enumerate(options, start=1):
        key, sep, raw = option.partition("=")
        path = tuple(key.split("."))
        if not sep or not all(path):
            raise UsageError(f"--set {option!r}: expected KEY.PATH=VALUE")
        settings.append(Setting(path, _yaml_scalar(raw), SourceLoc(COMMAND_LINE, index, 7)))
    return settings


def _yaml_scalar(raw: str) -> Any:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        value = YAML(typ="safe", pure=True).load(raw)
    except YAMLError:
        return raw
    return value if isinstance(value, (str, int, float, bool, list, dict)) or value is None else raw


def load_site(ref: str, base: Path, used_at: SourceLoc) -> Site:
    return _load_site_file(Path(os.path.abspath(_site_path(ref, base, used_at))))


@cache
def _load_site_file(path: Path) -> Site:
    doc = load_file(path, "site profile")
    problems = Collector()
    check(doc, validator("site"), f"site '{path.stem}'", problems)
    problems.raise_if_any()
    data = doc.plain()
    defaults = doc.get("defaults") or Node({}, doc.loc)
    return Site(
        name=data["site"],
        file=display_path(path),
        runtime=data["runtime"],
        modules=tuple(data.get("modules", ())),
        image_dir=data.get("image_dir", "$HOME/containers"),
        partitions=tuple(data.get("partitions", ())),
        defaults=defaults,
    )


def _site_path(ref: str, base: Path, used_at: SourceLoc) -> Path:
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        candidate = Path(ref)
        return candidate if candidate.is_absolute() or candidate.exists() else base / candidate
    path = sites_dir() / f"{ref}.yaml"
    if not path.is_file():
        known = [p.stem for p in sites_dir().glob("*.yaml")]
        raise OrchcError.at(used_at, f"unknown site '{ref}'{did_you_mean(ref, known)} (known: {', '.join(sorted(known))})")
    return path


def resolve_recipe(path: Path, registry: Registry, site_ref: str | None = None,
                   settings: Sequence[Setting] = ()) -> Recipe:
    doc = load_file(path, "recipe")
    problems = Collector()
    check(doc, validator("recipe"), "the recipe", problems)
    name = _string(doc.get("name")) or path.stem
    if not _RECIPE_NAME.match(name):
        problems.add(doc.loc, f"the recipe needs a `name:` (its file name '{path.stem}' is not a valid one: "
                     "letters, digits, '_', '.', '-')")
    site_node = doc.get("site")
    try:
        site = load_site(site_ref or _string(site_node) or DEFAULT_SITE, path.parent,
                         site_node.loc if site_node and not site_ref else SourceLoc(COMMAND_LINE))
    except OrchcError as error:
        problems.absorb(error)
        problems.raise_if_any()
    jobs = _resolve_jobs(doc, registry, site, settings, problems)
    _link_targets(jobs, problems)
    problems.raise_if_any()
    for job in jobs:
        job.job_id = _job_id(name, site.name, job.data)
    return Recipe(name=name, file=doc.loc.file, site=site, jobs=jobs)


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
                  problems: Collector) -> list[Job]:
    top = _top_layer(doc)
    seen: dict[str, Node] = {}
    jobs = []
    entries = _entries(doc)
    names = {str((e.get("name") or e.get("type")).value) for _, e in entries}  # type: ignore[union-attr]
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
        overrides = [top, entry, identity, *_setting_layers(settings, name, names)]
        layers = [site.defaults, typedef.layer, *(_secrets_replace(layer, typedef) for layer in overrides)]
        node = replace(merge_layers(layers, problems), loc=entry.loc)
        data = _checked(node, typedef, site, f"{role} '{name}'", problems)
        jobs.append(Job(name=name, typedef=typedef, node=node, data=data))
    return jobs


def _secrets_replace(layer: Node, typedef: TypeDef) -> Node:
    """A secret reference replaces the inherited one whole: `{env: X}` must not merge with a default `{file: Y}`."""
    if not typedef.secrets.intersection(layer.value):
        return layer
    return Node({f"{k}!" if k in typedef.secrets else k: v for k, v in layer.value.items()}, layer.loc, layer.key_loc)


def _setting_layers(settings: Sequence[Setting], job: str, jobs: set[str]) -> list[Node]:
    layers = []
    for setting in settings:
        path = setting.path
        if path[0] in jobs:
            if path[0] != job:
                continue
            path = path[1:]
        if not path:
            raise OrchcError.at(setting.loc, f"--set {job}=...: name a field of the job, as in --set {job}.FIELD=VALUE")
        value: Any = setting.value
        for key in reversed(path):
            value = {key: value}
        layers.append(from_plain(value, setting.loc))
    return layers


def _checked(node: Node, typedef: TypeDef, site: Site, what: str, problems: Collector) -> dict[str, Any]:
    literal_secrets = [k for k in typedef.secrets if k in node.value and isinstance(node.value[k].value, str)]
    for key in literal_secrets:
        problems.add(node.value[key].loc, f"{key} of {what} is a secret and is never written into a script: "
                     f"write `{key}: {{env: VARIABLE}}` (read from the environment when the job runs) or "
                     f"`{key}: {{file: $HOME/.orchc/{key}}}` (a mode 0600 file, created with a random value if missing)")
    # Values inherited unchanged from the type were checked once, with the type; check the rest.
    data = node.plain()
    inherited = typedef.layer.value
    fresh = [k for k, v in node.value.items() if k not in literal_secrets and inherited.get(k) is not v]
    check(node, typedef.job_validator, what, problems, instance={k: data[k] for k in fresh})
    partition = node.at(("resources", "partition"))
    resources = data.get("resources")
    if site.partitions and isinstance(resources, dict) and resources.get("partition") not in (None, *site.partitions):
        problems.add(partition.loc, f"resources.partition: site '{site.name}' has no partition "
                     f"{partition.value!r} (it has: {', '.join(site.partitions)})")
    return data


def _link_targets(jobs: list[Job], problems: Collector) -> None:
    services = {job.name: job for job in jobs if job.role == "service"}
    for client in (job for job in jobs if job.role == "client"):
        given = [key for key in _TARGET_KEYS if client.data.get(key) is not None]
        if not given and len(services) == 1:
            client.data["target"] = next(iter(services))
        elif not given:
            problems.add(client.node.loc, f"client '{client.name}' needs one of target (a service of this recipe), "
                         "target_endpoint (host:port or URL) or target_service_id (a running SLURM job)")
        elif len(given) > 1:
            problems.add(client.node.at((given[1],)).loc,
                         f"client '{client.name}' gives {' and '.join(given)}; give only one")
        elif given == ["target"] and isinstance(client.data["target"], str) and client.data["target"] not in services:
            target = client.node.at(("target",))
            problems.add(target.loc, f"client '{client.name}' targets '{target.value}', which is not a service of "
                         f"this recipe{did_you_mean(str(target.value), services)}")


def _job_id(recipe: str, site: str, data: dict[str, Any]) -> str:
    """A short hash of the resolved job: the same input always yields the same id."""
    canonical = json.dumps({"recipe": recipe, "site": site, "job": data}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]
