"""What a simple command does with its words: the second half of the shell boundary.

The lexer (`shellscan`) has read a command into words, each with the placeholders it holds
and, where nothing in it expands, its literal value after quote removal. `judge()` finds the
program the command really runs - through wrappers (`env`, `timeout -k 1 5`, `srun`, `flock`,
`{{ run }}`, ...) whose options are read by their grammar, whatever the quoting of their names -
and marks each placeholder by what that program does with the word:

- a name or code to bash itself (`eval`, `source`, `trap`, `declare -n`, `printf -v`, a command
  name, ...): no value at all;
- arithmetic (`let`, `declare -i`, a subscript): integers only;
- code to another shell (`sh`, `bash -c`, `ssh`, `watch`, `flock -c`, a shell's standard input,
  ...): integers only - pass the value in the environment instead;
- where orchc cannot tell (a command whose name expands, `"$BASH"`, an option a wrapper's grammar
  here does not know, a program that runs an unnamed command among its arguments): the same, or
  plain words where only an unknown program's code argument is at stake.

Fail closed: a command is judged by the program it runs, never by how its name is spelled; what
cannot be followed is refused, not guessed. `command.reader` says whether the command's standard
input reaches code, for here-documents and pipelines (`shellscan` applies it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

from .quote import special_variable
from .words import Command, Word

SHELLS = frozenset({"sh", "bash", "rbash", "dash", "ash", "ksh", "ksh93", "mksh", "pdksh", "oksh", "lksh", "zsh", "yash",
                    "posh", "busybox", "fish", "csh", "tcsh", "rc", "es", "xonsh", "elvish", "nu", "pwsh", "toybox"})
# Programs that hand their arguments (or a part of them) to a shell: every value in them is code.
_SHELL_RUNNERS = frozenset({"watch", "ssh", "parallel", "su", "runuser", "sudo", "doas", "pkexec", "script", "sg",
                            "newgrp", "tmux", "screen", "at", "batch", "dtach", "expect", "systemd-run", "machinectl"})
# Programs that run a command given among their arguments, by a grammar orchc does not read here.
_OPAQUE_WRAPPERS = frozenset({"mpirun", "mpiexec", "orterun", "numactl", "taskset", "chrt", "ionice", "nsenter", "unshare",
                              "chroot", "setpriv", "strace", "ltrace", "valgrind", "perf", "gdb", "catchsegv", "prlimit",
                              "unbuffer", "faketime", "firejail", "bwrap", "proot", "fakeroot", "dbus-run-session",
                              "docker", "podman", "kubectl", "enroot", "ch-run", "shifter", "charliecloud", "cgexec",
                              "setarch", "linux32", "linux64", "chpst", "daemonize", "start-stop-daemon", "find",
                              "entr", "inotifywait", "ts", "pv", "rlwrap", "stdbuf2", "ddd", "hyperfine", "jobber"})
# Interpreters of other languages: a code argument (or standard input, without a script) is code.
_INTERPRETERS = frozenset({"python", "python2", "python3", "pypy", "pypy3", "perl", "ruby", "node", "nodejs", "deno", "bun",
                           "php", "lua", "luajit", "Rscript", "R", "julia", "tclsh", "wish", "guile", "racket", "sbcl",
                           "ocaml", "awk", "gawk", "mawk", "nawk", "busybox-awk", "sed", "gsed", "jq", "osascript"})
_CODE_OPTIONS = frozenset({"-c", "-e", "-E", "-r", "--eval", "--exec", "--command", "--execute", "--expression", "-x"})
# Builtins that read a word as code or as a variable name.
_CODE_BUILTINS = frozenset({"eval", "source", ".", "trap", "alias", "unalias", "unset", "read", "readarray", "mapfile",
                            "getopts", "hash", "enable", "complete", "compgen", "compopt", "fc", "bind", "set", "shopt",
                            "caller", "select", "coproc", "function"})
_STDIN_CODE_BUILTINS = frozenset({"eval", "source", "."})
_DECLARE = frozenset({"declare", "typeset", "local", "readonly", "export"})
IDIOM = ("pass it in the environment instead: the type's `env:` (e.g. `PEER: \"{{ peer }}\"`), then \"$PEER\" "
         "inside the child's own single-quoted script")


@dataclass(frozen=True)
class _Grammar:
    """How a wrapper's options are read, and where the command it runs starts."""

    short_args: str = ""
    short_flags: str = ""
    long_args: frozenset[str] = frozenset()
    long_flags: frozenset[str] = frozenset()
    positionals: int = 0
    """words after the options and before the command (timeout's DURATION, flock's FILE)"""
    code_short: str = ""
    code_long: frozenset[str] = frozenset()
    """options whose argument (or the rest of the line) a shell runs: flock -c, env -S"""
    assignments: bool = False
    """NAME=VALUE words may come before the command (env)"""
    subcommand: str = ""
    """a first word the command must have (apptainer exec): anything else runs what orchc cannot name"""
    feeds_stdin: bool = False
    """standard input becomes the command's arguments (xargs)"""
    numeric_flag: bool = False
    """-N is an option of its own (nice -5)"""


