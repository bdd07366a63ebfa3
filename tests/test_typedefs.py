"""Types as YAML: inheritance, the meta-schema, and every error naming its files."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, in_ci

HEADLINE = re.compile(r"^(?P<loc>\S+:\d+:\d+): error: (?P<message>.+)$", re.M)

MEMCACHED = """\
type: memcached
extends: service
description: Memcached.
fields:
  ports: {default: [11211]}
  memory_mb: {type: integer, minimum: 16, default: 1024, description: cache size}
container:
  image: memcached
  source: docker://memcached:1.6
  command: memcached -p {{ ports[0] }} -m {{ memory_mb }}
phases:
  health_check:
    - orchc_wait_tcp 127.0.0.1 {{ ports[0] }} {{ health_timeout }}
"""
RECIPE = "service:\n  name: cache\n  type: memcached\n"
ACCOUNT = "account: p200981\n"  # the default site (meluxina) requires one; appended last, so no line moves


def errors(err: str) -> list[tuple[str, str]]:
    return [(m["loc"], m["message"]) for m in HEADLINE.finditer(err)]


def test_a_yaml_type_compiles_and_inherits_fields_defaults_and_phases(orchc, write, tmp_path):
    write("defs/memcached.yaml", MEMCACHED)
    recipe = write("r.yaml", RECIPE + "  memory_mb: 64\n  enable_cadvisor: true\n" + ACCOUNT)
    result = orchc("compile", recipe, "--defs", "defs", "--stdout", cwd=tmp_path)
    assert result.code == 0, result.err
    assert "memcached -p 11211 -m 64 &" in result.out
    assert '/usr/bin/cadvisor -port "${ORCHC_PORT_cadvisor_port}"' in result.out    # inherited sidecar and default (auto)
    assert "orchc_wait_tcp 127.0.0.1 11211 300" in result.out       # inherited health_timeout default


def test_defs_shadow_a_builtin_of_the_same_name(orchc, write, tmp_path):
    write("defs/redis.yaml", MEMCACHED.replace("type: memcached", "type: redis"))
    result = orchc("compile", write("r.yaml", "service:\n  name: redis\n" + ACCOUNT), "--defs", "defs", "--stdout", cwd=tmp_path)
    assert "memcached -p 11211" in result.out


def test_inheritance_cycle_names_every_file(orchc, write, tmp_path):
    write("defs/a.yaml", "type: a\nextends: b\n")
    write("defs/b.yaml", "type: b\nextends: a\n")
    result = orchc("validate", write("r.yaml", "service:\n  name: x\n  type: a\n"), "--defs", "defs", cwd=tmp_path)
    assert result.code == 1
    ((loc, message),) = errors(result.err)
    assert "inheritance cycle" in message and "defs/a.yaml" in message and "defs/b.yaml" in message
    assert loc.startswith("defs/")


def test_missing_parent_points_at_extends(orchc, write, tmp_path):
    write("defs/a.yaml", "type: a\nrole: service\nextends: servise\n")
    result = orchc("validate", write("r.yaml", "service:\n  name: x\n  type: a\n"), "--defs", "defs", cwd=tmp_path)
    assert errors(result.err) == [("defs/a.yaml:3:10", "type 'a' extends unknown type 'servise'; "
                                   "did you mean 'service'? (in defs/a.yaml)")]


def test_duplicate_type_names_name_both_files(orchc, write, tmp_path):
    write("defs/one.yaml", MEMCACHED)
    write("defs/two.yaml", MEMCACHED)
    result = orchc("validate", write("r.yaml", RECIPE + ACCOUNT), "--defs", "defs", cwd=tmp_path)
    ((loc, message),) = errors(result.err)
    assert loc == "defs/two.yaml:1:7"
    assert "duplicate type name 'memcached'" in message and "defs/one.yaml" in message and "defs/two.yaml" in message


def test_meta_schema_violations_are_located_in_the_type_file(orchc, write, tmp_path):
    write("defs/memcached.yaml", MEMCACHED + "feilds: {}\ncontainer+: 3\n".replace("container+: 3\n", "")
          + "resources: {mem: lots}\n")
    result = orchc("validate", write("r.yaml", RECIPE + ACCOUNT), "--defs", "defs", cwd=tmp_path)
    found = errors(result.err)
    assert ("defs/memcached.yaml:14:1", "unknown field 'feilds' in type 'memcached'; did you mean 'fields'?") in found
    assert any(loc == "defs/memcached.yaml:15:18" and "resources.mem" in msg for loc, msg in found)


def test_a_field_that_is_not_json_schema_is_an_error(orchc, write, tmp_path):
    write("defs/memcached.yaml", MEMCACHED.replace("{type: integer, minimum: 16,", "{type: integr, minimum: 16,"))
    result = orchc("validate", write("r.yaml", RECIPE + ACCOUNT), "--defs", "defs", cwd=tmp_path)
    ((loc, message),) = errors(result.err)
    assert loc == "defs/memcached.yaml:6:14" and "field 'memory_mb' of type 'memcached' is not a valid JSON Schema" in message


def test_undefined_template_variable_names_the_type_file_and_line(orchc, write, tmp_path):
    write("defs/memcached.yaml", MEMCACHED.replace("-m {{ memory_mb }}", "-m {{ memory }}"))
    result = orchc("compile", write("r.yaml", RECIPE + ACCOUNT), "--defs", "defs", "-o", "out", cwd=tmp_path)
    assert result.code == 1
    assert errors(result.err) == [("defs/memcached.yaml:10:46", "template error: 'memory' is undefined; did you mean 'memory_mb'?")]


def test_an_undefined_name_on_a_later_line_of_a_block_is_located_at_the_name_with_did_you_mean(orchc, write, tmp_path):
    block = "    - |\n      echo ready\n      echo sit {{ job.name }} {{ sit.name }}\n"
    write("defs/memcached.yaml", MEMCACHED + block)  # a second health_check item
    result = orchc("compile", write("r.yaml", RECIPE + ACCOUNT), "--defs", "defs", "-o", "out", cwd=tmp_path)
    assert result.code == 1
    assert errors(result.err) == [("defs/memcached.yaml:16:34", "template error: 'sit' is undefined; did you mean 'site'?")]
    assert not (tmp_path / "out").exists()


def test_template_syntax_error_is_located(orchc, write, tmp_path):
    write("defs/memcached.yaml", MEMCACHED.replace("-m {{ memory_mb }}", "-m {{ memory_mb }"))
    result = orchc("validate", write("r.yaml", RECIPE + ACCOUNT), "--defs", "defs", cwd=tmp_path)
    ((loc, message),) = errors(result.err)
    assert loc == "defs/memcached.yaml:10:12" and message.startswith("template syntax error")


def test_types_lists_every_builtin_with_its_parent(orchc):
    result = orchc("types")
    assert result.code == 0
    rows = {line.split()[0]: line.split()[1:3] for line in result.out.splitlines()[1:]}
    for name in ("ollama", "redis", "chroma", "mysql", "prometheus", "grafana", "vllm"):
        assert rows[name] == ["service", "service"], name
    for name in ("llm_client", "redis_client", "chroma_client", "mysql_client"):
        assert rows[name] == ["client", "client"], name
    assert rows["ollama_client"] == ["llm_client", "client"]
    assert rows["service"][0] == "base_job"


def test_types_name_shows_resolved_fields_with_defaults(orchc):
    result = orchc("types", "ollama")
    assert "chain: base_job -> service -> ollama" in result.out
    assert re.search(r"^gpu_layers\s+integer\s+-\s+layers offloaded", result.out, re.M)
    assert re.search(r"^num_parallel\s+integer\s+4\s", result.out, re.M)
    assert re.search(r"^cadvisor_port\s+integer \| auto\s+\"auto\"", result.out, re.M)


def test_every_builtin_type_is_valid(orchc):
    from compiler.recipe.typedefs import Registry

    registry = Registry([])
    for name in registry.names():
        registry.resolve(name)
    assert set(registry.names()) == {p.stem for p in (ROOT / "service_defs").glob("*.yaml")}


HOSTILE = "$(touch /tmp/orchc-pwned) `id` \"dq\" 'sq' \\ $HOME"


@pytest.mark.parametrize("line", ['echo "said: {{ words }}"', "echo 'said: {{ words }}'", "echo said: {{ words }}"])
def test_values_stay_literal_inside_or_outside_shell_quotes(orchc, write, tmp_path, line):
    defs = MEMCACHED.replace("  memory_mb:", "  words: {type: string}\n  memory_mb:")
    write("defs/memcached.yaml", defs + f"  setup:\n    - {json.dumps(line)}\n")
    recipe = write("r.yaml", RECIPE + f"  words: {json.dumps(HOSTILE)}\n" + ACCOUNT)
    result = orchc("compile", recipe, "--defs", "defs", "--stdout", cwd=tmp_path)
    assert result.code == 0, result.err
    ran = subprocess.run(["bash", "-c", _values_and_echo(result.out)], capture_output=True, text=True, env={"HOME": "/home/x"})
    assert ran.stdout == f"said: {HOSTILE}\n"
    assert not Path("/tmp/orchc-pwned").exists()


def _values_and_echo(script: str) -> str:
    """The script's value assignments (which values are referenced through) and its one `echo` line."""
    lines = script.splitlines()
    values = [line for line in lines if line.startswith("orchc_v")]
    (echo,) = [line for line in lines if line.startswith("echo ")]
    return "\n".join([*values, echo])


