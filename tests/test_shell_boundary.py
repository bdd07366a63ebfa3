"""The shell boundary, tested through real bash: a value reaches a job only as data.

Every context of shell_corpus/contexts.yaml (a probe client's `benchmark` phase using `{{ v }}`) is
compiled with every value of shell_corpus/values.yaml. A case is either refused at compile time
(exit 1, one `FILE:LINE:COL: error:` at the type file's line, no traceback, nothing written) or
compiled into a script that passes `bash -n` and shellcheck, and, run under bash, exits 0, creates
no sentinel file and writes exactly what the context expects. Which values a context may (or must)
refuse is part of the corpus, so a compiler that refuses everything cannot pass.

To add a case, add a context or a value to the corpus; the file headers explain the keys.
The whole matrix is computed once (compiles in this process, scripts run in a small thread pool).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import signal
import subprocess
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, shellcheck
from ruamel.yaml import YAML

from compiler.cli.main import main

CORPUS = ROOT / "tests" / "shell_corpus"
SAFE_WORD = re.compile(r"[A-Za-z0-9_./:@%+,-]+")
LOCATED = re.compile(r"^(?P<file>[^\n]+?):(?P<line>\d+):(?P<col>\d+): error: ")
TYPE_FILE = "defs/probe.yaml"
SENTINEL_NAME = "orchc-pwned"
RUN_TIMEOUT = 20
LINT_SHAPES = 2


def _load(name: str) -> Any:
    return YAML(typ="safe", pure=True).load((CORPUS / name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Value:
    name: str
    template: str | int
    never: bool = False
    refusable: bool = False

    def concrete(self, sentinel: Path) -> str | int:
        if isinstance(self.template, int):
            return self.template
        return self.template.replace("@SENTINEL@", str(sentinel)).replace("@SENTINEL_NAME@", SENTINEL_NAME)

    @property
    def can_be_file_name(self) -> bool:
        text = str(self.template)
        return ("/" not in text and "@SENTINEL@" not in text and "\0" not in text and text not in ("", ".", "..")
                and len(text.encode()) <= 200)


def _values() -> list[Value]:
    values = []
    for entry in _load("values.yaml"):
        raw = entry["value"]
        if "repeat" in entry:
            raw = raw * entry["repeat"]
        values.append(Value(entry["name"], raw, bool(entry.get("never")), bool(entry.get("refusable"))))
    return values


CONTEXTS: list[dict[str, Any]] = _load("contexts.yaml")
VALUES = _values()
CASES = [(c, v) for c in CONTEXTS for v in VALUES
         if (c.get("only") != "filename" or v.can_be_file_name) and v.name in c.get("values", [v.name])]


def tags(value: str | int) -> set[str]:
    if isinstance(value, int):
        return {"integer", "safe_word"}
    found = {"non_integer"}
    if "\n" in value:
        found.add("newline")
    if "\t" in value:
        found.add("tab")
    if SAFE_WORD.fullmatch(value):
        found.add("safe_word")
    return found


def _matches(spec: Any, value: Value, concrete: str | int) -> bool:
    if spec is None:
        return False
    if spec == "all":
        return True
    lines = str(concrete).split("\n")
    for entry in spec:
        if isinstance(entry, dict) and entry.get("line") in lines:
            return True
        if isinstance(entry, str) and (entry == value.name or entry in tags(concrete)):
            return True
    return False


def refusal(context: dict[str, Any], value: Value, concrete: str | int) -> str:
    """'must', 'may' or 'no': whether the compiler has to, may, or must not refuse this case."""
    if value.never or _matches(context.get("must_refuse"), value, concrete):
        return "must"
    if value.refusable or _matches(context.get("may_refuse"), value, concrete):
        return "may"
    return "no"


# --- the probe ------------------------------------------------------------------------------------

def _yaml_string(text: str) -> str:
    """A YAML double-quoted scalar (JSON's escapes are YAML's) -- no YAML surprises in the corpus."""
    import json

    return json.dumps(text, ensure_ascii=False)


def probe_type(lines: list[Any]) -> tuple[str, list[int]]:
    """The probe client type with `lines` as its benchmark phase, and the file lines holding `{{`."""
    out = [
        "type: probe",
        "extends: client",
        "description: Probe of the shell boundary; its benchmark phase is one context of the corpus.",
        "fields:",
        "  v:",
        "    type: [string, integer]",
        "    multiline: true",
        "    description: the value under test",
        "phases:",
        "  health_check!: []",
        "  benchmark:",
    ]
    for item in lines:
        if isinstance(item, dict):
            body = ", ".join(f"{key}: {_yaml_string(str(text))}" for key, text in item.items())
            out.append(f"    - {{{body}}}")
        elif "\n" in item:
            out.append("    - |-")
            out.extend(f"      {line}" if line else "" for line in item.split("\n"))
        else:
            out.append(f"    - {_yaml_string(item)}")
    text = "\n".join(out) + "\n"
    template_lines = [number for number, line in enumerate(text.split("\n"), 1) if "{{" in line]
    return text, template_lines


def recipe(value: str | int) -> str:
    import json

    return json.dumps({"client": {"name": "p", "type": "probe", "target_endpoint": "127.0.0.1:9", "v": value}}) + "\n"


# --- one case -------------------------------------------------------------------------------------

@dataclass
class Case:
    context: dict[str, Any]
    value: Value
    folder: Path
    concrete: str | int = ""
    template_lines: list[int] = field(default_factory=list)
    code: int | None = None
    err: str = ""
    crashed: str = ""
    written: list[str] = field(default_factory=list)
    script: str | None = None
    syntax: str | None = None          # bash -n stderr when it failed
    lint: str | None = None            # shellcheck findings, when checked and any
    linted: bool = False
    status: int | None = None
    run_err: str = ""
    timed_out: bool = False
    out: str | None = None
    pwned: list[str] = field(default_factory=list)

    script_path: Path | None = None

    @property
    def sentinel(self) -> Path:
        return self.folder / "sentinel-must-not-exist"

    @property
    def recipe_file(self) -> str:
        return f"{self.value.name}.yaml"


def _prepare(case: Case) -> None:
    case.folder.mkdir(parents=True)
    case.concrete = case.value.concrete(case.sentinel)
    text, case.template_lines = probe_type(case.context["lines"])
    (case.folder / "defs").mkdir()
    (case.folder / TYPE_FILE).write_text(text, encoding="utf-8")
    (case.folder / case.recipe_file).write_text(recipe(case.concrete), encoding="utf-8")
    for name in ("glob-a", "glob-b"):
        (case.folder / name).write_text("a file a glob would find\n")
    (case.folder / "home").mkdir()
    (case.folder / "run").mkdir()


def _orchc(cwd: Path, *args: str) -> tuple[int, str, str]:
    """`orchc ARGS` in this process, from `cwd` (compiles are not thread-safe: main thread only).

    Returns (exit status, stderr, traceback of a crash or "")."""
    before = os.getcwd()
    stdout, stderr = io.StringIO(), io.StringIO()
    crashed, code = "", -1
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(list(args))
    except BaseException:  # a crash of the compiler is a finding, not a test error
        crashed = traceback.format_exc()
    finally:
        os.chdir(before)
    return code, stderr.getvalue(), crashed


def _compile(case: Case) -> None:
    """The case alone, from its folder: what a refusal is judged on."""
    case.code, case.err, case.crashed = _orchc(case.folder, "compile", case.recipe_file, "--defs", "defs",
                                               "--site", "local", "-o", "out")
    out = case.folder / "out"
    case.written = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    _take_script(case, out / case.value.name / "p.sbatch")


def _take_script(case: Case, path: Path) -> None:
    if case.code == 0 and path.is_file():
        case.script_path = path
        case.script = path.read_text(encoding="utf-8", errors="surrogateescape")


def _compile_together(folder: Path, cases: list[Case]) -> bool:
    """The cases no rule lets the compiler refuse, in one compile (the types are checked once, not per
    value): the same scripts as one compile each. False when the compile failed (then compile one by one)."""
    if len(cases) < 2:
        return False
    code, _, crashed = _orchc(folder, "compile", *(f"{c.folder.name}/{c.recipe_file}" for c in cases),
                              "--defs", cases[0].folder.name + "/defs", "--site", "local", "-o", "out")
    if code != 0 or crashed:
        return False
    for case in cases:
        case.code = 0
        _take_script(case, folder / "out" / case.value.name / "p.sbatch")
    return all(case.script is not None for case in cases)


def _run(case: Case) -> None:
    assert case.script_path is not None
    syntax = subprocess.run(["bash", "-n", str(case.script_path)], capture_output=True, text=True)
    if syntax.returncode != 0:
        case.syntax = syntax.stderr or f"bash -n exited {syntax.returncode}"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(case.folder / "home"),
           "ORCHC_RUN_DIR": str(case.folder / "run"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    process = subprocess.Popen(["bash", str(case.script_path)], cwd=case.folder, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        case.timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
    case.status = process.returncode
    case.run_err = err.decode("utf-8", "replace")
    out = case.folder / "run" / "results" / "p" / "out"
    case.out = out.read_bytes().decode("utf-8", "surrogateescape") if out.is_file() else None
    case.pwned = sorted(str(p) for p in case.folder.rglob(SENTINEL_NAME))
    if case.sentinel.exists():
        case.pwned.append(str(case.sentinel))


def _lint_key(case: Case) -> str:
    """The script with the value (however quoted) and the job id taken out: same key, same shellcheck result."""
    text = re.sub(r"--job-name=p_[0-9a-f]{8}", "--job-name=p_ID", case.script or "")
    value = str(case.concrete)
    if value:
        text = text.replace(shlex.quote(value), "@V@").replace(value, "@V@")
    return text.replace(case.value.name, "@NAME@")   # the recipe's name, in the header comment


def _lint(cases: list[Case]) -> None:
    """shellcheck on scripts of one context (its `shellcheck_exclude` are the context's own doing)."""
    paths = {str(case.script_path): case for case in cases}
    exclude = ",".join(cases[0].context.get("shellcheck_exclude", []))
    checked = subprocess.run([shellcheck(), "-s", "bash", "-f", "gcc", *(["-e", exclude] if exclude else []), *paths],
                             capture_output=True, text=True)
    for case in cases:
        case.linted = True
    for line in checked.stdout.splitlines():
        path = line.split(":", 1)[0]
        if path in paths:
            case = paths[path]
            case.lint = (case.lint or "") + line + "\n"
    if checked.returncode != 0 and not checked.stdout:
        for case in cases:
            case.lint = checked.stderr or f"shellcheck exited {checked.returncode}"


def _to_lint(group: list[Case]) -> list[Case]:
    """shellcheck takes 0.2 s a script: every script of the bare-word context (each value's own
    assignment), and of every other context the first script of each of its first LINT_SHAPES shapes
    (how the value was rendered there: inline, as a reference, ...)."""
    if group and group[0].context["name"] == "bare_word":
        return [case for case in group if case.script is not None]
    chosen, seen = [], set()
    for case in group:
        key = _lint_key(case) if case.script is not None else None
        if key is not None and key not in seen and len(chosen) < LINT_SHAPES:
            seen.add(key)
            chosen.append(case)
    return chosen


def compute(cases: list[Case]) -> None:
    """Compile in this thread (context by context), run and shellcheck in a pool meanwhile."""
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        work: list[Future[None]] = []
        by_context: dict[str, list[Case]] = {}
        for case in cases:
            by_context.setdefault(case.context["name"], []).append(case)
        for group in by_context.values():
            for case in group:
                _prepare(case)
            plain = [c for c in group if refusal(c.context, c.value, c.concrete) == "no"]
            together = _compile_together(group[0].folder.parent, plain)
            for case in group:
                if not (together and case in plain):
                    _compile(case)
                if case.script is not None:
                    work.append(pool.submit(_run, case))
            lint = _to_lint(group)
            work += [pool.submit(_lint, lint[i:i + 8]) for i in range(0, len(lint), 8)]
        for future in work:
            future.result()


@pytest.fixture(scope="module")
def boundary(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Case]:
    """Every selected case of the matrix, compiled and run once."""
    selected = {(item.callspec.params["context"]["name"], item.callspec.params["value"].name)
                for item in request.session.items
                if getattr(item, "originalname", "") == "test_value_in_context" and hasattr(item, "callspec")}
    base = tmp_path_factory.mktemp("shell-boundary")
    cases = [Case(c, v, base / c["name"] / v.name) for c, v in CASES if (c["name"], v.name) in selected]
    compute(cases)
    return {(case.context["name"], case.value.name): case for case in cases}


def _describe(case: Case) -> str:
    script = case.script or ""
    start = script.find("orchc_benchmark() {")
    excerpt = script[start:script.find("\n}\n", start) + 2] if start >= 0 else ""
    return (f"\n--- context {case.context['name']}, value {case.value.name} = {case.concrete!r:.200}"
            f"\n--- type file lines\n{(case.folder / TYPE_FILE).read_text()}"
            f"\n--- benchmark phase as compiled\n{excerpt[:3000]}"
            f"\n--- compile stderr\n{case.err[:2000]}{case.crashed[-3000:]}"
            f"\n--- run stderr (status {case.status})\n{case.run_err[-2000:]}")


@pytest.mark.parametrize("context,value", CASES, ids=[f"{c['name']}-{v.name}" for c, v in CASES])
def test_value_in_context(boundary, context, value):
    case = boundary[(context["name"], value.name)]
    rule = refusal(context, value, case.concrete)
    assert not case.crashed, "the compiler crashed:" + _describe(case)
    assert "Traceback" not in case.err, "a traceback instead of an error:" + _describe(case)

    if case.code != 0:
        assert rule != "no", ("refused a value this context must render (as data): "
                              f"{case.err.splitlines()[:1]}" + _describe(case))
        assert case.code == 1, f"exit status {case.code}, expected 1" + _describe(case)
        first = case.err.splitlines()[0] if case.err else ""
        located = LOCATED.match(first)
        assert located, f"the first line of stderr is not FILE:LINE:COL: error: ...: {first!r}" + _describe(case)
        allowed_files = {TYPE_FILE} | ({case.recipe_file} if value.never or value.refusable else set())
        assert located["file"] in allowed_files, f"error located in {located['file']}, expected {TYPE_FILE}" + _describe(case)
        if located["file"] == TYPE_FILE:
            assert int(located["line"]) in case.template_lines, \
                f"error at line {located['line']}, not a line holding the value {case.template_lines}" + _describe(case)
        assert case.written == [], f"files were written although the compile failed: {case.written}"
        return

    assert rule != "must", "compiled a value this context must refuse" + _describe(case)
    assert case.script is not None, f"exit 0 but no script written: {case.written}"
    assert case.pwned == [], f"THE VALUE RAN AS CODE: {case.pwned} created" + _describe(case)
    assert case.syntax is None, f"bash -n: {case.syntax}" + _describe(case)
    assert not case.timed_out, f"the script did not end within {RUN_TIMEOUT} s" + _describe(case)
    assert case.status == 0, f"the script exited {case.status}" + _describe(case)
    expect = context["expect"]
    if expect == "none":
        assert case.out is None, f"unexpected output {case.out!r}" + _describe(case)
    else:
        wanted = f"{case.concrete}\n" if expect == "value" else str(expect).replace("@VALUE@", str(case.concrete))
        assert case.out == wanted, f"output {case.out!r:.300}, expected {wanted!r:.300}" + _describe(case)
    if case.linted:
        assert case.lint is None, f"shellcheck:\n{case.lint}" + _describe(case)


# --- the corpus itself --------------------------------------------------------------------------------

REQUIRED_CONTEXTS = {
    "bare_word", "double_quotes", "single_quotes", "command_substitution", "command_substitution_in_double_quotes",
    "backticks", "backticks_in_double_quotes", "arithmetic_expansion", "arithmetic_command", "test_string_equal",
    "test_numeric_equal", "case_pattern", "heredoc_unquoted", "heredoc_quoted", "comment_line", "multiline_for_loop",
    "whitespace_control_bare", "assignment", "redirect_target", "command_name",
}
MUST_RUN_EVERY_VALUE = {
    "bare_word", "double_quotes", "single_quotes", "command_substitution", "command_substitution_in_double_quotes",
    "backticks", "backticks_in_double_quotes", "heredoc_unquoted", "case_pattern", "test_string_equal",
    "multiline_for_loop", "whitespace_control_bare", "whitespace_control_in_double_quotes", "assignment",
}


def test_the_corpus_cannot_be_passed_by_refusing_everything():
    names = [c["name"] for c in CONTEXTS]
    assert len(names) == len(set(names)) and set(names) >= REQUIRED_CONTEXTS
    assert len({v.name for v in VALUES}) == len(VALUES)
    for context in CONTEXTS:
        assert set(context) <= {"name", "lines", "expect", "must_run", "may_refuse", "must_refuse", "only", "values",
                                "shellcheck_exclude"}, context
        assert any("{{" in str(line) for line in context["lines"]), context["name"]
        if context["name"] in MUST_RUN_EVERY_VALUE:
            assert context.get("must_run") is True and "may_refuse" not in context and "must_refuse" not in context
        if context.get("must_refuse") != "all" and context.get("may_refuse") != "all":
            runs = [v for c, v in CASES if c is context and refusal(c, v, v.concrete(Path("/s"))) == "no"]
            assert runs, f"context {context['name']}: no value must run"
        if context.get("must_refuse") == ["non_integer"]:
            integers = [v for c, v in CASES if c is context and isinstance(v.template, int)]
            assert len(integers) >= 3, context["name"]
    hostile = {v.name for v in VALUES}
    assert {"semicolon", "pipe", "ampersand", "command_substitution", "backticks", "double_quote", "single_quote",
            "newline", "glob_star", "glob_question", "glob_bracket", "leading_dash", "heredoc_orchc_eof",
            "heredoc_eof", "sbatch_line", "arithmetic_subscript", "ifs", "tilde", "backslash", "trailing_newline",
            "long_hostile", "empty", "nul"} <= hostile


# --- the same verdict under every site profile ----------------------------------------------------------

SITES = sorted(p.stem for p in (ROOT / "sites").glob("*.yaml"))
PARITY_VALUES = [v for v in VALUES if v.name in ("plain", "int_positive", "command_substitution", "newline")]


def _verdict(folder: Path, site: str) -> tuple[int, str]:
    code, err, crashed = _orchc(folder, "validate", "r.yaml", "--defs", "defs", "--site", site)
    assert not crashed, crashed
    return code, err.splitlines()[0] if err else ""


@pytest.mark.parametrize("value", PARITY_VALUES, ids=[v.name for v in PARITY_VALUES])
def test_every_site_profile_gives_the_same_verdict(tmp_path, value):
    """`{{ run }}` is `apptainer exec ... image.sif` under apptainer sites and nothing under `native`: the lexer
    judges the line with one placeholder for it, so `validate` answers the same for every site (a type refused
    locally was accepted, and exploitable, under meluxina)."""
    assert len(SITES) >= 2
    differ = []
    for context in CONTEXTS:
        if context.get("only") == "filename" or value.name not in context.get("values", [value.name]):
            continue
        folder = tmp_path / context["name"]
        (folder / "defs").mkdir(parents=True)
        text, _ = probe_type(context["lines"])
        text = text.replace("phases:\n", "container:\n  image: probe\n  source: docker://busybox:1.36\nphases:\n", 1)
        (folder / TYPE_FILE).write_text(text, encoding="utf-8")
        entry = {"client": {"name": "p", "type": "probe", "target_endpoint": "127.0.0.1:9",
                            "v": value.concrete(folder / "s")}, "account": "p200981"}
        import json

        (folder / "r.yaml").write_text(json.dumps(entry) + "\n", encoding="utf-8")
        verdicts = {site: _verdict(folder, site) for site in SITES}
        if len(set(verdicts.values())) != 1:
            differ.append(f"{context['name']}: {verdicts}")
    assert differ == []


# --- orchc's own helpers take their numeric arguments as data ---------------------------------------------

HELPER_CALLS = ["orchc_wait_tcp 127.0.0.1 1 {{ v }}", "orchc_wait_http http://127.0.0.1:1/ {{ v }}",
                "orchc_wait_endpoint nowhere {{ v }}"]


@pytest.mark.parametrize("line", HELPER_CALLS, ids=[line.split()[0] for line in HELPER_CALLS])
def test_helpers_check_their_timeout_before_arithmetic(tmp_path, line):
    """The helpers computed $((SECONDS + $3)): a TIMEOUT of a[$(cmd)] ran cmd. Now the job fails, naming it."""
    context = {"name": "helper", "lines": [line], "expect": "none"}
    value = Value("arithmetic_subscript", "a[$(touch @SENTINEL@)]")
    case = Case(context, value, tmp_path / "case")
    _prepare(case)
    _compile(case)
    assert case.code == 0 and case.script is not None, case.err
    _run(case)
    assert case.pwned == [], f"THE VALUE RAN AS CODE: {case.run_err[-500:]}"
    assert case.status != 0 and "a timeout must be a whole number of seconds" in case.run_err, case.run_err[-500:]


# --- the safe idiom: a value reaches a child shell through the type's env: ---------------------------------

ENV_IDIOM = {"name": "env_idiom", "expect": "value", "must_run": True,
             "lines": ["sh -c 'printf \"%s\\n\" \"$PEER\" >\"$ORCHC_RESULTS/out\"'"]}


@pytest.mark.parametrize("value", VALUES, ids=[v.name for v in VALUES])
def test_env_hands_any_value_to_a_child_shell_as_data(tmp_path, value):
    """`env: {PEER: "{{ v }}"}` then `sh -c '... "$PEER" ...'`: the child reads the value as data, whatever it is."""
    case = Case(ENV_IDIOM, value, tmp_path / "case")
    _prepare(case)
    type_file = case.folder / TYPE_FILE
    type_file.write_text(type_file.read_text().replace("phases:\n", 'env:\n  PEER: "{{ v }}"\nphases:\n', 1))
    _compile(case)
    if value.never or (value.refusable and case.code != 0):
        assert case.code == 1 and "Traceback" not in case.err and LOCATED.match(case.err), case.err
        return
    assert case.code == 0 and case.script is not None, case.err
    _run(case)
    assert case.pwned == [], "THE VALUE RAN AS CODE" + _describe(case)
    assert case.status == 0, _describe(case)
    assert case.out == f"{case.concrete}\n", _describe(case)


def test_env_refuses_what_changes_how_programs_run(orchc, write, tmp_path):
    write("defs/probe.yaml", probe_type(["true {{ v }}"])[0].replace("phases:\n", 'env:\n  LD_PRELOAD: "{{ v }}"\nphases:\n'))
    result = orchc("validate", write("r.yaml", recipe("x")), "--defs", "defs", "--site", "local", cwd=tmp_path)
    assert result.code == 1 and "env: LD_PRELOAD would change how the shell" in result.err, result.err
