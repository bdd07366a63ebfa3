"""Container images: prepared once on the login node (`orchc prepare`, run first by `orchc submit`) under a lock,
atomically, from pinned sources, and recorded; each job checks at start that its image is the one prepared.

Apptainer cannot run here, so a fake `apptainer` on PATH stands in for it: `build` writes the image slowly in five
chunks (and can be told to fail after some) and refuses a target that exists; `exec` refuses an option Apptainer
would not know and an image that is not whole, and runs the command natively in the environment Apptainer would
give it (only APPTAINERENV_* and --env under --cleanenv). A site profile with runtime apptainer points image_dir at
the test's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nvidia_smi_standin
import pytest
from ruamel.yaml import YAML
from test_cluster import cluster, needs_redis  # noqa: F401  (fixtures)
from test_scheduler import fake  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parent.parent

FAKE_APPTAINER = r"""#!/bin/bash
# build TARGET SOURCE: five chunks, 0.3 s apart (FAKE_APPTAINER_CHUNK_SECONDS); FAKE_APPTAINER_FAIL_AFTER=N fails after chunk N.
# exec [OPTIONS] IMAGE.sif COMMAND...: refuses an unknown option and an image without its last chunk.
case $1 in
build)
    # build [--fakeroot] TARGET SOURCE; a SOURCE without scheme:// is a definition file, which needs root or --fakeroot
    shift
    fakeroot=0
    [ "${1-}" != --fakeroot ] || { fakeroot=1; shift; }
    [ "$#" = 2 ] || { echo "FATAL: build takes [--fakeroot] TARGET SOURCE" >&2; exit 255; }
    target=$1 source=$2
    echo "build $source $target" >>"$FAKE_APPTAINER_LOG"
    echo "build-env cache=$APPTAINER_CACHEDIR tmp=$APPTAINER_TMPDIR user=${APPTAINER_DOCKER_USERNAME-} password=${APPTAINER_DOCKER_PASSWORD-}" >>"$FAKE_APPTAINER_LOG"
    if [[ $source != *://* ]]; then
        grep -q '^Bootstrap: ' "$source" || { echo "FATAL: $source is not a definition file" >&2; exit 255; }
        [ "$(id -u)" = 0 ] || [ "$fakeroot" = 1 ] || { echo "FATAL: building from a definition file needs root or --fakeroot" >&2; exit 255; }
        cp "$source" "$FAKE_APPTAINER_LOG.def"
    fi
    [ ! -e "$target" ] || { echo "FATAL: $target already exists" >&2; exit 255; }
    for i in 1 2 3 4 5; do
        printf 'chunk %s of %s\n' "$i" "$source" >>"$target"
        sleep "${FAKE_APPTAINER_CHUNK_SECONDS:-0.3}"
        if [ "${FAKE_APPTAINER_FAIL_AFTER:-0}" = "$i" ]; then echo "FATAL: network error" >&2; exit 1; fi
    done
    ;;
exec)
    # Options as Apptainer spells them; anything else is refused, as Apptainer refuses an unknown flag.
    # --cleanenv: only PATH and HOME of the host (the container's own would stand there), then
    # APPTAINERENV_NAME and --env NAME=VALUE; without it the whole host environment, as Apptainer does.
    shift
    clean=0 given=()
    while [ "$#" -gt 0 ]; do
        case $1 in
        --nv | --rocm) shift ;;
        --cleanenv) clean=1; shift ;;
        --bind) [ "$#" -ge 2 ] || { echo "FATAL: --bind needs a value" >&2; exit 255; }; shift 2 ;;
        --env) [[ ${2-} == [A-Za-z_]*=* ]] || { echo "FATAL: --env needs NAME=VALUE" >&2; exit 255; }; given+=("$2"); shift 2 ;;
        -*) echo "FATAL: unknown flag $1" >&2; exit 255 ;;
        *) break ;;
        esac
    done
    image=${1-}
    [[ $image == *.sif ]] || { echo "FATAL: no image given" >&2; exit 255; }
    shift
    grep -q '^chunk 5 ' "$image" || { echo "FATAL: $image is not a whole image" >&2; exit 3; }
    echo "exec $image" >>"$FAKE_APPTAINER_LOG"
    # the variables it passes in: APPTAINERENV_NAME, or SINGULARITYENV_NAME under its other name
    prefix=$(basename "$0" | tr '[:lower:]' '[:upper:]')ENV_
    passed=()
    while IFS= read -r name; do
        passed+=("${name#"$prefix"}=$(printenv "$name")")
    done < <(compgen -e | grep "^$prefix" || true)
    if [ "$clean" = 1 ]; then
        exec env -i PATH="$PATH" HOME="$HOME" "${passed[@]}" "${given[@]}" "$@"
    fi
    exec env "${passed[@]}" "${given[@]}" "$@"
    ;;
