"""Waits that follow what the target is really doing (issue 20, item 2), run under bash outside SLURM on the fake clock
of test_jobside: a client's target_timeout does not run while its service is queued or preparing, starts with the
service's readiness phase (at least the service's own health_timeout), and a service that ended stops the wait at once.
Every wait says what it waits for every 30 s. (On the cluster: tests/test_cluster_waits.py.)"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import in_ci
from test_jobside import compile_recipe, environment, fake_clock, fake_squeue

# A client that records the endpoint it found, and needs no tool.
TRACE_CLIENT = """\
type: trace_client
extends: client
phases:
  benchmark:
    - printf '%s %s\\n' "$TARGET_HOST" "$TARGET_PORT" >"$ORCHC_RUN_DIR/found"
"""


def run_client(orchc, write, tmp_path: Path, client_lines: str, squeue_script: str,
               phase: str = "") -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Client c of service svc (SLURM job 77), with a fake squeue whose answer `squeue_script` (bash) prints, and
    phases/svc holding `phase` (if given), on the fake clock: (run folder, its run)."""
    write("defs/trace.yaml", TRACE_CLIENT)
    run = compile_recipe(orchc, write, tmp_path, "service:\n  name: svc\n  type: jobside_probe\n"
                         "client:\n  name: c\n  type: trace_client\n" + client_lines)
    if phase:
        (run / "phases").mkdir()
        (run / "phases" / "svc").write_text(phase + "\n")
    bin_dir = fake_squeue(tmp_path, "")
    squeue = bin_dir / "squeue"
    squeue.write_text(squeue.read_text().replace("printf '%s' ''\n", squeue_script))
    done = subprocess.run(["bash", "c.sbatch"], cwd=run,
                          env=environment(run, bin_dir, ORCHC_TARGET_JOB_ID="77", **fake_clock(tmp_path)),
                          capture_output=True, text=True, timeout=60)
    return run, done


