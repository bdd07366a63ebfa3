"""Where each value stands in a shell text: a bash lexer for rendered type templates.

A type's shell line is rendered with every `{{ value }}` replaced by a placeholder
(NUL, number, NUL). `scan()` then reads that text the way bash reads it — words,
quotes, `$(...)`, backticks, `$((...))`, `${...}`, `[[ ]]`, `(( ))`, `case`,
here-documents, comments, pipelines — and says for every placeholder the quoting
it stands in and why, if at all, a value must not stand there (it would name the
command, be evaluated as arithmetic, be read by `eval`, ...). The renderer decides
from that how the value is written (`shellvalues.py`). Text this lexer cannot read
to its end (an unterminated quote, `$(`, here-document) is an error, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise

MARK = "\x00"
_PLACEHOLDER = re.compile("\x00([0-9]+)\x00")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_META = set(" \t\n;&|()<>")
_RESERVED = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}", "time", "function",
             "select", "coproc"}
_SHELLS = {"sh", "bash", "dash", "ksh", "zsh", "mksh", "ash", "busybox"}
_WRAPPERS = {"exec", "command", "builtin", "nohup", "setsid", "env", "nice", "timeout", "stdbuf", "time"}
_CODE_ARGS = {"eval", "let", "source", ".", "trap", "alias", "unset", "read", "readarray", "mapfile", "getopts",
              "unalias", "hash", "enable", "complete", "compgen"}
_DECLARE = {"declare", "typeset", "local", "readonly", "export"}
_ARITH_TESTS = {"-eq", "-ne", "-lt", "-le", "-gt", "-ge"}
_NAME_OPTIONS = {"printf": "-v", "test": "-v", "[": "-v", "wait": "-p"}


class ScanError(Exception):
    """The text cannot be read to its end as bash reads it."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


@dataclass
class Use:
    """One placeholder: how it is quoted, and the reasons a non-integer value may not stand there."""

    index: int
    offset: int
    quoting: str
    """bare, dq ("..." and unquoted here-documents), sq, ansi ($'...'), comment, literal (quoted here-document)"""
    refusals: list[str] = field(default_factory=list)
    heredoc: tuple[str, bool] | None = None
    """(terminator, tabs stripped) of the quoted here-document it stands in"""
    in_backticks: bool = False
    integer_only: list[str] = field(default_factory=list)
    """why only an integer may stand here (arithmetic): the reasons refusals gives for anything"""
    in_test: bool = False
    """inside [[ ]], where an unquoted word starting with '-' would be read as an operator"""
    split: bool = False
    """inside a $(...) or `...` that is not quoted"""
    splitting: bool = False
    """... and that substitution is (part of) a command word or argument: its output is split and glob-expanded"""


@dataclass
class _Word:
    text: str = ""
    uses: list[Use] = field(default_factory=list)
    """every placeholder in the word, also those inside its substitutions"""
    quoted: bool = False
    equals: int = -1
    """offset of the first unquoted '=' (an assignment's name ends there); -1 if none"""


@dataclass
class _Command:
    words: list[_Word] = field(default_factory=list)
    assignments: list[_Word] = field(default_factory=list)
    redirects: list[_Word] = field(default_factory=list)
    heredoc_uses: list[Use] = field(default_factory=list)

    def name(self) -> str:
        return self.words[0].text if self.words and not self.words[0].quoted else ""


@lru_cache(maxsize=8192)
def scan(text: str) -> tuple[Use, ...]:
    """Every placeholder of `text`, in order of appearance."""
    scanner = _Scanner(text)
    scanner.command_list(closers=())
    if scanner.pending:
        raise ScanError(f"here-document without its terminator line {scanner.pending[0][0]!r}", len(text))
    if scanner.pos < len(text):
        raise ScanError(f"unexpected {text[scanner.pos]!r}", scanner.pos)
    uses = sorted(scanner.uses, key=lambda use: use.offset)
    found = [int(m.group(1)) for m in _PLACEHOLDER.finditer(text)]
    if [use.index for use in uses] != found:  # every placeholder must have been read exactly once
        raise ScanError("a value stands where the shell syntax could not be followed", 0)
    return tuple(uses)


