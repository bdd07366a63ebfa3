"""The ollama type run natively (`--site local`) against a stand-in server (tests/ollama_standin.py).

Ollama cannot be installed here; the stand-in answers its HTTP API with known behaviour, and a
tiny `ollama` shim on PATH runs it (`serve`) and talks to it (`pull`, `create`). What is checked:
the model store and server settings reach the server, the model is pulled, `gpu_layers` makes a
derived model (the user's model untouched), a warm-up request loads it, /api/ps is checked (with
VRAM on a GPU job), and the server's version is recorded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ollama_job(orchc, write, tmp_path):
    def make(extra: str = "gpu_layers: 7") -> tuple[Path, Path, int]:
        port = free_port()
        recipe = write("r.yaml", f"service:\n  name: llm\n  type: ollama\n  model: tiny\n  ports: [{port}]\n  internal_port: {free_port()}\n"
                                 f"  num_parallel: 3\n  health_timeout: 30\n  {extra}\n")
        result = orchc("compile", str(recipe), "--site", "local", "-o", "out", cwd=tmp_path)
        assert result.code == 0, result.err
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        shim = bin_dir / "ollama"
        shim.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'ollama_standin.py'} \"$@\"\n")
        shim.chmod(0o755)
        return tmp_path / "out" / "r", bin_dir, port
    return make


def run_service(run: Path, bin_dir: Path, **extra: str) -> tuple[int | None, str]:
    """Start the service job; stop it once ready (its endpoint is published) or when it exits."""
    env = {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "STANDIN_LOG": str(run / "standin.log"), **extra}
    job = subprocess.Popen(["bash", "llm.sbatch"], cwd=run, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while job.poll() is None and not (run / "endpoints" / "llm").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    code = job.poll()
    if code is None:
        os.killpg(job.pid, signal.SIGTERM)
    _, err = job.communicate(timeout=30)
    return code, err


def requests(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "standin.log").read_text().splitlines()]


@pytest.mark.slow
def test_ollama_pulls_derives_warms_up_and_checks_the_gpu(ollama_job):
    run, bin_dir, _ = ollama_job()
    code, err = run_service(run, bin_dir, STANDIN_SIZE_VRAM="4000")
    assert code is None, err  # still serving when ready
    seen = requests(run)
    posts = [(r["path"], r["body"]) for r in seen if r["method"] == "POST"]
    assert posts[0] == ("/api/pull", {"model": "tiny"})
    assert posts[1] == ("/api/create", {"model": "tiny-orchc-ngl7", "from": "tiny", "parameters": {"num_gpu": 7}})
    path, body = posts[2]
    assert path == "/api/generate" and body["model"] == "tiny-orchc-ngl7" and body["keep_alive"] == "24h", posts
    # /api/ps, then the proxy's own check: /api/version through nginx with the key
    assert [r["path"] for r in seen if r["method"] == "GET"][-2:] == ["/api/ps", "/api/version"]
    assert (run / ".orchc" / "models" / "ollama" / "manifests" / "tiny:latest").exists(), \
        "the model store is the site's ($HOME/.orchc/models on the local site)"
    recorded = json.loads((run / "results" / "llm" / "ollama.json").read_text())
    assert recorded["version"] == "0.0.0-standin"
    assert recorded["model"] == "tiny" and recorded["served_model"] == "tiny-orchc-ngl7"
    assert recorded["size_vram"] == 4000 and recorded["num_parallel"] == 3


@pytest.mark.slow
def test_a_gpu_job_whose_model_is_not_on_the_gpu_fails_clearly(ollama_job):
    run, bin_dir, _ = ollama_job()
    code, err = run_service(run, bin_dir, STANDIN_SIZE_VRAM="0")
    assert code not in (None, 0)
    assert "tiny-orchc-ngl7 is loaded but not on the GPU" in err, err


@pytest.mark.slow
def test_without_gpu_layers_the_users_model_is_served_as_it_is(ollama_job):
    run, bin_dir, _ = ollama_job("resources: {gres!: null, partition: cpu}")
    code, err = run_service(run, bin_dir)  # no GPU: size_vram 0 is fine
    assert code is None, err
    posts = [(r["path"], r["body"].get("model")) for r in requests(run) if r["method"] == "POST"]
    assert posts == [("/api/pull", "tiny"), ("/api/generate", "tiny")]


def test_under_apptainer_the_model_store_is_bound_and_the_image_pinned(orchc, write, tmp_path):
    recipe = write("r.yaml", "account: p200000\nservice:\n  name: llm\n  type: ollama\n  num_parallel: 8\n"
                             "  max_loaded_models: 2\n  model_store: /project/scratch/p200000/models\n")
    result = orchc("compile", str(recipe), "--stdout", cwd=tmp_path)
    assert result.code == 0, result.err
    script = result.out
    assert "/root/.ollama" not in script
    assert "--bind /project/scratch/p200000/models" in script
    for setting in ("OLLAMA_NUM_PARALLEL=8", "OLLAMA_MAX_LOADED_MODELS=2", "OLLAMA_KEEP_ALIVE=24h",
                    "OLLAMA_MODELS=/project/scratch/p200000/models"):
        assert setting in script, setting
    assert "docker://ollama/ollama:latest" not in script
