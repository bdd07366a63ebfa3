"""The stages in order: load -> resolve -> validate -> render -> emit, for many recipes.

Every recipe is compiled in memory first; problems from all of them are
reported together, and nothing is written unless all succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .emit import Output, build_output
from .errors import Collector, OrchcError
from .resolve import Recipe, Setting, resolve_recipe
from .source import SourceLoc
from .typedefs import Registry


@dataclass
class Options:
    defs: list[Path] = field(default_factory=list)
    site: str | None = None
    settings: list[Setting] = field(default_factory=list)


def resolve_all(paths: list[Path], options: Options) -> list[Recipe]:
    registry = Registry(options.defs)
    problems = Collector()
    recipes: list[Recipe] = []
    for path in paths:
        try:
            recipes.append(resolve_recipe(path, registry, options.site, options.settings))
        except OrchcError as error:
            problems.absorb(error)
    problems.raise_if_any()
    _check_unique_names(recipes)
    return recipes


def compile_all(paths: list[Path], options: Options) -> list[Output]:
    problems = Collector()
    outputs = []
    for recipe in resolve_all(paths, options):
        try:
            outputs.append(build_output(recipe))
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
