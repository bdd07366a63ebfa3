"""Ports a service chooses as it starts (`auto`, README "Ports"): two runs of one recipe on one node, the placeholders
only orchc can make, a port taken under the service said plainly. Run with bash outside SLURM (the cluster tests are in
test_cluster_ports.py)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import in_ci
from test_jobside import environment


def needs(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} missing; run tests/install-deps.sh"
        pytest.fail(f"CI=true but {message}") if in_ci() else pytest.skip(message)


def compiled(orchc, write, tmp_path: Path, name: str, recipe: str, defs: dict[str, str] | None = None) -> Path:
    for file, text in (defs or {}).items():
        write(f"defs/{file}", text)
    extra = ["--defs", "defs"] if defs else []
    done = orchc("compile", write(f"{name}.yaml", recipe), *extra, "--site", "local", "-o", f"out-{name}", cwd=tmp_path)
    assert done.code == 0, done.err
    return tmp_path / f"out-{name}" / name


REDIS = """\
services:
  - name: redis
    health_timeout: 30
    enable_exporter: true
clients:
  - name: bench
    type: redis_client
    target: redis
    requests: 200
    clients: 2
    tests: [set, get]
"""


def test_two_runs_of_one_redis_recipe_on_one_node_each_serve_their_own_client(orchc, write, tmp_path):
    """The defect: every port was fixed (redis 6379, its exporter 9121), so the second run of a recipe on a node failed.
    Now both runs choose their own ports, publish them in endpoints/redis and monitoring/redis.json, and each client
    reaches its own run's redis (mutual TLS with its own run's certificate: another run's redis would refuse it)."""
    needs("redis-server", "redis-benchmark", "redis-cli", "prometheus-redis-exporter", "python3")
    runs = [compiled(orchc, write, tmp_path, name, REDIS) for name in ("one", "two")]
    services = [subprocess.Popen(["bash", "redis.sbatch"], cwd=run, env=environment(run), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for run in runs]
    try:
        clients = [subprocess.Popen(["bash", "bench.sbatch"], cwd=run, env=environment(run), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for run in runs]
        said = [client.communicate(timeout=120) for client in clients]
        assert [client.returncode for client in clients] == [0, 0], said
        ended = [service.communicate(timeout=60) for service in services]
        assert [service.returncode for service in services] == [0, 0], ended
    finally:
        for service in services:
            service.kill()
    chosen = [_chosen_ports(err) for _, err in ended]
    assert chosen[0]["ports_0"] != chosen[1]["ports_0"] and chosen[0]["exporter_port"] != chosen[1]["exporter_port"], chosen
    for run, ports, (_, err) in zip(runs, chosen, said, strict=True):
        assert f"benchmark against {socket.gethostname()}:{ports['ports_0']}" in err, err
        results = json.loads((run / "results" / "bench" / "results.json").read_text())
        rates = [value for name, value in results["metrics"].items() if name.endswith(".requests_per_s")]
        assert results["status"] == "complete" and len(rates) == 2 and min(rates) > 0, results


def _chosen_ports(stderr: str) -> dict[str, str]:
    """The ports a job said it chose: its line `ports on HOST: NAME=PORT ...`."""
    line = next(line for line in stderr.splitlines() if "] ports on " in line)
    return dict(pair.split("=") for pair in line.split(": ", 1)[1].split())


ECHO = """\
type: echoer
extends: service
fields:
  ports: {default: [auto]}
  note: {type: string}
  spare_port: {anyOf: [{type: integer, minimum: 1, maximum: 65535}, {const: auto}], default: auto}
container:
  command: python3 -m http.server --bind 127.0.0.1 {{ ports[0] }}
phases:
  setup:
    - file: "$ORCHC_RUN_DIR/config/{{ job.name }}/ports.txt"
      content: |
        own {{ ports[0] }} {{ spare_port }}
        note {{ note }}
    - echo "note {{ note }} own {{ ports[0] }}" >"$ORCHC_RUN_DIR/config/{{ job.name }}/said.txt"
  health_check:
    - orchc_wait_tcp 127.0.0.1 {{ ports[0] }} 20
"""


@pytest.mark.parametrize("note", ["$ORCHC_PORT_ports_0", "${ORCHC_PORT_spare_port}", "@ORCHC_PORT_0123456789abcdef:ports_0@",
                                  "$(touch pwned)"])
def test_a_value_spelled_like_orchcs_port_placeholder_stays_data(orchc, write, tmp_path, note):
    """Only orchc makes a reference to a chosen port (from `auto`); a value spelled like one, in a command or in a file,
    is written as it is, never expanded: the job's files hold the note verbatim beside the real ports."""
    needs("python3")
    run = compiled(orchc, write, tmp_path, "r", f"service:\n  name: e\n  type: echoer\n  note: {json.dumps(note)}\n",
                   {"echoer.yaml": ECHO})
    script = (run / "e.sbatch").read_text()
    assert "ORCHC_PORT_ports_0=auto\nORCHC_PORT_spare_port=auto\norchc_ports ports_0 spare_port\n" in script, script
    log = tmp_path / "e.log"
    with log.open("w") as out:
        job = subprocess.Popen(["bash", "e.sbatch"], cwd=run, env=environment(run, ORCHC_WATCH_EVERY="1"),
                               stdout=out, stderr=out)
    try:
        endpoint = run / "endpoints" / "e"
        deadline = time.monotonic() + 60
        while not endpoint.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert endpoint.exists(), log.read_text()
        port = endpoint.read_text().split()[2]
    finally:
        job.kill()   # its watcher stops the server (README "Jobs stop at their first failure")
        job.wait()
    err = log.read_text()
    ports = _chosen_ports(err)
    assert ports["ports_0"] == port
    config = run / "config" / "e"
    assert (config / "ports.txt").read_text() == f"own {port} {ports['spare_port']}\nnote {note}\n"
    assert (config / "said.txt").read_text() == f"note {note} own {port}\n"
    assert not (run / "pwned").exists()


def test_a_port_taken_before_the_service_binds_it_is_said_plainly(orchc, write, tmp_path):
    """The race `auto` leaves: another program takes a port between orchc choosing it and the service binding it. The
    service dies with "Address already in use" in the job's log, and the job's error says that, not only that it exited."""
    needs("python3")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        binder = ECHO.replace("command: python3 -m http.server --bind 127.0.0.1 {{ ports[0] }}",
                              f"command: python3 -m http.server --bind 127.0.0.1 {taken}")
        run = compiled(orchc, write, tmp_path, "r", "service:\n  name: e\n  type: echoer\n  note: n\n", {"echoer.yaml": binder})
        with (run / "slurm-5.err").open("w") as log:
            done = subprocess.run(["bash", "e.sbatch"], cwd=run, env=environment(run, SLURM_JOB_ID="5"), stdout=subprocess.DEVNULL,
                                  stderr=log, timeout=60)
    said = (run / "slurm-5.err").read_text()
    assert done.returncode != 0
    error = next(line for line in said.splitlines() if "error:" in line)
    assert "the service process exited before it became ready: its log (slurm-5.err) says \"Address already in use\"" in error, said
