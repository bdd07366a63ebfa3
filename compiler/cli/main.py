"""The `orchc` command line: parse arguments, run the pipeline, map errors to exit codes.

Exit status: 0 success, 1 invalid input (located errors on stderr), 2 wrong usage.
This is the only place that exits; heavy modules are imported by the command that needs them.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from .. import __version__
from ..core.errors import ClusterError, OrchcError, OutputError, UsageError
from .options import add_compile_options as _add_compile_options
from .options import compile_options

if TYPE_CHECKING:
    from ..core.source import Node, Origins
    from ..recipe.resolve import Recipe

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


_COMPILE_SIDE = ("compile", "validate", "show", "types")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line. For `only`, a compile-side command, the run commands are left out: a compile then
    starts without importing or defining them."""
    parser = argparse.ArgumentParser(prog="orchc", description="Compile YAML recipes into sbatch scripts "
                                     "for services and benchmark clients, and run them on SLURM.")
    parser.add_argument("--version", action="version", version=f"orchc {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    compile_ = commands.add_parser("compile", help="compile recipes into sbatch scripts")
    compile_.add_argument("recipes", nargs="+", type=Path, metavar="RECIPE", help="recipe files (YAML)")
    compile_.add_argument("-o", "--output", type=Path, default=Path("build"), metavar="DIR",
                          help="output folder (default: build/); scripts go to DIR/<recipe>/")
    compile_.add_argument("--stdout", action="store_true", help="print the scripts instead of writing files")
    compile_.add_argument("--self-contained", action="store_true",
                          help="put the job runtime into every script instead of one shared file (a script that must travel alone)")
    _add_compile_options(compile_)
    compile_.set_defaults(run=cmd_compile)

    validate = commands.add_parser("validate", help="run every check of compile, write nothing")
    validate.add_argument("recipes", nargs="+", type=Path, metavar="RECIPE", help="recipe files (YAML)")
    _add_compile_options(validate)
    validate.set_defaults(run=cmd_validate)

    show = commands.add_parser("show", help="print the fully resolved jobs of a recipe as YAML")
    show.add_argument("recipe", type=Path, metavar="RECIPE", help="a recipe file (YAML)")
    show.add_argument("--origin", action="store_true", help="annotate each value with the file:line that set it")
    show.add_argument("--points", action="store_true", help="list a sweep's points (swept values) instead of the jobs")
    _add_compile_options(show)
    show.set_defaults(run=cmd_show)

    types = commands.add_parser("types", help="list the available types, or show one type's fields")
    types.add_argument("name", nargs="?", metavar="NAME", help="a type whose fields to show (default: list every type)")
    types.add_argument("--defs", action="append", type=Path, default=[], metavar="DIR",
                       help="a folder of type definitions, searched before the built-ins (repeatable)")
    types.set_defaults(run=cmd_types)

    if only not in _COMPILE_SIDE:
        from .commands import add_commands

        add_commands(commands, _add_compile_options)
    return parser


def cmd_compile(args: argparse.Namespace) -> int:
    from ..output.emit import write_recipes
    from ..output.pipeline import compile_all, resolve_all

    if args.stdout:
        for output in compile_all(args.recipes, compile_options(args)):
            for name, text in sorted(output.files.items()):
                if name.endswith(".sbatch"):
                    sys.stdout.write(f"# ==> {output.recipe.name}/{name} <==\n{text}\n")
        return EXIT_OK
    recipes = resolve_all(args.recipes, compile_options(args))
    written = write_recipes(recipes, args.output, args.self_contained)
    jobs = sum(len(recipe.jobs) for recipe in recipes)
    print(f"compiled {len(recipes)} recipe(s), {jobs} job(s) into {args.output}/ ({written} files)")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from ..output.emit import render_all
    from ..output.pipeline import resolve_all
    from .notes import cost_notes

    recipes = resolve_all(args.recipes, compile_options(args))
    render_all(recipes)
    for recipe in recipes:
        cost = cost_notes(recipe)
        print(f"{recipe.file}: ok ({len(recipe.jobs)} job(s))" + (f"; {cost}" if cost else ""))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from ..core.source import Node
    from ..core.terminal import yaml_lines
    from ..output.pipeline import resolve_all

    recipe = resolve_all([args.recipe], compile_options(args))[0]
    if args.points:
        return _show_points(recipe)
    annotate = (lambda node: str(node.loc)) if args.origin else None
    lines = [_comment(f"# recipe {recipe.name} ({recipe.file}), site {recipe.site.name} ({recipe.site.file})")]
    for job in recipe.jobs:
        origins = recipe.origins[job.name]
        at = origins.loc()
        header = Node({"name": Node(job.name, at), "job_id": Node(job.job_id, at), "role": Node(job.role, at)}, at)
        values = {k: v for k, v in job.values().items() if k != "name"}
        lines.append("---")
        lines += yaml_lines(header) + yaml_lines(_located(values, (), origins), annotate)
    print("\n".join(lines))
    return EXIT_OK


def _show_points(recipe: Recipe) -> int:
    from ..core.terminal import cell, print_table

    if not recipe.points:
        print(f"recipe {recipe.name} has no sweep: one configuration")
        return EXIT_OK
    keys = [key for key, _ in recipe.points[0][1]]
    clients: dict[str, list[str]] = {}
    for job in recipe.jobs:
        if job.point:
            clients.setdefault(job.point, []).append(job.name)
    rows = [[name, *(cell(value) for _, value in values), ", ".join(clients.get(name, []))]
            for name, values in recipe.points]
    print_table(f"{len(recipe.points)} points of recipe {recipe.name}, repeat {recipe.repeat}",
                ["point", *keys, "clients"], rows)
    return EXIT_OK


def _located(value: object, path: tuple[str | int, ...], origins: Origins) -> Node:
    """A value of the resolved job as a Node at the position its origins give (a default orchc decided,
    such as a client's only target, is at the job's own entry)."""
    from ..core.source import Node

    loc = origins.loc(path)
    if isinstance(value, dict):
        return Node({k: _located(v, (*path, k), origins) for k, v in value.items()}, loc)
    if isinstance(value, list):
        return Node([_located(v, (*path, i), origins) for i, v in enumerate(value)], loc)
    return Node(value, loc)


def _comment(text: str) -> str:
    """One line of YAML comment whatever a file name holds: control characters (a newline) become '?'."""
    return "".join(c if c.isprintable() else "?" for c in text)


def cmd_types(args: argparse.Namespace) -> int:
    from ..core.load import new_sources, reading_into

    with reading_into(new_sources()):   # the type files' texts, for its errors' excerpts
        return _list_types(args)


def _list_types(args: argparse.Namespace) -> int:
    from ..core.terminal import print_table
    from ..recipe.typedefs import Registry

    registry = Registry(args.defs)
    if args.name:
        typedef = registry.resolve(args.name)
        print(f"{typedef.name} ({typedef.role}{', abstract' if typedef.abstract else ''}): {typedef.description}")
        print(f"chain: {' -> '.join(typedef.chain)}")
        rows = [[name, _type_label(schema), _default_label(name, schema), schema.get("description", "")]
                for name, schema in sorted(typedef.fields.items())]
        print_table(f"fields of {typedef.name}", ["field", "type", "default", "description"], rows)
        return EXIT_OK
    rows = []
    for name in registry.names():
        typedef = registry.resolve(name)
        parent = typedef.chain[-2] if len(typedef.chain) > 1 else ""
        kind = typedef.role + (" (abstract)" if typedef.abstract else "")
        rows.append([name, parent, kind, typedef.description.split("\n")[0]])
    print_table("orchc types", ["type", "extends", "role", "description"], rows)
    return EXIT_OK


def _type_label(schema: dict) -> str:
    if schema.get("secret"):
        return "secret"
    if "enum" in schema:
        return " | ".join(str(v) for v in schema["enum"])
    if "anyOf" in schema:   # a port: integer | auto
        return " | ".join(_type_label(choice) if "const" not in choice else str(choice["const"]) for choice in schema["anyOf"])
    kind = schema.get("type", "any")
    return " | ".join(kind) if isinstance(kind, list) else str(kind)


def _default_label(name: str, schema: dict) -> str:
    import json

    return json.dumps(schema["default"]) if "default" in schema else "-"


def entry() -> NoReturn:
    """The `orchc` program: main(), then, after a command of the compile side, an exit that skips the
    interpreter's teardown (freeing every object one by one costs a large compile tens of milliseconds; mypy
    exits the same way, `mypy.util.hard_exit`). Those commands close every file they write before main returns."""
    words = sys.argv[1:]
    compile_side = bool(words) and words[0] in _COMPILE_SIDE
    if compile_side:
        # A compile makes many objects and next to no reference cycles: the collector's passes would free
        # nothing (benchmarks/speed.py shows the peak RSS of a 100,000-job sweep with it off).
        gc.disable()
    code = main()
    if compile_side:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BrokenPipeError:
            pass
        os._exit(code)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=words[0] if words else None)
    try:
        args = parser.parse_args(argv)
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except OrchcError as error:
        from ..core.terminal import print_error

        print_error(error)
        return EXIT_INVALID
    except (ClusterError, OutputError) as error:  # may quote a folder's files: control characters are shown escaped
        from ..core.terminal import terminal_text

        print(f"orchc: error: {terminal_text(error, lines=True)}", file=sys.stderr)
        return EXIT_INVALID
    except UsageError as error:
        parser.print_usage(sys.stderr)
        print(f"orchc: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