*) echo "fake apptainer: $1 not supported" >&2; exit 2 ;;
esac
"""

PROBE = """\
type: image_probe
extends: service
fields:
  ports: {default: [9]}
container:
  image: probe
  source: docker://example.org/probe:1.0
  command: "true"
phases:
  health_check: []
"""


SITE = "site: fake\nruntime: apptainer\nimage_dir: {tmp}/containers\ndefaults:\n  resources: {{nodes: 1, ntasks: 1, time: '00:10:00'}}\n"


@pytest.fixture
def setup(orchc, write, tmp_path):
    write("defs/probe.yaml", PROBE)
    write("site.yaml", SITE.format(tmp=tmp_path))
    recipe = write("r.yaml", "services:\n  - {name: one, type: image_probe}\n  - {name: two, type: image_probe}\n")
    result = orchc("compile", str(recipe), "--defs", "defs", "--site", "site.yaml", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(FAKE_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    return tmp_path / "out" / "r", bin_dir


def environment(run: Path, bin_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run), "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "FAKE_APPTAINER_LOG": str(run / "apptainer.log"), **extra}


def start(run: Path, bin_dir: Path, job: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["bash", f"{job}.sbatch"], cwd=run, env=environment(run, bin_dir, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def start_prepare(run: Path, bin_dir: Path, **extra: str) -> subprocess.Popen[str]:
    """`orchc prepare r.yaml` in its own process, as a user runs it on the login node."""
    return subprocess.Popen([sys.executable, "-m", "compiler", "prepare", "r.yaml", "--defs", "defs", "--site", "site.yaml"],
                            cwd=run.parent.parent, env={**environment(run, bin_dir, **extra), "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finished(process: subprocess.Popen[str], code: int = 0) -> tuple[str, str]:
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, (out, err)
    return out, err


def builds(run: Path) -> list[str]:
    log = run / "apptainer.log"
    return [line for line in log.read_text().splitlines() if line.startswith("build ")] if log.exists() else []


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def whole_image(source: str = "docker://example.org/probe:1.0") -> str:
    return "".join(f"chunk {i} of {source}\n" for i in range(1, 6))


def test_two_prepares_of_the_same_image_at_once_build_it_once_and_jobs_use_it(setup, tmp_path):
    run, bin_dir = setup
    prepares = [start_prepare(run, bin_dir), start_prepare(run, bin_dir)]
    said = [finished(prepare)[0] for prepare in prepares]
    assert len(builds(run)) == 1, builds(run)
    image = tmp_path / "containers" / "probe.sif"
    assert any(f"building {image} from docker://example.org/probe:1.0 (missing)" in out for out in said), said
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert (tmp_path / "containers" / "probe.sif.sha256").read_text().split()[0] == digest
    assert leftovers(tmp_path / "containers") == []
    for job in ("one", "two"):
        finished(start(run, bin_dir, job))
        recorded = json.loads((run / "images" / f"{job}.json").read_text())
        assert recorded == [{"image": "probe", "source": "docker://example.org/probe:1.0",
                             "path": str(image), "sha256": digest}]
    # a later prepare finds it: no build
    out, _ = finished(start_prepare(run, bin_dir))
    assert f"{image}: present (from docker://example.org/probe:1.0)" in out and len(builds(run)) == 1


def test_the_build_has_its_cache_and_temp_folder_on_node_local_disk(setup, tmp_path):
    run, bin_dir = setup
    finished(start_prepare(run, bin_dir, TMPDIR=str(tmp_path / "node-local")))
    log = (run / "apptainer.log").read_text()
    uid = os.getuid()
    assert f"build-env cache={tmp_path}/node-local/orchc-apptainer-{uid}/cache tmp={tmp_path}/node-local/orchc-apptainer-{uid}/tmp" in log


def test_registry_credentials_reach_apptainer_through_its_environment_only(setup, tmp_path):
    run, bin_dir = setup
    secret = run / ".orchc" / "secrets" / "registry"       # HOME is the run folder here
    secret.parent.mkdir(parents=True)
    secret.write_text("robot\ns3cret-token\n")
    secret.chmod(0o644)
    _, err = finished(start_prepare(run, bin_dir), 1)
    assert f"registry credentials {secret}: must have mode 0600" in err and not builds(run)
    secret.chmod(0o600)
    finished(start_prepare(run, bin_dir))
    assert "user=robot password=s3cret-token" in (run / "apptainer.log").read_text()


def test_a_job_never_builds_and_stops_when_its_image_is_missing_or_changed(setup, tmp_path):
    run, bin_dir = setup
    image = tmp_path / "containers" / "probe.sif"
    _, err = finished(start(run, bin_dir, "one"), 1)
    assert f"image {image} is missing: run orchc prepare RECIPE on the login node" in err, err
    assert builds(run) == []
    finished(start_prepare(run, bin_dir))
    with image.open("a") as file:
        file.write("tampered\n")
    _, err = finished(start(run, bin_dir, "one"), 1)
    assert f"image {image} is not the one prepared: its sha256 is {hashlib.sha256(image.read_bytes()).hexdigest()}" in err, err
    image.write_text(whole_image())
    (tmp_path / "containers" / "probe.sif.source").write_text("docker://example.org/probe:0.9\n")
    _, err = finished(start(run, bin_dir, "one"), 1)
    assert f"image {image} was built from docker://example.org/probe:0.9, not docker://example.org/probe:1.0" in err, err


def test_a_job_reads_the_image_only_when_it_changed_since_prepare(setup, tmp_path):
    """A 10 GB image hashed at every job start costs minutes of a billed node (13.6 s per GB here): prepare records
    the file's size, modification time and inode beside its sha256, and a job that finds them so reads nothing."""
    run, bin_dir = setup
    image = tmp_path / "containers" / "probe.sif"
    finished(start_prepare(run, bin_dir))
    stat = image.stat()
    assert (tmp_path / "containers" / "probe.sif.stat").read_text().split() == [
        str(stat.st_size), str(int(stat.st_mtime)), str(stat.st_ino)]
    hashed = run / "hashed.log"     # what sha256sum read: a stand-in before the real one on PATH
    (bin_dir / "sha256sum").write_text(f'#!/bin/bash\nreadlink -f /proc/$$/fd/0 >>{hashed}\nexec /usr/bin/sha256sum "$@"\n')
    (bin_dir / "sha256sum").chmod(0o755)
    finished(start(run, bin_dir, "one"))
    assert str(image) not in (hashed.read_text() if hashed.exists() else ""), "the job read the unchanged image"
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert json.loads((run / "images" / "one.json").read_text())[0]["sha256"] == digest
    os.utime(image, (stat.st_atime, stat.st_mtime + 60))      # touched since: read, and still the one prepared
    finished(start(run, bin_dir, "two"))
    assert str(image) in hashed.read_text()


