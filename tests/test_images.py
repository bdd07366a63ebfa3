"""Container images at run time: built once under a lock, atomically, from pinned sources, and recorded.

Apptainer cannot run here, so a fake `apptainer` on PATH stands in for it: `build` writes the image
slowly in five chunks (and can be told to fail after some), `exec` refuses an image that is not whole
and otherwise runs the command natively. A site profile with runtime apptainer points image_dir at
the test's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_APPTAINER = r"""#!/bin/bash
# build TARGET SOURCE: five chunks, 0.3 s apart; FAKE_APPTAINER_FAIL_AFTER=N fails after chunk N.
# exec [OPTIONS] IMAGE.sif COMMAND...: refuses an image without its last chunk.
case $1 in
build)
    target=$2 source=$3
    echo "build $source $target" >>"$FAKE_APPTAINER_LOG"
    [ ! -e "$target" ] || { echo "FATAL: $target already exists" >&2; exit 255; }
    for i in 1 2 3 4 5; do
        printf 'chunk %s of %s\n' "$i" "$source" >>"$target"
        sleep 0.3
        if [ "${FAKE_APPTAINER_FAIL_AFTER:-0}" = "$i" ]; then echo "FATAL: network error" >&2; exit 1; fi
    done
    ;;
exec)
    shift
    while [ "$#" -gt 0 ] && [ "${1%.sif}" = "$1" ]; do shift; done
    image=$1
    shift
    grep -q '^chunk 5 ' "$image" || { echo "FATAL: $image is not a whole image" >&2; exit 3; }
    echo "exec $image" >>"$FAKE_APPTAINER_LOG"
    exec "$@"
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


@pytest.fixture
def setup(orchc, write, tmp_path):
    write("defs/probe.yaml", PROBE)
    write("site.yaml", f"site: fake\nruntime: apptainer\nimage_dir: {tmp_path}/containers\n"
                       "defaults:\n  resources: {nodes: 1, ntasks: 1, time: '00:10:00'}\n")
    recipe = write("r.yaml", "services:\n  - {name: one, type: image_probe}\n  - {name: two, type: image_probe}\n")
    result = orchc("compile", str(recipe), "--defs", "defs", "--site", "site.yaml", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(FAKE_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    return tmp_path / "out" / "r", bin_dir


def start(run: Path, bin_dir: Path, job: str, **extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "FAKE_APPTAINER_LOG": str(run / "apptainer.log"), **extra}
    return subprocess.Popen(["bash", f"{job}.sbatch"], cwd=run, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def builds(run: Path) -> list[str]:
    log = run / "apptainer.log"
    return [line for line in log.read_text().splitlines() if line.startswith("build ")] if log.exists() else []


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_two_jobs_building_the_same_image_at_once_build_it_once(setup, tmp_path):
    run, bin_dir = setup
    jobs = [start(run, bin_dir, "one"), start(run, bin_dir, "two")]
    for job in jobs:
        _, err = job.communicate(timeout=60)
        assert job.returncode == 0, err
    assert len(builds(run)) == 1, builds(run)
    image = tmp_path / "containers" / "probe.sif"
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert (tmp_path / "containers" / "probe.sif.sha256").read_text().split()[0] == digest
    assert leftovers(tmp_path / "containers") == []
    for job in ("one", "two"):
        recorded = json.loads((run / "images" / f"{job}.json").read_text())
        assert recorded == [{"image": "probe", "source": "docker://example.org/probe:1.0",
                             "path": str(image), "sha256": digest}]
    # a later job uses the image as it is: no build, no new digest computed
    again = start(run, bin_dir, "one")
    _, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert len(builds(run)) == 1


def test_a_failed_build_is_never_used(setup, tmp_path):
    run, bin_dir = setup
    job = start(run, bin_dir, "one", FAKE_APPTAINER_FAIL_AFTER="2")
    _, err = job.communicate(timeout=60)
    assert job.returncode != 0
    assert "cannot build" in err and "docker://example.org/probe:1.0" in err, err
    assert not (tmp_path / "containers" / "probe.sif").exists()
    assert leftovers(tmp_path / "containers") == []


def test_an_interrupted_build_is_not_used_and_its_temp_file_is_cleaned_up(setup, tmp_path):
    run, bin_dir = setup
    job = start(run, bin_dir, "one")
    deadline = time.monotonic() + 20
    folder = tmp_path / "containers"
    while not (folder.exists() and leftovers(folder)) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.4)
    os.killpg(job.pid, signal.SIGKILL)  # no trap runs: as if the node died
    job.communicate(timeout=30)
    stale = leftovers(folder)
    assert stale and not (folder / "probe.sif").exists(), stale
    again = start(run, bin_dir, "two")
    _, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert leftovers(folder) == [], "the next build removes the stale temp file"
    assert (folder / "probe.sif").read_text().count("chunk") == 5
    assert len(builds(run)) == 2


def test_an_image_whose_source_changed_is_rebuilt(setup, tmp_path):
    """A pinned tag bumped in a type means a new image, not the old .sif under the same name."""
    run, bin_dir = setup
    folder = tmp_path / "containers"
    folder.mkdir()
    (folder / "probe.sif").write_text("chunk 5 of docker://example.org/probe:latest\n")
    (folder / "probe.sif.source").write_text("docker://example.org/probe:latest\n")
    job = start(run, bin_dir, "one")
    _, err = job.communicate(timeout=60)
    assert job.returncode == 0, err
    assert len(builds(run)) == 1
    assert (folder / "probe.sif.source").read_text().strip() == "docker://example.org/probe:1.0"


SOURCE = re.compile(r"^\s*source:\s*(\S+)\s*$")


def test_built_in_types_pin_their_image_tags():
    """Every image source of service_defs/ names a tag, and never `latest`."""
    found = []
    for path in sorted((ROOT / "service_defs").glob("*.yaml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = SOURCE.match(line)
            if not match:
                continue
            source = match.group(1).strip("'\"")
            if "://" not in source:
                continue                       # a file a phase item ships (`source: NAME`), not an image
            found.append(source)
            reference = source.split("://", 1)[-1]
            _, _, tag = reference.rpartition("/")[2].partition(":")
            assert "@sha256:" in reference or (tag and tag != "latest"), f"{path.name}:{number}: {source} is not pinned"
    assert found, "no image sources found"


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