class _Scanner:
    def __init__(self, text: str, in_backticks: bool = False):
        self.text = text
        self.pos = 0
        self.uses: list[Use] = []
        self.in_backticks = in_backticks
        self.pending: list[tuple[str, bool, bool, _Command]] = []
        self.forced: list[str] = []  # refusals of the enclosing arithmetic or ${...}

    # -- characters ---------------------------------------------------------------
    def peek(self, ahead: int = 0) -> str:
        index = self.pos + ahead
        return self.text[index] if index < len(self.text) else ""

    def startswith(self, prefix: str) -> bool:
        return self.text.startswith(prefix, self.pos)

    def fail(self, message: str) -> ScanError:
        return ScanError(message, self.pos)

    def placeholder(self, quoting: str, word: _Word | None, **extra: object) -> Use:
        end = self.text.index(MARK, self.pos + 1)
        use = Use(int(self.text[self.pos + 1:end]), self.pos, quoting, integer_only=list(self.forced),
                  in_backticks=self.in_backticks, **extra)  # type: ignore[arg-type]
        if self.pos > 0 and self.text[self.pos - 1] == "\\" and quoting not in ("sq", "literal", "comment"):
            use.refusals.append("it follows a backslash, which would change how it is read")
        self.uses.append(use)
        if word is not None:
            word.uses.append(use)
            word.text += self.text[self.pos:end + 1]
        self.pos = end + 1
        return use

    # -- command lists ------------------------------------------------------------
    def command_list(self, closers: tuple[str, ...]) -> str:
        """Read commands until one of `closers` (')', ';;', 'esac', ']]') or the end; returns the closer met."""
        command = _Command()
        pipeline: list[_Command] = []
        while True:
            self.skip_blanks()
            char = self.peek()
            if not char:
                self.end_command(command, pipeline, final=True)
                return ""
            if char == "#":
                self.comment()
                continue
            if char == "\n":
                self.pos += 1
                self.end_command(command, pipeline, final=True)
                command, pipeline = _Command(), []
                self.read_heredocs()
                continue
            if ";;" in closers and (self.startswith(";;") or self.startswith(";&")):
                self.end_command(command, pipeline, final=True)
                return ";;"
            if char == ")" and ")" in closers:
                self.end_command(command, pipeline, final=True)
                self.pos += 1
                return ")"
            if self.startswith("&>"):
                self.redirect(command)
                continue
            if char in ";&|":
                operator = self.operator()
                final = operator not in ("|", "|&")
                self.end_command(command, pipeline, final=final)
                if not final:
                    pipeline.append(command)
                command = _Command()
                continue
            if char in "<>" and self.peek(1) == "(":
                word = _Word()
                self.pos += 2
                word.uses.extend(self.nested_list())
                self.add_word(command, word)
                continue
            if char in "<>":
                self.redirect(command)
                continue
            if char == "(":
                if not command.words and not command.assignments:
                    self.pos += 1
                    if self.peek() == "(":  # (( arithmetic ))
                        self.pos += 1
                        self.arith("))")
                        continue
                    self.command_list(closers=(")",))
                    continue
                close = self.pos + 1
                while close < len(self.text) and self.text[close] in " \t":
                    close += 1
                if len(command.words) == 1 and not command.assignments and self.text[close:close + 1] == ")":
                    for use in command.words[0].uses:  # name() { ...: a function definition
                        use.refusals.append("it would name a function")
                    self.pos = close + 1
                    command = _Command()
                    continue
                raise self.fail("unexpected '('")
            word = self.word(command)
            if not command.words and not word.quoted and not word.uses:
                if word.text == "esac" and "esac" in closers:
                    self.end_command(command, pipeline, final=True)
                    return "esac"
                if word.text == "]]" and "]]" in closers:
                    return "]]"
                if word.text in _RESERVED:
                    continue
                if word.text == "for":
                    self.for_header()
                    continue
                if word.text == "case":
                    self.case_clause()
                    continue
                if word.text == "[[":
                    self.double_bracket()
                    continue
            self.add_word(command, word)

    def add_word(self, command: _Command, word: _Word) -> None:
        if not command.words and word.equals >= 0 and _ASSIGNMENT.match(word.text):
            for use in word.uses:
                if use.offset < word.equals and not use.integer_only:  # (a subscript is arithmetic: integers only)
                    use.refusals.append("it would be part of a variable name")
            command.assignments.append(word)
        else:
            command.words.append(word)

    def operator(self) -> str:
        for candidate in (";;&", ";;", ";&", "&&", "||", "|&", ";", "&", "|"):
            if self.startswith(candidate):
                self.pos += len(candidate)
                return candidate
        raise self.fail("unexpected operator")

    def redirect(self, command: _Command) -> None:
        if self.startswith("<<<"):
            self.pos += 3
            self.skip_blanks()
            word = self.word(command)
            command.heredoc_uses.extend(word.uses)
            return
        if self.startswith("<<"):
            self.pos += 2
            strip = self.peek() == "-"
            if strip:
                self.pos += 1
            self.skip_blanks()
            start = self.pos
            word = self.word(command)
            for use in word.uses:
                use.refusals.append("it would be part of a here-document's terminator")
            raw = self.text[start:self.pos]
            quoted = any(c in raw for c in "'\"\\")
            terminator = re.sub(r"['\"\\]", "", raw)
            self.pending.append((terminator, strip, quoted, command))
            return
        while self.peek() and self.peek() in "<>&|":
            self.pos += 1
            if self.peek() == "-" and self.text[self.pos - 1] == "&":
                self.pos += 1
        self.skip_blanks()
        if self.peek() and self.peek() not in _META:
            command.redirects.append(self.word(command))

    def skip_escape(self) -> None:
        """Step over a backslash and the character it escapes (a placeholder is left to be read)."""
        self.pos += 1 if self.peek(1) == MARK else 2

    def skip_blanks(self) -> None:
        while True:
            char = self.peek()
            if char in (" ", "\t"):
                self.pos += 1
            elif char == "\\" and self.peek(1) == "\n":
                self.pos += 2
            else:
                return

    def comment(self) -> None:
        while self.peek() and self.peek() != "\n":
            if self.peek() == MARK:
                self.placeholder("comment", None)
            else:
                self.pos += 1

    def read_heredocs(self) -> None:
        pending, self.pending = self.pending, []
        for terminator, strip, quoted, command in pending:
            while True:
                if not self.peek():
                    raise self.fail(f"here-document without its terminator line {terminator!r}")
                end = self.text.find("\n", self.pos)
                end = len(self.text) if end < 0 else end
                line = self.text[self.pos:end]
                if (line.lstrip("\t") if strip else line) == terminator:
                    self.pos = min(end + 1, len(self.text))
                    break
                if quoted:
                    while self.pos < end:
                        if self.peek() == MARK:
                            command.heredoc_uses.append(self.placeholder("literal", None, heredoc=(terminator, strip)))
                        else:
                            self.pos += 1
                else:
                    body = _Word()
                    self.expanding_text(end, body, "dq")
                    for use in body.uses:
                        use.heredoc = (terminator, strip)
                    command.heredoc_uses.extend(body.uses)
                self.pos = min(end + 1, len(self.text))
            self.finish_heredoc_command(command)

    def finish_heredoc_command(self, command: _Command) -> None:
        if command.name() in _SHELLS or command.name() in ("source", ".", "eval"):
            for use in command.heredoc_uses:
                use.refusals.append(f"it would be read as shell code by {command.name()}")

    # -- compound commands -----------------------------------------------------------
    def for_header(self) -> None:
        self.skip_blanks()
        if self.startswith("(("):
            self.pos += 2
            self.arith("))")

    def case_clause(self) -> None:
        command = _Command()
        self.skip_blanks()
        self.word(command)  # the subject: a value there is data
        self.skip_space_and_newlines()
        if self.word(_Command()).text != "in":
            raise self.fail("expected 'in' in case")
        while True:
            self.skip_space_and_newlines()
            if self.peek() == "#":
                self.comment()
                continue
            if not self.peek():
                raise self.fail("case without esac")
            if self.startswith("esac") and (len(self.text) == self.pos + 4 or self.text[self.pos + 4] in _META):
                self.pos += 4
                return
            if self.peek() == "(":
                self.pos += 1
            while True:  # patterns: a value there is matched literally
                self.skip_blanks()
                self.word(_Command())
                self.skip_blanks()
                if self.peek() == "|":
                    self.pos += 1
                    continue
                if self.peek() != ")":
                    raise self.fail("expected ')' after a case pattern")
                self.pos += 1
                break
            closer = self.command_list(closers=(";;", "esac"))
            if closer == ";;":
                self.operator()
            elif closer == "esac":
                return
            else:
                raise self.fail("case without esac")

    def skip_space_and_newlines(self) -> None:
        while self.peek() in (" ", "\t", "\n"):
            if self.peek() == "\n":
                self.pos += 1
                self.read_heredocs()
            else:
                self.pos += 1

    def double_bracket(self) -> None:
        words: list[_Word] = []
        while True:
            self.skip_space_and_newlines()
            char = self.peek()
            if not char:
                raise self.fail("'[[' without ']]'")
            if self.startswith("]]") and (self.pos + 2 == len(self.text) or self.text[self.pos + 2] in _META):
                self.pos += 2
                break
            if self.startswith("&&") or self.startswith("||"):
                self.pos += 2
                words.append(_Word(text="&&"))
                continue
            if char in "()!<>":
                self.pos += 1
                words.append(_Word(text=char))
                continue
            words.append(self.word(_Command()))
        for index, word in enumerate(words):
            before = words[index - 1].text if index else ""
            after = words[index + 1].text if index + 1 < len(words) else ""
            for use in word.uses:
                use.in_test = True
            if before in _ARITH_TESTS or after in _ARITH_TESTS:
                for use in word.uses:
                    use.integer_only.append(f"[[ ... {before if before in _ARITH_TESTS else after} ... ]] evaluates it "
                                            "as arithmetic")
            if before == "-v":
                for use in word.uses:
                    use.refusals.append("[[ -v ]] evaluates it as a variable name")

    # -- words ------------------------------------------------------------------------
    def word(self, command: _Command) -> _Word:
        word = _Word()
        start = self.pos
        while True:
            char = self.peek()
            if char == "(" and word.equals >= 0 and _ASSIGNMENT.fullmatch(word.text):  # name=( array elements )
                self.pos += 1
                self.array_elements(word)
                continue
            if char == "[" and not command.words and not word.quoted and _NAME.fullmatch(word.text):
                self.pos += 1  # name[subscript]=...: bash reads the subscript, blanks and all, as arithmetic
                name = word.text
                self.arith("]", word)
                word.text = name + "[]"
                continue
            if not char or char in _META:
                break
            self.word_part(word, "bare")
        if self.pos == start:
            raise self.fail(f"unexpected {self.peek()!r}")
        return word

    def word_part(self, word: _Word, quoting: str) -> None:
        char = self.peek()
        if char == MARK:
            self.placeholder(quoting, word)
        elif char == "\\":
            step = 1 if self.peek(1) == MARK else 2
            word.text += self.text[self.pos:self.pos + step]
            self.pos += step
        elif char == "'":
            word.quoted = True
            self.single_quoted(word)
        elif char == '"':
            word.quoted = True
            self.pos += 1
            self.expanding_text(None, word, "dq")
        elif char == "`":
            for use in self.backticks(word):
                use.split = True
        elif char == "$":
            self.dollar(word, quoting)
        else:
            if char == "=" and word.equals < 0 and not word.quoted:
                word.equals = self.pos
            word.text += char
            self.pos += 1

    def array_elements(self, word: _Word) -> None:
        while True:
            self.skip_space_and_newlines()
            if not self.peek():
                raise self.fail("array assignment without ')'")
            if self.peek() == ")":
                self.pos += 1
                return
            inner = self.word(_Command())
            word.uses.extend(inner.uses)

    def single_quoted(self, word: _Word) -> None:
        self.pos += 1
        while self.peek() != "'":
            if not self.peek():
                raise self.fail("unterminated single quote")
            if self.peek() == MARK:
                self.placeholder("sq", word)
            else:
                word.text += self.peek()
                self.pos += 1
        self.pos += 1

    def expanding_text(self, end: int | None, word: _Word, quoting: str) -> None:
        """The inside of "..." (end None: up to the closing quote) or of an unquoted here-document line."""
        while True:
            if end is not None and self.pos >= end:
                return
            char = self.peek()
            if not char:
                raise self.fail("unterminated double quote")
            if char == '"' and end is None:
                self.pos += 1
                return
            if char == MARK:
                self.placeholder(quoting, word)
            elif char == "\\":
                self.skip_escape()
            elif char == "`":
                self.backticks(word)
            elif char == "$":
                self.dollar(word, quoting)
            else:
                self.pos += 1

    def dollar(self, word: _Word, quoting: str) -> None:
        nxt = self.peek(1)
        if self.startswith("$(("):
            self.pos += 3
            self.arith("))", word)
        elif nxt == "(":
            self.pos += 2
            nested = self.nested_list()
            if quoting == "bare":
                for use in nested:
                    use.split = True
            word.uses.extend(nested)
        elif nxt == "{":
            self.pos += 2
            self.parameter(word)
        elif nxt == "[":
            self.pos += 2
            self.arith("]", word)
        elif nxt == "'" and quoting == "bare":
            word.quoted = True
            self.pos += 1
            self.ansi_quoted(word)
        elif nxt == MARK:
            self.pos += 1
            self.placeholder(quoting, word).refusals.append("it follows a '$', so it would name a variable to expand")
        else:
            word.text += "$"
            self.pos += 1

    def ansi_quoted(self, word: _Word) -> None:
        self.pos += 1
        while self.peek() != "'":
            if not self.peek():
                raise self.fail("unterminated $'...'")
            if self.peek() == "\\":
                self.skip_escape()
            elif self.peek() == MARK:
                self.placeholder("ansi", word)
            else:
                self.pos += 1
        self.pos += 1

    def nested_list(self) -> list[Use]:
        """A `$(...)`, `<(...)` or `>(...)` body; returns the uses inside it."""
        before = len(self.uses)
        saved, self.pending = self.pending, []
        if self.command_list(closers=(")",)) != ")":
            raise self.fail("unterminated $(")
        self.pending = saved
        return self.uses[before:]

    def parameter(self, word: _Word) -> None:
        self.forced.append("it is inside ${...}, where a value may be evaluated as a name or arithmetic")
        try:
            depth = 1
            while depth:
                char = self.peek()
                if not char:
                    raise self.fail("unterminated ${")
                if char == "}":
                    depth -= 1
                    self.pos += 1
                elif char == "{":
                    depth += 1
                    self.pos += 1
                elif char == MARK:
                    self.placeholder("dq", word)
                elif char == "\\":
                    self.skip_escape()
                elif char == "'":
                    self.single_quoted(_Word())
                elif char == '"':
                    self.pos += 1
                    self.expanding_text(None, word, "dq")
                elif char == "`":
                    self.backticks(word)
                elif char == "$":
                    self.dollar(word, "dq")
                else:
                    self.pos += 1
        finally:
            self.forced.pop()

    def arith(self, closer: str, word: _Word | None = None) -> None:
        self.forced.append("it is evaluated as arithmetic")
        target = word if word is not None else _Word()
        try:
            depth = 0
            while True:
                if not self.peek():
                    raise self.fail(f"unterminated arithmetic (expected {closer!r})")
                if depth == 0 and self.startswith(closer):
                    self.pos += len(closer)
                    return
                char = self.peek()
                if char == "(":
                    depth += 1
                    self.pos += 1
                elif char == ")":
                    depth -= 1
                    self.pos += 1
                elif char == MARK:
                    self.placeholder("bare", target)
                elif char == "$":
                    self.dollar(target, "dq")
                elif char == "`":
                    self.backticks(target)
                elif char == '"':
                    self.pos += 1
                    self.expanding_text(None, target, "dq")
                elif char == "'":
                    self.single_quoted(target)
                elif char == "\\":
                    self.skip_escape()
                else:
                    self.pos += 1
        finally:
            self.forced.pop()

    def backticks(self, word: _Word) -> list[Use]:
        """`...`: its body, with \\\\, \\` and \\$ unescaped, is read again as commands."""
        start = self.pos + 1
        index = start
        body = []
        while True:
            if index >= len(self.text):
                raise self.fail("unterminated backtick")
            char = self.text[index]
            if char == "\\" and index + 1 < len(self.text) and self.text[index + 1] in "\\`$\"":
                body.append(self.text[index + 1])
                index += 2
                continue
            if char == "`":
                break
            body.append(char)
            index += 1
        inner = _Scanner("".join(body), in_backticks=True)
        inner.forced = list(self.forced)
        try:
            inner.command_list(closers=())
        except ScanError as error:
            raise ScanError(f"inside backticks: {error}", start) from None
        for use in inner.uses:
            use.offset = self.text.index(f"{MARK}{use.index}{MARK}", start)
        self.uses.extend(inner.uses)
        word.uses.extend(inner.uses)
        self.pos = index + 1
        return inner.uses

    # -- what a command does with its words --------------------------------------------
    def end_command(self, command: _Command, pipeline: list[_Command], final: bool) -> None:
        if command.words or command.assignments:
            _judge(command)
        self.finish_heredoc_command(command)
        if final and pipeline:
            stages = [*pipeline, command]
            for index, stage in enumerate(stages[1:], start=1):
                if stage.name() in _SHELLS and not any(w.text == "-c" for w in stage.words[1:]) \
                        and len(stage.words) <= 1 + sum(w.text.startswith("-") for w in stage.words[1:]):
                    for earlier in stages[:index]:
                        for word in earlier.words + earlier.assignments:
                            for use in word.uses:
                                use.refusals.append(f"it is piped into {stage.name()}, which reads it as shell code")