def test_a_client_waits_for_a_preparing_service_longer_than_its_target_timeout(orchc, write, tmp_path):
    """The defect: a client gave up after target_timeout while its service was still building its image. Here the service
    prepares for 300 s (it publishes its endpoint then, through the fake squeue), and the client's budget is 5 s."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        publish = (f'if [ "${{FAKE_CLOCK:-0}}" -ge 300 ]; then mkdir -p "$ORCHC_RUN_DIR/endpoints"; '
                   f'echo "77 127.0.0.1 {port}" >"$ORCHC_RUN_DIR/endpoints/svc"; fi\necho RUNNING\n')
        run, done = run_client(orchc, write, tmp_path, "  target_timeout: 5\n", publish, "77 preparing 1700000000 0")
    assert done.returncode == 0, done.stderr
    assert (run / "found").read_text() == f"127.0.0.1 {port}\n"
    assert "still waiting for service svc (job 77): preparing, SLURM state RUNNING; 0 of 5 s" in done.stderr, done.stderr


def test_a_starting_service_gets_its_own_health_timeout_from_a_client_with_a_shorter_budget(orchc, write, tmp_path):
    _, done = run_client(orchc, write, tmp_path, "  target_timeout: 5\n", "echo RUNNING\n", "77 starting 1700000000 100")
    assert done.returncode != 0
    assert "service svc (job 77) is starting (its health check may take 100 s): waiting at most 100 s more" in done.stderr
    assert "service svc (job 77) published no endpoint within 100 s of starting (state: starting" in done.stderr, done.stderr


def test_a_client_stops_at_once_when_its_service_ended_before_it_was_ready(orchc, write, tmp_path):
    # squeue has not seen the end yet
    run, done = run_client(orchc, write, tmp_path, "", "echo RUNNING\n", "77 ended 1700000000 143")
    assert done.returncode != 0
    said = next(line for line in done.stderr.splitlines() if "error:" in line)
    assert ("error: the client stopped in target: service svc (job 77) ended without publishing an endpoint (exit status 143); "
            f"why is in its log, {run}/slurm-77.err") in said, said
    assert "still waiting" not in done.stderr        # at once: before the first 30 s


def test_a_phase_file_of_another_job_of_the_same_name_does_not_count(orchc, write, tmp_path):
    _, done = run_client(orchc, write, tmp_path, "  target_timeout: 40\n", "echo RUNNING\n", "76 ended 1700000000 1")
    assert "published no endpoint within 40 s (state: RUNNING" in done.stderr, done.stderr


def test_a_cancelled_service_stops_the_wait_naming_its_state(orchc, write, tmp_path):
    _, done = run_client(orchc, write, tmp_path, "", "echo CANCELLED\n")
    assert "service svc (job 77) ended without publishing an endpoint (SLURM state CANCELLED)" in done.stderr, done.stderr


def test_a_wait_on_a_down_target_endpoint_says_what_it_waits_for_every_30_s(orchc, write, tmp_path):
    """The defect: a client waiting on a down target_endpoint logged nothing for 600 s."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]     # bound, not listening: connections are refused
        write("defs/trace.yaml", TRACE_CLIENT)
        run = compile_recipe(orchc, write, tmp_path, f"client:\n  name: c\n  type: trace_client\n"
                             f"  target_endpoint: '127.0.0.1:{port}'\n  target_timeout: 100\n")
        done = subprocess.run(["bash", "c.sbatch"], cwd=run, env=environment(run, **fake_clock(tmp_path)),
                              capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and f"127.0.0.1:{port} accepted no connection within 100 s" in done.stderr
    lines = [line for line in done.stderr.splitlines() if f"still waiting for 127.0.0.1:{port} to accept connections" in line]
    assert len(lines) == 3, done.stderr        # at 30, 60 and 90 s
    assert [int(line.split(": ")[-1].split()[0]) // 30 for line in lines] == [1, 2, 3], lines   # backoff: a few s late


def test_a_pending_service_job_does_not_use_the_budget_of_a_client_that_names_its_id(orchc, write, tmp_path):
    """target_service_id: the job is PENDING for 500 s, then runs; the client's budget is 10 s."""
    answer = 'if [ "${FAKE_CLOCK:-0}" -ge 500 ]; then echo "RUNNING localhost"; else echo PENDING; fi\n'
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        write("defs/trace.yaml", TRACE_CLIENT)
        run = compile_recipe(orchc, write, tmp_path, f"client:\n  name: c\n  type: trace_client\n"
                             f"  target_service_id: 77\n  target_port: {port}\n  target_timeout: 10\n")
        bin_dir = fake_squeue(tmp_path, "")
        squeue = bin_dir / "squeue"
        squeue.write_text(squeue.read_text().replace("printf '%s' ''\n", answer))
        done = subprocess.run(["bash", "c.sbatch"], cwd=run, env=environment(run, bin_dir, **fake_clock(tmp_path)),
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (run / "found").read_text() == f"localhost {port}\n"
    assert "still waiting for job 77 to run: PENDING" in done.stderr


# A service whose config names another job of the recipe (as Grafana's data source names prometheus): `hosts` says how.
NAMER = """\
type: namer
extends: service
fields:
  ports: {{default: [9]}}
  peer: {{type: string, default: "other:9"}}
container:
  command: sleep 0
phases:
  setup:
    - file: "$ORCHC_RUN_DIR/config/{{{{ job.name }}}}/peer.json"
{hosts}      content: |
        {{{{ [peer] | hosts | json }}}}
  health_check: []
"""


def run_namer(orchc, write, tmp_path: Path, hosts: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    write("defs/namer.yaml", NAMER.format(hosts=hosts))
    run = compile_recipe(orchc, write, tmp_path, "services:\n  - name: n\n    type: namer\n"
                         "  - name: other\n    type: jobside_probe\n")
    (run / "phases").mkdir()
    (run / "phases" / "other").write_text("5 ended 1700000000 1\n")
    done = subprocess.run(["bash", "n.sbatch"], cwd=run, env=environment(run, **fake_clock(tmp_path)),
                          capture_output=True, text=True, timeout=60)
    return run, done


def test_a_file_that_waits_for_the_host_of_a_job_that_ended_stops_the_job_at_once(orchc, write, tmp_path):
    _, done = run_namer(orchc, write, tmp_path, "")
    assert done.returncode != 0
    assert "service other ended (exit status 1) without publishing an endpoint" in done.stderr, done.stderr


def test_a_file_with_hosts_later_appears_whole_once_the_host_is_known_and_the_job_goes_on(orchc, write, tmp_path):
    run, done = run_namer(orchc, write, tmp_path, "      hosts: later\n")
    assert "n is ready" in done.stderr, done.stderr        # it did not wait for `other`
    assert not (run / "config" / "n" / "peer.json").exists()
    assert "peer.json appears once the endpoints of other are published; n goes on" in done.stderr
    # published before the job starts: the file is written at once, whole
    (run / "endpoints" / "other").write_text("5 node7 9\n")
    again = subprocess.run(["bash", "n.sbatch"], cwd=run, env=environment(run), capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert (run / "config" / "n" / "peer.json").read_text() == '["node7:9"]\n'


def test_a_port_already_in_use_is_reported_as_such_before_the_service_starts(orchc, write, tmp_path):
    """The defect: a second run of a recipe on one node failed with a TLS error ("unknown ca": its health check reached the
    first run's redis) while "Address already in use" sat only in the job's log."""
    if shutil.which("redis-server") is None:
        message = "redis-server is missing; run tests/install-deps.sh"
        pytest.fail(f"CI=true but {message}") if in_ci() else pytest.skip(message)
    with socket.socket() as other:
        other.bind(("0.0.0.0", 0))
        other.listen()
        port = other.getsockname()[1]
        run = compile_recipe(orchc, write, tmp_path, f"service:\n  name: redis\n  ports: [{port}]\n"
                             f"  data_dir: {tmp_path}/data\n  health_timeout: 10\n")
        done = subprocess.run(["bash", "redis.sbatch"], cwd=run, env=environment(run), capture_output=True, text=True,
                              timeout=60)
    assert done.returncode != 0
    said = next(line for line in done.stderr.splitlines() if "error:" in line)
    assert f"error: port {port} on {socket.gethostname()} is already in use (by another program or run)" in said, done.stderr
    assert "starting redis" not in done.stderr