def _g(**kwargs: object) -> _Grammar:
    for key in ("long_args", "long_flags", "code_long"):
        if key in kwargs:
            kwargs[key] = frozenset(str(kwargs[key]).split())
    return _Grammar(**kwargs)  # type: ignore[arg-type]


_APPTAINER = _g(short_args="BHWSo", short_flags="ecCipufwv",
                long_args="bind home workdir scratch overlay env env-file pwd mount network network-args security app "
                          "hostname dns fusemount apply-cgroups no-mount",
                long_flags="nv nvccli rocm cleanenv contain containall writable writable-tmpfs fakeroot userns ipc pid "
                           "uts no-home no-privs no-init no-eval compat unsquash no-umask no-https disable-cache",
                positionals=1, subcommand="exec")
_WRAPPERS: dict[str, _Grammar] = {
    "exec": _g(short_args="a", short_flags="cl"),
    "command": _g(short_flags="p"),
    "builtin": _g(),
    "nohup": _g(),
    "time": _g(short_args="fo", short_flags="apqv", long_args="format output", long_flags="append portability verbose quiet"),
    "setsid": _g(short_flags="cfw", long_flags="ctty fork wait"),
    "env": _g(short_args="uC", short_flags="i0v", long_args="unset chdir", long_flags="ignore-environment null debug",
              code_short="S", code_long="split-string", assignments=True),
    "nice": _g(short_args="n", long_args="adjustment", numeric_flag=True),
    "timeout": _g(short_args="ks", short_flags="v", long_args="kill-after signal", long_flags="preserve-status foreground verbose",
                  positionals=1),
    "stdbuf": _g(short_args="ioe", long_args="input output error"),
    "flock": _g(short_args="wE", short_flags="sexunoF", long_args="timeout wait conflict-exit-code",
                long_flags="shared exclusive unlock nonblock nb close no-fork verbose", positionals=1,
                code_short="c", code_long="command"),
    "xargs": _g(short_args="adEILnPs", short_flags="0ilprtx", long_args="arg-file delimiter max-args max-procs max-chars "
                "process-slot-var", long_flags="null interactive no-run-if-empty verbose exit open-tty show-limits",
                feeds_stdin=True),
    "srun": _g(short_args="ACDGJLMNSTWbcdeimnopqrtwx", short_flags="EHIKOQXZhkluvs",
               long_args="account nodes ntasks cpus-per-task partition qos time gres gpus mem mem-per-cpu mem-per-gpu "
                         "nodelist exclude job-name output error input chdir constraint dependency export mpi "
                         "ntasks-per-node ntasks-per-gpu gpus-per-task gpus-per-node cpus-per-gpu distribution cpu-bind "
                         "gpu-bind het-group jobid reservation licenses switches threads-per-core label-prefix",
               long_flags="exclusive overlap label unbuffered quiet verbose pty immediate no-kill kill-on-bad-exit "
                          "overcommit oversubscribe exact whole preserve-env no-allocate"),
    "apptainer": _APPTAINER,
    "singularity": _APPTAINER,
}


def judge(command: Command) -> None:
    """Mark every placeholder of `command` by its place; set `command.reader`."""
    for word in command.words:
        for use in word.uses:
            use.splitting = use.splitting or use.split
    for word in command.assignments:
        _judge_assignment(word, "an assignment")
    if command.words:
        _judge_words(command, command.words)