def test_an_image_pulled_by_hand_with_its_source_is_kept_and_one_without_is_refused(setup, tmp_path):
    run, bin_dir = setup
    folder = tmp_path / "containers"
    folder.mkdir()
    (folder / "probe.sif").write_text(whole_image())
    _, err = finished(start_prepare(run, bin_dir), 1)
    assert f"{folder}/probe.sif exists but {folder}/probe.sif.source does not: if it was pulled from " \
           "docker://example.org/probe:1.0, write that line into" in err, err
    assert (folder / "probe.sif").read_text() == whole_image()
    (folder / "probe.sif.source").write_text("docker://example.org/probe:1.0\n")
    finished(start_prepare(run, bin_dir))
    assert builds(run) == [] and (folder / "probe.sif").read_text() == whole_image()
    assert (folder / "probe.sif.sha256").read_text().split()[0] == hashlib.sha256(whole_image().encode()).hexdigest()
    finished(start(run, bin_dir, "one"))


def test_a_failed_build_is_never_used(setup, tmp_path):
    run, bin_dir = setup
    _, err = finished(start_prepare(run, bin_dir, FAKE_APPTAINER_FAIL_AFTER="2"), 1)
    assert "error: orchc prepare of recipe r failed: cannot build" in err and "docker://example.org/probe:1.0" in err, err
    assert not (tmp_path / "containers" / "probe.sif").exists()
    assert leftovers(tmp_path / "containers") == []


def test_an_interrupted_build_is_not_used_and_its_temp_file_is_cleaned_up(setup, tmp_path):
    run, bin_dir = setup
    prepare = start_prepare(run, bin_dir)
    deadline = time.monotonic() + 20
    folder = tmp_path / "containers"
    while not (folder.exists() and leftovers(folder)) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.4)
    script = int(leftovers(folder)[0].rsplit(".", 1)[1])      # the prepare script's shell, in a session of its own
    os.killpg(os.getpgid(script), signal.SIGKILL)  # no trap runs: as if the login node's session died
    prepare.communicate(timeout=30)
    stale = leftovers(folder)
    assert stale and not (folder / "probe.sif").exists(), stale
    finished(start_prepare(run, bin_dir))
    assert leftovers(folder) == [], "the next build removes the stale temp file"
    assert (folder / "probe.sif").read_text().count("chunk") == 5
    assert len(builds(run)) == 2


