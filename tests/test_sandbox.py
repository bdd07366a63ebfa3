"""Type templates are rendered in a sandbox: reaching Python internals is a located error, never code run.

Each payload sits in a type of a `--defs` folder (and once in a recipe). `orchc validate`, `compile`,
`show` and `types NAME` must all exit 1 with `FILE:LINE:COL: error:` at the payload's line, without a
traceback, and the sentinel file the payload would create must never exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import runtime_into
from test_hostile_input import CPU_FLOORS, cpu_floor, run_measured

__all__ = ["cpu_floor"]   # a fixture, imported for the bombs below

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
    runtime_into(tmp_path / "run", tmp_path / "out" / "r")
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


# Rendering is bounded: output size, loop iterations and calls, formatting widths and sizes of what operations make.
# Each bomb runs in a fresh process under a 1 GiB address-space limit (a bomb not bounded fails, it cannot exhaust the
# machine); it must end with a located error at the template, within 2 s of CPU and 200 MB.
BOMBS = {
    "percent_width": ("{{ '%0800000000d' % 1 }}", "formatting width"),
    "percent_star": ("{{ '%*d' % (800000000, 1) }}", "formatting width"),
    "percent_mapping_precision": ("{{ '%(a).800000000f' % {'a': 1.5} }}", "formatting width"),
    "format_filter": ("{{ '%0800000000d' | format(1) }}", "formatting width"),
    "nested_range": ("{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}", "steps"),
    "recursive_loop": ("{% for x in [1] recursive %}{{ loop([1, 1]) }}{% endfor %}", "recursion"),
    "macro_fanout": ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}", "steps"),
    "doubling_concat": ("{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s | length }}{% endif %}"
                        "{% endmacro %}{{ d('x', 40) }}", "more than"),
    "doubling_plus": ("{% macro d(s, n) %}{% if n %}{{ d(s + s, n - 1) }}{% else %}{{ s | length }}{% endif %}"
                      "{% endmacro %}{{ d('x', 40) }}", "more than"),
    "int_times_string": ("{{ 1048576 * ('x' * 1024) }}", "repetition"),
    "power_tower": ("{{ ((((2 ** 64) ** 64) ** 64) ** 64) ** 64 }}", "integer"),
    "squaring": ("{% macro s(x, n) %}{% if n %}{{ s(x * x, n - 1) }}{% else %}{{ x > 0 }}{% endif %}{% endmacro %}"
                 "{{ s(3, 40) }}", "integer"),
    "center_filter": ("{{ 'x' | center(800000000) }}", "width"),
    "ljust_method": ("{{ 'x'.ljust(800000000) }}", "width"),
    "to_bytes_method": ("{{ (1).to_bytes(800000000, 'big') | length }}", "width"),
    "replace_method": ("{{ ('x' * 1000000).replace('x', 'x' * 1000000) | length }}", "more than"),
    "join_method": ("{{ ('x' * 1000000).join(range(99999) | map('string')) | length }}", "more than"),
    "join_filter": ("{{ range(99999) | join('x' * 1000000) | length }}", "more than"),
    "indent_filter": ("{{ ('x\\n' * 500000) | indent(1000000) | length }}", "width"),
    "batch_filter": ("{{ [1] | batch(800000000, 0) | list | length }}", "width"),
    "slice_filter": ("{{ [1] | slice(800000000) | list | length }}", "width"),
    "printed_many_times": ("{% for i in range(99999) %}{{ 'x' * 1000000 }}{% endfor %}", "more than"),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_a_template_bomb_fails_fast_with_a_located_error(write, tmp_path, cpu_floor, bomb):
    payload, message = BOMBS[bomb]
    text, line = evil_type(payload, "phase")
    write("defs/evil.yaml", text)
    write("r.yaml", "service:\n  name: e\n  type: evil\n")
    code, err, cpu, peak_mb = run_measured(["validate", "r.yaml", "--defs", "defs", "--site", "local"], tmp_path, timeout=20)
    assert "Traceback" not in err and code == 1, (code, err[-2000:])
    first = err.splitlines()[0]
    assert first.startswith(f"defs/evil.yaml:{line}:7: error: template error: ") and message in first, first
    assert cpu < CPU_FLOORS * cpu_floor, f"{cpu:.2f} s of CPU, {cpu / cpu_floor:.1f} floors of {cpu_floor:.2f} s"
    assert peak_mb < 200, f"{peak_mb:.0f} MB"


@pytest.mark.slow
def test_a_template_within_the_bounds_renders(orchc, write, tmp_path):
    """Bounds far above real templates: 100,000 loop steps, a 1 MiB repetition, an 8 MiB value printed twice."""
    line = ("echo {% for a in range(300) %}{% for b in range(300) %}{% endfor %}{% endfor %}"
            "{{ ('x' * 1048576) | length }} {{ '%05d|%-8s|%.3f' % (42, 'ab', 1.5) }} {{ big | length }}{{ big[:1] }}")
    write("defs/fine.yaml", "type: fine\nextends: service\ndescription: big but honest\nfields:\n"
          "  ports: {default: [1234]}\n  big: {type: string}\n"
          f"container:\n  command: sleep 0.1\nphases:\n  setup:\n    - {json.dumps(line)}\n    - 'echo {{{{ big }}}} {{{{ big }}}} >/dev/null'\n")
    write("r.yaml", "service:\n  name: f\n  type: fine\n  big: " + "y" * (8 * 1024 * 1024 - 100) + "\n")
    result = orchc("compile", "r.yaml", "--defs", "defs", "--site", "local", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err[-2000:]
    script = (tmp_path / "out" / "r" / "f.sbatch").read_text()
    assert f'echo 1048576 "${{orchc_v1}}" {8 * 1024 * 1024 - 100}y' in script
    assert "orchc_v1='00042|ab      |1.500'" in script
