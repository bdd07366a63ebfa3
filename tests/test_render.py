"""What a script contains: directives, quoting, secrets, precedence, origins, determinism."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT, runtime_into, shellcheck

from compiler.script.runtime import runtime_name

HOSTILE = ["$(touch /tmp/orchc-pwned)", "a; rm -rf ~", "`id`", "x' ; touch /tmp/orchc-pwned; '", "a\nb"]


def compile_stdout(orchc, write, tmp_path, text: str, *extra: str) -> str:
    result = orchc("compile", write("r.yaml", text), "--stdout", *extra, cwd=tmp_path)
    assert result.code == 0, result.err
    return result.out


def test_design_example_header(orchc):
    result = orchc("compile", EXAMPLES / "ollama.yaml", "--stdout")
    header = [line for line in result.out.splitlines() if line.startswith("#SBATCH")]
    job_id = header[0].split("_")[-1]
    assert header == [
        f"#SBATCH --job-name=ollama_{job_id}", "#SBATCH --account=p200981", "#SBATCH --partition=gpu", "#SBATCH --qos=default",
        "#SBATCH --nodes=1", "#SBATCH --ntasks=1", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G",
        "#SBATCH --time=02:00:00", "#SBATCH --gres=gpu:1", "#SBATCH --output=slurm-%j.out",
        "#SBATCH --error=slurm-%j.err",
    ]
    assert len(job_id) == 8
    assert result.out.startswith("# ==> ollama/ollama.sbatch <==\n#!/bin/bash -l\n")
    assert "module --force purge\nmodule load env/release/2024.1\nmodule load Apptainer/1.3.6-GCCcore-13.3.0\n" in result.out
    (start,) = [line for line in result.out.splitlines() if line.endswith(" ollama serve &")]
    assert start.startswith("APPTAINERENV_OLLAMA_HOST=") and "setsid apptainer exec --cleanenv --nv " in start
    # behind its TLS proxy (auth_proxy, the default), Ollama itself listens on loopback only, on the port it chose
    assert start.startswith('APPTAINERENV_OLLAMA_HOST=127.0.0.1:"${ORCHC_PORT_internal_port}" ') and "/orchc/images/ollama-0.13.5.sif ollama serve &" in start
    assert result.out.index("cadvisor.sif /usr/bin/cadvisor") < result.out.index(" ollama serve &")
    assert result.out.rstrip().splitlines()[-1].startswith('wait "$ORCHC_SERVICE_PID"')


def test_account_extra_and_unset_directives(orchc, write, tmp_path):
    out = compile_stdout(orchc, write, tmp_path, "account: p200981\nresources: {extra: [--exclusive, --constraint=x]}\n"
                         "service:\n  name: redis\n")
    assert "#SBATCH --account=p200981\n" in out
    assert "#SBATCH --error=slurm-%j.err\n#SBATCH --exclusive\n#SBATCH --constraint=x\n" in out
    assert "--gres" not in out and "--mem" not in out


def test_native_runtime_runs_the_command_directly(orchc, write, tmp_path):
    out = compile_stdout(orchc, write, tmp_path, "site: local\nservice:\n  name: redis\n")
    assert "module" not in out and "apptainer" not in out
    assert "\nsetsid redis-server --bind 0.0.0.0 --protected-mode no" in out and '--tls-port "${ORCHC_PORT_ports_0}"' in out


def _heredoc_blocks(script: str) -> list[tuple[int, int, str]]:
    """(start, end, body) of every quoted here-document of a script."""
    return [(m.start(), m.end(), m.group(2)) for m in re.finditer(r"<<-?'([A-Za-z_][A-Za-z0-9_]*)'\n(.*?)\n\1\n", script, re.S)]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_refused_by_a_pattern_or_reach_the_script_only_as_data(orchc, write, tmp_path, value):
    # a field with a pattern (redis data_dir) refuses them, with a located error
    refused = orchc("compile", write("s.yaml", json.dumps({"service": {"name": "redis", "data_dir": value}, "account": "p200981"})),
                    "-o", tmp_path / "refused", cwd=tmp_path)
    assert refused.code == 1 and re.match(r"^s\.yaml:\d+:\d+: error: ", refused.err), refused.err
    assert "Traceback" not in refused.err and not (tmp_path / "refused").exists()
    # a free-text field (an ollama_client prompt) accepts them: they reach the script, as data only
    recipe = write("c.yaml", json.dumps({"client": {"name": "c", "type": "ollama_client", "prompts": [value],
                                                    "target_endpoint": "localhost:11434"}, "account": "p200981"}))
    result = orchc("compile", recipe, "-o", tmp_path / "out", cwd=tmp_path)
    assert result.code == 0, result.err
    script_path = tmp_path / "out" / "c" / "c.sbatch"
    subprocess.run(["bash", "-n", str(script_path)], check=True)
    script = script_path.read_text()
    # data: the body of a quoted here-document, or the single-quoted JSON of the job's parameters
    parameters = re.search(r"^ORCHC_PARAMETERS=(.*)$", script, re.M)
    assert parameters, "no parameters line"
    words = shlex.split(parameters.group(1))
    assert len(words) == 1 and json.loads(words[0])["prompts"] == [value]
    outside = script
    for start, end, _ in sorted(_heredoc_blocks(script) + [(parameters.start(), parameters.end(), "")], reverse=True):
        outside = outside[:start] + outside[end:]
    assert value not in outside and json.dumps(value)[1:-1] not in outside, "the value appears outside the data"


def test_a_prompt_with_shell_syntax_is_written_as_inert_data(orchc, write, tmp_path):
    out = compile_stdout(orchc, write, tmp_path, 'client:\n  name: c\n  type: ollama_client\n'
                         '  target_endpoint: "localhost:11434"\n  prompts: ["$(touch /tmp/orchc-pwned) `id`"]\n'
                         'account: p200981\n')
    assert "$(touch /tmp/orchc-pwned) `id`" in out                       # present only as data:
    for line in (text for text in out.splitlines() if "orchc-pwned" in text):
        assert line.startswith(("[", "ORCHC_PARAMETERS='{")), line      # JSON data, or the quoted parameters


def test_secret_is_read_at_run_time_and_never_written(orchc, write, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_DB_PW", "hunter2-from-env")         # set while compiling: must not leak into the script
    out = compile_stdout(orchc, write, tmp_path, "services:\n  - name: db\n    type: mysql\n"
                         "    root_password: {env: MY_DB_PW}\naccount: p200981\n")
    assert "MY_DB_PW" in out and "MYSQL_ROOT_PASSWORD" in out
    assert "hunter2" not in out
    secret = write("secret", "hunter2-from-file\n")
    secret.chmod(0o600)
    out = compile_stdout(orchc, write, tmp_path, "services:\n  - name: db\n    type: mysql\n"
                         f"    root_password: {{file: {json.dumps(str(secret))}}}\naccount: p200981\n")
    assert str(secret) in out and "hunter2" not in out
    out = compile_stdout(orchc, write, tmp_path, "services:\n  - name: db\n    type: mysql\naccount: p200981\n")
    assert ".orchc/secrets/mysql_root_password" in out and "orchc_secret_file" in out


def test_precedence_site_type_recipe_job_set(orchc, write, tmp_path):
    text = "resources: {time: '00:10:00', mem: 1G, account: p200981}\nservice:\n  name: ollama\n  resources: {mem: 2G}\n"
    out = compile_stdout(orchc, write, tmp_path, text, "--set", "ollama.resources.mem=3G")
    assert "--partition=gpu" in out          # type (ollama) over site (cpu)
    assert "--qos=default" in out            # site
    assert "--time=00:10:00" in out          # recipe top level
    assert "--mem=3G" in out                 # --set over the job's own 2G


def test_show_origin_names_the_file_and_line_of_each_value(orchc, write, tmp_path):
    recipe = write("r.yaml", "resources: {time: '00:10:00', account: p200981}\nservice:\n  name: ollama\n  model: llama3\n")
    result = orchc("show", recipe, "--origin", "--set", "ollama.gpu_layers=10", cwd=tmp_path)
    assert result.code == 0, result.err
    lines = result.out.splitlines()

    def origin(prefix: str) -> str:
        return next(line for line in lines if line.strip().startswith(prefix)).split("# ")[-1]

    assert origin("model:") == "r.yaml:4:10"
    assert origin("time:") == "r.yaml:1:19"
    assert origin("gpu_layers:") == "<command line>:1:7"
    assert origin("qos:").endswith("sites/meluxina.yaml:11:10")
    assert "service_defs/service.yaml:" in origin("cadvisor_port:")


def test_submit_script_orders_clients_after_their_service(orchc, tmp_path):
    assert orchc("compile", EXAMPLES / "redis.yaml", "-o", tmp_path).code == 0
    submit = (tmp_path / "redis" / "submit.sh").read_text()
    assert submit.index("redis.sbatch") < submit.index("bench.sbatch")
    assert '--dependency=after:"${JOB_1}"' in submit
    manifest = json.loads((tmp_path / "redis" / "manifest.json").read_text())
    assert [(j["name"], j["depends_on"]) for j in manifest["jobs"]] == [("redis", []), ("bench", ["redis"])]


def test_recompiling_removes_scripts_of_jobs_that_are_gone(orchc, write, tmp_path):
    recipe = write("r.yaml", "services:\n  - name: a\n    type: redis\n  - name: b\n    type: redis\naccount: p200981\n")
    assert orchc("compile", recipe, "-o", "out", cwd=tmp_path).code == 0
    write("r.yaml", "services:\n  - name: a\n    type: redis\naccount: p200981\n")
    assert orchc("compile", recipe, "-o", "out", cwd=tmp_path).code == 0
    assert sorted(p.name for p in (tmp_path / "out" / "r").iterdir()) == ["a.sbatch", "manifest.json", runtime_name(), "submit.sh"]


@pytest.mark.slow
def test_output_is_identical_across_processes_and_hash_seeds(tmp_path):
    outputs = []
    for seed in ("0", "12345"):
        out = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-m", "compiler", "compile", *sorted(map(str, EXAMPLES.glob("*.yaml"))),
                        "-o", str(out)], check=True, cwd=ROOT, env=env, capture_output=True)
        outputs.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert outputs[0] == outputs[1] and len(outputs[0]) > 10


def test_validate_writes_nothing(orchc, tmp_path):
    result = orchc("validate", *sorted(EXAMPLES.glob("*.yaml")), cwd=tmp_path)
    assert result.code == 0 and result.out.count(": ok") == len(list(EXAMPLES.glob("*.yaml")))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_every_example_for_the_local_site_passes_shellcheck(orchc, tmp_path):
    recipes = sorted(EXAMPLES.glob("*.yaml"))
    assert orchc("compile", *recipes, "--site", "local", "-o", tmp_path).code == 0
    scripts = sorted(map(str, [*tmp_path.glob("*/*.sbatch"), *tmp_path.glob("*/submit.sh")]))
    assert len(scripts) > len(recipes)
    checked = subprocess.run([shellcheck(), "-s", "bash", *scripts], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
    assert not any("apptainer" in Path(script).read_text() for script in scripts)


# --- run-time host placeholders cannot be forged ---------------------------------------------------

PLACEHOLDER = re.compile(r"@ORCHC_HOST[^:@\s]*:([A-Za-z0-9_.-]+)@")


def _prompts_and_fills(script: str) -> tuple[list[str], list[str]]:
    # the client's prompts file: a JSON list of strings, written by a quoted here-document
    prompts = [prompt for _, _, body in _heredoc_blocks(script) if body.startswith("[")
               for prompt in json.loads(body)]
    fills = [line for line in script.splitlines() if line.startswith("orchc_fill_hosts ")]
    return prompts, fills


def test_a_placeholder_in_a_prompt_stays_literal_and_is_never_waited_for(orchc, write, tmp_path):
    prompt = "tell me about @ORCHC_HOST:word@ and @ORCHC_HOST:ollama@"
    result = orchc("compile", write("r.yaml", json.dumps({
        "services": [{"name": "ollama"}],
        "clients": [{"name": "c", "type": "ollama_client", "target": "ollama", "prompts": [prompt]}]})),
        "--site", "local", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    script = (tmp_path / "out" / "r" / "c.sbatch").read_text()
    prompts, fills = _prompts_and_fills(script)
    assert prompts == [prompt]
    assert fills == [], f"the client waits for hosts named in a prompt: {fills}"


def test_a_prompt_naming_a_job_of_the_recipe_is_not_rewritten(orchc, write, tmp_path):
    prompt = "is http://prometheus:9090 up? and prometheus:9090?"
    result = orchc("compile", write("r.yaml", json.dumps({
        "services": [{"name": "ollama"}, {"name": "prometheus"}],
        "clients": [{"name": "c", "type": "ollama_client", "target": "ollama", "prompts": [prompt]}]})),
        "--site", "local", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    prompts, fills = _prompts_and_fills((tmp_path / "out" / "r" / "c.sbatch").read_text())
    assert prompts == [prompt] and fills == []


# --- the job template fails closed -------------------------------------------------------------------

def _run(script: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    runtime_into(cwd / "run", script.parent)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "ORCHC_RUN_DIR": str(cwd / "run")}
    return subprocess.run(["bash", str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("port", ["1; touch @S@", "1\ntouch @S@", "$(touch @S@)", "1 `touch @S@`"])
def test_ports_redefined_as_strings_are_refused_or_inert(orchc, write, tmp_path, port):
    sentinel = tmp_path / "sentinel-must-not-exist"
    write("defs/loose.yaml", "type: loose\nextends: service\ndescription: ports loosened to strings\nfields:\n"
          f"  ports: {{type: array, items: {{type: string}}, default: [{json.dumps(port.replace('@S@', str(sentinel)))}]}}\n"
          "container:\n  command: sleep 0.1\n")
    write("r.yaml", "service:\n  name: s\n  type: loose\n")
    result = orchc("compile", "r.yaml", "--defs", "defs", "--site", "local", "-o", "out", cwd=tmp_path)
    assert "Traceback" not in result.err
    if result.code != 0:
        assert result.code == 1 and re.match(r"^(defs/loose|r)\.yaml:\d+:\d+: error: ", result.err), result.err
        return
    script = tmp_path / "out" / "r" / "s.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    _run(script, tmp_path)
    assert not sentinel.exists(), "a port value ran as code"


@pytest.mark.parametrize("stem", ["r\ntouch orchc-pwned\n", "r$(touch orchc-pwned)", "r`touch orchc-pwned`", "r'; touch orchc-pwned; '"])
def test_a_recipe_file_name_cannot_break_out_of_the_header(orchc, write, tmp_path, stem):
    write("defs/idle.yaml", "type: idle\nextends: service\ndescription: sleeps\nfields:\n  ports: {default: [1234]}\n"
          "container:\n  command: sleep 0.1\n")
    recipe = write(f"{stem}.yaml", "service:\n  name: s\n  type: idle\n")
    result = orchc("compile", recipe.name, "--defs", "defs", "--site", "local", "-o", "out", cwd=tmp_path)
    assert "Traceback" not in result.err
    if result.code != 0:
        assert result.code == 1 and "error:" in result.err
        return
    (script,) = (tmp_path / "out").rglob("s.sbatch")
    subprocess.run(["bash", "-n", str(script)], check=True)
    _run(script, tmp_path)
    assert not list(tmp_path.rglob("orchc-pwned")), "the recipe's file name ran as code"