def _judge(command: _Command) -> None:
    """Add the refusals that follow from a word's place in its simple command."""
    words = command.words
    for word in words:
        for use in word.uses:
            use.splitting = use.splitting or use.split
    index = 0
    while index < len(words):
        word, name = words[index], words[index].text
        for use in word.uses:
            use.refusals.append("it would name the command to run")
        args = words[index + 1:]
        if name in _WRAPPERS and not word.quoted:
            skip = _wrapper_skip(name, args)
            if skip is None:
                return
            index += 1 + skip
            continue
        _judge_arguments(name if not word.quoted else "", args)
        return


def _wrapper_skip(name: str, args: list[_Word]) -> int | None:
    """How many words after a wrapper (env, timeout, nice, ...) come before the command it runs."""
    skip = 0
    while skip < len(args) and (args[skip].text.startswith("-") or (name == "env" and "=" in args[skip].text)):
        skip += 1
    if name == "timeout":
        skip += 1
    return skip if skip < len(args) else None


def _judge_arguments(name: str, args: list[_Word]) -> None:
    def refuse(words: list[_Word], why: str) -> None:
        for word in words:
            for use in word.uses:
                use.refusals.append(why)

    if name == "let":
        for word in args:
            for use in word.uses:
                use.integer_only.append("'let' evaluates it as arithmetic")
    elif name in _CODE_ARGS:
        refuse(args, f"'{name}' would read it as a name or as code")
    elif name in _DECLARE:
        options = "".join(w.text for w in args if w.text.startswith("-"))
        if "a" in options or "A" in options:
            refuse(args, f"'{name} -a/-A' would evaluate it as an array assignment")
        for word in args:
            assignment = word.equals >= 0 and _ASSIGNMENT.match(word.text) is not None
            for use in word.uses:
                if not assignment or use.offset < word.equals:
                    use.refusals.append(f"'{name}' would read it as a name or an assignment")
    elif name in _SHELLS:
        dash_c = next((i for i, w in enumerate(args) if w.text == "-c"), None)
        if dash_c is not None and dash_c + 1 < len(args):
            refuse([args[dash_c + 1]], f"'{name} -c' would run it as shell code")
        elif dash_c is None:
            script = next((w for w in args if not w.text.startswith("-")), None)
            if script is not None:
                refuse([script], f"'{name}' would run it as a script")
    if name in _NAME_OPTIONS:
        option = _NAME_OPTIONS[name]
        for before, word in pairwise(args):
            if before.text == option:
                refuse([word], f"'{name} {option}' would evaluate it as a variable name")
