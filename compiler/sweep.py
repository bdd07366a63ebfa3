"""Sweeps: one recipe, many configurations (between load and resolve).

A recipe's `sweep:` block names values for `--set`-style keys (`JOB.field.path`, or `field.path` for
every job that has the field):

    sweep:
      matrix: {bench.clients: [10, 50], bench.pipeline: [1, 16]}   # Cartesian product
      zip: {bench.data_size: [3, 1024], bench.requests: [1e5, 2e4]} # varied together: one axis
      exclude: [{bench.clients: 50, bench.pipeline: 1}]             # points left out (partial match)
      repeat: 3                                                     # each point this many times

Each point is resolved and checked on its own, as if its values had been given with --set, and a
problem is reported once, naming the first point it occurs at. Then the points become one recipe:
a service job whose resolved configuration is the same at several points is one job (`redis`; several
configurations become `redis-c1`, `redis-c2`, ...), and every client is repeated per point and repeat
(`bench-p01-r1`, ...). The order of the clients is the points' order, repeats back to back; clients of
one service run one after another (`after`, see `client_order`).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .errors import Collector, OrchcError, Problem
from .resolve import Recipe, ResolvedJob, Setting
from .source import FrozenDict, FrozenList, Node, SourceLoc

MAX_POINTS = 10_000
"""More points than this is a located error: each point is a resolved recipe in memory."""


@dataclass(frozen=True)
class Point:
    name: str
    """p01, p02, ... (as wide as the number of points needs, at least two digits)"""
    values: tuple[tuple[str, Any], ...]
    """swept key -> value, in the order of the sweep block"""
    settings: tuple[Setting, ...]

    def label(self, secret: Callable[[str], bool] = lambda key: False) -> str:
        """How errors name the point; the value of a key that `secret` says names a secret is `<secret>`."""
        shown = ", ".join(f"{key}={'<secret>' if secret(key) else repr(value)}" for key, value in self.values)
        return f"sweep point {self.name} ({shown})" if shown else f"sweep point {self.name}"


@dataclass(frozen=True)
class Sweep:
    points: tuple[Point, ...]
    repeat: int
    keys: tuple[str, ...]


def sweep_of(doc: Node, settings: Sequence[Setting], problems: Collector) -> Sweep | None:
    """The recipe's sweep (with `--set sweep.…` applied); None when it has none. Its shape was checked by
    the recipe schema; what a schema cannot say (equal zip lengths, excludes of swept keys) is checked here."""
    block = doc.get("sweep")
    overrides = [s for s in settings if s.path[0] == "sweep"]
    if block is None and not overrides:
        return None
    matrix = _axes(block.get("matrix") if block else None)
    zipped = _axes(block.get("zip") if block else None)
    repeat_node = block.get("repeat") if block else None
    repeat = repeat_node.value if repeat_node is not None and isinstance(repeat_node.value, int) else 1
    for setting in overrides:
        repeat, bad = _override(setting, matrix, zipped, repeat)
        if bad:
            problems.add(setting.loc, bad)
    lengths = {len(values) for values in zipped.values()}
    if len(lengths) > 1:
        where = next(iter(zipped.values()))[0].loc
        problems.add(where, "sweep.zip: every key needs the same number of values ("
                     + ", ".join(f"{key}: {len(values)}" for key, values in zipped.items()) + ")")
        return None
    if any(not values for values in [*matrix.values(), *zipped.values()]):
        return None                                       # the recipe schema reported the empty list
    axes: list[list[tuple[tuple[str, Node], ...]]] = [[((key, node),) for node in values]
                                                       for key, values in matrix.items()]
    if zipped:
        axes.append([tuple((key, values[i]) for key, values in zipped.items()) for i in range(lengths.pop())])
    count = 1
    for axis in axes:
        count *= len(axis)
    if count > MAX_POINTS:
        problems.add(block.loc if block else SourceLoc(doc.loc.file), f"the sweep has {count} points; at most "
                     f"{MAX_POINTS} are allowed (split it into several recipes)")
        return None
    excludes = _excludes(block.get("exclude") if block else None, {*matrix, *zipped}, problems)
    combos = [tuple(pair for part in combo for pair in part) for combo in itertools.product(*axes)]
    kept = [combo for combo in combos if not any(_matches(combo, rule) for rule in excludes)]
    if not kept:
        problems.add(block.loc if block else SourceLoc(doc.loc.file), "the sweep's excludes leave no point to run")
        return None
    width = max(2, len(str(len(kept))))
    points = tuple(Point(f"p{index:0{width}d}", tuple((key, node.plain()) for key, node in combo),
                         tuple(_setting(key, node) for key, node in combo))
                   for index, combo in enumerate(kept, start=1))
    return Sweep(points, repeat, tuple([*matrix, *zipped]))


def _axes(node: Node | None) -> dict[str, list[Node]]:
    """Swept key -> its values; each value Node carries the key's position as its key_loc."""
    if node is None or not isinstance(node.value, dict):
        return {}
    return {key: [replace(item, key_loc=child.key_loc) for item in child.value]
            for key, child in node.value.items() if isinstance(child.value, list)}


