"""What a script contains: directives, quoting, secrets, precedence, origins, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import EXAMPLES, ROOT, shellcheck

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
        f"#SBATCH --job-name=ollama_{job_id}", "#SBATCH --partition=gpu", "#SBATCH --qos=default",
        "#SBATCH --nodes=1", "#SBATCH --ntasks=1", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G",
        "#SBATCH --time=02:00:00", "#SBATCH --gres=gpu:1", "#SBATCH --output=slurm-%j.out",
        "#SBATCH --error=slurm-%j.err",
    ]
    assert len(job_id) == 8
    assert "module purge\nmodule load Apptainer/1.2.4-GCCcore-12.3.0\n" in result.out
    assert ('apptainer exec --nv --bind "$HOME"/.ollama:/root/.ollama --env OLLAMA_HOST=0.0.0.0:11434 '
            '"$HOME"/containers/ollama.sif ollama serve &') in result.out
    assert result.out.index("cadvisor.sif /usr/bin/cadvisor") < result.out.index("ollama.sif ollama serve &")
    assert result.out.rstrip().endswith('wait "$ORCHC_SERVICE_PID"')


def test_account_extra_and_unset_directives(orchc, write, tmp_path):
    out = compile_stdout(orchc, write, tmp_path, "account: p200981\nresources: {extra: [--exclusive, --constraint=x]}\n"
                         "service:\n  name: redis\n")
    assert "#SBATCH --account=p200981\n" in out
    assert "#SBATCH --error=slurm-%j.err\n#SBATCH --exclusive\n#SBATCH --constraint=x\n" in out
    assert "--gres" not in out and "--mem" not in out


def test_native_runtime_runs_the_command_directly(orchc, write, tmp_path):
    out = compile_stdout(orchc, write, tmp_path, "site: local\nservice:\n  name: redis\n")
    assert "module" not in out and "apptainer" not in out
    assert "\nsetsid redis-server --bind 0.0.0.0 --port 6379" in out


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_rejected_or_inert(orchc, write, tmp_path, value):
    recipe = write("r.yaml", json.dumps({"service": {"name": "redis", "data_dir": value, "maxmemory": "1gb"},
                                         "client": {"name": "c", "type": "ollama_client", "prompts": [value],
                                                    "target_endpoint": "localhost:11434"}}))
    result = orchc("compile", recipe, "-o", tmp_path / "out", cwd=tmp_path)
    if result.code != 0:
        assert "error:" in result.err and "Traceback" not in result.err
        return
    for script in (tmp_path / "out").rglob("*.sbatch"):
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert value not in script.read_text().replace(f"'{value}'", "")


def test_a_prompt_with_shell_syntax_is_written_as_inert_data(orchc, write, tmp_path):
    out = compile_stdout(orchc, write, tmp_path, 'client:\n  name: c\n  type: ollama_client\n'
                         '  target_endpoint: "localhost:11434"\n  prompts: ["$(touch /tmp/orchc-pwned) `id`"]\n')
    assert "$(touch /tmp/orchc-pwned) `id`" in out                       # present only as here-doc data
    line = next(text for text in out.splitlines() if "orchc-pwned" in text)
    assert line.startswith("{")                                         # a JSON line, not a command


def test_secret_is_read_at_run_time_and_never_written(orchc, write, tmp_path):
    out = compile_stdout(orchc, write, tmp_path, "services:\n  - name: db\n    type: mysql\n"
                         "    root_password: {env: MY_DB_PW}\n")
    assert 'ROOT_PASSWORD="${MY_DB_PW:?' in out
    assert "MYSQL_ROOT_PASSWORD=" in out and "hunter2" not in out
    out = compile_stdout(orchc, write, tmp_path, "services:\n  - name: db\n    type: mysql\n")
    assert 'ROOT_PASSWORD=$(orchc_secret_file "$HOME"/.orchc/secrets/mysql_root_password)' in out


def test_precedence_site_type_recipe_job_set(orchc, write, tmp_path):
    text = "resources: {time: '00:10:00', mem: 1G}\nservice:\n  name: ollama\n  resources: {mem: 2G}\n"
    out = compile_stdout(orchc, write, tmp_path, text, "--set", "ollama.resources.mem=3G")
    assert "--partition=gpu" in out          # type (ollama) over site (cpu)
    assert "--qos=default" in out            # site
    assert "--time=00:10:00" in out          # recipe top level
    assert "--mem=3G" in out                 # --set over the job's own 2G


def test_show_origin_names_the_file_and_line_of_each_value(orchc, write, tmp_path):
    recipe = write("r.yaml", "resources: {time: '00:10:00'}\nservice:\n  name: ollama\n  model: llama3\n")
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
    recipe = write("r.yaml", "services:\n  - name: a\n    type: redis\n  - name: b\n    type: redis\n")
    assert orchc("compile", recipe, "-o", "out", cwd=tmp_path).code == 0
    write("r.yaml", "services:\n  - name: a\n    type: redis\n")
    assert orchc("compile", recipe, "-o", "out", cwd=tmp_path).code == 0
    assert sorted(p.name for p in (tmp_path / "out" / "r").iterdir()) == ["a.sbatch", "manifest.json", "submit.sh"]


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


def test_every_example_for_the_local_site_passes_shellcheck(orchc, tmp_path):
    recipes = sorted(EXAMPLES.glob("*.yaml"))
    assert orchc("compile", *recipes, "--site", "local", "-o", tmp_path).code == 0
    scripts = sorted(map(str, [*tmp_path.glob("*/*.sbatch"), *tmp_path.glob("*/submit.sh")]))
    assert len(scripts) > len(recipes)
    checked = subprocess.run([shellcheck(), "-s", "bash", *scripts], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
    assert not any("apptainer" in open(script).read() for script in scripts)
