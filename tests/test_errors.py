"""Every class of bad input: a located first line, the source around it, exit 1, nothing written."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

HEADLINE = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+):(?P<col>\d+): error: (?P<message>.+)$")

RECIPE_CASES = {
    "yaml_syntax": ("service:\n  name: redis\n  maxmemory: [1\n", 4, 1, "invalid YAML"),
    "not_a_mapping": ("- redis\n", 1, 1, "the document is a list; expected a mapping"),
    "empty": ("", 1, 1, "the document is empty"),
    "duplicate_key": ("service:\n  name: redis\n  name: ollama\n", 3, 3, "duplicate key 'name' (first at line 2)"),
    "unknown_type": ("service:\n  name: db\n  type: redsi\n", 3, 9, "unknown type 'redsi'; did you mean 'redis'?"),
    "unknown_field": ("service:\n  name: ollama\n  gpu_layer: 3\n", 3, 3,
                      "unknown field 'gpu_layer' in service 'ollama'; did you mean 'gpu_layers'?"),
    "unknown_top_level": ("servce:\n  name: redis\nservice:\n  name: redis\n", 1, 1,
                          "unknown field 'servce' in the recipe; did you mean 'service'?"),
    "wrong_type": ("service:\n  name: ollama\n  gpu_layers: many\n", 3, 15, "gpu_layers: expected integer, got string"),
    "port_out_of_range": ("service:\n  name: redis\n  ports: [70000]\n", 3, 11, "ports[0]: 70000 is greater than the maximum of 65535"),
    "bad_mem": ("resources: {mem: 16X}\nservice:\n  name: redis\n", 1, 18, "resources.mem: '16X' is not valid; expected memory"),
    "bad_time": ("service:\n  name: redis\n  resources: {time: 2h}\n", 3, 21, "resources.time: '2h' is not valid"),
    "bad_gres": ("service:\n  name: redis\n  resources: {gres: 'gpu 1'}\n", 3, 21, "resources.gres: 'gpu 1' is not valid"),
    "bad_extra": ("service:\n  name: redis\n  resources: {extra: ['--exclusive --mem=1']}\n", 3, 23, "resources.extra[0]"),
    "newline_in_directive": ('service:\n  name: redis\n  resources: {partition: "cpu\\n#SBATCH --x"}\n', 3, 26,
                             "resources.partition"),
    "duplicate_job_name": ("services:\n  - name: a\n    type: redis\n  - name: a\n    type: redis\n", 4, 11,
                           "duplicate job name 'a'"),
    "missing_target": ("service:\n  name: redis\nclient:\n  name: c\n  type: redis_client\n  target: rediz\n", 6, 11,
                       "client 'c' targets 'rediz', which is not a service of this recipe; did you mean 'redis'?"),
    "client_without_target": ("client:\n  name: c\n  type: redis_client\n", 2, 3, "client 'c' needs one of target"),
    "abstract_type": ("service:\n  name: s\n  type: service\n", 3, 9, "type 'service' is abstract"),
    "role_mismatch": ("service:\n  name: c\n  type: redis_client\n", 3, 9, "type 'redis_client' is a client type"),
    "unknown_partition": ("service:\n  name: redis\n  resources: {partition: gpux}\n", 3, 26,
                          "site 'meluxina' has no partition 'gpux'"),
    "unknown_site": ("site: mars\nservice:\n  name: redis\n", 1, 7, "unknown site 'mars'"),
    "literal_secret": ("service:\n  name: db\n  type: mysql\n  root_password: hunter2\n", 4, 18,
                       "root_password of service 'db' is a secret and is never written into a script"),
    "tag": ("service:\n  name: redis\n  ports: !reset []\n", 3, 10, "unsupported YAML tag"),
}


def _headlines(err: str) -> list[re.Match[str]]:
    return [m for m in map(HEADLINE.match, err.splitlines()) if m]


@pytest.mark.parametrize("case", sorted(RECIPE_CASES))
def test_bad_recipe_is_located_and_writes_nothing(orchc, write, tmp_path, case):
    text, line, col, message = RECIPE_CASES[case]
    recipe = write("recipe.yaml", text)
    out = tmp_path / "out"
    result = orchc("compile", recipe, "-o", out, cwd=tmp_path)
    assert result.code == 1
    assert "Traceback" not in result.err
    first = HEADLINE.match(result.err.splitlines()[0])
    assert first, result.err
    located = [(m["file"], int(m["line"]), int(m["col"]), m["message"]) for m in _headlines(result.err)]
    assert any(f == "recipe.yaml" and (ln, c) == (line, col) and message in msg for f, ln, c, msg in located), result.err
    assert not out.exists()


def test_excerpt_shows_the_offending_line_with_a_caret(orchc, write, tmp_path):
    recipe = write("r.yaml", "service:\n  name: ollama\n  gpu_layer: 3\naccount: p200981\n")
    err = orchc("validate", recipe, cwd=tmp_path).err
    assert " > 3 |   gpu_layer: 3" in err
    assert "     |   ^" in err


def test_every_error_of_a_file_is_reported(orchc, write, tmp_path):
    recipe = write("r.yaml", "resources: {mem: 16X, time: 2h, account: p200981}\nservice:\n  name: ollama\n  gpu_layer: 3\n  ports: [0]\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert len(_headlines(result.err)) == 4
    assert result.err.rstrip().endswith("4 errors")


def test_one_bad_recipe_keeps_every_other_from_being_written(orchc, write, tmp_path):
    good = write("good.yaml", "service:\n  name: redis\naccount: p200981\n")
    bad = write("bad.yaml", "service:\n  name: redis\n  port: 1\naccount: p200981\n")
    out = tmp_path / "out"
    assert orchc("compile", good, bad, "-o", out, cwd=tmp_path).code == 1
    assert not out.exists()


def test_a_failed_compile_leaves_earlier_output_unchanged(orchc, write, tmp_path):
    recipe = write("r.yaml", "service:\n  name: redis\naccount: p200981\n")
    out = tmp_path / "out"
    assert orchc("compile", recipe, "-o", out, cwd=tmp_path).code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write("r.yaml", "service:\n  name: redis\n  maxmemory: lots\naccount: p200981\n")
    assert orchc("compile", recipe, "-o", out, cwd=tmp_path).code == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_missing_recipe_file(orchc, tmp_path):
    result = orchc("compile", "nope.yaml", cwd=tmp_path)
    assert result.code == 1
    assert result.err.startswith("nope.yaml:1:1: error: recipe not found")


def test_bad_set_value_is_located_on_the_command_line(orchc, write, tmp_path):
    recipe = write("r.yaml", "service:\n  name: redis\naccount: p200981\n")
    result = orchc("validate", recipe, "--set", "redis.ports=[99999]", cwd=tmp_path)
    assert result.code == 1
    assert result.err.startswith("<command line>:1:7: error: ports[0]: 99999 is greater")
    assert "--set redis.ports=[99999]" in result.err


def test_wrong_usage_exits_2(orchc, write, tmp_path):
    recipe = write("r.yaml", "service:\n  name: redis\n")
    with pytest.raises(SystemExit) as exit_info:
        orchc("compile", cwd=tmp_path)
    assert exit_info.value.code == 2
    assert orchc("validate", recipe, "--set", "novalue", cwd=tmp_path).code == 2


REDIS_SWEEP = (Path(__file__).parent.parent / "examples" / "redis_sweep.yaml").read_text(encoding="utf-8")
REDIS = (Path(__file__).parent.parent / "examples" / "redis.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("recipe", [REDIS, REDIS_SWEEP], ids=["one point", "sweep"])
@pytest.mark.parametrize("typo, said", [("cpus_per_tsk: 4", "unknown field 'cpus_per_tsk'"),
                                        ("cpus_per_task: abc", 'expected integer, got string "abc"')])
def test_a_mistake_at_one_spot_is_reported_once(orchc, write, recipe: str, typo: str, said: str):
    """The recipe's resources are every job's and every point's: the mistake in them is still one mistake."""
    assert "cpus_per_task: 4" in recipe
    result = orchc("validate", write("r.yaml", recipe.replace("cpus_per_task: 4", typo)))
    headlines = [line for line in result.err.splitlines() if ": error: " in line]
    assert result.code == 1 and len(headlines) == 1 and said in headlines[0], result.err


def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _commands(child)
    return found


def test_every_option_and_argument_of_every_command_has_help():
    """`orchc results --help` says what --json and --csv do; options hidden on purpose (SUPPRESS) are not listed."""
    from compiler.cli.main import build_parser

    commands = _commands(build_parser())
    assert len(commands) >= 15
    missing = [f"{prog} {'/'.join(action.option_strings) or action.metavar or action.dest}"
               for prog, parser in commands for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction) and not action.help]
    assert missing == []
