"""Site profiles: the MeluXina header (login shell, modules, apptainer check), resources a site requires,
its partitions and QoS, and storage a user can place (site defaults, a recipe's `storage:`), bound into
containers, with a per-run data directory for stateful services."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("qos", ["default", "short", "long", "dev", "test", "urgent"])
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


@pytest.mark.parametrize(("partition", "qos", "reservation"), [("gpu", "dev", "gpudev"), ("cpu", "dev", "cpudev"),
                                                                ("gpu", "default", None), ("fpga", "dev", None)])
def test_meluxina_dev_names_its_reservation_per_partition(orchc, write, tmp_path, partition, qos, reservation):
    text = _script(orchc, write, tmp_path, f"{ACCOUNT}resources: {{partition: {partition}, qos: {qos}}}\n"
                   "service:\n  name: redis\n", "redis")
    lines = [line for line in text.splitlines() if line.startswith("#SBATCH ")]
    after_qos = lines[lines.index(f"#SBATCH --qos={qos}") + 1]
    assert (after_qos == f"#SBATCH --reservation={reservation}") if reservation else "--reservation" not in text, lines


def test_a_reservation_the_recipe_names_itself_is_not_added_twice(orchc, write, tmp_path):
    text = _script(orchc, write, tmp_path, f"{ACCOUNT}resources: {{partition: gpu, qos: dev, extra: [--reservation=mine]}}\n"
                   "service:\n  name: redis\n", "redis")
    assert [line for line in text.splitlines() if "--reservation" in line] == ["#SBATCH --reservation=mine"]


def test_a_qos_entry_of_a_site_is_checked_by_the_schema(orchc, write, tmp_path):
    write("site.yaml", "site: odd\nruntime: native\nqos:\n  - normal\n  - {name: dev, reservation: gpudev}\n")
    recipe = write("r.yaml", "site: site.yaml\nservice:\n  name: redis\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1 and "Traceback" not in result.err, result.err
    (file, line, _col, _message), = _errors(result.err)
    assert (file, line) == ("site.yaml", 5), result.err


# storage

def test_meluxina_keeps_images_and_models_on_project_storage_and_data_on_scratch(orchc, write, tmp_path):
    """Tier1 scratch is fast but small and temporary (issue 20): what runs share and reuse lives in project storage;
    Apptainer's cache and temp folder are not there: `orchc prepare` keeps them on the login node's own disk."""
    text = _script(orchc, write, tmp_path, ACCOUNT + "service:\n  name: db\n  type: mysql\n", "db")
    scratch = '/project/scratch/"${SLURM_JOB_ACCOUNT}"/"${USER}"/orchc/'
    home = '/project/home/"${SLURM_JOB_ACCOUNT}"/"${USER}"/orchc/'
    assert "APPTAINER_CACHEDIR" not in text and "APPTAINER_TMPDIR" not in text
    assert f'\nORCHC_DATA={scratch}runs/"${{ORCHC_RUN}}"/"$ORCHC_JOB"\n' in text
    assert f"\norchc_image {home}images/mysql-8.4.11.sif " in text
    assert f"\nORCHC_MODELS={home}models\n" in text
    assert ".orchc/mysql" not in text and '"$HOME"/containers' not in text
    # mysql keeps its data on the node's own disk (not on scratch: Lustre), per run and job; bound into the container
    assert re.search(r'^orchc_v\d+=/tmp/orchc-"\$ORCHC_RUN"-"\$ORCHC_JOB"$', text, re.M), text
    start = next(line for line in text.splitlines() if "setsid apptainer exec" in line)
    assert '--bind "$ORCHC_RUN_DIR"' in start and '--bind "$ORCHC_DATA"' in start, start
    assert '--bind /tmp/orchc-"$ORCHC_RUN"-"$ORCHC_JOB" ' in start and '--datadir="$ORCHC_MYSQL_DIR"' in start, start


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
    assert "\nORCHC_MYSQL_DIR=/project/home/p200981/shared-db\n" in text and '--datadir="$ORCHC_MYSQL_DIR"' in text
    assert "orchc_remove_at_end" not in text   # data a recipe placed itself is never removed
    start = next(line for line in text.splitlines() if "setsid apptainer exec" in line)
    assert "--bind /project/home/p200981/shared-db " in start, start
    # the site's defaults for what the recipe does not place
    assert "\nORCHC_MODELS=/project/home/" in text


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


# singularity: the apptainer CLI under its older name (LUMI, Leonardo), and AMD GPUs

SINGULARITY_PROBE = """\
type: gpu_probe
extends: service
fields:
  ports: {default: [9]}
