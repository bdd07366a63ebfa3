"""Programs a type ships (`source:` phase items): written once per output folder as a content-addressed file, listed
in the manifest and covered by its digest; each job script checks the sha256 of its copy in the run folder before it
puts the file in place (run here for real under bash). `compile --self-contained` inlines them instead."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import runtime_into
from test_runtime import run
from test_scheduler import fake  # noqa: F401 (fixture)

from compiler.core.errors import ClusterError
from compiler.output.manifest import digest
from compiler.output.pipeline import Options, compile_all
from compiler.run import runs

PROBE = """type: ship_probe
extends: client
phases:
  setup:
    - file: "$ORCHC_RUN_DIR/config/{{ job.name }}/prog.sh"
      source: prog.sh
      mode: "750"
    - file: "$ORCHC_RUN_DIR/config/{{ job.name }}/settings"
      content: |
        job {{ job.name }}
  health_check: []
  benchmark:
    - bash "$ORCHC_RUN_DIR/config/$ORCHC_JOB/prog.sh" "$(cat "$ORCHC_RUN_DIR/config/$ORCHC_JOB/settings")"
"""
# A program a template or the shell would change if it were interpreted, without a final newline.
PROGRAM = "# {{ not_a_field }} $HOME `date`\nprintf '%s\\n' \"ran $1\" >>\"$ORCHC_RUN_DIR/trace\"\ncat >/dev/null <<'ORCHC_EOF'\nORCHC_EOF"
RECIPE = """site: local
clients:
  - {name: one, type: ship_probe, target_endpoint: '127.0.0.1:9'}
  - {name: two, type: ship_probe, target_endpoint: '127.0.0.1:9'}
"""
PLACED = (PROGRAM + "\n").encode()
"""What lands in the job's config folder: the program with the final newline a here-document gives it."""
SHIPPED_NAME = f"orchc-file-{hashlib.sha256(PLACED).hexdigest()[:12]}-prog.sh"


def write_probe(tmp_path: Path, program: str = PROGRAM) -> Path:
    (tmp_path / "defs" / "files").mkdir(parents=True, exist_ok=True)
    (tmp_path / "defs" / "probe.yaml").write_text(PROBE)
    (tmp_path / "defs" / "files" / "prog.sh").write_text(program)
    (tmp_path / "r.yaml").write_text(RECIPE)
    return tmp_path / "r.yaml"


def compile_probe(orchc, tmp_path: Path, *options: str, program: str = PROGRAM) -> Path:
    recipe = write_probe(tmp_path, program)
    result = orchc("compile", recipe, "--defs", "defs", "-o", "out", *options, cwd=tmp_path)
    assert result.code == 0, result.err
    return tmp_path / "out" / "r"


def test_a_shipped_file_is_written_once_named_by_its_sha256_listed_and_vouched_for(orchc, tmp_path):
    folder = compile_probe(orchc, tmp_path)
    (shipped,) = folder.glob("orchc-file-*")      # one file for both jobs
    assert shipped.name == SHIPPED_NAME and shipped.read_bytes() == PLACED
    manifest = json.loads((folder / "manifest.json").read_text())
    assert SHIPPED_NAME in manifest["files"]
    files = {name: (folder / name).read_text() for name in manifest["files"] if name != "manifest.json"}
    assert digest(files) == manifest["digest"]
    files[SHIPPED_NAME] += "# changed\n"
    assert digest(files) != manifest["digest"]
    sha = hashlib.sha256(PLACED).hexdigest()
    for job in ("one", "two"):
        script = (folder / f"{job}.sbatch").read_text()
        assert "not_a_field" not in script and f"orchc_shipped_file {SHIPPED_NAME} {sha} " in script   # the full sha256
        assert f"<<'ORCHC_EOF'\njob {job}\nORCHC_EOF" in script    # a file made from values stays in the script


def test_a_job_puts_the_shipped_file_in_place_and_runs_it(orchc, tmp_path):
    folder = compile_probe(orchc, tmp_path)
    run_dir = tmp_path / "run"
    runtime_into(run_dir, folder)
    done = run(folder / "one.sbatch", run_dir)
    assert done.returncode == 0, done.stderr
    assert (run_dir / "trace").read_text() == "ran job one\n"
    placed = run_dir / "config" / "one" / "prog.sh"
    assert placed.read_bytes() == PLACED and oct(placed.stat().st_mode & 0o777) == "0o750"
    assert sorted(p.name for p in placed.parent.iterdir()) == ["prog.sh", "settings"]    # no temporary file left


