"""Type templates are rendered in a sandbox: reaching Python internals is a located error, never code run.

Each payload sits in a type of a `--defs` folder (and once in a recipe). `orchc validate`, `compile`,
`show` and `types NAME` must all exit 1 with `FILE:LINE:COL: error:` at the payload's line, without a
traceback, and the sentinel file the payload would create must never exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PAYLOADS = {
    "lipsum_globals": "{{ lipsum.__globals__.os.system('touch @SENTINEL@') }}",
    "cycler_init_globals": "{{ cycler.__init__.__globals__.os.system('touch @SENTINEL@') }}",
    "joiner_popen": "{{ joiner.__init__.__globals__.os.popen('touch @SENTINEL@').read() }}",
    "namespace_builtins": "{{ namespace.__init__.__globals__.__builtins__.__import__('os').system('touch @SENTINEL@') }}",
    "self_reference": "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch @SENTINEL@') }}",
    "class_mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "attr_filter": "{{ (lipsum | attr('__globals__')).os.system('touch @SENTINEL@') }}",
    "computed_subscript": "{{ lipsum['__glo' ~ 'bals__'].os.system('touch @SENTINEL@') }}",
    "set_then_call": "{% set g = lipsum.__globals__ %}{{ g.os.system('touch @SENTINEL@') }}",
    "format_string": "{{ '{0.__init__.__globals__[os].system}'.format(lipsum) }}",
}
WHERE = ["phase", "command", "file_content", "env"]


def evil_type(payload: str, where: str) -> tuple[str, int]:
    """A service type carrying `payload` in one template string, and the line it is on."""
    line = json.dumps(payload)
    text = "type: evil\nextends: service\ndescription: a type from an untrusted folder\nfields:\n  ports: {default: [1234]}\n"
    text += {
        "phase": f"container:\n  command: sleep 1\nphases:\n  setup:\n    - {line}\n",
        "command": f"container:\n  command: {line}\n",
        "file_content": f"container:\n  command: sleep 1\nphases:\n  setup:\n    - file: \"$ORCHC_RUN_DIR/x\"\n      content: {line}\n",
        "env": f"container:\n  command: sleep 1\n  env:\n    EVIL: {line}\n",
    }[where]
    number = next(n for n, row in enumerate(text.splitlines(), 1) if line in row)
    return text, number


def _commands(recipe: str) -> dict[str, list[str]]:
    return {
        "validate": ["validate", recipe, "--defs", "defs"],
        "compile": ["compile", recipe, "--defs", "defs", "-o", "out"],
        "show": ["show", recipe, "--defs", "defs"],
        "types": ["types", "evil", "--defs", "defs"],
    }


def _check(result, sentinel: Path, where: str, tmp_path: Path) -> None:
    assert not sentinel.exists(), "THE TEMPLATE RAN CODE: the sentinel file was created"
    assert "Traceback" not in result.err
    assert result.code == 1, f"exit status {result.code}, expected 1 (a located error):\n{result.out[-500:]}{result.err[-1500:]}"
    first = result.err.splitlines()[0] if result.err else ""
    assert first.startswith(f"{where}:") and ": error: " in first, f"expected an error at {where}, got: {first!r}"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.sbatch"))


@pytest.mark.parametrize("command", ["validate", "compile", "show", "types"])
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_a_payload_in_a_type_phase_is_refused_by_every_command(orchc, write, tmp_path, payload, command):
    sentinel = tmp_path / "sentinel-must-not-exist"
    text, line = evil_type(PAYLOADS[payload].replace("@SENTINEL@", str(sentinel)), "phase")
    write("defs/evil.yaml", text)
    write("r.yaml", "service:\n  name: e\n  type: evil\n")
    result = orchc(*_commands("r.yaml")[command], "--site", "local", cwd=tmp_path) if command != "types" else \
        orchc(*_commands("r.yaml")[command], cwd=tmp_path)
    _check(result, sentinel, f"defs/evil.yaml:{line}", tmp_path)


@pytest.mark.parametrize("where", WHERE)
def test_a_payload_anywhere_in_a_type_is_refused(orchc, write, tmp_path, where):
    sentinel = tmp_path / "sentinel-must-not-exist"
    text, line = evil_type(PAYLOADS["lipsum_globals"].replace("@SENTINEL@", str(sentinel)), where)
    write("defs/evil.yaml", text)
    write("r.yaml", "service:\n  name: e\n  type: evil\n")
    for site in ("local", "meluxina"):
        result = orchc("compile", "r.yaml", "--defs", "defs", "--site", site, "-o", "out", cwd=tmp_path)
        _check(result, sentinel, f"defs/evil.yaml:{line}", tmp_path)


def test_a_payload_in_a_recipe_is_refused(orchc, write, tmp_path):
    sentinel = tmp_path / "sentinel-must-not-exist"
    payload = json.dumps(PAYLOADS["lipsum_globals"].replace("@SENTINEL@", str(sentinel)))
    write("r.yaml", f"service:\n  name: redis\n  phases:\n    setup:\n      - {payload}\n")
    result = orchc("compile", "r.yaml", "--site", "local", "-o", "out", cwd=tmp_path)
    _check(result, sentinel, "r.yaml:5", tmp_path)


def test_ordinary_templates_still_work_in_the_sandbox(orchc, write, tmp_path):
    import subprocess

    line = ("echo {{ names | sort | join(',') }} {{ ports | length }} {{ '%s-%d' | format('x', 3) }}"
            " {% for n in names %}{{ loop.index }}{{ n | upper }}{% endfor %} {{ names[0] ~ job.name }}"
            ' >"$ORCHC_RUN_DIR/echoed"')
    write("defs/fine.yaml", "type: fine\nextends: service\ndescription: ordinary Jinja\nfields:\n"
          "  ports: {default: [1234]}\n  names: {type: array, items: {type: string, pattern: '^[a-z]+$'}, default: [b, a]}\n"
          f"container:\n  command: sleep 0.1\nphases:\n  setup:\n    - {json.dumps(line)}\n")
    write("r.yaml", "service:\n  name: f\n  type: fine\n")
    result = orchc("compile", "r.yaml", "--defs", "defs", "--site", "local", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    (tmp_path / "run").mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ORCHC_RUN_DIR": str(tmp_path / "run")}
    ran = subprocess.run(["bash", str(tmp_path / "out" / "r" / "f.sbatch")], env=env, capture_output=True, text=True,
                         timeout=30, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "run" / "echoed").read_text() == "a,b 1 x-3 1B2A bf\n"


@pytest.mark.parametrize("statement", [
    "{% include 'shell-f72c5746b83a320316610b2c8bbc2c28a8d5fe44' %}",
    "{% import 'shell-f72c5746b83a320316610b2c8bbc2c28a8d5fe44' as other %}",
    "{% from 'shell-f72c5746b83a320316610b2c8bbc2c28a8d5fe44' import x %}",
    "{% extends 'shell-f72c5746b83a320316610b2c8bbc2c28a8d5fe44' %}",
], ids=["include", "import", "from-import", "extends"])
@pytest.mark.parametrize("command", ["validate", "compile", "show", "types"])
def test_a_template_cannot_include_import_or_extend_another(orchc, write, tmp_path, statement, command):
    """Another template is reachable by the name orchc compiled it under (here that of `echo {{ x }}`, the
    container command): what it printed would depend on which templates this process compiled before, and
    it reads values no cache key of this one holds. It is a located error, whatever the command."""
    line = json.dumps(f"echo {statement}")
    write("defs/other.yaml", "type: other\nextends: service\ndescription: reaches for another template\nfields:\n"
          "  ports: {default: [1234]}\n  x: {type: string, default: hello}\n"
          f"container:\n  command: \"echo {{{{ x }}}}\"\nphases:\n  setup:\n    - {line}\n")
    write("r.yaml", "service:\n  name: e\n  type: other\n")
    args = _commands("r.yaml")[command]
    args = [*args, "--site", "local"] if command != "types" else [arg.replace("evil", "other") for arg in args]
    result = orchc(*args, cwd=tmp_path)
    assert result.code == 1 and "Traceback" not in result.err, result.err
    assert result.err.startswith("defs/other.yaml:11:7: error: "), result.err
    assert "cannot include, import or extend another template" in result.err
    assert not (tmp_path / "out").exists()
