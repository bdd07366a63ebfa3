"""The one error type of orchc: a list of problems, each at a source location.

Stages collect every problem they find in a document and raise them together,
so a user fixes a file in one round instead of one error at a time.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .source import SourceLoc, Sources


@dataclass(frozen=True, order=True)
class Problem:
    loc: SourceLoc
    message: str
    related: tuple[SourceLoc, ...] = ()
    topic: str = field(default="", compare=False)
    """what the problem is, without the context that names who met it ("unknown field 'x'" where the message says
    "... in resources of client 'c'"): problems at one location with one topic are one mistake, reported once"""

    def same_mistake(self) -> tuple[SourceLoc, str]:
        return self.loc, self.topic or self.message

    def headline(self) -> str:
        return f"{self.loc}: error: {self.message}"


class OrchcError(Exception):
    """Invalid input. Carries every problem found; the CLI maps it to exit status 1."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = sorted(_once_each(problems))
        self.sources: Sources | None = None
        """the texts of the compile session it left (load.reading_into), for its excerpts"""
        super().__init__("\n".join(p.headline() for p in self.problems))

    @classmethod
    def at(cls, loc: SourceLoc, message: str, related: Iterable[SourceLoc] = ()) -> OrchcError:
        return cls([Problem(loc, message, tuple(related))])


def _once_each(problems: Iterable[Problem]) -> list[Problem]:
    """The first problem of each mistake: a value of the recipe's top level is every job's and every sweep
    point's, and is wrong once."""
    first: dict[tuple[SourceLoc, str], Problem] = {}
    for problem in problems:
        first.setdefault(problem.same_mistake(), problem)
    return list(first.values())


class UsageError(Exception):
    """Wrong use of the command line (exit status 2)."""


class ClusterError(Exception):
    """SLURM is missing or refused a request (exit status 1; there is no source to point at)."""


class OutputError(Exception):
    """An output folder orchc must not or cannot write, or a file in one it cannot read as its own (exit status 1,
    one line naming the file)."""


class Collector:
    """Accumulates problems across a stage and raises them all at the end."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.sources: Sources | None = None
        """the texts an absorbed error carried (it left a compile session), passed on to the error raised"""

    def add(self, loc: SourceLoc, message: str, related: Iterable[SourceLoc] = (), topic: str = "") -> None:
        self.problems.append(Problem(loc, message, tuple(related), topic))

    def absorb(self, error: OrchcError) -> None:
        self.problems.extend(error.problems)
        self.sources = error.sources or self.sources

    def raise_if_any(self) -> None:
        if self.problems:
            error = OrchcError(self.problems)
            error.sources = self.sources
            raise error


def did_you_mean(word: str, choices: Iterable[str], n: int = 1) -> str:
    """A "; did you mean 'x'?" suffix when a close match exists (up to `n` of them, closest first: "'x', 'y' or
    'z'"), else ''."""
    import difflib

    close = [f"'{choice}'" for choice in difflib.get_close_matches(word, sorted(set(choices)), n=n, cutoff=0.6)]
    if not close:
        return ""
    return f"; did you mean {' or '.join([', '.join(close[:-1]), close[-1]] if len(close) > 1 else close)}?"


QUOTE_LIMIT = 60
"""The most characters of a value an error message quotes."""


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxstring = short.maxother = QUOTE_LIMIT
    short.maxlist = short.maxdict = short.maxtuple = 4
    short.maxlevel = 2
    return short


_REPR = _short_repr()


def shorten(value: Any, limit: int = QUOTE_LIMIT, quoted: bool = True) -> str:
    """A value as an error message quotes it: at most about `limit` characters, cut with an ellipsis.

    Costs O(limit) whatever the size of the value, so a 5 MB value gives a short message."""
    if isinstance(value, str):
        cut = value[:limit] + "…" if len(value) > limit else value
        return repr(cut) if quoted else cut
    if isinstance(value, (dict, list, tuple)):
        text = _REPR.repr(value)
        return text if len(text) <= limit * 2 else text[:limit * 2] + "…"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
