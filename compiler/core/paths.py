"""Where the data that ships with orchc lives: schemas, built-in types, sites, templates.

A wheel carries them inside the package (`compiler/_data/...`); a source checkout
keeps them at the repository root, beside the package.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


@cache
def data_dir(name: str) -> Path:
    packaged = _PACKAGE / "_data" / name
    return packaged if packaged.is_dir() else _PACKAGE.parent / name


def schemas_dir() -> Path:
    return data_dir("schemas")


def builtin_types_dir() -> Path:
    return data_dir("service_defs")


def sites_dir() -> Path:
    return data_dir("sites")


def templates_dir() -> Path:
    return _PACKAGE / "script" / "templates"
