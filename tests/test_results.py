"""results.json, the one shape every client's results take, and job states that agree with it.

Each test compiles a probe client for the local site and runs its script with bash outside SLURM:
the probe's benchmark sleeps or fails as the recipe says, and its results phase writes metrics.json
and calls orchc_results, as the built-in clients do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import runtime_into

PROBE = """\
type: results_probe
extends: client
fields:
  sleep: {type: integer, minimum: 0, default: 0}
  fail: {type: integer, minimum: 0, default: 0}
  metrics: {type: string, multiline: true, default: '{"done_count": 7, "latency_p50_ms": 1.5, "missing_ms": null}'}
  note: {type: string, default: "plain"}
phases:
  health_check: []
  benchmark:
    - echo started >"$ORCHC_RESULTS/log.txt"
    - orchc_parameter transport "{{ note }}"
    - sleep {{ sleep }}
    - "[ {{ fail }} -eq 0 ]"
  results:
    - printf '%s\\n' {{ metrics }} >"$ORCHC_RESULTS/metrics.json"
    - |-
      printf '{"server_version": "1.2.3", "gpus": 0}\\n' >"$ORCHC_RESULTS/environment.json"
    - orchc_results probe-tool
"""


ORCHC_OWN = {"orchc_cpu_s", "orchc_window_s", "orchc_cpu_percent"}


def theirs(metrics: dict) -> dict:
    """The metrics the type's results phase wrote: without orchc's own (its CPU during the benchmark window)."""
    return {name: value for name, value in metrics.items() if name not in ORCHC_OWN}


def run_probe(orchc, write, tmp_path: Path, fields: str = "", stop_with: signal.Signals | None = None,
              duration: int = 60) -> tuple[subprocess.CompletedProcess[str], dict, float]:
    write("defs/probe.yaml", PROBE)
    recipe = write("r.yaml", "client:\n  name: c\n  type: results_probe\n  target_endpoint: '127.0.0.1:9'\n"
                   f"  duration: {duration}\n{fields}")
    compiled = orchc("compile", recipe, "--defs", "defs", "--site", "local", "-o", "out", cwd=tmp_path)
    assert compiled.code == 0, compiled.err
    run = tmp_path / "run"
    runtime_into(run, tmp_path / "out" / "r")
    env = {**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run)}
    started = time.monotonic()
    process = subprocess.Popen(["bash", str(tmp_path / "out" / "r" / "c.sbatch")], env=env, cwd=run,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if stop_with is not None:
        deadline = time.monotonic() + 20
        while not (run / "results" / "c" / "log.txt").exists():
            assert time.monotonic() < deadline, "the benchmark never started"
            time.sleep(0.05)
        process.send_signal(stop_with)
    out, err = process.communicate(timeout=60)
    elapsed = time.monotonic() - started
    done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    results = run / "results" / "c" / "results.json"
    assert results.is_file(), err
    return done, json.loads(results.read_text()), elapsed


def test_a_complete_run_has_the_documented_shape(orchc, write, tmp_path):
    ran, data, _ = run_probe(orchc, write, tmp_path, "  note: \"it's $HOME `id`\"\n")
    assert ran.returncode == 0, ran.stderr
    assert data["schema"] == "orchc-results/1" and data["tool"] == "probe-tool"
    assert (data["job"], data["type"], data["run"]) == ("c", "results_probe", "run")
    assert (data["status"], data["partial"], data["stopped_by"], data["error"]) == ("complete", False, None, None)
    assert theirs(data["metrics"]) == {"done_count": 7, "latency_p50_ms": 1.5, "missing_ms": None}
    # orchc's own CPU in the benchmark window, added to every client's metrics
    assert set(data["metrics"]) - set(theirs(data["metrics"])) == ORCHC_OWN
    assert 0 <= data["metrics"]["orchc_cpu_s"] <= data["metrics"]["orchc_window_s"] < 10, data["metrics"]
    assert data["environment"]["reported"] == {"server_version": "1.2.3", "gpus": 0}
    assert data["environment"]["node"] and data["environment"]["images"] is None
    assert data["parameters"]["note"] == "it's $HOME `id`"           # as written: never expanded
    assert data["parameters"]["duration"] == 60 and data["parameters"]["sleep"] == 0
    assert data["parameters"]["transport"] == "it's $HOME `id`"      # learnt as the job ran (orchc_parameter)
    assert data["raw"] == ["log.txt"]


def test_a_client_stopped_by_its_duration_keeps_partial_results_and_completes(orchc, write, tmp_path):
    ran, data, elapsed = run_probe(orchc, write, tmp_path, "  sleep: 30\n", duration=2)
    assert ran.returncode == 0, ran.stderr
    assert elapsed < 15, f"the benchmark ran {elapsed:.1f} s past a duration of 2 s"
    assert (data["status"], data["partial"], data["stopped_by"]) == ("partial", True, "duration")
    assert data["metrics"]["done_count"] == 7
    assert "duration of 2 s reached" in ran.stderr, ran.stderr
    assert "command failed" not in ran.stderr and "Killed" not in ran.stderr, ran.stderr


def test_a_client_stopped_by_its_time_limit_signal_completes_with_partial_results(orchc, write, tmp_path):
    ran, data, _ = run_probe(orchc, write, tmp_path, "  sleep: 30\n", stop_with=signal.SIGUSR1)
    assert ran.returncode == 0, ran.stderr
    assert (data["status"], data["partial"], data["stopped_by"]) == ("partial", True, "time_limit")
    assert data["metrics"]["done_count"] == 7


def test_a_cancelled_client_says_so_and_fails(orchc, write, tmp_path):
    ran, data, _ = run_probe(orchc, write, tmp_path, "  sleep: 30\n", stop_with=signal.SIGTERM)
    assert ran.returncode == 143
    assert (data["status"], data["stopped_by"]) == ("partial", "SIGTERM")


def test_a_failing_benchmark_is_reported_in_results_json_too(orchc, write, tmp_path):
    ran, data, _ = run_probe(orchc, write, tmp_path, "  fail: 1\n")
    assert ran.returncode != 0
    assert (data["status"], data["partial"], data["stopped_by"]) == ("failed", False, None)
    assert "[ 1 -eq 0 ]" in data["error"] and "in phase benchmark at " in data["error"], data["error"]
    assert data["metrics"]["done_count"] == 7                           # what it measured is kept


def test_a_client_that_fails_before_its_benchmark_still_writes_results_json(orchc, write, tmp_path):
    write("defs/early.yaml", "type: early_probe\nextends: client\nphases:\n  health_check:\n"
                             "    - orchc_fail \"no service here\"\n")
    recipe = write("e.yaml", "client:\n  name: c\n  type: early_probe\n  target_endpoint: '127.0.0.1:9'\n")
    assert orchc("compile", recipe, "--defs", "defs", "--site", "local", "-o", "out", cwd=tmp_path).code == 0
    run = tmp_path / "run"
    runtime_into(run, tmp_path / "out" / "e")
    ran = subprocess.run(["bash", str(tmp_path / "out" / "e" / "c.sbatch")], capture_output=True, text=True,
                         env={**os.environ, "ORCHC_RUN_DIR": str(run), "HOME": str(run)}, cwd=run, timeout=60)
    assert ran.returncode == 1
    data = json.loads((run / "results" / "c" / "results.json").read_text())
    assert data["status"] == "failed" and data["tool"] is None and data["metrics"] == {}
    assert data["error"].startswith("no service here in phase health_check at "), data["error"]


@pytest.mark.parametrize("metrics", [
    '{"a_ms": {"nested": 1}}', '{"a_ms": "fast"}', '{"a_ms": 1} trailing', '[1, 2]', '{"a_ms": NaN}',
    '{"a_ms": 1,}', '{a_ms: 1}', '{"a_ms": 01}', '',
])
def test_metrics_that_are_not_a_flat_object_of_numbers_fail_the_job(orchc, write, tmp_path, metrics):
    ran, data, _ = run_probe(orchc, write, tmp_path, f"  metrics: {json.dumps(metrics)}\n")
    assert ran.returncode == 1
    assert data["status"] == "failed" and theirs(data["metrics"]) == {}
    assert "metrics.json is not a flat JSON object of numbers" in data["error"]


@pytest.mark.parametrize("metrics", ['{}', '{ "a.b_ms" : -1.5e-3 ,\t"c_count":0, "d\\"q\\u00e9_s": null }'])
def test_flat_objects_of_numbers_are_kept_exactly(orchc, write, tmp_path, metrics):
    ran, data, _ = run_probe(orchc, write, tmp_path, f"  metrics: {json.dumps(metrics)}\n")
    assert ran.returncode == 0, ran.stderr
    assert theirs(data["metrics"]) == json.loads(metrics)
