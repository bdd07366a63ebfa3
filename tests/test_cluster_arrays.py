"""A sweep over a site's running-jobs limit, submitted as a SLURM job array on the test cluster for real.

The limit is declared in a test site profile (the shared cluster's QoS is never reconfigured): max_running 2, so the
6 client points of a redis sweep and their service (7 jobs) go as one array of 6 tasks, %1."""

from __future__ import annotations

import json
import subprocess
from itertools import pairwise
from pathlib import Path

import pytest
from test_cluster import cluster, free_port, needs_redis, orchc, status, wait_for

__all__ = ["cluster", "needs_redis"]   # the fixtures, imported for the tests below

SITE = ("site: limited-local\nruntime: native\nshell: /bin/bash\nlimits: {max_running: 2}\n"
        "storage:\n  models: $HOME/.orchc/models\n  data: $ORCHC_RUN_DIR/data\n"
        "defaults:\n  resources: {nodes: 1, ntasks: 1, time: '00:10:00'}\n")
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")


def sweep(port: int) -> str:
    return (f"name: sw\nservice:\n  name: redis\n  ports: [{port}]\n  resources: {{time: '00:10:00'}}\n"
            "client:\n  name: bench\n  type: redis_client\n  requests: 2000\n  tests: [set, get]\n"
            "  resources: {time: '00:03:00'}\n"
            "sweep:\n  matrix:\n    bench.clients: [1, 2, 4]\n  repeat: 2\n")


def submitted(tmp_path: Path, name: str, *site: str) -> tuple[Path, str]:
    (tmp_path / f"{name}.yaml").write_text(sweep(free_port()))
    run = tmp_path / f"run-{name}"
    return run, orchc("submit", f"{name}.yaml", "--run-dir", run, *site, cwd=tmp_path).stdout


def ended(run: Path) -> dict[str, dict[str, str]] | None:
    jobs = status(run)
    return jobs if all(job["state"] in ENDED for job in jobs.values()) else None


def skeleton(value: object) -> object:
    """`value` with every number, text and null replaced by its kind: what results hold, not what they measured."""
    if isinstance(value, dict):
        return {key: skeleton(item) for key, item in value.items()}
    if isinstance(value, list):
        return [skeleton(item) for item in value]
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


def shape(run: Path) -> dict[str, object]:
    """Each point's and repeat's results row, as its skeleton."""
    report = json.loads(orchc("results", run, "--json", cwd=run.parent).stdout)
    return {f"{row['point']}-r{row['repeat']}": skeleton(row) for row in report["rows"]}


@pytest.mark.cluster
def test_a_sweep_over_the_running_limit_runs_as_an_array_with_the_results_of_single_jobs(cluster, needs_redis, tmp_path):
    (tmp_path / "limited.yaml").write_text(SITE)
    arrays, said = submitted(tmp_path, "arrays", "--site", "limited.yaml")
    single, _ = submitted(tmp_path, "single", "--site", "local")
    assert "7 SLURM jobs, more than the 2 limited-local runs at once (limits.max_running): 6 clients submitted as 1 job " \
           "array(s): bench (6 tasks, %1), 1 single job(s)" in said, said
    run = json.loads((arrays / "run.json").read_text())
    ids = {job["name"]: job["slurm_id"] for job in run["jobs"]}
    array = ids["bench-p01-r1"].partition("_")[0]
    assert [ids[f"bench-p0{p}-r{r}"] for p in (1, 2, 3) for r in (1, 2)] == [f"{array}_{task}" for task in range(6)]
    assert "(array task)" in said and ids["redis"].isdigit()
    # squeue names the array's pending tasks one by one (JobTaskLimit: %1), and the first runs first
    jobs = wait_for(lambda: ended(arrays), 300, "every job of the array run to end", interval=2)
    assert {name: job["state"] for name, job in jobs.items()} == dict.fromkeys(ids, "COMPLETED"), jobs
    assert {job["slurm id"] for job in jobs.values()} == set(ids.values())
    wait_for(lambda: ended(single), 300, "every job of the single-job run to end", interval=2)
    assert shape(arrays) == shape(single)
    results = json.loads(orchc("results", arrays, "--json", cwd=tmp_path).stdout)
    assert {(row["point"], row["repeat"]) for row in results["rows"]} == {(f"p0{p}", r) for p in (1, 2, 3) for r in (1, 2)}
    # each task ran its own point's script, one after another, and wrote its log under the task's id
    spans = []
    for task in range(6):
        log = (arrays / f"slurm-{array}_{task}.out").read_text()
        name = next(n for n, i in ids.items() if i == f"{array}_{task}")
        assert f"runs job {name}" in log, log
        record = json.loads((arrays / "jobs" / f"{name}.json").read_text())
        spans.append((record["started"], record["ended"]))
    assert all(ended <= started for (_, ended), (started, _) in pairwise(spans)), spans
    logs = orchc("logs", arrays, "bench-p02-r2", cwd=tmp_path).stdout
    assert f"slurm-{array}_3.out" in logs and "runs job bench-p02-r2" in logs


@pytest.mark.cluster
def test_cancel_of_a_run_cancels_the_array_tasks_still_pending(cluster, needs_redis, tmp_path):
    (tmp_path / "limited.yaml").write_text(SITE)
    (tmp_path / "hold.yaml").write_text(sweep(free_port()).replace("requests: 2000", "requests: 200000000\n  duration: 60"))
    run = tmp_path / "run"
    orchc("submit", "hold.yaml", "--run-dir", run, "--site", "limited.yaml", cwd=tmp_path)
    wait_for(lambda: status(run)["bench-p01-r1"]["state"] == "RUNNING", 120, "the first task to run", interval=1)
    assert status(run)["bench-p02-r1"]["state"] == "PENDING"
    cancelled = orchc("cancel", run, cwd=tmp_path).stdout
    jobs = wait_for(lambda: ended(run), 120, "every job to end after cancel", interval=1)
    assert {job["state"] for job in jobs.values()} == {"CANCELLED"}, (cancelled, jobs)
    array = json.loads((run / "run.json").read_text())["jobs"][1]["slurm_id"].partition("_")[0]
    left = subprocess.run(["squeue", "--me", "-h", "-r", "-j", array], capture_output=True, text=True, timeout=30)
    assert left.stdout.strip() == "", left.stdout