def test_an_image_whose_source_changed_is_rebuilt(setup, tmp_path):
    """A pinned tag bumped in a type means a new image, not the old .sif under the same name."""
    run, bin_dir = setup
    folder = tmp_path / "containers"
    folder.mkdir()
    (folder / "probe.sif").write_text(whole_image("docker://example.org/probe:latest"))
    (folder / "probe.sif.source").write_text("docker://example.org/probe:latest\n")
    finished(start_prepare(run, bin_dir))
    assert len(builds(run)) == 1
    assert (folder / "probe.sif.source").read_text().strip() == "docker://example.org/probe:1.0"


def image_sources(tree: object, where: str = "") -> list[tuple[str, str]]:
    """(where, source) of every `source:` that names an image (scheme://...), at any depth of a parsed type file:
    block or flow style alike. A phase item's `source: NAME` (a file it ships) names no image."""
    if isinstance(tree, dict):
        source = tree.get("source")
        found = [(f"{where}.source", source)] if isinstance(source, str) and "://" in source else []
        return found + [item for key, value in tree.items() for item in image_sources(value, f"{where}.{key}")]
    if isinstance(tree, list):
        return [item for index, value in enumerate(tree) for item in image_sources(value, f"{where}[{index}]")]
    return []


def test_built_in_types_pin_their_image_tags():
    """Every image source of service_defs/ names a whole release (major.minor.patch, not a series such as mysql:8.0,
    which moves) or a digest, and never `latest`."""
    found = []
    for path in sorted((ROOT / "service_defs").glob("*.yaml")):
        for where, source in image_sources(YAML(typ="safe").load(path.read_text(encoding="utf-8"))):
            found.append(source)
            reference = source.split("://", 1)[-1]
            _, _, tag = reference.rpartition("/")[2].partition(":")
            assert "@sha256:" in reference or re.match(r"v?[0-9]+\.[0-9]+\.[0-9]+", tag), f"{path.name}: {where[1:]}: {source} is not pinned"
    assert len(found) >= 10, found           # the containers and sidecars of the built-in types (18 today)


def test_mysql_is_the_lts_release():
    """MySQL 8.0 reached its end of life in April 2026; 8.4 is an LTS series (supported to 2032)."""
    for name in ("mysql.yaml", "mysql_client.yaml"):
        tree = YAML(typ="safe").load((ROOT / "service_defs" / name).read_text(encoding="utf-8"))
        assert tree["container"]["source"].startswith("docker://mysql:8.4."), name


def test_results_show_the_images_of_every_job(orchc, tmp_path):
    from compiler.run.runs import images

    (tmp_path / "images").mkdir()
    entry = {"image": "probe", "source": "docker://x/probe:1.0", "path": "/c/probe.sif", "sha256": "ab" * 32}
    (tmp_path / "images" / "svc.json").write_text(json.dumps([entry]))
    (tmp_path / "images" / "bad.json").write_text("{not json")

    class Job:
        def __init__(self, name: str) -> None:
            self.name = name

    class Run:
        jobs = [Job("svc"), Job("bad"), Job("none")]

    shown = images(tmp_path, Run())  # type: ignore[arg-type]
    assert shown["svc"] == [entry]
    assert "error" in shown["bad"]
    assert "none" not in shown


ENV_PROBE = """\
type: env_probe
extends: service
fields:
  ports: {default: [9]}
env:
  PROBE_DATA: some data
container:
  image: probe
  source: docker://example.org/probe:1.0
  command: "true"
  env:
    PROBE_SECRET: "$PROBE_KEY"
    PROBE_PLAIN: plain
phases:
  health_check:
    - 'PROBE_KEY=key-value {{ run }} env >"$ORCHC_RUN_DIR/env-$ORCHC_JOB.txt"'
"""


