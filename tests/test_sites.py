"""Site profiles: the MeluXina header (login shell, modules, apptainer check), resources a site requires,
its partitions and QoS, and storage a user can place (site defaults, a recipe's `storage:`), bound into
containers, with a per-run data directory for stateful services."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import EXAMPLES, ROOT

HEADLINE = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+):(?P<col>\d+): error: (?P<message>.+)$", re.M)
ACCOUNT = "account: p200981\n"


def _errors(err: str) -> list[tuple[str, int, int, str]]:
    return [(m["file"], int(m["line"]), int(m["col"]), m["message"]) for m in HEADLINE.finditer(err)]


def _script(orchc, write, tmp_path, recipe: str, job: str, *args: str) -> str:
    path = write("r.yaml", recipe)
    result = orchc("compile", path, "-o", tmp_path / "out", *args, cwd=tmp_path)
    assert result.code == 0, result.err
    return (tmp_path / "out" / "r" / f"{job}.sbatch").read_text()


# the MeluXina header

def test_meluxina_scripts_start_a_login_shell_and_load_the_release_environment_first(orchc, write, tmp_path):
    text = _script(orchc, write, tmp_path, ACCOUNT + "service:\n  name: redis\n", "redis")
    assert text.startswith("#!/bin/bash -l\n")
    purge = text.index("\nmodule --force purge\n")
    release = text.index("\nmodule load env/release/")
    apptainer = text.index("\nmodule load Apptainer/")
    check = text.index("\ncommand -v apptainer >/dev/null || orchc_fail ")
    assert purge < release < apptainer < check < text.rindex("\norchc_image ")
    assert "\nmodule purge\n" not in text
    # a shell that is not a login shell has no `module`: said plainly, before the first module line
    assert text.index("type module >/dev/null 2>&1 || orchc_fail ") < purge


def test_the_local_site_keeps_a_plain_shell_and_loads_nothing(orchc, write, tmp_path):
    text = _script(orchc, write, tmp_path, "site: local\nservice:\n  name: redis\n", "redis")
    assert text.startswith("#!/bin/bash\n")
    assert "module " not in text and "command -v apptainer" not in text and "APPTAINER_CACHEDIR" not in text


def test_a_site_shell_that_is_not_a_path_is_refused(orchc, write, tmp_path):
    write("site.yaml", "site: odd\nruntime: native\nshell: 'bash; rm -rf /'\n")
    recipe = write("r.yaml", "site: site.yaml\nservice:\n  name: redis\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1 and "Traceback" not in result.err, result.err
    # the headline, not the excerpt under it (which quotes the shell: line whatever the error is)
    (file, line, col, message), = _errors(result.err)
    assert (file, line, col) == ("site.yaml", 3, 8), result.err
    assert message.startswith("shell: 'bash; rm -rf /' is not valid; expected the script's interpreter"), message


# resources a site requires

def test_meluxina_requires_an_account_located_at_the_recipe(orchc, write, tmp_path):
    recipe = write("r.yaml", "service:\n  name: redis\nclient:\n  name: bench\n  type: redis_client\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1
    errors = _errors(result.err)
    assert len(errors) == 1, result.err
    file, line, col, message = errors[0]
    assert (file, line, col) == ("r.yaml", 1, 1)
    assert "recipe 'r'" in message and "account" in message and "meluxina" in message


def test_a_job_without_the_required_account_is_named_at_its_entry(orchc, write, tmp_path):
    recipe = write("r.yaml", "services:\n  - name: redis\n    resources: {account: p200981}\n  - name: other\n"
                   "    type: redis\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1
    assert [(f, ln, c) for f, ln, c, _ in _errors(result.err)] == [("r.yaml", 4, 5)], result.err
    assert "'other'" in result.err and "account" in result.err


@pytest.mark.parametrize("given", ["top", "resources", "set"])
def test_an_account_given_any_way_satisfies_the_site(orchc, write, tmp_path, given):
    body = "service:\n  name: redis\n"
    args: tuple[str, ...] = ()
    if given == "top":
        body = ACCOUNT + body
    elif given == "resources":
        body = "resources: {account: p200981}\n" + body
    else:
        args = ("--set", "resources.account=p200981")
    result = orchc("validate", write("r.yaml", body), *args, cwd=tmp_path)
    assert result.code == 0, result.err


def test_any_site_can_require_resources(orchc, write, tmp_path):
    write("site.yaml", "site: strict\nruntime: native\nrequires: [account, time]\n")
    recipe = write("r.yaml", "site: site.yaml\naccount: p1\nservice:\n  name: redis\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1 and "time" in result.err and "'strict'" in result.err, result.err
    write("bad.yaml", "site: bad\nruntime: native\nrequires: [colour]\n")
    result = orchc("validate", write("s.yaml", "site: bad.yaml\nservice:\n  name: redis\n"), cwd=tmp_path)
    assert result.code == 1 and "requires" in result.err and "Traceback" not in result.err, result.err


# partitions and QoS

@pytest.mark.parametrize("partition", ["cpu", "gpu", "fpga", "largemem"])
def test_meluxina_partitions(orchc, write, tmp_path, partition):
    recipe = write("r.yaml", f"{ACCOUNT}resources: {{partition: {partition}}}\nservice:\n  name: redis\n")
    assert orchc("validate", recipe, cwd=tmp_path).code == 0


@pytest.mark.parametrize("qos", ["default", "short", "dev", "test", "urgent"])
def test_meluxina_qos_names_are_accepted(orchc, write, tmp_path, qos):
    recipe = write("r.yaml", f"{ACCOUNT}resources: {{qos: {qos}}}\nservice:\n  name: redis\n")
    assert orchc("validate", recipe, cwd=tmp_path).code == 0


def test_an_unknown_qos_is_refused_where_it_is_written(orchc, write, tmp_path):
    recipe = write("r.yaml", f"{ACCOUNT}resources: {{qos: turbo}}\nservice:\n  name: redis\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1
    errors = _errors(result.err)
    assert errors and errors[0][:3] == ("r.yaml", 2, 18) and "qos" in errors[0][3] and "default" in errors[0][3], \
        result.err


# storage

def test_meluxina_keeps_images_and_data_on_project_scratch(orchc, write, tmp_path):
    """Apptainer's cache and temp folder are not there: `orchc prepare` keeps them on the login node's own disk."""
    text = _script(orchc, write, tmp_path, ACCOUNT + "service:\n  name: db\n  type: mysql\n", "db")
    scratch = '/project/scratch/"${SLURM_JOB_ACCOUNT}"/"${USER}"/orchc/'
    assert "APPTAINER_CACHEDIR" not in text and "APPTAINER_TMPDIR" not in text
    assert f'\nORCHC_DATA={scratch}runs/"${{ORCHC_RUN}}"/"$ORCHC_JOB"\n' in text
    assert f"\norchc_image {scratch}images/mysql-8.4.11.sif " in text
    assert ".orchc/mysql" not in text and '"$HOME"/containers' not in text
    # the job's data folder, per run, is where mysql keeps its data; it is bound into the container
    assert re.search(r'^orchc_v\d+="\$ORCHC_DATA"/mysql$', text, re.M), text
    start = next(line for line in text.splitlines() if "setsid apptainer exec" in line)
    assert '--bind "$ORCHC_RUN_DIR"' in start and '--bind "$ORCHC_DATA"' in start, start


def test_the_local_site_keeps_data_in_the_run_folder(orchc, write, tmp_path):
    text = _script(orchc, write, tmp_path, "site: local\nservice:\n  name: redis\n", "redis")
    assert re.search(r"^ORCHC_DATA=\"\$ORCHC_RUN_DIR\"/data/\"\$ORCHC_JOB\"$", text, re.M), text
    assert re.search(r'^orchc_v\d+="\$ORCHC_DATA"/redis$', text, re.M), text
    assert ".orchc/redis" not in text


def test_a_recipe_places_storage_and_an_explicit_data_dir_is_bound(orchc, write, tmp_path):
    recipe = (ACCOUNT + "storage:\n  images: /project/home/p200981/sif\n  data: /project/home/p200981/runs\n"
              "service:\n  name: db\n  type: mysql\n  data_dir: /project/home/p200981/shared-db\n")
    text = _script(orchc, write, tmp_path, recipe, "db")
    assert "orchc_image /project/home/p200981/sif/mysql-8.4.11.sif" in text
    assert re.search(r"^ORCHC_DATA=/project/home/p200981/runs/\"\$ORCHC_JOB\"$", text, re.M), text
    assert "--datadir=/project/home/p200981/shared-db" in text
    start = next(line for line in text.splitlines() if "setsid apptainer exec" in line)
    assert "--bind /project/home/p200981/shared-db " in start, start
    # the site's defaults for what the recipe does not place
    assert "\nORCHC_MODELS=/project/scratch/" in text


def test_a_recipe_storage_key_is_checked(orchc, write, tmp_path):
    recipe = write("r.yaml", ACCOUNT + "storage:\n  datas: /x\nservice:\n  name: redis\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1 and any(f == "r.yaml" and ln in (3, 4) for f, ln, _, _ in _errors(result.err)), result.err
    recipe = write("s.yaml", ACCOUNT + "storage:\n  data: '/x; rm -rf /'\nservice:\n  name: redis\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1 and "Traceback" not in result.err, result.err


def test_types_read_storage_in_templates(orchc, write, tmp_path):
    write("defs/store.yaml", "type: store\nextends: service\ndescription: x\nfields:\n  ports: {default: [1234]}\n"
          "container:\n  command: sleep 1\nphases:\n  setup:\n    - ls {{ storage.models | path }} {{ storage.data | path }}\n")
    recipe = "site: local\nservice:\n  name: s\n  type: store\n"
    text = _script(orchc, write, tmp_path, recipe, "s", "--defs", str(tmp_path / "defs"))
    assert re.search(r'^orchc_v\d+="\$ORCHC_MODELS"$', text, re.M) and re.search(r'^orchc_v\d+="\$ORCHC_DATA"$', text, re.M)


def test_a_client_binds_the_run_folder_and_stateless_services_get_no_home_paths(orchc, write, tmp_path):
    text = _script(orchc, write, tmp_path, ACCOUNT + "service:\n  name: redis\nclient:\n  name: bench\n"
                   "  type: redis_client\n", "bench")
    assert '--bind "$ORCHC_RUN_DIR"' in text
    for job in ("redis", "bench"):
        assert "$HOME/.orchc/redis" not in (tmp_path / "out" / "r" / f"{job}.sbatch").read_text()


# examples and the quick start

def test_every_example_carries_an_account_and_compiles_for_meluxina(tmp_path):
    for example in sorted(EXAMPLES.glob("*.yaml")) + sorted((EXAMPLES / "custom").glob("*.yaml")):
        assert re.search(r"^account: p\d+$", example.read_text(), re.M), example
    done = subprocess.run([sys.executable, "-m", "compiler", "compile", "examples/ollama.yaml", "-o", tmp_path],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --account=p200981" in (tmp_path / "ollama" / "ollama.sbatch").read_text()