def _stopped(done: subprocess.CompletedProcess[str], run_dir: Path) -> None:
    """The job stopped at the check: one error line naming the file and what to do, nothing of the program ran, and
    no file of the wrong content was put in place."""
    assert done.returncode != 0
    (line,) = [line for line in done.stderr.splitlines() if "error" in line]
    sha = hashlib.sha256(PLACED).hexdigest()
    assert f"error: the file {run_dir}/{SHIPPED_NAME} is missing or changed (its sha256 must be {sha}): compile the " \
           "recipe again into the run folder in phase setup at defs/probe.yaml:5" in line, done.stderr
    assert not (run_dir / "trace").exists()
    assert not (run_dir / "config" / "one").exists() or os.listdir(run_dir / "config" / "one") == []
    record = json.loads((run_dir / "results" / "one" / "results.json").read_text())
    assert record["status"] == "failed" and "is missing or changed" in record["error"]


def test_a_missing_shipped_file_stops_the_job_with_one_clear_line(orchc, tmp_path):
    folder = compile_probe(orchc, tmp_path)
    run_dir = tmp_path / "run"
    runtime_into(run_dir, folder)
    (run_dir / SHIPPED_NAME).unlink()
    _stopped(run(folder / "one.sbatch", run_dir), run_dir)


def test_a_changed_shipped_file_stops_the_job_with_one_clear_line(orchc, tmp_path):
    folder = compile_probe(orchc, tmp_path)
    run_dir = tmp_path / "run"
    runtime_into(run_dir, folder)
    shipped = run_dir / SHIPPED_NAME
    shipped.write_text(shipped.read_text() + 'touch "$ORCHC_RUN_DIR/changed-program-ran"\n')
    _stopped(run(folder / "one.sbatch", run_dir), run_dir)
    shipped.write_text("")
    _stopped(run(folder / "one.sbatch", run_dir), run_dir)


def test_self_contained_scripts_hold_the_shipped_file_and_run_alone(orchc, tmp_path):
    folder = compile_probe(orchc, tmp_path, "--self-contained")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "one.sbatch", "submit.sh", "two.sbatch"]
    script = (folder / "one.sbatch").read_text()
    assert "<<'ORCHC_EOF_'\n" + PROGRAM + "\nORCHC_EOF_\n" in script and "orchc-file-" not in script
    alone = tmp_path / "elsewhere" / "one.sbatch"
    alone.parent.mkdir()
    alone.write_text(script)
    done = run(alone, tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "trace").read_text() == "ran job one\n"


def test_a_recompile_removes_the_shipped_file_it_no_longer_uses(orchc, tmp_path):
    folder = compile_probe(orchc, tmp_path)
    compile_probe(orchc, tmp_path, program=PROGRAM + "\necho changed")
    (shipped,) = folder.glob("orchc-file-*")
    assert shipped.name != SHIPPED_NAME and shipped.read_text() == PROGRAM + "\necho changed\n"
    compile_probe(orchc, tmp_path, "--self-contained")
    assert list(folder.glob("orchc-file-*")) == []


@pytest.fixture
def shipping(tmp_path: Path):
    (output,) = compile_all([write_probe(tmp_path)], Options(defs=[tmp_path / "defs"]))
    return output


def test_submit_and_rerun_carry_the_shipped_file(fake, shipping, tmp_path):  # noqa: F811
    runs.submit(shipping, tmp_path / "run", fake)
    assert (tmp_path / "run" / SHIPPED_NAME).read_bytes() == PLACED
    runs.rerun(tmp_path / "run", tmp_path / "again", fake)
    assert (tmp_path / "again" / SHIPPED_NAME).read_bytes() == PLACED


def test_rerun_refuses_a_changed_shipped_file(fake, shipping, tmp_path):  # noqa: F811
    runs.submit(shipping, tmp_path / "run", fake)
    (tmp_path / "run" / SHIPPED_NAME).write_text("echo edited\n")
    with pytest.raises(ClusterError, match=r"differ from what its manifest\.json vouches for"):
        runs.rerun(tmp_path / "run", tmp_path / "again", fake)


def test_a_long_file_name_is_cut_to_a_name_the_manifest_may_list(orchc, tmp_path):
    """A run folder's manifest lists names of at most 63 characters (runs._NAME): longer, rerun would leave it out."""
    long = "a_program_with_a_name_much_longer_than_most_people_would_write.sh"
    write_probe(tmp_path)
    (tmp_path / "defs" / "probe.yaml").write_text(PROBE.replace("source: prog.sh", f"source: {long}"))
    (tmp_path / "defs" / "files" / long).write_text(PROGRAM)
    assert orchc("compile", "r.yaml", "--defs", "defs", "-o", "out", cwd=tmp_path).code == 0
    (shipped,) = (tmp_path / "out" / "r").glob("orchc-file-*")
    assert len(shipped.name) == 63 and long.startswith(shipped.name.removeprefix(SHIPPED_NAME.removesuffix("prog.sh")))
    assert runs._NAME.fullmatch(shipped.name)