def test_path_inside_double_quotes_keeps_variables(orchc, write, tmp_path):
    defs = MEMCACHED.replace("  memory_mb:", "  dir: {type: string}\n  memory_mb:")
    write("defs/memcached.yaml", defs + '  setup:\n    - echo "dir={{ dir | path }}"\n')
    recipe = write("r.yaml", RECIPE + '  dir: "$HOME/a b/$(id)"\n' + ACCOUNT)
    out = orchc("compile", recipe, "--defs", "defs", "--stdout", cwd=tmp_path).out
    ran = subprocess.run(["bash", "-c", _values_and_echo(out)], capture_output=True, text=True, env={"HOME": "/home/x"})
    assert ran.stdout == "dir=/home/x/a b/$(id)\n"


def test_an_error_inside_a_block_template_points_at_its_line(orchc, write, tmp_path):
    write("defs/memcached.yaml", MEMCACHED + "  setup:\n    - |-\n      mkdir -p /tmp/x\n      echo {{ nosuch }}\n")
    result = orchc("validate", write("r.yaml", RECIPE + ACCOUNT), "--defs", "defs", cwd=tmp_path)
    assert errors(result.err) == [("defs/memcached.yaml:17:15", "template error: 'nosuch' is undefined")]
    assert " > 17 |       echo {{ nosuch }}" in result.err