def _override(setting: Setting, matrix: dict[str, list[Node]], zipped: dict[str, list[Node]],
              repeat: int) -> tuple[int, str | None]:
    """`--set sweep.repeat=N`, `--set sweep.matrix.KEY.PATH=[...]`, `--set sweep.zip.KEY.PATH=[...]`."""
    path, value = setting.path, setting.value
    if path == ("sweep", "repeat"):
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000:
            return value, None
        return repeat, "--set sweep.repeat: expected a whole number from 1 to 1000"
    if len(path) > 2 and path[1] in ("matrix", "zip"):
        if not isinstance(value, list) or not value:
            return repeat, f"--set sweep.{path[1]}.{'.'.join(path[2:])}: expected a list of values, as in [1, 2]"
        axes = matrix if path[1] == "matrix" else zipped
        axes[".".join(path[2:])] = [Node(item, setting.value_loc or setting.loc) for item in value]
        return repeat, None
    return repeat, "--set sweep...: expected sweep.repeat=N, sweep.matrix.KEY=[...] or sweep.zip.KEY=[...]"


def _excludes(node: Node | None, keys: set[str], problems: Collector) -> list[dict[str, Any]]:
    rules = []
    for rule in node.value if node is not None and isinstance(node.value, list) else []:
        if not isinstance(rule.value, dict):
            continue
        for key, child in rule.value.items():
            if key not in keys:
                problems.add(child.key_loc or child.loc, f"sweep.exclude: {key} is not a swept key "
                             f"(swept: {', '.join(sorted(keys)) or 'none'})")
        rules.append({key: child.plain() for key, child in rule.value.items()})
    return rules


def _matches(combo: tuple[tuple[str, Node], ...], rule: dict[str, Any]) -> bool:
    values = {key: node.plain() for key, node in combo}
    return all(key in values and values[key] == value for key, value in rule.items())


def _setting(key: str, node: Node) -> Setting:
    return Setting(tuple(key.split(".")), node.plain(), node.loc, node.loc, node.key_loc)


def secret_key(key: str, secrets: frozenset[str]) -> bool:
    """Whether swept key `JOB.field.path` or `field.path` names a secret field (`secrets`: the secret field names
    of every type; a field that is a secret of some type is hidden in any job: errors never show a secret)."""
    parts = key.split(".")
    return parts[0] in secrets or (len(parts) > 1 and parts[1] in secrets)


def resolve_sweep(sweep: Sweep, resolve: Callable[[Sequence[Setting], Collector], Recipe],
                  check: Callable[[Recipe, Collector], None], problems: Collector,
                  secret: Callable[[str], bool] = lambda key: False) -> Recipe | None:
    """Every point resolved and checked (its problems named by point, each once, the values of secret keys
    hidden), then one recipe."""
    seen: dict[Problem, int] = {}
    resolved: list[tuple[Point, Recipe]] = []
    for point in sweep.points:
        found = Collector()
        try:
            recipe = resolve(point.settings, found)
            check(recipe, found)
            resolved.append((point, recipe))
        except OrchcError as error:
            found.absorb(error)
        for problem in found.problems:
            if problem in seen:
                seen[problem] += 1
                continue
            seen[problem] = 0
            problems.problems.append(replace(problem, message=f"{problem.message} (at {point.label(secret)})"))
    if seen:
        return None
    return combine(resolved, sweep.repeat)


def combine(resolved: list[tuple[Point, Recipe]], repeat: int) -> Recipe:
    """The points' recipes as one: shared service jobs, and each client per point and repeat."""
    first = resolved[0][1]
    configs: dict[str, dict[str, int]] = {}   # service -> its distinct digests, numbered in order of appearance
    for _, recipe in resolved:
        for job in recipe.jobs:
            if job.role == "service":
                known = configs.setdefault(job.name, {})
                known.setdefault(job.digest, len(known) + 1)

    def service_name(job: ResolvedJob) -> str:
        known = configs[job.name]
        return job.name if len(known) == 1 else f"{job.name}-c{known[job.digest]}"

    jobs: dict[str, ResolvedJob] = {}
    origins, removed = {}, {}
    for point, recipe in resolved:
        services = {job.name: service_name(job) for job in recipe.jobs if job.role == "service"}
        for job in recipe.jobs:
            if job.role == "service" and services[job.name] not in jobs:
                jobs[services[job.name]] = _renamed(job, services[job.name], {})
                origins[services[job.name]] = recipe.origins[job.name]
                removed[services[job.name]] = recipe.removed_secrets.get(job.name, frozenset())
        for count in range(1, repeat + 1):
            suffix = f"-{point.name}-r{count}"
            for job in recipe.jobs:
                if job.role != "client":
                    continue
                changes: dict[str, Any] = {}
                if job.target in services:
                    changes["target"] = services[job.target]
                after = job.fields.get("after")
                if after is not None:
                    changes["after"] = FrozenList([f"{other}{suffix}" for other in after])
                new = f"{job.name}{suffix}"
                jobs[new] = _renamed(job, new, changes, point.name, count)
                origins[new] = recipe.origins[job.name]
                removed[new] = recipe.removed_secrets.get(job.name, frozenset())
    return Recipe(name=first.name, file=first.file, site=first.site, jobs=tuple(jobs.values()), origins=origins,
                  removed_secrets=removed, references=first.references,
                  points=tuple((point.name, point.values) for point, _ in resolved), repeat=repeat,
                  allocation=first.allocation)


def _renamed(job: ResolvedJob, name: str, changes: dict[str, Any], point: str | None = None,
             repeat: int | None = None) -> ResolvedJob:
    if name == job.name and not changes:
        return job
    digest = hashlib.sha256(f"{job.digest}\0{name}\0{sorted(changes.items())!r}".encode()).hexdigest()
    return replace(job, name=name, fields=FrozenDict({**job.fields, **changes}), job_id=digest[:8], digest=digest,
                   point=point, repeat=repeat)
