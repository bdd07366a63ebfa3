"""The shared job runtime: one content-addressed file per output folder, checked by every job script before it is
sourced (run here for real under bash), and inlined by `compile --self-contained`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from conftest import runtime_into, shellcheck

from compiler.script.runtime import runtime_name

# A client that leaves a trace of each of its phases in the run folder, and needs no service.
PROBE = """type: trace_probe
extends: client
phases:
  health_check:
    - printf '%s\\n' health_check >>"$ORCHC_RUN_DIR/trace"
  benchmark:
    - printf '%s\\n' benchmark >>"$ORCHC_RUN_DIR/trace"
"""
RECIPE = "site: local\nclient:\n  name: c\n  type: trace_probe\n  target_endpoint: '127.0.0.1:9'\n"


def compile_probe(orchc, write, tmp_path: Path, *options: str) -> Path:
    write("defs/probe.yaml", PROBE)
    result = orchc("compile", write("r.yaml", RECIPE), "--defs", "defs", "-o", "out", *options, cwd=tmp_path)
    assert result.code == 0, result.err
    return tmp_path / "out" / "r"


def run(script: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(run_dir), "ORCHC_RUN_DIR": str(run_dir)}
    return subprocess.run(["bash", str(script)], cwd=run_dir, env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_the_runtime_is_one_file_named_by_its_sha256_listed_and_vouched_for_by_the_manifest(orchc, write, tmp_path):
    folder = compile_probe(orchc, write, tmp_path)
    (runtime,) = folder.glob("orchc-runtime-*.sh")
    sha = hashlib.sha256(runtime.read_bytes()).hexdigest()
    assert runtime.name == runtime_name() == f"orchc-runtime-{sha[:12]}.sh"
    script = (folder / "c.sbatch").read_text()
    assert f'"{sha}  -"' in script and "orchc_cleanup()" not in script       # the full sha256; no helper inlined
    manifest = json.loads((folder / "manifest.json").read_text())
    assert runtime.name in manifest["files"]
    from compiler.output.emit import digest

    files = {name: (folder / name).read_text() for name in manifest["files"] if name != "manifest.json"}
    assert digest(files) == manifest["digest"]
    files[runtime.name] += "# changed\n"
    assert digest(files) != manifest["digest"]


def test_a_job_sources_the_runtime_from_its_run_folder_and_runs(orchc, write, tmp_path):
    folder = compile_probe(orchc, write, tmp_path)
    runtime_into(tmp_path / "run", folder)      # as submit writes the output folder's files into the run folder
    done = run(folder / "c.sbatch", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "trace").read_text() == "health_check\nbenchmark\n"
    assert json.loads((tmp_path / "run" / "results" / "c" / "results.json").read_text())["status"] == "complete"


def _refused(done: subprocess.CompletedProcess[str], run_dir: Path) -> None:
    """The job stopped at the check: one line on stderr, a non-zero exit, and nothing of the job ran."""
    assert done.returncode != 0
    (line,) = done.stderr.splitlines()
    assert line.startswith("orchc: error: the job runtime ") and "is missing or changed (its sha256 must be " in line, line
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("orchc-runtime-")) == []   # no trace, no jobs/


def test_a_missing_runtime_stops_the_job_before_anything_runs(orchc, write, tmp_path):
    folder = compile_probe(orchc, write, tmp_path)
    done = run(folder / "c.sbatch", tmp_path / "run")
    _refused(done, tmp_path / "run")
    assert f"{tmp_path / 'run'}/{runtime_name()} is missing" in done.stderr


def test_a_changed_runtime_stops_the_job_before_anything_runs(orchc, write, tmp_path):
    folder = compile_probe(orchc, write, tmp_path)
    run_dir = tmp_path / "run"
    runtime_into(run_dir, folder)
    runtime = run_dir / runtime_name()
    runtime.write_text(runtime.read_text() + 'touch "$ORCHC_RUN_DIR/changed-runtime-ran"\n')
    _refused(run(folder / "c.sbatch", run_dir), run_dir)
    runtime.write_text("")          # an empty file is no runtime either
    _refused(run(folder / "c.sbatch", run_dir), run_dir)


def test_self_contained_scripts_hold_the_runtime_and_run_alone(orchc, write, tmp_path):
    folder = compile_probe(orchc, write, tmp_path, "--self-contained")
    assert sorted(p.name for p in folder.iterdir()) == ["c.sbatch", "manifest.json", "submit.sh"]
    assert runtime_name() not in json.loads((folder / "manifest.json").read_text())["files"]
    script = (folder / "c.sbatch").read_text()
    assert "orchc_cleanup()" in script and "ORCHC_RUNTIME" not in script
    checked = subprocess.run([shellcheck(), "-s", "bash", str(folder / "c.sbatch")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
    alone = tmp_path / "elsewhere" / "c.sbatch"   # travels alone: no runtime beside it or in its run folder
    alone.parent.mkdir()
    alone.write_text(script)
    done = run(alone, tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "trace").read_text() == "health_check\nbenchmark\n"


def test_recompiling_self_contained_removes_the_runtime_the_last_compile_wrote(orchc, write, tmp_path):
    folder = compile_probe(orchc, write, tmp_path)
    assert (folder / runtime_name()).is_file()
    compile_probe(orchc, write, tmp_path, "--self-contained")
    assert not (folder / runtime_name()).exists()
    compile_probe(orchc, write, tmp_path)
    assert (folder / runtime_name()).is_file()


def test_a_failing_runtime_helper_is_located_at_the_script_line_that_called_it(orchc, write, tmp_path):
    """Lines of the runtime file never pass for lines of the script: the error names the type file's line that
    called the helper, although the line of the runtime that failed lies inside the phase block's script lines
    (a block of 600 lines spans the runtime's line numbers)."""
    block = "".join("      :\n" for _ in range(600)) + "      orchc_wait_tcp 127.0.0.1 9 0\n"
    write("defs/probe.yaml", PROBE.replace("  benchmark:\n", "  benchmark:\n    - |\n" + block))
    result = orchc("compile", write("r.yaml", RECIPE), "--defs", "defs", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    runtime_into(tmp_path / "run", tmp_path / "out" / "r")
    done = run(tmp_path / "out" / "r" / "c.sbatch", tmp_path / "run")
    assert done.returncode != 0
    assert "127.0.0.1:9 accepted no connection within 0 s in phase benchmark at defs/probe.yaml:608: " \
           "orchc_wait_tcp 127.0.0.1 9 0\n" in done.stderr, done.stderr