def _judge_words(command: Command, words: list[Word]) -> None:
    """`words` start with the command word; follow wrappers to the program and judge its arguments."""
    index = 0
    while index < len(words):
        word = words[index]
        _refuse([word], "it would name the command to run")
        if word.run:  # {{ run }}: a site's container launcher, or nothing, before the command it runs
            index += 1
            continue
        name = word.literal()
        if name is None:
            _to_shell(command, words[index + 1:], "the command's name is only known when the job runs "
                      f"({_shown(word)}), so orchc cannot tell what reads the value")
            return
        base = name.rsplit("/", 1)[-1]
        grammar = _WRAPPERS.get(base)
        if grammar is not None:
            skip = _wrapper_length(command, base, grammar, words[index + 1:])
            if skip is None:
                return
            index += 1 + skip
            continue
        _judge_program(command, base, words[index + 1:])
        return


def _wrapper_length(command: Command, name: str, grammar: _Grammar, args: list[Word]) -> int | None:
    """How many words after a wrapper come before the command it runs; None when the rest is judged already."""
    if name == "command" and args and args[0].literal() in ("-v", "-V"):
        return None  # command -v NAME only looks NAME up
    offset = 0
    if grammar.subcommand:
        if not args or args[0].literal() != grammar.subcommand:
            _to_shell(command, args, f"'{name}' runs what orchc cannot name unless it is '{name} {grammar.subcommand}'")
            return None
        offset = 1
    found = _options_end(command, name, grammar, args[offset:])
    if found is None or offset + found >= len(args):
        return None  # judged already, or nothing to run (exec with redirections only, env that prints)
    if grammar.feeds_stdin and _runs_code(args[offset + found:]):
        command.reader = "code"  # xargs sh -c ...: what comes in on standard input becomes the shell's words
    return offset + found


def _options_end(command: Command, name: str, grammar: _Grammar, args: list[Word]) -> int | None:
    """The index in `args` of the command a wrapper runs (after options, option arguments, positionals);
    None when what follows cannot be followed (it has been judged as unknown)."""
    index, positionals = 0, grammar.positionals
    while index < len(args):
        word = args[index]
        prefix = word.value  # the literal start of the word (all of it when static)
        if word.static and prefix == "--":
            index += 1
            break
        if grammar.assignments and _assignment_name(prefix) is not None:
            _judge_assignment(word, f"'{name}'")
            index += 1
            continue
        if prefix.startswith("-") and prefix != "-":
            taken = _option_words(grammar, prefix, whole=word.static)
            if taken == "code":
                _to_shell(command, args[index:], f"'{name} {prefix.split('=', 1)[0]}' hands it to a shell as code")
                return None
            if taken is None or taken == 0:
                _to_shell(command, args[index:], f"orchc does not know the option {_shown(word)} of '{name}', so it "
                          "cannot tell which word is the command it runs")
                return None
            index += int(taken)
            continue
        if positionals:  # a value there is data (timeout's DURATION, flock's FILE)
            positionals -= 1
            index += 1
            continue
        break
    return index


def _option_words(grammar: _Grammar, text: str, whole: bool) -> int | str | None:
    """How many words an option takes (1: itself, 2: with its argument), 'code', 0 when a value may add options
    to it, None when it is not known. `whole` is False when `text` is the literal start of a word that expands."""
    if text.startswith("--"):
        option, has_value = text[2:].split("=", 1)[0], "=" in text
        if option in grammar.code_long:
            return "code"
        if option in grammar.long_args and (has_value or whole):
            return 1 if has_value else 2
        if option in grammar.long_flags and whole and not has_value:
            return 1
        return None
    if whole and grammar.numeric_flag and re.fullmatch(r"-[0-9]+", text):
        return 1
    for position, letter in enumerate(text[1:], start=1):
        if letter in grammar.code_short:
            return "code"
        if letter in grammar.short_args:
            return 1 if position + 1 < len(text) or not whole else 2
        if letter not in grammar.short_flags:
            return None
    return 1 if whole else 0


_DATA_BUILTINS = frozenset({"echo", "printf", "test", "[", "cd", "pwd", "exit", "return", "kill", "true", "false", ":",
                            "type", "help", "shift", "ulimit", "umask", "wait", "break", "continue", "pushd", "popd",
                            "dirs", "jobs", "disown", "times", "logout", "suspend", "history"})


