"""A service across nodes on the multi-node test cluster (issue 21): vLLM's launch contract, for real under srun.

tests/cluster/start.sh brings up four nodes (n1..n4) with four fake GPUs each. The vllm type with nodes: 2 and
gpu:2 runs one rank per node; `vllm` is tests/vllm_ranks_standin.py, which checks each rank's arguments against
its SLURM task (node rank, nodes, master address and port, GPUs), makes the ranks join rank 0 at the master
port, and serves only once all have joined. A 2-node client (one load generator per node, results merged) then
drives it; killing one rank stops the service with a message naming the rank's node. Like tests/test_cluster.py these skip without a cluster and fail under CI=true,
and also without two nodes of the gpu partition with two GPUs each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, in_ci
from test_cluster import _cluster_problem, free_port, gpu_nodes, status, wait_for

pytestmark = pytest.mark.cluster


def _nodes_problem() -> str | None:
    problem = _cluster_problem()
    if problem:
        return problem
    with_two = {node for node, gpus in gpu_nodes().items() if gpus >= 2}
    if len(with_two) < 2:
        return (f"the gpu partition has {len(with_two)} node(s) with 2 GPUs, not 2 (the four-node test cluster of "
                "tests/cluster/start.sh has them)")
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = _nodes_problem()
    if problem and in_ci():
        pytest.fail(f"CI=true but {problem}")
    if problem:
        pytest.skip(problem)


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment the run is submitted from (sbatch passes it on to the jobs): `vllm` is the stand-in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "vllm"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'vllm_ranks_standin.py'} \"$@\"\n")
    shim.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "STANDIN_RANKS": str(tmp_path / "ranks"), **extra}
    env.pop("VLLM_API_KEY", None)
    (tmp_path / "ranks").mkdir(exist_ok=True)
    return env


def submit(tmp_path: Path, recipe: str, env: dict[str, str]) -> Path:
    (tmp_path / "llm.yaml").write_text(recipe)
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "compiler", "submit", "llm.yaml", "--run-dir", str(run)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return run


def recipe(port: int, master_port: int, client: str = "") -> str:
    return ("site: local\nservice:\n  name: llm\n  type: vllm\n  model: tiny\n"
            f"  ports: [{port}]\n  metrics_ports: [{port}]\n  master_port: {master_port}\n  health_timeout: 60\n"
            "  enable_gpu_sampler: false\n"
            "  resources: {nodes: 2, gres: 'gpu:2', partition: gpu, cpus_per_task: 1, mem: 1G, time: '00:05:00'}\n"
            + client)


def ranks_seen(tmp_path: Path) -> dict[int, dict]:
    return {int(path.stem.split("-")[1]): json.loads(path.read_text()) for path in (tmp_path / "ranks").glob("rank-*.json")}


def test_vllm_on_two_nodes_serves_once_every_rank_joined_and_a_client_drives_it(cluster, tmp_path):
    env = environment(tmp_path, STANDIN_JOIN_DELAY="4")
    client = ("client:\n  name: bench\n  type: llm_client\n  model: tiny\n  num_requests: 20\n  concurrent: 2\n"
              "  warmup_requests: 0\n  resources: {nodes: 2, time: '00:03:00'}\n")
    run = submit(tmp_path, recipe(free_port(), free_port(), client), env)
    wait_for(lambda: status(run)["bench"]["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 150,
             "the client to end")
    jobs = status(run)
    assert jobs["bench"]["state"] == "COMPLETED", (run / "results" / "bench" / "error").read_text()
    seen = ranks_seen(tmp_path)
    assert sorted(seen) == [0, 1] and all(not rank["problems"] for rank in seen.values()), seen
    assert seen[0]["env"]["SLURMD_NODENAME"] != seen[1]["env"]["SLURMD_NODENAME"]   # one rank per node
    for rank in (0, 1):
        argv = seen[rank]["argv"]
        assert argv[argv.index("--node-rank") + 1] == str(rank) and argv[argv.index("--nnodes") + 1] == "2"
        assert len(seen[rank]["env"]["CUDA_VISIBLE_DEVICES"].split(",")) == 2
        assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert "--headless" in seen[1]["argv"] and "--headless" not in seen[0]["argv"]
    assert seen[0]["api_key_given"]
    # rank 0 served only after rank 1 joined (4 s late), and the endpoint came after that
    assert seen[0]["serving_at"] > seen[1]["joined_at"]
    results = json.loads(subprocess.run([sys.executable, "-m", "compiler", "results", str(run), "--json"],
                                        cwd=tmp_path, env=env, capture_output=True, text=True).stdout)
    # the client's two load generators, one per node, each with half the requests; merged from the pooled requests
    assert results["bench"]["metrics"]["requests_ok_count"] == 20 and results["bench"]["metrics"]["tasks_count"] == 2
    tasks = json.loads((run / "results" / "bench" / "tasks.json").read_text())["tasks"]
    assert [task["metrics"]["requests_ok_count"] for task in tasks] == [10, 10]
    assert len({task["node"] for task in tasks}) == 2
    # orchc results: the merged figures, then one row per task (its node and requests)
    rows = results["bench"]["breakdown"]["tasks"]
    assert [(row["task"], row["node"], row["requests_ok_count"]) for row in rows] == \
        [(task["task"], task["node"], 10) for task in tasks]
    shown = subprocess.run([sys.executable, "-m", "compiler", "results", str(run)], cwd=tmp_path, env=env,
                           capture_output=True, text=True).stdout
    below = shown.partition("bench per task: 2 tasks")[2]
    assert [line.split()[:3] for line in below.splitlines() if line.split()[:1] in (["0"], ["1"])] == \
        [[str(task["task"]), task["node"], "10"] for task in tasks]
    assert sorted(path.name for path in (run / "results" / "bench" / "barrier").iterdir()) == ["0", "1"]
    wait_for(lambda: status(run)["llm"]["state"] not in ("RUNNING", "PENDING"), 60, "the service to stop")
    assert status(run)["llm"]["state"] == "COMPLETED"


def test_killing_one_rank_stops_the_service_with_a_message_naming_its_node(cluster, tmp_path):
    env = environment(tmp_path)
    run = submit(tmp_path, recipe(free_port(), free_port()).replace("  name: llm\n", "  name: llm\n  keep_running: true\n"),
                 env)
    wait_for(lambda: (run / "endpoints" / "llm").exists(), 90, "the service to publish its endpoint")
    seen = ranks_seen(tmp_path)
    node = seen[1]["env"]["SLURMD_NODENAME"]
    os.kill(seen[1]["pid"], signal.SIGKILL)
    wait_for(lambda: status(run)["llm"]["state"] in ("FAILED", "COMPLETED", "CANCELLED"), 60, "the service to stop")
    assert status(run)["llm"]["state"] == "FAILED"
    assert not (run / "endpoints" / "llm").exists()
    err = "".join(path.read_text() for path in run.glob("slurm-*.err"))
    assert f"rank 1 on node {node} exited with status 137" in err, err


def test_a_rank_whose_arguments_break_the_contract_fails_the_service_before_it_is_ready(cluster, tmp_path):
    """tensor_parallel_size 3 on nodes that give each rank 2 GPUs: the stand-in refuses it on every rank (so it
    checks), srun stops the step, and the service fails before publishing an endpoint, naming a rank's node."""
    env = environment(tmp_path)
    run = submit(tmp_path, recipe(free_port(), free_port()).replace("  model: tiny\n", "  model: tiny\n  tensor_parallel_size: 3\n"),
                 env)
    wait_for(lambda: status(run)["llm"]["state"] in ("FAILED", "COMPLETED", "CANCELLED"), 90, "the service to fail")
    assert status(run)["llm"]["state"] == "FAILED" and not (run / "endpoints" / "llm").exists()
    seen = ranks_seen(tmp_path)
    assert seen and all(rank["problems"] == ["--tensor-parallel-size 3 but CUDA_VISIBLE_DEVICES=0,1"] for rank in seen.values())
    err = "".join(path.read_text() for path in run.glob("slurm-*.err"))
    assert "error: the service process exited before it became ready: rank " in err, err
    assert any(f"on node {rank['env']['SLURMD_NODENAME']} exited with status 2" in err for rank in seen.values()), err


