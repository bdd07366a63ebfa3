"""What the bash lexer (`shellscan`) reads a shell text into: placeholders, words and simple commands.

`shellscan` fills these in as it reads; `shellcommands` judges what a command does with its
words; `templating.ShellValues` writes each value by its `Use`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MARK = "\x00"
RUN_MARK = "\x00run\x00"
"""What `{{ run }}` renders to while the lexer judges a line: the same for every site (apptainer's
`apptainer exec ... image.sif`, nothing under `native`), so a verdict never depends on the site."""


@dataclass
class Use:
    """One placeholder: how it is quoted, and the reasons a value may not stand there."""

    index: int
    offset: int
    quoting: str
    """bare, dq ("..." and unquoted here-documents), sq, ansi ($'...'), comment, literal (quoted here-document)"""
    refusals: list[str] = field(default_factory=list)
    """why no value at all may stand here (it would be read as code or as a name)"""
    heredoc: tuple[str, bool] | None = None
    """(terminator, tabs stripped) of the quoted here-document it stands in"""
    in_backticks: bool = False
    integer_only: list[str] = field(default_factory=list)
    """why only an integer may stand here (arithmetic)"""
    shell_reach: list[str] = field(default_factory=list)
    """why only an integer may stand here: the text may reach a shell (or another interpreter) as code"""
    plain_only: list[str] = field(default_factory=list)
    """why only an integer or a plain word may stand here: a program orchc cannot follow may read it as code"""
    in_test: bool = False
    """inside [[ ]], where an unquoted word starting with '-' would be read as an operator"""
    split: bool = False
    """inside a $(...) or `...` that is not quoted"""
    splitting: bool = False
    """... and that substitution is (part of) a command word or argument: its output is split and glob-expanded"""


@dataclass
class Word:
    text: str = ""
    """the word as written, placeholders included (quotes and escapes kept out where read)"""
    uses: list[Use] = field(default_factory=list)
    """every placeholder in the word, also those inside its substitutions"""
    quoted: bool = False
    equals: int = -1
    """offset of the first unquoted '=' (an assignment's name ends there); -1 if none"""
    value: str = ""
    """the word after quote removal, up to its first expansion: all of it when `static`"""
    static: bool = True
    """nothing in the word expands (no $, `...`, placeholder, glob, brace or tilde): `value` is what bash passes"""
    run: bool = False
    """the word is `{{ run }}`"""

    def literal(self) -> str | None:
        """The word as the command receives it, if nothing in it expands; else None."""
        return self.value if self.static else None

    def add_literal(self, text: str) -> None:
        self.text += text
        if self.static:
            self.value += text

    def expands(self) -> None:
        self.static = False


@dataclass
class Command:
    words: list[Word] = field(default_factory=list)
    assignments: list[Word] = field(default_factory=list)
    redirects: list[Word] = field(default_factory=list)
    heredoc_uses: list[Use] = field(default_factory=list)
    compound: bool = False
    """the command is a compound one ({ ...; }, ( ... ), if, while, ...): orchc does not name what reads its input"""
    reader: str = "data"
    """what reads the command's standard input, once judged: data, or code (a shell or a program orchc cannot name)"""