def _judge_program(command: Command, name: str, args: list[Word]) -> None:
    """The program the command runs (its name's last path component), with its arguments."""
    if name in SHELLS:
        _judge_shell(command, name, args)
        return
    if name in _SHELL_RUNNERS:
        _to_shell(command, args, f"'{name}' hands its arguments to a shell")
        return
    if name in _OPAQUE_WRAPPERS:
        if _runs_code(args):
            _to_shell(command, args, f"'{name}' runs a command among its arguments that orchc cannot name, or a shell")
        else:
            _mark(args, "plain_only", f"'{name}' runs a command given among its arguments, by options orchc does not "
                  "read, so it cannot tell whether it reads the value as code")
            command.reader = "code"
        return
    if name not in _DATA_BUILTINS:
        start = next((i for i, w in enumerate(args) if _is_shell(w)), None)
        if start is not None:  # a shell named as an argument (find -exec sh -c, mpirun -np 2 bash): its words are code
            _to_shell(command, args[start:], f"'{name}' is given a shell ({args[start].literal()}) to run")
            args = args[:start]
    if name in _INTERPRETERS:
        _judge_interpreter(command, name, args)
    elif name in _CODE_BUILTINS:
        _refuse(args, f"'{name}' would read it as a name or as code")
        if name in _STDIN_CODE_BUILTINS:
            command.reader = "code"
    elif name == "let":
        _mark(args, "integer_only", "'let' evaluates it as arithmetic")
    elif name in _DECLARE:
        _judge_declare(name, args)
    elif name == "printf":
        _judge_printf(args)
    else:
        _judge_plain_program(name, args)


def _judge_plain_program(name: str, args: list[Word]) -> None:
    """A program that takes its arguments as data, but for the names some options take, and an unknown
    program's code argument (`-c`)."""
    option = {"test": "-v", "[": "-v", "wait": "-p"}.get(name)
    for before, word in pairwise(args):
        literal = before.literal()
        if option and literal == option:
            _refuse([word], f"'{name} {option}' would evaluate it as a variable name")
        elif literal in ("-c", "--command") and not option:
            _mark([word], "plain_only", f"'{name} {literal}' may run it as code")
    if name in ("test", "["):
        _judge_test(name, args[:-1] if name == "[" and args and args[-1].literal() == "]" else args)


_UNARY_TESTS = frozenset({"!", "-n", "-z", "-e", "-f", "-d", "-r", "-w", "-x", "-s", "-L", "-h", "-b", "-c", "-p", "-S",
                          "-g", "-u", "-k", "-O", "-G", "-N", "-t", "-a"})
_BINARY_TESTS = frozenset({"=", "==", "!=", "<", ">", "-eq", "-ne", "-lt", "-le", "-gt", "-ge", "-nt", "-ot", "-ef"})


def _judge_test(name: str, args: list[Word]) -> None:
    """test reads its words after expansion: a value could be taken for an operator, or be the name `-v` evaluates
    (`[ -v 'a[$(cmd)]' ]` runs cmd), quoted or not - unless the words fix each other's parts (POSIX's rules
    for one to three words, with the operator written in the template)."""
    literals = [w.literal() for w in args]
    if literals[:1] == ["!"] and len(args) in (3, 4):  # ! EXPR: EXPR's own rules, for two or three words
        literals, args = literals[1:], args[1:]
    if len(args) <= 1 or (len(args) == 2 and literals[0] in _UNARY_TESTS) or (
            len(args) == 3 and literals[1] in _BINARY_TESTS):
        return
    _mark(args, "integer_only", f"'{name}' reads its words after expansion: a value here could be taken for an "
          "operator or a name to evaluate (write the operator in the template, or use [[ ... ]])")


def _judge_shell(command: Command, name: str, args: list[Word]) -> None:
    """sh [-options] [-c CODE | SCRIPT] [ARGS]: the code, its arguments and standard input are code; the script's
    path is a file to run (a plain word may name it)."""
    command.reader = "code"
    index, dash_c = 0, False
    while index < len(args):
        literal = args[index].literal()
        if literal is None or literal[:1] not in ("-", "+") or literal in ("-", "+"):
            break
        index += 1
        if literal == "--":
            break
        dash_c = dash_c or (literal.startswith("-") and not literal.startswith("--") and "c" in literal)
        if literal in ("-o", "+o", "-O", "+O"):
            index += 1
    _mark(args[:index], "shell_reach", f"'{name}' would read it as one of its options")
    if index < len(args) and not dash_c:
        _mark([args[index]], "plain_only", f"'{name}' runs the file it names as a shell script")
        _mark(args[index + 1:], "shell_reach", f"'{name}' passes it to a script orchc does not read, which may run it as code")
    elif dash_c:
        _refuse(args[index:index + 1], f"'{name} -c' would run it as shell code")
        _mark(args[index + 1:], "shell_reach", f"'{name} -c' passes it to its code, which may run it as code")


