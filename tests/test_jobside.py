"""Generated scripts at run time, outside SLURM: they are kind to a shared cluster and cannot orphan a process.

Each test compiles a small recipe for the local site and runs its scripts with bash, with
fake `squeue` programs on PATH that log every call (the count is what a busy slurmctld sees).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

NONCE = os.getpid() % 999000
PROBE = """\
type: jobside_probe
extends: service
fields:
  ports: {default: [9]}
  nonce: {type: integer, minimum: 0, maximum: 999999, default: 0}
container:
  command: sleep 3{{ '%06d' % nonce }}
phases:
  health_check: []
"""


# A fake clock for a job's own shell (read through BASH_ENV before the script): `sleep` returns at once and moves
# $SECONDS on by what it was asked for, so minutes of waiting take a moment, and FAKE_CLOCK tells the programs the
# job runs what time it is. Subshells (the job's watchers) sleep for real: they would spin otherwise.
FAKE_CLOCK = """\
fake_clock_tenths=0
sleep() {
    if [ "$BASHPID" != "$$" ]; then command sleep "$@"; return; fi
    local whole=${1%%.*} tenths=0
    case $1 in *.*) tenths=${1#*.}; tenths=${tenths:0:1} ;; esac
    fake_clock_tenths=$((fake_clock_tenths + 10#${whole:-0} * 10 + 10#$tenths))
    SECONDS=$((fake_clock_tenths / 10))
    export FAKE_CLOCK=$SECONDS
}
"""


def fake_clock(folder: Path) -> dict[str, str]:
    """The environment that puts a job's shell on FAKE_CLOCK."""
    (folder / "clock.sh").write_text(FAKE_CLOCK)
    return {"BASH_ENV": str(folder / "clock.sh")}


def compile_recipe(orchc, write, tmp_path: Path, recipe: str) -> Path:
    write("defs/probe.yaml", PROBE)
    result = orchc("compile", write("r.yaml", recipe), "--defs", "defs", "--site", "local", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    return tmp_path / "out" / "r"


def fake_squeue(folder: Path, answer: str) -> Path:
    """A `squeue` that logs each call (after `@SECONDS ` under the fake clock) and prints `answer` (empty: the job
    has left the queue)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "squeue"
    script.write_text(f"#!/bin/bash\necho \"${{FAKE_CLOCK:+@$FAKE_CLOCK }}$*\" >>{folder}/squeue.calls\nprintf '%s' {answer!r}\n")
    script.chmod(0o755)
    return bin_dir


def environment(run: Path, bin_dir: Path | None = None, **extra: str) -> dict[str, str]:
    path = f"{bin_dir}:{os.environ['PATH']}" if bin_dir else os.environ["PATH"]
    return {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run), "PATH": path, **extra}


def sleepers(nonce: int) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"^sleep 3{nonce:06d}$"], capture_output=True, text=True).stdout
    return found.split()


def test_a_waiting_client_asks_squeue_ever_more_rarely(orchc, write, tmp_path):
    """200 s of waiting, on the fake clock, for a service that never publishes its endpoint: squeue first after 5 s
    (at the first poll after it), then 10, 20, 40 s later, and then every 60 s: not every 5 s."""
    _, done = run_client_of_job_77(orchc, write, tmp_path, "  target_timeout: 200\n", squeue_answer="RUNNING",
                                   **fake_clock(tmp_path))
    assert done.returncode != 0 and "published no endpoint within 200 s" in done.stderr, done.stderr
    calls = [line.split(" ", 1) for line in (tmp_path / "squeue.calls").read_text().splitlines()]
    asked = [int(at[1:]) for at, args in calls if args == "-h -j 77 -o %T"]
    assert all(at.startswith("@") for at, _ in calls) and asked, calls
    gaps = [later - earlier for earlier, later in itertools.pairwise(asked)]
    # the backoff between two looks at the endpoint is at most 5 s: each time is due that much late at most
    assert 5 <= asked[0] <= 10, asked
    assert len(gaps) == 5 and all(abs(gap - want) <= 5 for gap, want in zip(gaps, [10, 20, 40, 60, 60])), asked


def test_a_killed_batch_shell_leaves_no_service_running(orchc, write, tmp_path):
    run = compile_recipe(orchc, write, tmp_path, f"service:\n  name: svc\n  type: jobside_probe\n  nonce: {NONCE}\n")
    service = subprocess.Popen(["bash", "svc.sbatch"], cwd=run, env=environment(run),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not sleepers(NONCE) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sleepers(NONCE), "the service never started"
        while not (run / "endpoints" / "svc").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        service.kill()  # SIGKILL: no trap runs in the batch shell
        service.wait()
        deadline = time.monotonic() + 15
        while sleepers(NONCE) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sleepers(NONCE) == [], "the service outlived its batch shell"
        assert not (run / "endpoints" / "svc").exists(), "the endpoint of a dead service was left for clients"
    finally:
        for pid in sleepers(NONCE):
            os.kill(int(pid), signal.SIGKILL)


@pytest.mark.slow
def test_a_service_stops_when_its_client_died_without_finishing(orchc, write, tmp_path):
    """The client left a `started` marker and then vanished from the queue (SIGKILL, node failure)."""
    run = compile_recipe(orchc, write, tmp_path, f"service:\n  name: svc\n  type: jobside_probe\n  nonce: {NONCE + 1}\n"
                         "client:\n  name: c\n  type: redis_client\n")
    (run / "done").mkdir()
    (run / "done" / "c.5.started").write_text("6\n")
    bin_dir = fake_squeue(tmp_path, "")
    env = environment(run, bin_dir, SLURM_JOB_ID="5", ORCHC_CLIENT_CHECK="2")
    done = subprocess.run(["bash", "svc.sbatch"], cwd=run, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "client c ended without finishing" in done.stderr
    assert sleepers(NONCE + 1) == []
    assert "-h -j 6 -o %T" in (tmp_path / "squeue.calls").read_text()


@pytest.mark.parametrize("mode,message", [("644", "must have mode 0600"), ("empty", "is empty")])
def test_an_unsafe_secret_file_stops_the_job_before_the_service_starts(orchc, write, tmp_path, mode, message):
    secret = tmp_path / "pw"
    secret.write_text("" if mode == "empty" else "hunter2\n")
    secret.chmod(0o644 if mode == "644" else 0o600)
    run = compile_recipe(orchc, write, tmp_path, f"site: local\nservice:\n  name: db\n  type: mysql\n"
                         f"  root_password: {{file: {secret}}}\n")
    done = subprocess.run(["bash", "db.sbatch"], cwd=run, env=environment(run), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert message in done.stderr
    assert "starting mysql" not in done.stderr
    assert "hunter2" not in done.stderr


def test_a_killed_client_batch_shell_leaves_no_benchmark_running(orchc, write, tmp_path):
    write("defs/bench.yaml", "type: jobside_bench\nextends: client\nfields:\n"
          "  nonce: {type: integer, minimum: 0, maximum: 999999, default: 0}\n"
          "phases:\n  health_check!: []\n  benchmark:\n    - sleep 3{{ '%06d' % nonce }}\n")
    run = compile_recipe(orchc, write, tmp_path, f"client:\n  name: c\n  type: jobside_bench\n  nonce: {NONCE + 2}\n"
                         "  target_endpoint: '127.0.0.1:9'\n")
    client = subprocess.Popen(["bash", "c.sbatch"], cwd=run, env=environment(run),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not sleepers(NONCE + 2) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sleepers(NONCE + 2), "the benchmark never started"
        client.kill()
        client.wait()
        deadline = time.monotonic() + 15
        while sleepers(NONCE + 2) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sleepers(NONCE + 2) == [], "the benchmark outlived its batch shell"
    finally:
        for pid in sleepers(NONCE + 2):
            os.kill(int(pid), signal.SIGKILL)


def run_client_of_job_77(orchc, write, tmp_path: Path, client_lines: str, squeue_answer: str,
                         **extra: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A redis client of service svc (SLURM job 77, as squeue answers), run under bash with `extra` in its
    environment: (run folder, its run)."""
    run = compile_recipe(orchc, write, tmp_path, "service:\n  name: svc\n  type: jobside_probe\n"
                         "client:\n  name: c\n  type: redis_client\n" + client_lines)
    bin_dir = fake_squeue(tmp_path, squeue_answer)
    done = subprocess.run(["bash", "c.sbatch"], cwd=run, env=environment(run, bin_dir, ORCHC_TARGET_JOB_ID="77", **extra),
                          capture_output=True, text=True, timeout=60)
    return run, done


def test_a_client_that_fails_before_finding_its_service_still_releases_it(orchc, write, tmp_path):
    run, done = run_client_of_job_77(orchc, write, tmp_path, "  target_timeout: 1\n", squeue_answer="RUNNING",
                                   **fake_clock(tmp_path))
    assert done.returncode != 0
    assert "published no endpoint within 1 s" in done.stderr
    assert (run / "done" / "c.77").exists(), "the service would wait for this client until its time limit"


def test_a_client_whose_service_left_the_queue_names_the_services_log_by_its_path(orchc, write, tmp_path):
    run, done = run_client_of_job_77(orchc, write, tmp_path, "", squeue_answer="", **fake_clock(tmp_path))
    assert done.returncode != 0
    said = next(line for line in done.stderr.splitlines() if "ended without publishing an endpoint" in line)
    assert "error: the client stopped in target: service svc (job 77) ended" in said, said
    assert said.endswith(f"; why is in its log, {run}/slurm-77.err"), said  # not "see its slurm-77.err in target"
