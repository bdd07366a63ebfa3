"""One compile's memory (as mypy's BuildManager): every cache that serves a compile lives in the CompileSession
the pipeline creates for it, and goes when the compile's recipes go.

Nothing here is reachable from a module global, so a process that compiles recipe after recipe (a library user,
the tests) does not grow with them, and nothing one compile remembered (a site file, a rendered template) is seen
by the next. The sharing within one compile is what keeps a large compile fast: a template met again renders once
per distinct set of the values it reads, the runtime helpers once per distinct key, a type's base merges once.

Module-level caches that stay are process-wide, bounded and independent of the recipes compiled (the Jinja
environments of orchc's own templates, the shipped schemas and their validators, the YAML parser): each says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from .load import new_sources, reading_into

T = TypeVar("T")


class CompileSession:
    """The caches of one compile. Created by `pipeline.resolve_all` (one for all its recipes, held by each of
    them, so rendering and writing them shares it too); a caller that resolves one recipe alone gets its own.

    A table keyed by `id()` holds the object whose id it is (in its entry), so the id cannot be reused by another
    object while the entry lives; the entries live only as long as the session.
    """

    __slots__ = ("_tables", "caching", "reads", "renders", "scans", "seen", "sources", "templates")

    def __init__(self, caching: bool | None = None) -> None:
        self.caching = not os.environ.get("ORCHC_NO_CACHE") if caching is None else caching
        """ORCHC_NO_CACHE=1 turns off the caches of renders: tests compare the bytes with and without them."""
        self.renders: dict[tuple[Any, ...], tuple[str, tuple[Any, ...]]] = {}
        """a template's render per distinct set of the values it reads (templating._render)"""
        self.seen: set[tuple[str, str]] = set()
        """(kind, source) of the templates rendered once: the second time, a render is worth a key"""
        self.reads: dict[tuple[str, str], Any] = {}
        """(kind, source) -> what the template reads of its context (templating._Reads)"""
        self.templates: dict[tuple[str, str], Any] = {}
        """(kind, source) -> the compiled Jinja template"""
        self.scans: dict[str, Any] = {}
        """a rendered shell text -> its placeholders as the shell lexer reads them (shellscan.scan)"""
        self.sources = new_sources()
        """the text of every file the compile loaded, for error excerpts and template lines"""
        self._tables: dict[str, dict[Any, Any]] = {}

    def active(self) -> AbstractContextManager[None]:
        """Within it, the files loaded are the session's, and an OrchcError that leaves it carries their texts."""
        return reading_into(self.sources)

    def table(self, name: str) -> dict[Any, Any]:
        """The session's table `name` (created empty the first time), for a module that manages its entries."""
        found = self._tables.get(name)
        if found is None:
            found = self._tables[name] = {}
        return found

    def once(self, table: str, key: Hashable, make: Callable[[], T]) -> T:
        """`make()`, made once per key in this session (an error is not kept: the next call makes it again)."""
        entries = self.table(table)
        if key in entries:
            return entries[key]
        value = entries[key] = make()
        return value

    def of_object(self, table: str, holder: Any, make: Callable[[], T]) -> T:
        """`make()`, made once per object `holder` (by identity; the entry holds the object, so its id stays its own)."""
        entries = self.table(table)
        known = entries.get(id(holder))
        if known is None or known[0] is not holder:
            known = entries[id(holder)] = (holder, make())
        return known[1]