def _judge_interpreter(command: Command, name: str, args: list[Word]) -> None:
    """python -c, perl -e, awk 'program', sed 'script', python reading its program from standard input."""
    program_first = name.endswith("awk") or name in ("sed", "gsed", "jq")
    given = False
    index = 0
    while index < len(args):
        word, literal = args[index], args[index].literal()
        if literal in _CODE_OPTIONS:
            _mark(args[index + 1:index + 2], "shell_reach", f"'{name} {literal}' runs it as code")
            given, index = True, index + 2
            continue
        if literal in ("-f", "--file", "-v", "-F"):  # a program file; awk's -v name=VALUE and -F SEP: data
            given = given or literal in ("-f", "--file")
            index += 2
            continue
        if word.value.startswith("-") and word.value != "-":
            if not word.static:
                _mark([word], "plain_only", f"a value stands in an option of '{name}'")
            index += 1
            continue
        if given:
            if not program_first:
                break  # python SCRIPT ARGS...: the script's arguments are data
            index += 1
            continue
        if program_first:
            _mark([word], "shell_reach", f"'{name}' runs its first argument as its program")
        else:
            _mark([word], "plain_only", f"'{name}' runs the file it names as a program")
        given = literal != "-"
        index += 1
        if not program_first:
            break
    if not given:
        command.reader = "code"  # the program comes from standard input


def _judge_declare(name: str, args: list[Word]) -> None:
    """declare/local/export/readonly/typeset: options, then names and assignments."""
    flags = ""
    index = 0
    while index < len(args) and (args[index].value.startswith(("-", "+")) or not args[index].value):
        literal = args[index].literal()
        if literal is None:
            _refuse(args, f"'{name}' would read a value among its options ({_shown(args[index])}) as an option")
            return
        index += 1
        if literal == "--":
            break
        flags += literal[1:]
    if set(flags) & set("nAaf"):
        _refuse(args, f"'{name} -{flags}' would read it as a variable name, a function or an array assignment")
        return
    for word in args[index:]:
        _judge_assignment(word, f"'{name}'", arithmetic="i" in flags)


def _judge_printf(args: list[Word]) -> None:
    """printf [-v NAME] [--] FORMAT ARGS: the name and the format are not data."""
    index = 0
    while index < len(args):
        word, literal = args[index], args[index].literal()
        if literal is None:
            _refuse([word], "printf would read it as an option or as its format")
            return
        if literal == "--":
            index += 1
            break
        if literal == "-v":
            _refuse(args[index + 1:index + 2], "'printf -v' would evaluate it as a variable name")
            index += 2
            continue
        if not literal.startswith("-v"):
            break
        index += 1
    _refuse(args[index:index + 1], "printf would read it as its format")


def _judge_assignment(word: Word, where: str, arithmetic: bool = False) -> None:
    """NAME=VALUE (or a bare NAME after declare): the name is never a value; some names are code."""
    name = _assignment_name(word.value)
    for use in word.uses:
        if word.equals < 0 or use.offset < word.equals:
            if not use.integer_only:  # (a subscript is arithmetic: integers only)
                use.refusals.append(f"{where} would read it as part of a variable name")
        elif name is not None and special_variable(name):
            use.integer_only.append(f"bash (or a program it starts) reads ${name} as code, a path to search or a name")
        elif arithmetic:
            use.integer_only.append(f"{where} -i evaluates it as arithmetic")


def _assignment_name(text: str) -> str | None:
    found = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(\[[^\]]*\])?\+?=", text)
    return found.group(1) if found else None


def _is_shell(word: Word) -> bool:
    literal = word.literal()
    return literal is not None and literal.rsplit("/", 1)[-1] in SHELLS


def _runs_code(args: list[Word]) -> bool:
    """The command at the start of `args` cannot be named, or a shell is named among them."""
    return bool(args) and (args[0].literal() is None or any(_is_shell(w) for w in args))


def _to_shell(command: Command, words: list[Word], why: str) -> None:
    """Every value in `words`, and the command's standard input, may reach a shell as code (or cannot be followed)."""
    _mark(words, "shell_reach", why)
    command.reader = "code"


def _refuse(words: list[Word], why: str) -> None:
    _mark(words, "refusals", why)


def _mark(words: list[Word], kind: str, why: str) -> None:
    for word in words:
        for use in word.uses:
            getattr(use, kind).append(why)


def _shown(word: Word) -> str:
    text = word.text.replace("\x00", "")
    return repr(text if len(text) <= 40 else text[:39] + "…")