container:
  image: probe
  source: docker://example.org/probe:1.0
  gpu: true
  env: {WHERE: "$ORCHC_DATA"}
  command: "true"
phases:
  health_check: []
"""


def test_a_singularity_site_builds_and_runs_its_images_with_singularity(orchc, write, tmp_path):
    from test_images import FAKE_APPTAINER

    write("defs/probe.yaml", SINGULARITY_PROBE)
    write("site.yaml", f"site: amdsite\nruntime: singularity\ngpu_vendor: amd\nimage_dir: {tmp_path}/containers\n"
                       f"storage: {{apptainer_cache: {tmp_path}/cache}}\n"
                       "defaults:\n  resources: {nodes: 1, ntasks: 1, time: '00:10:00'}\n")
    recipe = write("r.yaml", "service:\n  name: one\n  type: gpu_probe\n")
    result = orchc("compile", str(recipe), "--defs", "defs", "--site", "site.yaml", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    run = tmp_path / "out" / "r"
    text = (run / "one.sbatch").read_text()
    assert "\ncommand -v singularity >/dev/null || orchc_fail \"singularity not found after loading" in text
    assert f"\nexport SINGULARITY_CACHEDIR={tmp_path}/cache\n" in text and "\nORCHC_CONTAINER_CLI=singularity\n" in text
    assert "SINGULARITYENV_WHERE=\"$ORCHC_DATA\" setsid singularity exec --cleanenv --rocm " in text, text
    assert "apptainer exec" not in text and "APPTAINER" not in text and "command -v apptainer" not in text
    # the job, with a stand-in `singularity` (tests/test_images.py's fake apptainer under this name) and no apptainer
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "singularity").write_text(FAKE_APPTAINER)
    (bin_dir / "singularity").chmod(0o755)
    env = {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run), "PATH": f"{bin_dir}:/usr/bin:/bin",
           "FAKE_APPTAINER_LOG": str(run / "singularity.log")}
    # the image is built on the login node by orchc prepare, with singularity; the job only checks it
    prepared = subprocess.run([sys.executable, "-m", "compiler", "prepare", str(recipe), "--defs", "defs", "--site",
                               "site.yaml"], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                              text=True, timeout=120)
    assert prepared.returncode == 0, prepared.stderr
    done = subprocess.run(["bash", "one.sbatch"], cwd=run, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    log = (run / "singularity.log").read_text().splitlines()
    assert log[0].startswith(f"build docker://example.org/probe:1.0 {tmp_path}/containers/probe.sif.tmp."), log
    assert f"exec {tmp_path}/containers/probe.sif" in log


# the EuroHPC profiles (README, Sites: each one's sources)

EUROHPC = ["lumi-g", "leonardo-booster", "karolina", "vega", "juwels-booster"]


@pytest.mark.parametrize("site", EUROHPC)
def test_each_eurohpc_profile_compiles_a_service_with_its_defaults(orchc, write, tmp_path, site):
    text = _script(orchc, write, tmp_path, ACCOUNT + "service:\n  name: redis\n", "redis", "--site", site)
    assert text.startswith("#!/bin/bash -l\n")
    assert "\n#SBATCH --partition=" in text and "\n#SBATCH --account=p200981\n" in text


@pytest.mark.parametrize("site", ["lumi-g", "leonardo-booster", "karolina", "juwels-booster"])
def test_eurohpc_profiles_that_need_an_account_say_so(orchc, write, tmp_path, site):
    result = orchc("validate", write("r.yaml", "service:\n  name: redis\n"), "--site", site, cwd=tmp_path)
    assert result.code == 1 and "account" in result.err, result.err


def test_lumi_g_warns_about_one_gcd_of_a_whole_standard_g_node_but_not_of_small_g(orchc, write, tmp_path):
    recipe = ACCOUNT + "service:\n  name: redis\n  resources: {partition: standard-g, gres: 'gpu:1'}\n"
    result = orchc("validate", write("r.yaml", recipe), "--site", "lumi-g", cwd=tmp_path)
    assert result.code == 0, result.err
    assert "asks for 1 of the 8 GPUs of a standard-g node on lumi-g, which bills the whole node: 7 GPU(s)" in result.err
    result = orchc("validate", write("r.yaml", recipe.replace("standard-g", "small-g")), "--site", "lumi-g", cwd=tmp_path)
    assert result.code == 0 and "warning" not in result.err, result.err


def test_lumi_g_runs_gpu_containers_with_singularity_and_rocm(orchc, write, tmp_path):
    write("defs/probe.yaml", SINGULARITY_PROBE)
    recipe = write("r.yaml", ACCOUNT + "service:\n  name: one\n  type: gpu_probe\n")
    result = orchc("compile", str(recipe), "--defs", "defs", "--site", "lumi-g", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    text = (tmp_path / "out" / "r" / "one.sbatch").read_text()
    assert "\nmodule load LUMI/24.03\nmodule load partition/G\n" in text
    assert " singularity exec --cleanenv --rocm " in text and "--nv" not in text
    # Singularity's cache and temp folder stay off Lustre: orchc prepare keeps them on the login node's own disk
    assert "SINGULARITY_CACHEDIR" not in text and "APPTAINER" not in text, text


# per-user job limits of a site (limits: max_submit, max_running)

LIMITED = ("site: limited\nruntime: native\nlimits: {max_submit: 4, max_running: 2}\n"
           "defaults:\n  resources: {nodes: 1, ntasks: 1, time: '00:10:00'}\n")
SWEEP = ("service:\n  name: redis\nclient:\n  name: bench\n  type: redis_client\n  target: redis\n"
         "sweep:\n  matrix:\n    bench.clients: [1, 2, 4]\n  repeat: 2\n")


def test_a_sweep_with_more_jobs_than_the_site_lets_a_user_submit_is_refused_with_advice(orchc, write, tmp_path):
    write("limited.yaml", LIMITED)
    result = orchc("validate", write("r.yaml", SWEEP), "--site", "limited.yaml", cwd=tmp_path)
    assert result.code == 1 and "Traceback" not in result.err, result.err
    (file, line, col, message), = _errors(result.err)
    assert (file, line, col) == ("r.yaml", 7, 1), result.err
    assert message == ("recipe 'r' submits 7 SLURM jobs, more than the 4 site 'limited' lets a user submit "
                       "(limits.max_submit in limited.yaml): sbatch would refuse the rest (a job array's tasks count one by "
                       "one too); run it as one allocation (allocation: one), or with fewer points or repeats"), message


def test_one_allocation_is_one_job_within_the_limit_and_more_jobs_than_may_run_is_said(orchc, write, tmp_path):
    write("limited.yaml", LIMITED)
    result = orchc("validate", write("r.yaml", SWEEP + "allocation: one\n"), "--site", "limited.yaml", cwd=tmp_path)
    assert result.code == 0, result.err
    result = orchc("validate", write("r.yaml", SWEEP.replace("[1, 2, 4]", "[1]")), "--site", "limited.yaml", cwd=tmp_path)
    assert result.code == 0, result.err
    assert ("3 SLURM jobs, more than the 2 limited runs at once (limits.max_running): 2 clients submitted as 1 job "
            "array(s): bench (2 tasks, %1), 1 single job(s)") in result.out, result.out
    two_services = "services:\n  - name: a\n    type: redis\n  - name: b\n    type: redis\n  - name: c\n    type: redis\n"
    result = orchc("validate", write("r.yaml", two_services), "--site", "limited.yaml", cwd=tmp_path)
    assert result.code == 0, result.err
    assert ("3 SLURM jobs, at most 2 of them running at once on limited (limits.max_running): the others wait in the "
            "queue (single jobs: no sweep clients that could form a job array)") in result.out, result.out


def test_a_reservation_for_a_partition_the_site_does_not_have_is_a_located_error(orchc, write, tmp_path):
    write("site.yaml", "site: odd\nruntime: native\npartitions: [cpu, gpu]\nqos:\n  - normal\n"
                       "  - {name: dev, reservations: {gpus: gpudev}}\n")
    recipe = write("r.yaml", "site: site.yaml\nservice:\n  name: redis\n")
    result = orchc("validate", recipe, cwd=tmp_path)
    assert result.code == 1 and "Traceback" not in result.err, result.err
    (file, line, col, message), = _errors(result.err)
    assert (file, line, col) == ("site.yaml", 6, 32), result.err
    assert message == "qos dev: reservations: 'gpus' is not one of the site's partitions (cpu, gpu); did you mean 'gpu'?", message


def test_one_allocation_of_qos_dev_on_gpu_names_its_reservation_too(orchc, write, tmp_path):
    recipe = write("r.yaml", f"{ACCOUNT}allocation: {{mode: one, resources: {{partition: gpu, qos: dev}}}}\n"
                   "service:\n  name: redis\n")
    result = orchc("compile", recipe, "-o", tmp_path / "out", cwd=tmp_path)
    assert result.code == 0, result.err
    lines = (tmp_path / "out" / "r" / "allocation.sbatch").read_text().splitlines()
    assert lines[lines.index("#SBATCH --qos=dev") + 1] == "#SBATCH --reservation=gpudev", lines[:12]