def test_a_sidecar_switch_must_be_a_boolean_field(orchc, write, tmp_path):
    write("defs/memcached.yaml", MEMCACHED + "sidecars:\n  cadvisor:\n    when: enable_cadvisr\n")
    result = orchc("validate", write("r.yaml", RECIPE + ACCOUNT), "--defs", "defs", cwd=tmp_path)
    ((loc, message),) = errors(result.err)
    assert loc == "defs/memcached.yaml:16:11"
    assert "switched by 'enable_cadvisr', which is not a boolean field" in message and "'enable_cadvisor'" in message


def test_names_the_templates_use_cannot_be_fields(orchc, write, tmp_path):
    write("defs/memcached.yaml", MEMCACHED.replace("  memory_mb:", "  run: {type: string}\n  memory_mb:"))
    result = orchc("validate", write("r.yaml", RECIPE + ACCOUNT), "--defs", "defs", cwd=tmp_path)
    ((loc, message),) = errors(result.err)
    assert loc == "defs/memcached.yaml:6:3" and message == "invalid name 'run' in fields: this name is reserved"


def test_raw_is_refused_with_a_located_error(orchc, write, tmp_path):
    """`| raw` wrote a value as shell code: a value never is, so a type that asks for it is told where and why."""
    write("defs/memcached.yaml", MEMCACHED + '  setup:\n    - echo "mb={{ memory_mb | raw }}"\n')
    result = orchc("compile", write("r.yaml", RECIPE + ACCOUNT), "--defs", "defs", "--stdout", cwd=tmp_path)
    ((loc, message),) = errors(result.err)
    assert result.code == 1 and result.out == "" and "Traceback" not in result.err
    assert loc.startswith("defs/memcached.yaml:") and "'| raw' is not available" in message


def test_a_typo_in_a_field_definition_is_an_unknown_key_with_did_you_mean(orchc, write, tmp_path):
    write("defs/memcached.yaml", MEMCACHED.replace("minimum: 16, default: 1024", "minimum: 16, defualt: 1024"))
    result = orchc("validate", write("r.yaml", RECIPE + ACCOUNT), "--defs", "defs", cwd=tmp_path)
    assert result.code == 1
    assert errors(result.err) == [("defs/memcached.yaml:6:43", "unknown key 'defualt' in field memory_mb of type 'memcached'; "
                                   "did you mean 'default'?")]


def test_a_field_definition_takes_json_schema_keywords_and_orchcs_own(orchc, write, tmp_path):
    field = ("  tags: {type: array, title: Tags, items: {type: string}, minItems: 0, maxItems: 4, uniqueItems: true, "
             "examples: [[a]], default: [], $comment: c, deprecated: false, multiline: false}\n")
    write("defs/memcached.yaml", MEMCACHED.replace("fields:\n", "fields:\n" + field))
    result = orchc("validate", write("r.yaml", RECIPE + ACCOUNT), "--defs", "defs", cwd=tmp_path)
    assert result.code == 0, result.err


