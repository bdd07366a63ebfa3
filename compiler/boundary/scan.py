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

from .commands import judge
from .words import MARK, RUN_MARK, Command, Use, Word

__all__ = ["MARK", "RUN_MARK", "ScanError", "Use", "scan"]
_PLACEHOLDER = re.compile("\x00([0-9]+)\x00")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_META = set(" \t\n;&|()<>")
_RESERVED = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}", "time", "function",
             "coproc"}
_ARITH_TESTS = {"-eq", "-ne", "-lt", "-le", "-gt", "-ge"}
_OPENERS = {"{", "if", "while", "until"}
_CLOSERS = {"}", "fi", "done"}


class ScanError(Exception):
    """The text cannot be read to its end as bash reads it."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


def scan(text: str) -> tuple[Use, ...]:
    """Every placeholder of `text`, in order of appearance."""
    scanner = _Scanner(text)
    scanner.command_list(closers=())
    scanner.end_statement()
    if scanner.taint_all:
        raise ScanError(f"{scanner.taint_all}: orchc cannot follow what other lines write to it; give the shell its "
                        "input where it starts (a here-document) or pass values in the environment", 0)
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
        self.pending: list[tuple[str, bool, bool, Command]] = []
        self.forced: list[str] = []  # refusals of the enclosing arithmetic or ${...}
        # A statement is a top-level complete command (a compound one with all its lines, and its here-documents):
        # when a shell, or a command orchc cannot name, reads what another part of it writes, no value in it is data.
        self.depth = 0      # open compound commands (if, while, {, ...) of the statement
        self.nesting = 0    # command lists inside $(...), ( ... ), case
        self.statement_start = 0
        self.statement_taint = ""   # a pipe into a reader of code
        self.statement_fed = False  # a pipe or here-document into a compound command
        self.statement_code = False  # some command of the statement reads code
        self.statement_coproc = False
        self.code_readers = 0
        self.taint_all = ""  # a reader of code fed by a process substitution or a coprocess: every value is code

    # -- characters ---------------------------------------------------------------
    def peek(self, ahead: int = 0) -> str:
        index = self.pos + ahead
        return self.text[index] if index < len(self.text) else ""

    def startswith(self, prefix: str) -> bool:
        return self.text.startswith(prefix, self.pos)

    def fail(self, message: str) -> ScanError:
        return ScanError(message, self.pos)

    def placeholder(self, quoting: str, word: Word | None, **extra: object) -> Use:
        if self.startswith(RUN_MARK):
            raise self.fail("{{ run }} can only start a command, as a word of its own (unquoted)")
        end = self.text.index(MARK, self.pos + 1)
        use = Use(int(self.text[self.pos + 1:end]), self.pos, quoting, integer_only=list(self.forced),
                  in_backticks=self.in_backticks, **extra)  # type: ignore[arg-type]
        if self.pos > 0 and self.text[self.pos - 1] == "\\" and quoting not in ("sq", "literal", "comment"):
            use.refusals.append("it follows a backslash, which would change how it is read")
        self.uses.append(use)
        if word is not None:
            word.uses.append(use)
            word.text += self.text[self.pos:end + 1]
            word.expands()
        self.pos = end + 1
        return use

    # -- command lists ------------------------------------------------------------
    def command_list(self, closers: tuple[str, ...]) -> str:
        """Read commands until one of `closers` (')', ';;', 'esac', ']]') or the end; returns the closer met."""
        command = Command()
        pipeline: list[Command] = []
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
                command, pipeline = Command(), []
                self.read_heredocs()
                if self.depth == 0 and self.nesting == 0:
                    self.end_statement()
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
                if final:
                    pipeline = []
                else:
                    pipeline.append(command)
                command = Command()
                continue
            if char in "<>" and self.peek(1) == "(":
                self.add_word(command, self.process_substitution())
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
                    command.compound = True
                    self.nested_commands((")",))
                    continue
                close = self.pos + 1
                while close < len(self.text) and self.text[close] in " \t":
                    close += 1
                if len(command.words) == 1 and not command.assignments and self.text[close:close + 1] == ")":
                    for use in command.words[0].uses:  # name() { ...: a function definition
                        use.refusals.append("it would name a function")
                    self.pos = close + 1
                    command = Command()
                    continue
                raise self.fail("unexpected '('")
            if self.startswith(RUN_MARK):
                self.pos += len(RUN_MARK)
                if self.peek() and self.peek() not in _META:
                    raise self.fail("{{ run }} can only start a command, as a word of its own (unquoted)")
                self.add_word(command, Word(text=RUN_MARK, static=False, run=True))
                continue
            word = self.word(command)
            if not command.words and not word.quoted and not word.uses:
                if word.text == "esac" and "esac" in closers:
                    self.end_command(command, pipeline, final=True)
                    return "esac"
                if word.text == "]]" and "]]" in closers:
                    return "]]"
                if word.text in _OPENERS:
                    self.depth += 1
                    command.compound = True
                    continue
                if word.text in _CLOSERS:
                    self.depth = max(self.depth - 1, 0)
                    continue
                if word.text == "coproc":
                    self.statement_coproc = True
                    continue
                if word.text in _RESERVED:
                    continue
                if word.text in ("for", "select"):
                    self.depth += 1
                    command.compound = True
                    self.for_header()
                    continue
                if word.text == "case":
                    command.compound = True
                    self.nesting += 1
                    try:
                        self.case_clause()
                    finally:
                        self.nesting -= 1
                    continue
                if word.text == "[[":
                    self.double_bracket()
                    continue
            self.add_word(command, word)

    def add_word(self, command: Command, word: Word) -> None:
        if not command.words and word.equals >= 0 and _ASSIGNMENT.match(word.text):
            command.assignments.append(word)
        else:
            command.words.append(word)

    def operator(self) -> str:
        for candidate in (";;&", ";;", ";&", "&&", "||", "|&", ";", "&", "|"):
            if self.startswith(candidate):
                self.pos += len(candidate)
                return candidate
        raise self.fail("unexpected operator")

    def redirect(self, command: Command) -> None:
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
            if "$" in raw or "`" in raw or word.uses:
                raise ScanError("a here-document's delimiter must be a plain word, or one in quotes ('EOF', \"EOF\")",
                                start)
            quoted = any(c in raw for c in "'\"\\")
            terminator = re.sub(r"['\"\\]", "", raw)
            self.pending.append((terminator, strip, quoted, command))
            return
        start = self.pos
        while self.peek() and self.peek() in "<>&|":
            self.pos += 1
            if self.peek() == "-" and self.text[self.pos - 1] == "&":
                self.pos += 1
        reads = "<" in self.text[start:self.pos]
        self.skip_blanks()
        target = None
        if self.peek() in ("<", ">") and self.peek(1) == "(":  # < <(command): a redirection from its output
            target = self.process_substitution()
        elif self.peek() and self.peek() not in _META:
            target = self.word(command)
        if target is not None:
            command.redirects.append(target)
            if reads:  # standard input: what the command's reader takes, like a here-document
                command.heredoc_uses.extend(target.uses)

    def process_substitution(self) -> Word:
        """<(...) or >(...): a word naming a pipe; a shell reading what is written to >(...) is refused."""
        writes = self.peek() == ">"
        word = Word()
        word.expands()
        self.pos += 2
        readers = self.code_readers
        word.uses.extend(self.nested_list())
        if writes and self.code_readers > readers:
            self.taint_all = "a shell (or a program orchc cannot name) reads what is written to >(...)"
        return word

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
                    body = Word()
                    self.expanding_text(end, body, "dq")
                    for use in body.uses:
                        use.heredoc = (terminator, strip)
                    command.heredoc_uses.extend(body.uses)
                self.pos = min(end + 1, len(self.text))
            self.finish_heredoc_command(command)

    def finish_heredoc_command(self, command: Command) -> None:
        """A here-document or here-string is the command's standard input: code if its reader runs code."""
        if not command.heredoc_uses:
            return
        if command.reader == "code":
            for use in command.heredoc_uses:
                use.shell_reach.append("it is the standard input of a shell (or of a command orchc cannot name), "
                                       "which reads it as code")
        elif not command.words and not command.assignments:
            self.statement_fed = True  # the input of a compound command: code if anything in the statement reads code

    # -- compound commands -----------------------------------------------------------
    def for_header(self) -> None:
        """`for ((...))`, or `for NAME [in WORDS]`: the name is a name, the words are data (split and globbed
        where unquoted, as a command's arguments are); the loop's body follows as commands."""
        self.skip_blanks()
        if self.startswith("(("):
            self.pos += 2
            self.arith("))")
            return
        name = self.word(Command())
        for use in name.uses:
            use.refusals.append("it would name the loop's variable")
        self.skip_space_and_newlines()
        if not self.startswith("in") or (self.pos + 2 < len(self.text) and self.text[self.pos + 2] not in _META):
            return
        self.pos += 2
        while True:
            self.skip_blanks()
            if not self.peek() or self.peek() in ";\n&|)":
                return
            if self.peek() == "#":
                self.comment()
                return
            for use in self.word(Command()).uses:
                use.splitting = use.splitting or use.split

    def case_clause(self) -> None:
        command = Command()
        self.skip_blanks()
        self.word(command)  # the subject: a value there is data
        self.skip_space_and_newlines()
        if self.word(Command()).text != "in":
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
                self.word(Command())
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
        words: list[Word] = []
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
                words.append(Word(text="&&"))
                continue
            if char in "()!<>":
                self.pos += 1
                words.append(Word(text=char))
                continue
            words.append(self.word(Command()))
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
    def word(self, command: Command) -> Word:
        word = Word()
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
                word.expands()
                continue
            if not char or char in _META:
                break
            self.word_part(word, "bare")
        if self.pos == start:
            raise self.fail(f"unexpected {self.peek()!r}")
        return word

    def word_part(self, word: Word, quoting: str) -> None:
        char = self.peek()
        if char == MARK:
            self.placeholder(quoting, word)
        elif char == "\\":
            step = 1 if self.peek(1) == MARK else 2
            word.text += self.text[self.pos:self.pos + step]
            if step == 2 and self.peek(1) != "\n" and word.static:
                word.value += self.peek(1)
            self.pos += step
        elif char == "'":
            word.quoted = True
            self.single_quoted(word)
        elif char == '"':
            word.quoted = True
            self.pos += 1
            self.expanding_text(None, word, "dq")
        elif char == "`":
            word.expands()
            for use in self.backticks(word):
                use.split = True
        elif char == "$":
            self.dollar(word, quoting)
        else:
            if char == "=" and word.equals < 0 and not word.quoted:
                word.equals = self.pos
            tilde = char == "~" and not word.text
            word.add_literal(char)
            if char in "*?" or tilde or (char == "]" and "[" in word.text[:-1]) or (
                    char == "}" and re.search(r"\{[^{}]*(,|\.\.)[^{}]*\}$", word.text)):
                word.expands()  # a glob, a brace expansion or a tilde: what the command receives is only known then
            self.pos += 1

    def array_elements(self, word: Word) -> None:
        while True:
            self.skip_space_and_newlines()
            if not self.peek():
                raise self.fail("array assignment without ')'")
            if self.peek() == ")":
                self.pos += 1
                return
            start = self.pos
            inner = self.word(Command())
            word.uses.extend(inner.uses)
            if inner.text.startswith("[") and "]=" in inner.text:  # [subscript]=value: the subscript is arithmetic
                close = self.text.find("]=", start)
                for use in inner.uses:
                    if use.offset < close:
                        use.integer_only.append("an array element's [subscript] is evaluated as arithmetic")

    def single_quoted(self, word: Word) -> None:
        self.pos += 1
        while self.peek() != "'":
            if not self.peek():
                raise self.fail("unterminated single quote")
            if self.peek() == MARK:
                self.placeholder("sq", word)
            else:
                word.add_literal(self.peek())
                self.pos += 1
        self.pos += 1

    def expanding_text(self, end: int | None, word: Word, quoting: str) -> None:
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
                if end is None and word.static and self.peek(1) != MARK:  # "\$" is $, "\a" is \a
                    escaped = self.peek(1)
                    word.value += escaped if escaped in '$`"\\' else ("" if escaped == "\n" else "\\" + escaped)
                self.skip_escape()
            elif char == "`":
                word.expands()
                self.backticks(word)
            elif char == "$":
                self.dollar(word, quoting)
            else:
                if end is None and word.static:
                    word.value += char
                self.pos += 1

    def dollar(self, word: Word, quoting: str) -> None:
        nxt = self.peek(1)
        if nxt and (nxt in "({[@*#?$!-" + MARK or nxt.isalnum() or nxt == "_" or (quoting == "bare" and nxt in "'\"")):
            word.expands()  # (bare $'...' and $"..." included: orchc does not decode them)
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
            if nxt == '"' and quoting != "bare":
                word.add_literal("$")
            else:
                word.text += "$"
                if word.static:
                    word.value += "$"
            self.pos += 1

    def ansi_quoted(self, word: Word) -> None:
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
        if self.nested_commands((")",)) != ")":
            raise self.fail("unterminated $(")
        self.pending = saved
        return self.uses[before:]

    def parameter(self, word: Word) -> None:
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
                    self.single_quoted(Word())
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

    def arith(self, closer: str, word: Word | None = None) -> None:
        self.forced.append("it is evaluated as arithmetic")
        target = word if word is not None else Word()
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

    def backticks(self, word: Word) -> list[Use]:
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
            inner.end_statement()
        except ScanError as error:
            raise ScanError(f"inside backticks: {error}", start) from None
        for use in inner.uses:
            use.offset = self.text.index(f"{MARK}{use.index}{MARK}", start)
        self.uses.extend(inner.uses)
        word.uses.extend(inner.uses)
        self.code_readers += inner.code_readers
        self.statement_code = self.statement_code or inner.code_readers > 0
        self.taint_all = self.taint_all or inner.taint_all
        self.pos = index + 1
        return inner.uses

    # -- what a command does with its words --------------------------------------------
    def end_command(self, command: Command, pipeline: list[Command], final: bool) -> None:
        if command.words or command.assignments:
            judge(command)
        if command.reader == "code":
            self.code_readers += 1
            self.statement_code = True
        self.finish_heredoc_command(command)
        if final and pipeline:
            for stage in pipeline[1:] + [command]:
                if stage.reader == "code":
                    self.statement_taint = "it is piped into a shell (or a command orchc cannot name), which reads it as code"
                elif stage.compound:
                    self.statement_fed = True

    def end_statement(self) -> None:
        """At the end of a top-level complete command: if code reads what it writes, no value in it is data."""
        reason = self.statement_taint or ("it is fed to a compound command in which a shell (or a command orchc "
                                          "cannot name) reads code" if self.statement_fed and self.statement_code else "")
        if self.statement_coproc and self.statement_code:
            self.taint_all = "a shell (or a command orchc cannot name) runs as a coprocess, which reads code"
        if reason:
            for use in self.uses[self.statement_start:]:
                use.shell_reach.append(reason)
        self.statement_start = len(self.uses)
        self.statement_taint, self.statement_fed, self.statement_code, self.statement_coproc = "", False, False, False

    def nested_commands(self, closers: tuple[str, ...]) -> str:
        self.nesting += 1
        try:
            return self.command_list(closers=closers)
        finally:
            self.nesting -= 1
