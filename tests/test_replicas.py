"""One engine per GPU (issue 21, item 4): `replicas: per_gpu` on a type that declares it (`replicas: [per_gpu]`) starts
one instance per GPU of the job, each on its own device and port; on any other type it is a located error at the
recipe's key. Compiled here; run for real on the 4-node test cluster in tests/test_cluster_replicas.py."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT
from test_ollama import requests

HEADLINE = re.compile(r"^(?P<loc>\S+:\d+:\d+): error: (?P<message>.+)$", re.M)


def errors(err: str) -> list[tuple[str, str]]:
    return [(m["loc"], m["message"]) for m in HEADLINE.finditer(err)]


def test_replicas_on_a_type_that_runs_one_engine_is_refused_at_the_recipes_key(orchc, write, tmp_path):
    recipe = write("r.yaml", "site: local\nservice:\n  name: cache\n  type: redis\n  replicas: per_gpu\n")
    done = orchc("validate", recipe, cwd=tmp_path)
    assert done.code == 1 and "Traceback" not in done.err
    assert errors(done.err) == [
        ("r.yaml:5:13", "replicas: service 'cache' asks for one engine per GPU, but type 'redis' runs one engine (it "
                        "declares no replicas:); leave replicas out, or use a type that declares replicas: [per_gpu] "
                        "(README \"One engine per GPU\")")]


def test_an_unknown_replicas_value_is_located(orchc, write, tmp_path):
    recipe = write("r.yaml", "site: local\nservice:\n  name: llm\n  type: ollama\n  auth_proxy: false\n  replicas: per_node\n")
    done = orchc("validate", recipe, cwd=tmp_path)
    assert done.code == 1 and [loc for loc, _ in errors(done.err)] == ["r.yaml:6:13"], done.err


def test_ollama_per_gpu_starts_one_engine_per_gpu_and_publishes_them(orchc, write, tmp_path):
    recipe = write("r.yaml", "site: local\nservice:\n  name: llm\n  type: ollama\n  auth_proxy: false\n  replicas: per_gpu\n"
                             "  resources: {gres: 'gpu:4'}\n")
    done = orchc("compile", recipe, "-o", "out", cwd=tmp_path)
    assert done.code == 0, done.err
    script = (tmp_path / "out" / "r" / "llm.sbatch").read_text()
    # replica 0 on ports[0] as the ports block at the top chose or checked it (a recipe's auto compiled before this
    # read it as an integer and failed), the others on free ports chosen as the job starts
    assert 'orchc_replicas_plan "$ORCHC_PORT_ports_0"\n' in script and "\norchc_replicas_start &\n" in script
    assert script.index("\nORCHC_PORT_ports_0=") < script.index("orchc_replicas_plan")
    assert 'OLLAMA_HOST=0.0.0.0:"$ORCHC_REPLICA_PORT"' in script
    assert "orchc_replicas_each orchc_replica_health" in script



def replica_job(orchc, write, tmp_path: Path, extra: str = "") -> tuple[Path, Path, int]:
    base = random.randrange(20000, 60000)   # replica 0; the others on free ports the job chooses
    recipe = write("r.yaml", f"service:\n  name: llm\n  type: ollama\n  model: tiny\n  auth_proxy: false\n  replicas: per_gpu\n"
                             f"  ports: [{base}]\n  health_timeout: 30\n  resources: {{gres: 'gpu:4'}}\n{extra}")
    assert orchc("compile", str(recipe), "--site", "local", "-o", "out", cwd=tmp_path).code == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "ollama"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'ollama_standin.py'} \"$@\"\n")
    shim.chmod(0o755)
    return tmp_path / "out" / "r", bin_dir, base


def run_service(run: Path, bin_dir: Path, **extra: str) -> tuple[int | None, str, str]:
    """Start the service job; stop it once ready (its endpoint is published, and returned) or when it exits."""
    env = {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "STANDIN_LOG": str(run / "standin.log"), **extra}
    job = subprocess.Popen(["bash", "llm.sbatch"], cwd=run, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    endpoint, deadline = run / "endpoints" / "llm", time.monotonic() + 90
    while job.poll() is None and not endpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    published = endpoint.read_text() if endpoint.exists() else ""
    code = job.poll()
    if code is None:
        os.killpg(job.pid, signal.SIGTERM)
    _, err = job.communicate(timeout=30)
    return code, err, published


def test_four_gpus_four_ollamas_each_on_its_device_and_port_all_published(orchc, write, tmp_path):
    run, bin_dir, base = replica_job(orchc, write, tmp_path)
    code, err, published = run_service(run, bin_dir, CUDA_VISIBLE_DEVICES="0,1,2,3", STANDIN_SIZE_VRAM="1000",
                                       STANDIN_SERVED=str(run / "served.log"))
    assert code is None and published, err   # ready, then stopped by the test
    served = [json.loads(line) for line in (run / "served.log").read_text().splitlines()]
    port_of = {s["devices"]: int(s["host"].rsplit(":", 1)[1]) for s in served}
    assert sorted(port_of) == ["0", "1", "2", "3"] and len(set(port_of.values())) == 4, served
    assert port_of["0"] == base   # replica 0 on ports[0]; the others on free ports chosen as the job started
    lines = published.splitlines()
    host = lines[0].split()[1]
    assert lines[0].split()[2:] == [str(base)]   # what a client of one engine reads, unchanged
    assert lines[1:] == [f"replica {i} {host} {port_of[str(i)]} {i}" for i in range(4)]
    # every replica was health-checked and warmed up on its own port
    assert sorted(entry["port"] for entry in requests(run) if entry["path"] == "/api/generate") == sorted(port_of.values())


def test_a_replica_that_fails_stops_the_job_naming_it_and_its_gpu(orchc, write, tmp_path):
    run, bin_dir, _ = replica_job(orchc, write, tmp_path)
    code, err, _ = run_service(run, bin_dir, CUDA_VISIBLE_DEVICES="4,5,6,7", STANDIN_SIZE_VRAM="1000", STANDIN_FAIL_ON_DEVICES="6")
    assert code == 1, err
    assert "replica 2 on GPU 6 exited with status 3" in err, err


def test_a_replica_killed_after_the_job_was_ready_fails_it_naming_the_replica_and_its_gpu(orchc, write, tmp_path):
    run, bin_dir, _ = replica_job(orchc, write, tmp_path, "  keep_running: true\n")
    served = run / "served.log"
    env = {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "CUDA_VISIBLE_DEVICES": "0,1,2,3", "STANDIN_SIZE_VRAM": "1000", "STANDIN_SERVED": str(served)}
    job = subprocess.Popen(["bash", "llm.sbatch"], cwd=run, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while job.poll() is None and not (run / "endpoints" / "llm").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (run / "endpoints" / "llm").exists()
        (victim,) = [json.loads(line)["pid"] for line in served.read_text().splitlines() if json.loads(line)["devices"] == "2"]
        os.kill(victim, signal.SIGKILL)
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 1
    assert "the service exited with status 137: replica 2 on GPU 2 exited with status 137" in err, err
    assert not (run / "endpoints" / "llm").exists()


def test_without_a_gpu_the_job_says_so(orchc, write, tmp_path):
    run, bin_dir, _ = replica_job(orchc, write, tmp_path)
    environment = {"CUDA_VISIBLE_DEVICES": "", "SLURM_JOB_GPUS": ""}
    code, err, _ = run_service(run, bin_dir, **environment)
    assert code == 1 and "replicas: per_gpu: the job got no GPU" in err, err


def test_vllm_per_gpu_runs_one_engine_per_gpu_on_its_port_without_tensor_parallel(orchc, write, tmp_path):
    recipe = write("r.yaml", "site: local\nservice:\n  name: llm\n  type: vllm\n  model: tiny\n  replicas: per_gpu\n"
                             "  resources: {gres: 'gpu:4'}\n")
    done = orchc("compile", recipe, "-o", "out", cwd=tmp_path)
    assert done.code == 0, done.err
    script = (tmp_path / "out" / "r" / "llm.sbatch").read_text()
    function = script[script.index("orchc_replica() {"):script.index("orchc_replicas_start &")]
    assert '--port "$ORCHC_REPLICA_PORT" --tensor-parallel-size 1 ' in function
    assert 'orchc_wait_http http://127.0.0.1:"$ORCHC_REPLICA_PORT"/health' in script


def test_replicas_across_nodes_is_refused(orchc, write, tmp_path):
    recipe = write("r.yaml", "site: local\nservice:\n  name: llm\n  type: vllm\n  model: tiny\n  replicas: per_gpu\n"
                             "  resources: {nodes: 2, gres: 'gpu:4'}\n")
    done = orchc("validate", recipe, cwd=tmp_path)
    assert done.code == 1 and errors(done.err)[0][0] == "r.yaml:6:13", done.err
    assert "the replicas run on the job's one node" in errors(done.err)[0][1]


def test_tunnel_knows_every_replicas_port_and_takes_no_replica_number_or_gpu_for_one(tmp_path):
    run = tmp_path / "run"
    (run / "endpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"recipe": "r", "state": "submitted", "jobs": [
        {"name": "llm", "type": "ollama", "role": "service", "target": None, "script": "llm.sbatch",
         "slurm_id": "41", "submitted": ""}]}))
    (run / "endpoints" / "llm").write_text("41 n1 11434\n" + "".join(f"replica {i} n1 {11434 + i} {i + 4}\n" for i in range(4)))

    def tunnel(port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "compiler", "tunnel", str(run), "llm", str(port)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert tunnel(11436).stdout.startswith("llm listens on n1:11436")
    refused = tunnel(5)
    assert refused.returncode == 1 and "published port(s) 11434, 11435, 11436, 11437, not 5" in refused.stderr, refused
