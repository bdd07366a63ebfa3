"""Two runs of one recipe at once on one node of the test cluster (README "Ports are chosen as the service starts"):
redis with its exporter and a redis_client, vLLM (tests/llm_standin.py) and an llm_client. No port is given: every
service, exporter and sidecar chooses its own, and each client reaches its own run's service."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nvidia_smi_standin
import pytest
from conftest import ROOT
from test_cluster import cluster, install_standin, orchc, status, wait_for  # noqa: F401 (cluster is a fixture)
from test_monitoring import ENDED, needs, without_nvidia_smi

pytestmark = pytest.mark.cluster

RECIPE = """\
site: local
resources: {time: '00:05:00'}
services:
  - name: redis
    enable_exporter: true
    health_timeout: 60
  - name: llm
    type: vllm
    model: tiny
    api_key: {file: KEY}
    health_timeout: 60
    enable_node_exporter: true
    resources: {partition: gpu, gres: 'gpu:1'}
clients:
  - name: bench
    type: redis_client
    target: redis
    requests: 100000
    clients: 4
    tests: [set, get]
  - name: chat
    type: llm_client
    target: llm
    model: tiny
    api_key: {file: KEY}
    num_requests: 40
    concurrent: 2
    warmup_requests: 0
"""


def published(run: Path, job: str) -> tuple[str, int] | None:
    """(host, port) from endpoints/<job> while the service serves."""
    try:
        _, host, port, *_ = (run / "endpoints" / job).read_text().split()
    except (OSError, ValueError):
        return None
    return host, int(port)


def test_two_runs_of_one_recipe_on_one_node_both_succeed_each_client_on_its_own_service(cluster, tmp_path):  # noqa: F811
    needs("redis-server", "redis-benchmark", "prometheus-redis-exporter", "prometheus-node-exporter", "python3")
    key = tmp_path / "key"
    key.write_text("k" * 32 + "\n")
    key.chmod(0o600)
    (tmp_path / "twice.yaml").write_text(RECIPE.replace("KEY", str(key)))
    shim = tmp_path / "bin"
    nvidia_smi_standin.install(shim)
    install_standin(shim, "vllm", ROOT / "tests" / "llm_standin.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{shim}{os.pathsep}{without_nvidia_smi(os.environ['PATH'])}",
           "ORCHC_STANDIN_GPUS": "1", "STANDIN_TOKENS": "8"}
    runs = [tmp_path / "one", tmp_path / "two"]
    # both runs' jobs begin together (sbatch --begin), so that the two runs really serve at the same time
    begin = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 20))
    for run in runs:
        submitted = subprocess.run([sys.executable, "-m", "compiler", "submit", "twice.yaml", "--run-dir", run,
                                    "--set", f"resources.extra=['--nodelist=n2', '--begin={begin}']"],
                                   cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
        assert submitted.returncode == 0, submitted.stderr
    # while both serve: each run's redis, its exporter and vLLM on ports of their own, the exporters each about their own redis
    files = [run / "monitoring" / "redis.json" for run in runs]
    wait_for(lambda: all(file.exists() and published(file.parent.parent, "redis") for file in files), 180, "both redis to serve")
    exporters = [json.loads(file.read_text())[0]["targets"][0] for file in files]
    for target in exporters:   # redis_up 1: it logged in to a redis with its own run's client certificate
        with urllib.request.urlopen(f"http://127.0.0.1:{target.rsplit(':', 1)[1]}/metrics", timeout=10) as answer:
            assert "redis_up 1" in answer.read().decode()
    for run in runs:
        wait_for(lambda run=run: all(job["state"] in ENDED for job in status(run).values()), 240, f"the jobs of {run.name} to end")
        states = {name: job["state"] for name, job in status(run).items()}
        assert set(states.values()) == {"COMPLETED"}, (states, orchc("logs", run, "redis", cwd=tmp_path, check=False).stdout)
        results = json.loads(orchc("results", run, "--json", cwd=tmp_path).stdout)
        assert results["bench"]["status"] == "complete" and results["chat"]["status"] == "complete", results
    chosen = [{service: _chosen(orchc("logs", run, service, cwd=tmp_path, check=False).stdout) for service in ("redis", "llm")}
              for run in runs]
    ports = [int(port) for one in chosen for said in one.values() for port in said.values()]
    assert len(set(ports)) == len(ports) >= 6, chosen   # redis, exporter, vLLM, node_exporter, per run
    assert [f"127.0.0.1:{one['redis']['exporter_port']}" for one in chosen] == [f"127.0.0.1:{t.rsplit(':', 1)[1]}" for t in exporters]
    for run, one in zip(runs, chosen, strict=True):
        # each client benchmarked the port its own run's service chose
        for client, service in (("bench", "redis"), ("chat", "llm")):
            log = orchc("logs", run, client, cwd=tmp_path, check=False).stdout
            assert re.search(rf"benchmark against \S+:{one[service]['ports_0']}\n", log), log


def _chosen(log: str) -> dict[str, str]:
    """The ports a service said it chose (`ports on HOST: NAME=PORT ...`)."""
    line = next(line for line in log.splitlines() if "] ports on " in line)
    return dict(pair.split("=") for pair in line.split(": ", 1)[1].split())
