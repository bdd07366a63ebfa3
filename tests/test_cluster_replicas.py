"""One engine per GPU on the multi-node test cluster (issue 21, item 4), for real under SLURM: an Ollama stand-in
(tests/ollama_standin.py) with `replicas: per_gpu` on a node of four fake GPUs serves from four ports, each instance
with its own device in CUDA_VISIBLE_DEVICES as SLURM gave the job's gres; an ollama_client spreads its requests over
them (round-robin: as many to each) and the results count them per replica. Like tests/test_cluster_multinode.py
these skip without the cluster and fail under CI=true."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, in_ci
from test_cluster import _cluster_problem, gpu_nodes, install_standin, status, wait_for

pytestmark = pytest.mark.cluster


def _four_gpus_problem() -> str | None:
    problem = _cluster_problem()
    if problem:
        return problem
    if 4 not in gpu_nodes().values():
        return "the gpu partition has no node with 4 GPUs (the four-node test cluster of tests/cluster/start.sh has them)"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = _four_gpus_problem()
    if problem and in_ci():
        pytest.fail(f"CI=true but {problem}")
    if problem:
        pytest.skip(problem)


def test_four_ollamas_on_four_gpus_share_the_clients_load(cluster, tmp_path: Path):
    key = tmp_path / "key"
    key.write_text("k" * 32 + "\n")
    key.chmod(0o600)
    (tmp_path / "llm.yaml").write_text(
        "site: local\nservice:\n  name: llm\n  type: ollama\n  model: tiny\n  auth_proxy: false\n  replicas: per_gpu\n"
        "  health_timeout: 60\n  enable_gpu_sampler: false\n"
        "  resources: {partition: gpu, gres: 'gpu:4', cpus_per_task: 1, mem: 1G, time: '00:05:00'}\n"
        f"client:\n  name: bench\n  type: ollama_client\n  model: tiny\n  api_key: {{file: {key}}}\n"
        "  num_requests: 20\n  concurrent: 4\n  warmup_requests: 0\n  resources: {time: '00:03:00'}\n")
    bin_dir = tmp_path / "bin"
    install_standin(bin_dir, "ollama", ROOT / "tests" / "ollama_standin.py")
    served = tmp_path / "served.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "STANDIN_SIZE_VRAM": "1000", "STANDIN_SERVED": str(served), "STANDIN_LOG": str(tmp_path / "requests.log")}
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "compiler", "submit", "llm.yaml", "--run-dir", str(run)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: status(run)["bench"]["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 180, "the client to end")
    err = "".join(path.read_text() for path in run.glob("slurm-*.err"))
    assert status(run)["bench"]["state"] == "COMPLETED", err
    # four instances, each with its own device (as SLURM numbered the job's four GPUs) and its own port (ports: auto,
    # the default: each a free port of the node, chosen as the job started)
    instances = [json.loads(line) for line in served.read_text().splitlines()]
    port_of = {i["devices"]: int(i["host"].rsplit(":", 1)[1]) for i in instances}
    assert sorted(port_of) == ["0", "1", "2", "3"] and len(set(port_of.values())) == 4, instances
    ports = [port_of[str(n)] for n in range(4)]
    # the load, round-robin: 5 requests to each port, as the stand-ins saw them and as the results count them
    generated = [json.loads(line) for line in (tmp_path / "requests.log").read_text().splitlines()]
    measured = [entry["port"] for entry in generated if entry["path"] == "/api/generate" and entry["body"].get("stream")]
    assert sorted(measured) == sorted(ports * 5)
    results = json.loads(subprocess.run([sys.executable, "-m", "compiler", "results", str(run), "--json"], cwd=tmp_path,
                                        env=env, capture_output=True, text=True, timeout=60).stdout)["bench"]
    assert results["metrics"]["requests_ok_count"] == 20 and results["metrics"]["replicas_count"] == 4
    rows = results["breakdown"]["replicas"]
    assert [(row["replica"], row["gpu"], row["requests_ok_count"]) for row in rows] == [(n, str(n), 5) for n in range(4)]
    assert [row["address"].rsplit(":", 1)[1] for row in rows] == [str(port) for port in ports]
    wait_for(lambda: status(run)["llm"]["state"] not in ("RUNNING", "PENDING"), 60, "the service to stop")
    assert status(run)["llm"]["state"] == "COMPLETED", err
