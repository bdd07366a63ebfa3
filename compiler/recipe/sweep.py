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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..core.errors import Collector, OrchcError, Problem
from ..core.source import FrozenDict, FrozenList, Node, SourceLoc
from .resolve import Recipe, ResolvedJob, Setting

MAX_POINTS = 10_000
"""More points than this is a located error: each point is a resolved recipe in memory."""
MAX_REPEAT = 1000
"""The recipe schema's maximum of `sweep.repeat`."""
MAX_RUNS = 1_000_000
"""At most this many points x repeats: each is a client job (and script) per client of the recipe."""
MAX_SWEEP_TEXT = 256 * 1024 * 1024
"""At most this many characters of the recipe (its text outside `sweep:`, aliases at full size) times points: each point
resolves, checks and hashes the recipe's jobs again (10,000 points of a recipe of 26 KB)."""
MAX_EXCLUDE_WORK = 10_000_000
"""At most this many lookups to find the excluded points (points x the keys of each distinct set of keys of the rules)."""


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
    the recipe schema; what a schema cannot say (equal zip lengths, excludes of swept keys) is checked here.
    Every bound (repeat, points, points x repeat, the work of the excludes) is checked before anything is expanded."""
    block = doc.get("sweep")
    overrides = [s for s in settings if s.path[0] == "sweep"]
    if block is None and not overrides:
        return None
    where = block.loc if block else SourceLoc(doc.loc.file)
    matrix = _axes(block.get("matrix") if block else None)
    zipped = _axes(block.get("zip") if block else None)
    repeat_node = block.get("repeat") if block else None
    repeat = repeat_node.value if repeat_node is not None and _is_count(repeat_node.value) else 1
    if not 1 <= repeat <= MAX_REPEAT:
        return None                                       # the recipe schema reported it, at the value
    for setting in overrides:
        repeat, bad = _override(setting, matrix, zipped, repeat)
        if bad:
            problems.add(setting.loc, bad)
    lengths = {len(values) for values in zipped.values()}
    if len(lengths) > 1:
        problems.add(next(iter(zipped.values()))[0].loc, "sweep.zip: every key needs the same number of values ("
                     + ", ".join(f"{key}: {len(values)}" for key, values in zipped.items()) + ")")
        return None
    if any(not values for values in [*matrix.values(), *zipped.values()]):
        return None                                       # the recipe schema reported the empty list
    if not _within_bounds(matrix, zipped, repeat, where, problems):
        return None
    axes: list[list[tuple[tuple[str, Node], ...]]] = [[((key, node),) for node in values]
                                                       for key, values in matrix.items()]
    if zipped:
        axes.append([tuple((key, values[i]) for key, values in zipped.items()) for i in range(lengths.pop())])
    count = math.prod(len(axis) for axis in axes)
    excludes = _excludes(block.get("exclude") if block else None, {*matrix, *zipped}, count, problems)
    if excludes is None:
        return None
    combos = (tuple(pair for part in combo for pair in part) for combo in itertools.product(*axes))
    kept = [combo for combo in combos if not excludes.match(combo)]
    if not kept:
        problems.add(where, "the sweep's excludes leave no point to run")
        return None
    size = _text_size(doc, skip="sweep")
    if len(kept) * size > MAX_SWEEP_TEXT:
        problems.add(where, f"the sweep's {len(kept)} points of {size} characters each (the recipe's text outside sweep:) "
                     f"are more than {MAX_SWEEP_TEXT // 1024 // 1024} MiB to resolve (split it into several recipes)")
        return None
    width = max(2, len(str(len(kept))))
    points = tuple(Point(f"p{index:0{width}d}", tuple((key, node.plain()) for key, node in combo),
                         tuple(_setting(key, node) for key, node in combo))
                   for index, combo in enumerate(kept, start=1))
    return Sweep(points, repeat, tuple([*matrix, *zipped]))


def _text_size(doc: Node, skip: str) -> int:
    """The characters of the document's keys and strings (each alias at its full size), but those under `skip`."""
    size = 0
    stack = [child for key, child in doc.value.items() if key != skip] if isinstance(doc.value, dict) else [doc]
    size += sum(len(key) for key in doc.value if key != skip) if isinstance(doc.value, dict) else 0
    while stack:
        value = stack.pop().value
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, dict):
            size += sum(len(str(key)) for key in value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return size


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _within_bounds(matrix: dict[str, list[Node]], zipped: dict[str, list[Node]], repeat: int, where: SourceLoc,
                   problems: Collector) -> bool:
    """Whether the number of points (the product of the axes' lengths, computed, not expanded) and of clients per
    client job (points x repeat) are within bounds; if not, a problem at the axis that crosses the bound."""
    count = 1
    for values in [*matrix.values(), *list(zipped.values())[:1]]:
        count *= len(values)
        if count > MAX_POINTS:
            problems.add(values[0].key_loc or values[0].loc, f"the sweep has more than {MAX_POINTS} points from here on "
                         f"({_product(matrix, zipped)} in all); at most {MAX_POINTS} are allowed (split it into several recipes)")
            return False
    if count * repeat > MAX_RUNS:
        problems.add(where, f"the sweep has {count} points repeated {repeat} times ({count * repeat} runs of each client); "
                     f"at most {MAX_RUNS} are allowed (split it into several recipes)")
        return False
    return True


def _product(matrix: dict[str, list[Node]], zipped: dict[str, list[Node]]) -> int:
    return math.prod(len(values) for values in [*matrix.values(), *list(zipped.values())[:1]])


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
        if _is_count(value) and 1 <= value <= MAX_REPEAT:
            return value, None
        return repeat, f"--set sweep.repeat: expected a whole number from 1 to {MAX_REPEAT}"
    if len(path) > 2 and path[1] in ("matrix", "zip"):
        if not isinstance(value, list) or not value:
            return repeat, f"--set sweep.{path[1]}.{'.'.join(path[2:])}: expected a list of values, as in [1, 2]"
        axes = matrix if path[1] == "matrix" else zipped
        axes[".".join(path[2:])] = [Node(item, setting.value_loc or setting.loc) for item in value]
        return repeat, None
    return repeat, "--set sweep...: expected sweep.repeat=N, sweep.matrix.KEY=[...] or sweep.zip.KEY=[...]"


class _Excludes:
    """The exclude rules indexed by the set of keys each names: a point is looked up once per set of keys (a dict
    of the rules' values per set), not compared with every rule."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, ...], set[tuple[Any, ...]]] = {}

    def add(self, rule: dict[str, Any]) -> None:
        keys = tuple(sorted(rule))
        self.groups.setdefault(keys, set()).add(tuple(_hashable(rule[key]) for key in keys))

    def match(self, combo: tuple[tuple[str, Node], ...]) -> bool:
        if not self.groups:
            return False
        values = {key: _hashable(node.plain()) for key, node in combo}
        return any(tuple(values[key] for key in keys) in rules for keys, rules in self.groups.items())


def _hashable(value: Any) -> Any:
    """A value from YAML as a key that is equal where the value is equal (1 == 1.0, as a rule compared them)."""
    if isinstance(value, list):
        return ("list", tuple(_hashable(item) for item in value))
    if isinstance(value, dict):
        return ("dict", frozenset((key, _hashable(item)) for key, item in value.items()))
    return value


def _excludes(node: Node | None, keys: set[str], points: int, problems: Collector) -> _Excludes | None:
    """The rules, indexed; None when checking them would take more than MAX_EXCLUDE_WORK lookups (points x the keys of
    each distinct set of keys the rules name), with a problem at the rule that crosses the bound."""
    rules = _Excludes()
    work = 0
    for rule in node.value if node is not None and isinstance(node.value, list) else []:
        if not isinstance(rule.value, dict):
            continue
        unknown = [child for key, child in rule.value.items() if key not in keys]
        for key, child in rule.value.items():
            if key not in keys:
                problems.add(child.key_loc or child.loc, f"sweep.exclude: {key} is not a swept key "
                             f"(swept: {', '.join(sorted(keys)) or 'none'})")
        if unknown or not rule.value:
            continue                                      # it can match no point
        if tuple(sorted(rule.value)) not in rules.groups:
            work += points * len(rule.value)
            if work > MAX_EXCLUDE_WORK:
                problems.add(rule.loc, f"sweep.exclude: the rules name {len(rules.groups) + 1} different sets of keys; "
                             f"checking {points} points against them takes more than {MAX_EXCLUDE_WORK} lookups "
                             "(write the rules with fewer different sets of keys)")
                return None
        rules.add({key: child.plain() for key, child in rule.value.items()})
    return rules


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
            problems.problems.append(replace(problem, message=f"{problem.message} (at {point.label(secret)})",
                                                  topic=problem.topic or problem.message))
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
                  allocation=first.allocation, session=first.session)


def _renamed(job: ResolvedJob, name: str, changes: dict[str, Any], point: str | None = None,
             repeat: int | None = None) -> ResolvedJob:
    if name == job.name and not changes:
        return job
    digest = hashlib.sha256(f"{job.digest}\0{name}\0{sorted(changes.items())!r}".encode()).hexdigest()
    return replace(job, name=name, fields=FrozenDict({**job.fields, **changes}), job_id=digest[:8], digest=digest,
                   point=point, repeat=repeat)