def _readme_type(name: str) -> str:
    """The YAML block of the README's "Writing a type in YAML" that starts `# my_defs/NAME.yaml`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(rf"```yaml\n(# my_defs/{name}\.yaml\n.*?)```", text, re.S)
    return block


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_readmes_memcached_type_runs_memcached_as_any_user_root_too(orchc, write, tmp_path):
    if shutil.which("memcached") is None:
        pytest.fail("memcached missing; run tests/install-deps.sh") if in_ci() else pytest.skip("no memcached")
    write("my_defs/memcached.yaml", _readme_type("memcached"))
    recipe = write("r.yaml", f"site: local\nservice:\n  name: cache\n  type: memcached\n  ports: [{_free_port()}]\n"
                   "  memory_mb: 64\n")
    result = orchc("compile", recipe, "--defs", "my_defs", "--stdout", cwd=tmp_path)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    (command,) = [found[1] for line in lines if (found := re.fullmatch(r"\s*(?:setsid )?(memcached .*?)\s*&", line))]
    values = [line for line in lines if line.startswith("orchc_v")]
    # still serving when stopped (exit 124): memcached refuses root without -u and exits at once
    ran = subprocess.run(["timeout", "2", "bash", "-c", "\n".join([*values, command])], capture_output=True, text=True)
    assert ran.returncode == 124, ran.stderr


def test_the_readmes_field_typo_error_is_the_one_orchc_prints(orchc, write, tmp_path):
    write("my_defs/memcached.yaml", _readme_type("memcached").replace("default: 1024", "defualt: 1024"))
    result = orchc("validate", write("r.yaml", "site: local\nservice:\n  name: cache\n  type: memcached\n"), "--defs", "my_defs",
                   cwd=tmp_path)
    headline = result.err.splitlines()[0]
    assert headline.startswith("my_defs/memcached.yaml:") and f"(`{headline}`)" in (ROOT / "README.md").read_text(encoding="utf-8")


# --- headline: the metrics compare shows by default ---------------------------------------------------

@pytest.mark.parametrize(("name", "headline"), [
    ("redis_client", ("requests_per_s", "latency_p50_ms", "latency_p99_ms")),
    ("sysbench_client", ("transactions_per_s", "queries_per_s", "latency_mean_ms", "latency_p*_ms")),
    ("llm_client", ("capacity_requests_per_s", "request_throughput_per_s", "output_tokens_per_s", "ttft_median_ms", "ttft_p99_ms",
                    "tpot_median_ms", "tpot_p99_ms", "e2e_latency_median_ms", "e2e_latency_p99_ms",
                    "goodput_requests_per_s", "slo_met_ratio")),
    ("ollama_client", ("capacity_requests_per_s", "request_throughput_per_s", "output_tokens_per_s", "ttft_median_ms", "ttft_p99_ms",
                       "tpot_median_ms", "tpot_p99_ms", "e2e_latency_median_ms", "e2e_latency_p99_ms",
                       "goodput_requests_per_s", "slo_met_ratio")),  # inherited
    ("chroma_client", ("adds_per_s", "queries_per_s", "*_latency_p50_ms", "*_latency_p99_ms", "recall_at_*_ratio")),
    ("mysql_client", ("queries_per_s", "query_latency_mean_ms")),
    ("redis", ()),
])
def test_each_builtin_client_type_declares_its_headline(name, headline):
    from compiler.recipe.typedefs import Registry

    assert Registry([]).resolve(name).headline == headline


def test_the_manifest_records_the_headline_of_each_type_of_the_recipe(orchc, write, tmp_path):
    write("defs/memcached_client.yaml", "type: memcached_client\nextends: client\ndescription: x.\n"
          "headline: [gets_per_s, '*_p99_ms']\nphases:\n  benchmark:\n    - 'true'\n")
    recipe = write("r.yaml", RECIPE.replace("memcached", "redis") + "clients:\n  - name: a\n    type: memcached_client\n"
                   "    target: cache\n  - name: b\n    type: redis_client\n    target: cache\n" + ACCOUNT)
    result = orchc("compile", recipe, "--defs", "defs", "-o", tmp_path / "out", cwd=tmp_path)
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "out" / "r" / "manifest.json").read_text())
    assert manifest["headline"] == {"memcached_client": ["gets_per_s", "*_p99_ms"],
                                    "redis_client": ["requests_per_s", "latency_p50_ms", "latency_p99_ms"]}


def test_a_headline_that_is_not_a_list_of_names_is_a_located_error(orchc, write, tmp_path):
    write("defs/memcached.yaml", MEMCACHED + "headline: [gets_per_s, 3]\n")
    result = orchc("validate", write("r.yaml", RECIPE + ACCOUNT), "--defs", "defs", cwd=tmp_path)
    assert result.code == 1
    assert [loc for loc, _ in errors(result.err)] == ["defs/memcached.yaml:14:24"], result.err
