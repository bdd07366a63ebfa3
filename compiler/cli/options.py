"""The compile options shared by `compile`, `validate`, `show`, `types` and `submit`.

A module of its own so that the CLI and the run commands (lifecycle.py) both use
it without importing each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..output.pipeline import Options


def add_compile_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--defs", action="append", type=Path, default=[], metavar="DIR",
                        help="a folder of type definitions, searched before the built-ins (repeatable)")
    parser.add_argument("--site", metavar="NAME|PATH", help="site profile (overrides the recipe's `site`)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a value: JOB.key.path=VALUE for one job, key.path=VALUE for all (repeatable)")


def compile_options(args: argparse.Namespace) -> Options:
    from ..output.pipeline import Options
    from ..recipe.resolve import parse_settings

    return Options(defs=args.defs, site=args.site, settings=parse_settings(args.settings))
