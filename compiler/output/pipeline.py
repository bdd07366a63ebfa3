"""The stages in order, for many recipes:

    load -> resolve -> check -> render -> emit

1. load (load.py): YAML files -> positioned Nodes, with hostile input refused.
2. resolve (resolve.py): each job the merge of its layers, checked against its schema and frozen
   into a ResolvedJob; where each value came from is kept apart, in the recipe's `origins`.
3. check (checks.py): every semantic check (targets, partitions, secrets, environment names,
   phases, containers, ports), located, before anything is rendered.
4. render (render.py): each checked job -> the text of its script.
5. emit (emit.py): the scripts, submit.sh and manifest.json; written by `write_recipes` (rendering one script at a time).

Every recipe is compiled in memory first; problems from all of them are
reported together, and nothing is written unless all succeeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import Collector, OrchcError
from ..core.session import CompileSession
from ..core.source import Node, SourceLoc
from ..recipe.checks import check_recipe
from ..recipe.resolve import Recipe, Setting, load_recipe, resolve_recipe
from ..recipe.typedefs import Registry
from ..script.render import render_recipe
from .emit import Output, build_output


@dataclass
class Options:
    defs: list[Path] = field(default_factory=list)
    site: str | None = None
    settings: list[Setting] = field(default_factory=list)
    self_contained: bool = False   # each script holds the job runtime instead of sourcing the folder's (compile)


def resolve_all(paths: list[Path], options: Options) -> list[Recipe]:
    """load -> resolve -> check: the recipes, every job resolved and checked (what `show` prints).

    One compile session for all of them (session.py): each recipe holds it, so rendering and writing them
    shares its caches; it goes when they go."""
    session = CompileSession()
    with session.active():
        registry = Registry(options.defs)
        problems = Collector()
        recipes: list[Recipe] = []
        for path in paths:
            found = Collector()
            try:
                recipe = _resolved(path, registry, session, options, found)
                if recipe is not None:
                    recipes.append(recipe)
            except OrchcError as error:
                found.absorb(error)
            problems.problems += found.problems
        problems.raise_if_any()
        _check_unique_names(recipes)
    return recipes


def _resolved(path: Path, registry: Registry, session: CompileSession, options: Options,
              problems: Collector) -> Recipe | None:
    """One recipe resolved and checked; a sweep's points each, then combined (sweep.py)."""
    doc = load_recipe(path, problems)
    settings = [setting for setting in options.settings if setting.path[0] != "sweep"]
    sweep = None
    if doc.get("sweep") is not None or len(settings) < len(options.settings):
        from ..recipe.sweep import resolve_sweep, secret_key, sweep_of  # only a sweep needs them: other compiles start sooner

        sweep = sweep_of(doc, options.settings, problems)
    if sweep is None:
        recipe = resolve_recipe(path, registry, options.site, settings, problems, doc, session)
        check_recipe(recipe, problems)
        _check_job_limit(recipe, doc, problems)
        return recipe

    def resolve_point(point: Sequence[Setting], found: Collector) -> Recipe:
        recipe = resolve_recipe(path, registry, options.site, [*settings, *point], found, doc, session)
        found.raise_if_any()
        return recipe

    secrets: list[frozenset[str]] = []

    def secret(key: str) -> bool:  # the types are all read only when a point has an error to name
        if not secrets:
            secrets.append(_secret_fields(registry))
        return secret_key(key, secrets[0])

    swept = resolve_sweep(sweep, resolve_point, check_recipe, problems, secret)
    if swept is not None:
        _check_job_limit(swept, doc, problems)
    return swept


def _check_job_limit(recipe: Recipe, doc: Node, problems: Collector) -> None:
    """A recipe that submits more SLURM jobs than the site lets a user submit is refused (located at its `sweep:`,
    else at its 1:1): sbatch would refuse the rest half-way through submit.sh."""
    limit = recipe.site.limits.get("max_submit")
    if limit is None:
        return
    from ..script.economics import reservations

    jobs = len(reservations(recipe))
    if jobs > limit:
        sweep = doc.get("sweep")
        at = (sweep.key_loc or sweep.loc) if sweep is not None else SourceLoc(recipe.file)
        problems.add(at, f"recipe '{recipe.name}' submits {jobs} SLURM jobs, more than the {limit} site "
                     f"'{recipe.site.name}' lets a user submit (limits.max_submit in {recipe.site.file}): sbatch "
                     "would refuse the rest (a job array's tasks count one by one too); run it as one allocation (allocation: one), "
                     "or with fewer points or repeats")


def _secret_fields(registry: Registry) -> frozenset[str]:
    """The names of the secret fields of every type (a type that does not load has none to hide)."""
    found: set[str] = set()
    for name in registry.names():
        try:
            found |= registry.resolve(name).secrets
        except OrchcError:
            continue
    return frozenset(found)


def compile_all(paths: list[Path], options: Options) -> list[Output]:
    """load -> resolve -> check -> render -> emit, in memory (`compile --stdout`, `submit`); `orchc compile -o`
    streams through `emit.write_recipes` instead."""
    problems = Collector()
    outputs = []
    for recipe in resolve_all(paths, options):
        try:
            outputs.append(build_output(recipe, render_recipe(recipe, options.self_contained), options.self_contained))
        except OrchcError as error:
            problems.absorb(error)
    problems.raise_if_any()
    return outputs


def _check_unique_names(recipes: list[Recipe]) -> None:
    first: dict[str, Recipe] = {}
    problems = Collector()
    for recipe in recipes:
        if recipe.name in first:
            problems.add(SourceLoc(recipe.file), f"recipe name '{recipe.name}' is also the name of "
                         f"{first[recipe.name].file}; both would compile into the same folder")
        first.setdefault(recipe.name, recipe)
    problems.raise_if_any()
