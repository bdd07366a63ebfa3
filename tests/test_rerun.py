"""Reproducible runs: what run.json and resolved.json record, `orchc rerun`, and the job-side record."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from test_cluster import cluster, free_port, needs_redis, redis_recipe, status, wait_for  # noqa: F401
from test_cluster import orchc as cluster_orchc
from test_scheduler import fake, output  # noqa: F401 (fixtures)

from compiler import __version__
from compiler.core.errors import ClusterError
from compiler.run import runs


def test_a_run_records_how_it_was_made(fake, output, tmp_path):  # noqa: F811
    run = runs.submit(output, tmp_path / "run", fake, ("orchc", "submit", "r.yaml", "--set", "x=1"))
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["orchc_version"] == __version__ and saved["command"] == ["orchc", "submit", "r.yaml", "--set", "x=1"]
    assert saved["rerun_of"] == "" and runs.load_run(str(tmp_path / "run"))[1] == run
    resolved = json.loads((tmp_path / "run" / "resolved.json").read_text())
    assert sorted(resolved["jobs"]) == ["bench", "cache", "db", "load"]
    assert resolved["jobs"]["db"]["ports"] == [6380] and resolved["jobs"]["load"]["target"] == "db"
    assert resolved["jobs"]["bench"]["phases"]["benchmark"]                 # every job in full, as `show` prints it


def test_rerun_submits_the_same_scripts_as_a_new_run(fake, output, tmp_path):  # noqa: F811
    first = runs.submit(output, tmp_path / "run", fake)
    again = runs.rerun(tmp_path / "run", tmp_path / "again", fake, ("orchc", "rerun", "run"))
    assert again.rerun_of == str((tmp_path / "run").resolve()) and again.state == "submitted"
    assert [job.name for job in again.jobs] == [job.name for job in first.jobs]
    assert {job.slurm_id for job in again.jobs}.isdisjoint(job.slurm_id for job in first.jobs)
    for path in (tmp_path / "run").iterdir():
        if path.name != "run.json":
            assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes(), path.name


def test_rerun_refuses_scripts_edited_after_compiling(fake, output, tmp_path):  # noqa: F811
    runs.submit(output, tmp_path / "run", fake)
    script = tmp_path / "run" / "bench.sbatch"
    script.write_text(script.read_text() + "echo edited\n")
    with pytest.raises(ClusterError, match=r"differ from what its manifest\.json vouches for"):
        runs.rerun(tmp_path / "run", tmp_path / "again", fake)
    assert not (tmp_path / "again").exists()


def test_every_job_records_its_slurm_job_nodes_and_times(orchc, write, tmp_path):
    write("defs/quick.yaml", "type: quick\nextends: client\nphases:\n  health_check: []\n  benchmark: [\"true\"]\n")
    recipe = write("q.yaml", "client:\n  name: c\n  type: quick\n  target_endpoint: '127.0.0.1:9'\n")
    assert orchc("compile", recipe, "--defs", "defs", "--site", "local", "-o", "out", cwd=tmp_path).code == 0
    run = tmp_path / "run"
    run.mkdir()
    env = {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run), "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "node[1-2]"}
    done = subprocess.run(["bash", str(tmp_path / "out" / "q" / "c.sbatch")], env=env, cwd=run, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    record = json.loads((run / "jobs" / "c.json").read_text())
    assert (record["job"], record["slurm_job_id"], record["nodes"], record["exit_status"]) == ("c", "4242", "node[1-2]", 0)
    assert record["started"] <= record["ended"] and record["ended"].endswith("Z")


def test_rerun_on_the_cluster(cluster, needs_redis, tmp_path):  # noqa: F811
    port = free_port()
    (tmp_path / "redis.yaml").write_text(redis_recipe(port, "  requests: 2000\n  tests: [get]\n"))
    cluster_orchc("submit", "redis.yaml", "--run-dir", tmp_path / "run", cwd=tmp_path)
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
    wait_for(lambda: all(job["state"] in ended for job in status(tmp_path / "run").values()), 120, "the first run")
    cluster_orchc("rerun", tmp_path / "run", "--run-dir", tmp_path / "again", cwd=tmp_path)
    wait_for(lambda: all(job["state"] in ended for job in status(tmp_path / "again").values()), 120, "the rerun")
    assert all(job["state"] == "COMPLETED" for job in status(tmp_path / "again").values())
    saved = json.loads((tmp_path / "again" / "run.json").read_text())
    assert saved["rerun_of"] == str((tmp_path / "run").resolve()) and saved["command"][:2] == ["orchc", "rerun"]
    for job in ("redis", "bench"):
        record = json.loads((tmp_path / "again" / "jobs" / f"{job}.json").read_text())
        assert record["exit_status"] == 0 and record["slurm_job_id"] == status(tmp_path / "again")[job]["slurm id"]
    result = json.loads((tmp_path / "again" / "results" / "bench" / "results.json").read_text())
    assert result["status"] == "complete" and result["metrics"]["get.requests_per_s"] > 0
