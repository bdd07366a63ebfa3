"""A sweep with more jobs than the site runs at once is submitted as SLURM job arrays of its clients (README, Sites:
"Sweeps within a site's job limits"). The cluster test submits one for real (test_cluster_arrays.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from compiler.core.errors import ClusterError
from compiler.output.plan import plan_from_manifest, submit_script
from compiler.run.scheduler import is_job_id
from compiler.run.slurm import parse_squeue

LIMITED = ("site: limited\nruntime: native\nshell: /bin/bash\nlimits: {{max_running: {running}{more}}}\n"
           "defaults:\n  resources: {{nodes: 1, ntasks: 1, time: '00:10:00'}}\n")
SWEEP = ("service:\n  name: redis\nclient:\n  name: bench\n  type: redis_client\n  target: redis\n"
         "sweep:\n  matrix:\n    bench.clients: [1, 2, 3]\n  repeat: 2\n")


def compiled(orchc, write, tmp_path: Path, recipe: str = SWEEP, running: int = 2, more: str = "",
             out: str = "out") -> tuple[Path, str]:
    write("limited.yaml", LIMITED.format(running=running, more=more))
    result = orchc("compile", write("r.yaml", recipe), "--site", "limited.yaml", "-o", tmp_path / out, cwd=tmp_path)
    assert result.code == 0, result.err
    return tmp_path / out / "r", result.out


def test_a_sweep_over_the_running_limit_is_one_array_of_its_clients_one_after_another(orchc, write, tmp_path):
    folder, _ = compiled(orchc, write, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    names = [f"bench-p0{point}-r{repeat}" for point in (1, 2, 3) for repeat in (1, 2)]
    assert manifest["arrays"] == [{"name": "bench", "script": "bench.array.sbatch", "tasks": "bench.array.tasks",
                                   "jobs": names, "throttle": 1, "chained": True}]
    assert (folder / "bench.array.tasks").read_text() == "".join(f"{name}\n" for name in names)
    header = [line for line in (folder / "bench.array.sbatch").read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --array=0-5%1" in header and "#SBATCH --output=slurm-%A_%a.out" in header
    assert "#SBATCH --time=00:10:00" in header and not any("%j" in line for line in header), header
    assert {"bench.array.sbatch", "bench.array.tasks"} <= set(manifest["files"])
    submit = (folder / "submit.sh").read_text()
    assert ('ARRAY_1=$(sbatch --parsable --dependency=after:"${JOB_1}" --export=ALL,ORCHC_TARGET_JOB_ID="${JOB_1}" '
            "bench.array.sbatch)") in submit, submit
    assert 'echo bench-p03-r2 "${ARRAY_1}_5"' in submit and "bench-p01-r1.sbatch" not in submit


def test_each_points_script_is_the_same_bytes_as_for_a_single_job(orchc, write, tmp_path):
    arrays, _ = compiled(orchc, write, tmp_path, running=2, out="arrays")
    single, _ = compiled(orchc, write, tmp_path, running=100, out="single")
    assert not (single / "bench.array.sbatch").exists()
    for script in single.glob("*.sbatch"):
        assert (arrays / script.name).read_bytes() == script.read_bytes(), script.name


def test_validate_says_arrays_and_why(orchc, write, tmp_path):
    write("limited.yaml", LIMITED.format(running=2, more=""))
    result = orchc("validate", write("r.yaml", SWEEP), "--site", "limited.yaml", cwd=tmp_path)
    assert result.code == 0, result.err
    assert ("7 SLURM jobs, more than the 2 limited runs at once (limits.max_running): 6 clients submitted as 1 job "
            "array(s): bench (6 tasks, %1), 1 single job(s)") in result.out, result.out


def test_an_array_larger_than_the_sites_max_array_size_is_split_and_the_parts_run_in_turn(orchc, write, tmp_path):
    folder, _ = compiled(orchc, write, tmp_path, more=", max_array_size: 4")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [(array["name"], len(array["jobs"])) for array in manifest["arrays"]] == [("bench", 4), ("bench-2", 2)]
    assert "#SBATCH --array=0-1%1" in (folder / "bench-2.array.sbatch").read_text()
    submit = (folder / "submit.sh").read_text()
    assert 'ARRAY_2=$(sbatch --parsable --dependency=after:"${JOB_1}",afterany:"${ARRAY_1}_3" ' in submit, submit


def test_clients_that_start_at_once_run_as_many_at_once_as_the_limit_leaves(orchc, write, tmp_path):
    recipe = SWEEP.replace("  target: redis\n", "  target: redis\n  after: []\n")
    folder, _ = compiled(orchc, write, tmp_path, recipe=recipe, running=4)
    array, = json.loads((folder / "manifest.json").read_text())["arrays"]
    assert (array["throttle"], array["chained"]) == (3, False)   # 4 running, less the service
    assert "#SBATCH --array=0-5%3" in (folder / "bench.array.sbatch").read_text()


def test_one_allocation_and_a_sweep_within_the_limit_have_no_arrays(orchc, write, tmp_path):
    folder, _ = compiled(orchc, write, tmp_path, recipe=SWEEP + "allocation: one\n")
    assert "arrays" not in json.loads((folder / "manifest.json").read_text())
    folder, _ = compiled(orchc, write, tmp_path, running=7, out="within")
    assert "arrays" not in json.loads((folder / "manifest.json").read_text())


def test_an_array_that_would_wait_for_a_job_submitted_after_it_is_not_a_plan(orchc, write, tmp_path):
    folder, _ = compiled(orchc, write, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["arrays"][0]["jobs"] = ["bench-p01-r2", "redis"]
    with pytest.raises(ClusterError, match="waits for a job submitted after it"):
        plan_from_manifest(manifest, "manifest.json")
    manifest["arrays"][0]["jobs"] = ["bench-p01-r1", "bench-p01-r1"]
    with pytest.raises(ClusterError, match="an array that is not"):
        plan_from_manifest(manifest, "manifest.json")


def test_submit_sh_is_what_orchc_submit_would_run(orchc, write, tmp_path):
    folder, _ = compiled(orchc, write, tmp_path)
    plan = plan_from_manifest(json.loads((folder / "manifest.json").read_text()), "manifest.json")
    assert submit_script(plan) == (folder / "submit.sh").read_text()
    fake = tmp_path / "bin"
    fake.mkdir()
    # a stand-in sbatch that answers ids 100, 101, ... and records its arguments: submit.sh as bash runs it
    (fake / "sbatch").write_text('#!/bin/bash\nn=$(cat "$0.n" 2>/dev/null || echo 100)\necho "$*" >>"$0.log"\n'
                                 'echo $((n + 1)) >"$0.n"\necho "$n"\n')
    (fake / "sbatch").chmod(0o755)
    done = subprocess.run(["bash", str(folder / "submit.sh")], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["redis 100", "bench-p01-r1 101_0", "bench-p01-r2 101_1", "bench-p02-r1 101_2",
                                        "bench-p02-r2 101_3", "bench-p03-r1 101_4", "bench-p03-r2 101_5"]
    assert (fake / "sbatch.log").read_text().splitlines()[1] == \
        "--parsable --dependency=after:100 --export=ALL,ORCHC_TARGET_JOB_ID=100 bench.array.sbatch"


def run_task(folder: Path, task: str | None, tasks: str | None = None) -> subprocess.CompletedProcess[str]:
    if tasks is not None:
        (folder / "bench.array.tasks").write_text(tasks)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env.update({"ORCHC_RUN_DIR": str(folder), "SLURM_ARRAY_JOB_ID": "7", **({"SLURM_ARRAY_TASK_ID": task} if task else {})})
    return subprocess.run(["bash", str(folder / "bench.array.sbatch")], capture_output=True, text=True, timeout=30, env=env)


def test_an_array_task_runs_its_points_script_and_nothing_a_tasks_file_could_smuggle(orchc, write, tmp_path):
    folder, _ = compiled(orchc, write, tmp_path)
    (folder / "bench-p02-r1.sbatch").write_text('echo "ran $ORCHC_RUN_DIR bench-p02-r1"\n')
    done = run_task(folder, "2")
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == f"ran {folder} bench-p02-r1", done
    assert "runs job bench-p02-r1" in done.stdout
    proof = tmp_path / "smuggled"
    for line in (f"x; touch {proof}", f"../{proof.name}", f"$(touch {proof})", ""):
        done = run_task(folder, "0", tasks=line + "\n")
        assert done.returncode == 1 and "line 1 of bench.array.tasks names no job" in done.stderr, (line, done)
    assert not proof.exists()
    done = run_task(folder, None)
    assert done.returncode == 1 and "runs as a SLURM array task" in done.stderr, done


def test_array_task_ids_are_job_ids_and_squeue_rows_of_tasks_are_read():
    assert is_job_id("12345_7") and is_job_id("12345") and not is_job_id("12345_[1-3%1]") and not is_job_id("1_2_3")
    rows = dict(parse_squeue("12345_7|RUNNING|n1|0:05|0|None|2026-12-06T13:00:00|r_0123abcd|\n"
                             "12345_[8-9%1]|PENDING||0:00|0|JobArrayTaskLimit|N/A|r_0123abcd|\n"))
    assert list(rows) == ["12345_7"] and rows["12345_7"].state == "RUNNING"


def test_without_max_array_size_arrays_stay_within_slurms_default_of_1001(orchc, write, tmp_path):
    recipe = SWEEP.replace("[1, 2, 3]", "[" + ", ".join(str(n) for n in range(1, 502)) + "]")   # 1,002 clients
    folder, _ = compiled(orchc, write, tmp_path, recipe=recipe)
    array, = json.loads((folder / "manifest.json").read_text())["arrays"]
    assert len(array["jobs"]) == 1001 and "#SBATCH --array=0-1000%1" in (folder / "bench.array.sbatch").read_text()
    assert '--dependency=after:"${JOB_1}",afterany:"${ARRAY_1}_1000" ' in (folder / "submit.sh").read_text()