def test_load_from_two_nodes_stopped_by_its_duration_keeps_each_tasks_requests_in_flight(cluster, tmp_path):
    """Requests of 10 s and a duration of 3 s, two load generators: orchc stops the tasks' srun, each task cuts its
    request in flight "at duration", and the client completes with the merged, partial results."""
    from llm_standin import Standin

    fake = Standin(tokens=1000, first_token_delay=0.02, inter_token_delay=0.01, parallelism=2)
    try:
        (tmp_path / "llm.yaml").write_text(
            "site: local\nclient:\n  name: bench\n  type: llm_client\n  model: tiny\n"
            f"  target_endpoint: 127.0.0.1:{fake.port}\n  num_requests: 10\n  concurrent: 2\n  duration: 3\n"
            "  warmup_requests: 0\n  max_tokens: 1000\n  resources: {nodes: 2, time: '00:02:00'}\n")
        run = tmp_path / "run"
        env = environment(tmp_path)
        done = subprocess.run([sys.executable, "-m", "compiler", "submit", "llm.yaml", "--run-dir", str(run)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: status(run)["bench"]["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 90,
                 "the client to end")
    finally:
        fake.close()
    assert status(run)["bench"]["state"] == "COMPLETED", "".join(p.read_text() for p in run.glob("slurm-*.err"))
    for task in (0, 1):
        (record,) = [json.loads(line) for line in
                     (run / "results" / "bench" / "tasks" / str(task) / "requests.jsonl").read_text().splitlines()]
        assert record["error"] == "cut at duration" and record["cut"]
    metrics = json.loads((run / "results" / "bench" / "metrics.json").read_text())
    assert (metrics["requests_cut_count"], metrics["tasks_count"]) == (2, 2)