def test_the_submitting_environment_does_not_reach_containers(orchc, write, tmp_path):
    """The login environment (a virtualenv, conda, PYTHONPATH) stays out; the container's env:, the job's environment:,
    HF_TOKEN and the GPUs SLURM gave the job go in."""
    write("defs/probe.yaml", ENV_PROBE)
    write("site.yaml", SITE.format(tmp=tmp_path))
    recipe = write("r.yaml", "services:\n  - {name: one, type: env_probe, environment: {MY_SETTING: on}}\n")
    assert orchc("compile", str(recipe), "--defs", "defs", "--site", "site.yaml", "-o", "out", cwd=tmp_path).code == 0
    run = tmp_path / "out" / "r"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(FAKE_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    folder = tmp_path / "containers"
    folder.mkdir()
    (folder / "probe.sif").write_text(whole_image())
    (folder / "probe.sif.source").write_text("docker://example.org/probe:1.0\n")
    (folder / "probe.sif.sha256").write_text(hashlib.sha256(whole_image().encode()).hexdigest() + "  probe.sif\n")
    job = start(run, bin_dir, "one", PYTHONPATH="/home/u/lib", VIRTUAL_ENV="/home/u/venv", CONDA_PREFIX="/home/u/conda",
                HF_TOKEN="hf-token", CUDA_VISIBLE_DEVICES="2,3")
    _, err = job.communicate(timeout=60)
    assert job.returncode == 0, err
    seen = dict(line.split("=", 1) for line in (run / "env-one.txt").read_text().splitlines() if "=" in line)
    assert not {"PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX"} & set(seen), seen
    assert seen["PROBE_PLAIN"] == "plain" and seen["PROBE_SECRET"] == "key-value"
    assert seen["MY_SETTING"] == "on" and seen["HF_TOKEN"] == "hf-token" and seen["CUDA_VISIBLE_DEVICES"] == "2,3"
    # the type's env: and orchc's own variables of the job (Grafana's provisioning file names ${ORCHC_RUN_DIR})
    assert seen["PROBE_DATA"] == "some data" and seen["ORCHC_RUN_DIR"] == str(run) and seen["ORCHC_JOB"] == "one"


def test_grafanas_admin_password_reaches_its_container_in_the_environment(orchc, write, tmp_path):
    write("site.yaml", SITE.format(tmp=tmp_path))
    result = orchc("compile", ROOT / "examples" / "grafana.yaml", "--site", "site.yaml", "--stdout", cwd=tmp_path)
    assert result.code == 0, result.err
    (start,) = [line for line in result.out.splitlines() if "grafana server" in line and "apptainer exec" in line]
    assert 'APPTAINERENV_GF_SECURITY_ADMIN_PASSWORD="$ADMIN_PASSWORD" ' in start and "--cleanenv" in start, start


def test_a_build_leaves_the_temp_files_of_other_hosts_alone(setup, tmp_path):
    """With Lustre mounted `localflock` the lock does not reach other nodes: a temp file of another host may be a
    build in progress there. Only this host's stale temp files are removed."""
    run, bin_dir = setup
    folder = tmp_path / "containers"
    folder.mkdir()
    (folder / "probe.sif.tmp.other-node.4242").write_text("chunk 1 of a build on another node\n")
    (folder / f"probe.sif.tmp.{os.uname().nodename.split('.')[0]}.99999999").write_text("chunk 1 of a killed build here\n")
    finished(start_prepare(run, bin_dir))
    assert leftovers(folder) == ["probe.sif.tmp.other-node.4242"]


def test_submit_prepares_what_is_missing_first_and_says_so(setup, fake, orchc, monkeypatch, tmp_path):  # noqa: F811
    run, bin_dir = setup
    for name, value in environment(run, bin_dir).items():
        monkeypatch.setenv(name, value)
    image = tmp_path / "containers" / "probe.sif"
    first = orchc("submit", "r.yaml", "--defs", "defs", "--site", "site.yaml", "--run-dir", "run1", cwd=tmp_path)
    assert first.code == 0, first.err
    lines = first.out.splitlines()
    assert lines[0] == f"orchc prepare: building {image} from docker://example.org/probe:1.0 (missing)", lines
    assert lines.index("orchc prepare: 1 image(s) of recipe r ready") < lines.index(next(x for x in lines if x.startswith("submitted ")))
    again = orchc("submit", "r.yaml", "--defs", "defs", "--site", "site.yaml", "--run-dir", "run2", cwd=tmp_path)
    assert again.code == 0, again.err
    assert f"orchc prepare: {image}: present (from docker://example.org/probe:1.0)" in again.out and len(builds(run)) == 1
    monkeypatch.setenv("FAKE_APPTAINER_FAIL_AFTER", "1")
    image.unlink()
    failed = orchc("submit", "r.yaml", "--defs", "defs", "--site", "site.yaml", "--run-dir", "run4", cwd=tmp_path)
    assert failed.code == 1 and failed.err.startswith("orchc: error: orchc prepare of recipe r failed: cannot build "), failed.err
    assert not (tmp_path / "run4").exists(), "nothing is submitted when prepare fails"


@pytest.mark.parametrize("driver, fails", [("570.133.20", True), ("575.51.03", False), ("580.82.07", False)])
def test_a_vllm_job_checks_the_nodes_driver_against_its_images_cuda(orchc, write, tmp_path, driver, fails):
    """vLLM's image is a CUDA 12.9 build (-cu129): it needs driver 575.51.03 or newer (NVIDIA's CUDA 12.9 release
    notes, table 3). nvidia-smi is tests/nvidia_smi_standin.py, a stand-in that says the driver it is told."""
    write("site.yaml", SITE.format(tmp=tmp_path))
    result = orchc("compile", ROOT / "examples" / "vllm.yaml", "--site", "site.yaml", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    script = (tmp_path / "out" / "vllm" / "vllm.sbatch").read_text()
    check = 'orchc_need_driver 575.51.03 "vLLM\'s image vllm/vllm-openai:v0.20.2-cu129 (CUDA 12.9)"'
    assert check in script and script.index(check) < script.index("setsid apptainer exec"), script
    (runtime,) = (tmp_path / "out" / "vllm").glob("orchc-runtime-*.sh")
    probe = write("probe.sh", f"ORCHC_JOB=vllm\nsource {runtime}\n{check}\n")
    path = f"{nvidia_smi_standin.install(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(["bash", str(probe)], env={**os.environ, "PATH": path, "ORCHC_STANDIN_DRIVER": driver,
                                                     "ORCHC_RUN_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    if fails:
        assert done.returncode == 1
        assert f"vLLM's image vllm/vllm-openai:v0.20.2-cu129 (CUDA 12.9) needs an NVIDIA driver 575.51.03 or newer; " \
               f"{os.uname().nodename.split('.')[0]} has {driver}" in done.stderr, done.stderr
    else:
        assert done.returncode == 0, done.stderr


DEF_PROBE = """\
type: def_probe
extends: service
fields:
  ports: {default: [9]}
container:
  image: def-probe
  source: def:probe.def
  command: "true"
phases:
  health_check: []
"""


def test_an_image_from_a_definition_file_the_type_ships_is_built_by_prepare_and_rebuilt_when_the_file_changes(
        orchc, write, tmp_path):
    write("defs/probe.yaml", DEF_PROBE)
    definition = write("defs/files/probe.def", "Bootstrap: docker\nFrom: debian:12.15-slim\n\n%post\n    apt-get install -y sysbench\n")
    write("site.yaml", SITE.format(tmp=tmp_path))
    recipe = write("r.yaml", "services:\n  - {name: one, type: def_probe}\n")

    def compiled() -> str:
        result = orchc("compile", str(recipe), "--defs", "defs", "--site", "site.yaml", "-o", "out", cwd=tmp_path)
        assert result.code == 0, result.err
        return "def:probe.def@sha256:" + hashlib.sha256(definition.read_bytes()).hexdigest()

    source = compiled()
    run = tmp_path / "out" / "r"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(FAKE_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    image = tmp_path / "containers" / "def-probe.sif"
    assert f"\norchc_image {image} {source}\n" in (run / "one.sbatch").read_text()
    out, _ = finished(start_prepare(run, bin_dir))
    assert f"building {image} from {source} (missing)" in out, out
    assert (run / "apptainer.log.def").read_text() == definition.read_text()      # the text the type ships, whole
    assert (tmp_path / "containers" / "def-probe.sif.source").read_text() == source + "\n"
    finished(start(run, bin_dir, "one"))
    definition.write_text(definition.read_text() + "    apt-get install -y mariadb-client\n")
    changed = compiled()
    _, err = finished(start(run, bin_dir, "one"), 1)
    assert f"image {image} was built from {source}, not {changed}" in err, err
    finished(start_prepare(run, bin_dir))
    assert len(builds(run)) == 2 and (tmp_path / "containers" / "def-probe.sif.source").read_text() == changed + "\n"
    finished(start(run, bin_dir, "one"))


def test_prepare_builds_the_sysbench_client_image_from_the_definition_file_it_ships(orchc, write, tmp_path):
    """sysbench_client needs no sysbench on the node under apptainer: its image is built from
    service_defs/files/sysbench-client.def (Debian 12, sysbench and the MariaDB client)."""
    write("site.yaml", SITE.format(tmp=tmp_path))
    result = orchc("compile", ROOT / "examples" / "sysbench.yaml", "--site", "site.yaml", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    run = tmp_path / "out" / "sysbench"
    script = (run / "oltp.sbatch").read_text()
    assert "command -v sysbench" not in script and "sysbench-client-debian12.sif timeout \"$limit\" sysbench " in script
    shipped = (ROOT / "service_defs" / "files" / "sysbench-client.def").read_text()
    assert "From: debian:12.15-slim" in shipped and "sysbench mariadb-client" in shipped
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(FAKE_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    prepare = subprocess.run([sys.executable, "-m", "compiler", "prepare", str(ROOT / "examples" / "sysbench.yaml"),
                              "--site", "site.yaml"], cwd=tmp_path, env={**environment(run, bin_dir), "PYTHONPATH": str(ROOT)},
                             capture_output=True, text=True, timeout=120)
    assert prepare.returncode == 0, prepare.stderr
    sha = hashlib.sha256(shipped.encode()).hexdigest()
    assert f"building {tmp_path}/containers/sysbench-client-debian12.sif from def:sysbench-client.def@sha256:{sha}" in prepare.stdout
    assert f"building {tmp_path}/containers/mysql-8.4.11.sif from docker://mysql:8.4.11" in prepare.stdout
    assert (run / "apptainer.log.def").read_text() == shipped


FAKE_HF = r"""#!/bin/bash
# hf download REPO: what Hugging Face's CLI does, as far as a test sees it: the model's folder in the hub cache under
# $HF_HOME (models--ORG--NAME/snapshots/...), and a line in $HOME/hf.log (HOME reaches a --cleanenv container) with
# its argv and what it found set.
[ "$1" = download ] && [ "$#" = 2 ] || { echo "fake hf: want: download REPO" >&2; exit 2; }
[ -n "${HF_HOME:-}" ] || { echo "fake hf: HF_HOME is not set" >&2; exit 2; }
folder="$HF_HOME/hub/models--${2//\//--}/snapshots/0"
mkdir -p "$folder" && echo '{}' >"$folder/config.json"
echo "hf $* HF_HOME=$HF_HOME token=${HF_TOKEN:+set} offline=${HF_HUB_OFFLINE-}" >>"$HOME/hf.log"
"""


VLLM_SOURCE = "docker://vllm/vllm-openai:v0.20.2-cu129"


def vllm_recipe(orchc, write, tmp_path: Path, programs: dict[str, str], image: bool = True) -> tuple[Path, Path]:
    """A vLLM recipe on an apptainer site whose model store is the test's, compiled; `programs` (name -> text) in a
    bin folder; with `image`, vLLM's image as prepare would have left it. (run folder, bin folder)"""
    write("site.yaml", SITE.format(tmp=tmp_path) + f"storage:\n  models: {tmp_path}/models\n")
    write("r.yaml", "service:\n  type: vllm\n  model: 'org/tiny-llama'\n")
    result = orchc("compile", "r.yaml", "--site", "site.yaml", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in programs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    if image:
        (tmp_path / "containers").mkdir()
        (tmp_path / "containers" / "vllm-openai-0.20.2-cu129.sif").write_text(whole_image(VLLM_SOURCE))
        (tmp_path / "containers" / "vllm-openai-0.20.2-cu129.sif.source").write_text(VLLM_SOURCE + "\n")
    return tmp_path / "out" / "r", bin_dir


def test_prepare_downloads_the_vllm_model_into_the_model_store_on_the_login_node(orchc, write, tmp_path):
    """The model's files are fetched by `orchc prepare` (the type's `prepare` phase, in the job's own image, on the
    login node), not by the service on a billed GPU node; a gated model's HF_TOKEN reaches it in its environment."""
    run, bin_dir = vllm_recipe(orchc, write, tmp_path, {"apptainer": FAKE_APPTAINER, "hf": FAKE_HF})
    prepare = subprocess.run([sys.executable, "-m", "compiler", "prepare", "r.yaml", "--site", "site.yaml"], cwd=tmp_path,
                             env={**environment(run, bin_dir, HF_TOKEN="hf_secret_token_1234"), "PYTHONPATH": str(ROOT)},
                             capture_output=True, text=True, timeout=120)
    assert prepare.returncode == 0, prepare.stderr
    log = (run / "hf.log").read_text()
    assert f"hf download org/tiny-llama HF_HOME={tmp_path}/models/huggingface token=set offline=0" in log, log
    assert "hf_secret_token_1234" not in log + prepare.stdout + prepare.stderr
    assert (tmp_path / "models" / "huggingface" / "hub" / "models--org--tiny-llama" / "snapshots" / "0" / "config.json").exists()
    assert "service vllm: model org/tiny-llama prepared" in prepare.stdout, prepare.stdout
    # the service's own job no longer fetches it: vLLM finds it in HF_HOME, offline; here `vllm` is a stand-in that
    # says what it was given and exits, which ends the job
    (bin_dir / "vllm").write_text('#!/bin/bash\necho "vllm $* offline=$HF_HUB_OFFLINE" >>"$HOME/hf.log"\nexit 3\n')
    (bin_dir / "vllm").chmod(0o755)
    path = f"{nvidia_smi_standin.install(tmp_path / 'gpu')}{os.pathsep}{bin_dir}"
    job = start(run, bin_dir, "vllm", ORCHC_STANDIN_DRIVER="575.51.03", PATH=f"{path}{os.pathsep}{os.environ['PATH']}")
    _, err = finished(job, 1)
    assert "not in the model store" not in err and "vllm serve org/tiny-llama" in (run / "hf.log").read_text(), err
    assert "offline=1" in (run / "hf.log").read_text().splitlines()[-1]


def test_a_vllm_job_whose_model_was_not_prepared_stops_in_setup_and_says_so(orchc, write, tmp_path):
    run, bin_dir = vllm_recipe(orchc, write, tmp_path, {"apptainer": FAKE_APPTAINER}, image=False)
    path = f"{nvidia_smi_standin.install(tmp_path / 'gpu')}{os.pathsep}{bin_dir}{os.pathsep}{os.environ['PATH']}"
    _, err = finished(start(run, bin_dir, "vllm", ORCHC_STANDIN_DRIVER="575.51.03", PATH=path), 1)
    assert ("model org/tiny-llama is not in the model store $ORCHC_MODELS/huggingface: orchc prepare (which orchc "
            "submit runs first) downloads it on the login node") in err, err


def test_a_failing_prepare_step_stops_prepare_and_names_the_job_and_the_type_line(orchc, write, tmp_path):
    gated = "#!/bin/bash\necho '401 Client Error: gated repo' >&2\nexit 1\n"
    run, bin_dir = vllm_recipe(orchc, write, tmp_path, {"apptainer": FAKE_APPTAINER, "hf": gated})
    prepare = subprocess.run([sys.executable, "-m", "compiler", "prepare", "r.yaml", "--site", "site.yaml"], cwd=tmp_path,
                             env={**environment(run, bin_dir), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                             timeout=120)
    assert prepare.returncode == 1 and "Traceback" not in prepare.stderr, prepare.stderr
    assert re.search(r"error: orchc prepare of recipe r failed: service vllm: its prepare phase failed "
                     r"\(service_defs/vllm\.yaml:\d+\)", prepare.stderr), prepare.stderr
    assert "401 Client Error: gated repo" in prepare.stderr


@pytest.mark.cluster
def test_a_first_run_with_an_empty_store_prepares_once_and_no_client_times_out(cluster, needs_redis, monkeypatch,  # noqa: F811
                                                                              tmp_path):
    """On the test cluster, under a stand-in apptainer whose builds take 25 s, longer than the client's
    target_timeout (15 s here, 600 s by default): submit prepares first, on this (login) node, so the jobs start
    with their images ready, and the client finds redis in time. Before orchc prepare, the service built its image
    in the job while the client's clock ran."""
    from test_cluster import free_port, status, wait_for
    from test_cluster import orchc as cluster_orchc

    port = free_port()
    (tmp_path / "site.yaml").write_text(SITE.format(tmp=tmp_path))
    (tmp_path / "redis.yaml").write_text(
        f"service:\n  name: redis\n  ports: [{port}]\n  data_dir: {tmp_path}/redis-data\n  resources: {{time: '00:05:00'}}\n"
        "client:\n  name: bench\n  type: redis_client\n  requests: 2000\n  tests: [set, get]\n  target_timeout: 15\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(FAKE_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    run = tmp_path / "run"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_APPTAINER_LOG": str(tmp_path / "apptainer.log"),
           "FAKE_APPTAINER_CHUNK_SECONDS": "5"}
    for name, value in env.items():   # the cluster's orchc passes its environment on, and sbatch passes it to the jobs
        monkeypatch.setenv(name, value)
    submitted = cluster_orchc("submit", "redis.yaml", "--site", "site.yaml", "--run-dir", run, cwd=tmp_path)
    lines = submitted.stdout.splitlines()
    assert lines[0] == f"orchc prepare: building {tmp_path}/containers/redis-7.2.16.sif from docker://redis:7.2.16 (missing)"
    assert any(line.startswith("submitted client bench") for line in lines), lines
    wait_for(lambda: all(job["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for job in status(run).values()),
             180, "both jobs to end", interval=0.5)
    states = {name: job["state"] for name, job in status(run).items()}
    assert states == {"redis": "COMPLETED", "bench": "COMPLETED"}, (states, [p.read_text() for p in run.glob("slurm-*.err")])
    log = (tmp_path / "apptainer.log").read_text()
    assert log.count("build ") == 1 and log.count("exec ") >= 3, log    # built once, before; run by both jobs
    recorded = json.loads((run / "images" / "bench.json").read_text())
    assert recorded[0]["source"] == "docker://redis:7.2.16"
