"""The run side end to end through the CLI, against fake SLURM programs on PATH (no cluster needed).

Each fake program logs its arguments (one call per line) to calls.log, so a test can count
how many SLURM commands a command ran and check what reached them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

ME = __import__("pwd").getpwuid(os.geteuid()).pw_name

FAKE = r"""#!/bin/bash
# fake {name}: log the call, then behave as told by files in $FAKE_SLURM
log="$FAKE_SLURM/calls.log"
printf '%s\t%s\t%s\n' "{name}" "$PWD" "$*" >>"$log"
if [ -f "$FAKE_SLURM/{name}.sleep" ]; then sleep "$(cat "$FAKE_SLURM/{name}.sleep")"; fi
{body}
"""
BODIES = {
    "sbatch": r"""
script="${@: -1}"
if [ -f "$FAKE_SLURM/sbatch.fail.$script" ]; then echo "sbatch: error: Batch job submission failed: $(cat "$FAKE_SLURM/sbatch.fail.$script")" >&2; exit 1; fi
if [ -f "$FAKE_SLURM/sbatch.signal.$script" ]; then kill -"$(cat "$FAKE_SLURM/sbatch.signal.$script")" "$PPID"; fi
n=$(( $(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100) + 1 )); echo "$n" >"$FAKE_SLURM/next"
printf '%s\n' "$*" >"$FAKE_SLURM/sbatch.args.$n"; env | grep '^ORCHC_' | sort >"$FAKE_SLURM/sbatch.env.$n" || true
echo "$n"
""",
    "squeue": r"""cat "$FAKE_SLURM/squeue.out" 2>/dev/null; exit 0""",
    "scontrol": r"""exit 1""",
    "sacct": r"""cat "$FAKE_SLURM/sacct.out" 2>/dev/null; exit 0""",
    "scancel": r"""if [ -f "$FAKE_SLURM/scancel.fail" ]; then echo "scancel: error: $(cat "$FAKE_SLURM/scancel.fail")" >&2; exit 1; fi; exit 0""",
}


class FakeSlurm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        for name, body in BODIES.items():
            path = self.bin / name
            path.write_text(FAKE.replace("{name}", name).replace("{body}", body))
            path.chmod(0o755)

    def set(self, name: str, text: str) -> None:
        (self.root / name).write_text(text)

    def calls(self, program: str | None = None) -> list[tuple[str, str, str]]:
        log = self.root / "calls.log"
        rows = [tuple(line.split("\t")) for line in log.read_text().splitlines()] if log.exists() else []
        return [row for row in rows if program is None or row[0] == program]  # type: ignore[misc]

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}", "FAKE_SLURM": str(self.root),
                "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture
def slurm(tmp_path: Path) -> FakeSlurm:
    return FakeSlurm(tmp_path / "fake")


def orchc(slurm: FakeSlurm, *args: object, cwd: Path, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compiler", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=slurm.env(**env))


RECIPE = "site: local\nservice:\n  name: redis\nclient:\n  name: bench\n  type: redis_client\n"


def submitted_run(slurm: FakeSlurm, tmp_path: Path, run_dir: str = "run") -> Path:
    (tmp_path / "r.yaml").write_text(RECIPE)
    done = orchc(slurm, "submit", "r.yaml", "--run-dir", run_dir, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / run_dir


def write_run(folder: Path, jobs: list[dict], **extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    run = {"recipe": "r", "site": "local", "created": "2026-01-01T00:00:00Z", "run_dir": str(folder),
           "state": "submitted", "error": None, "jobs": jobs, **extra}
    (folder / "run.json").write_text(json.dumps(run))
    return folder


def job(name: str, slurm_id: str, role: str = "client") -> dict:
    return {"name": name, "type": "redis_client", "role": role, "target": None, "script": f"{name}.sbatch",
            "slurm_id": slurm_id, "submitted": "2026-01-01T00:00:00Z"}


# --- section 6: no hang, no traceback -------------------------------------------------------------

def test_a_hanging_squeue_is_a_clear_error_within_its_timeout(slurm, tmp_path):
    run = write_run(tmp_path / "run", [job("bench", "7")])
    slurm.set("squeue.sleep", "30")
    start = time.monotonic()
    done = orchc(slurm, "status", run, cwd=tmp_path, timeout=20, ORCHC_SLURM_TIMEOUT="1")
    assert time.monotonic() - start < 8
    assert done.returncode == 1
    assert done.stderr.startswith("orchc: error: squeue") and "did not answer within 1 s" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_slurm_program_is_named(slurm, tmp_path):
    run = write_run(tmp_path / "run", [job("bench", "7")])
    (slurm.bin / "squeue").unlink()
    done = orchc(slurm, "status", run, cwd=tmp_path, PATH=str(slurm.bin))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("orchc: error: squeue not found on PATH")


def test_status_asks_slurm_once_for_all_jobs(slurm, tmp_path):
    run = write_run(tmp_path / "run", [job("redis", "7", "service"), job("bench", "8"), job("other", "9")])
    slurm.set("squeue.out", "7|RUNNING|node1|1:00|0|||redis_0123abcd|\n")
    slurm.set("sacct.out", f"8|COMPLETED|0:0|node1|00:00:30||{ME}|bench_0123abcd\n9|FAILED|3:0|node1|00:00:02||{ME}|other_0123abcd\n")
    done = orchc(slurm, "status", run, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    states = {row["job"]: row["state"] for row in json.loads(done.stdout)["jobs"]}
    assert states == {"redis": "RUNNING", "bench": "COMPLETED", "other": "FAILED"}
    programs = [call[0] for call in slurm.calls()]
    assert programs.count("squeue") == 1 and programs.count("sacct") <= 1 and "scontrol" not in programs, programs


def test_watch_gives_up_on_a_job_that_stays_unknown(slurm, tmp_path):
    run = write_run(tmp_path / "run", [job("bench", "7")])
    done = orchc(slurm, "status", run, "--watch", "--interval", "0.05", "--unknown-limit", "0.3", cwd=tmp_path, timeout=20)
    assert done.returncode == 1, done.stderr
    assert "bench" in done.stderr and "UNKNOWN" in done.stderr and "Traceback" not in done.stderr


# --- section 6 / 6b: rollback and a transactional submit ------------------------------------------

def test_a_failed_sbatch_is_reported_first_even_when_rollback_scancel_fails(slurm, tmp_path):
    slurm.set("sbatch.fail.bench.sbatch", "Invalid partition name specified")
    slurm.set("scancel.fail", "slurmctld unreachable")
    (tmp_path / "r.yaml").write_text(RECIPE)
    done = orchc(slurm, "submit", "r.yaml", "--run-dir", "run", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("orchc: error: sbatch bench.sbatch failed: sbatch: error: Batch job submission failed: "
                                  "Invalid partition"), done.stderr
    assert "scancel" in done.stderr and "101" in done.stderr   # what could not be cancelled is named
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["state"] == "failed" and "Invalid partition" in recorded["error"]
    assert [call[2] for call in slurm.calls("scancel")] == ["--me 101"]
    assert orchc(slurm, "status", "run", cwd=tmp_path).returncode == 0     # every command reads it


@pytest.mark.parametrize("signal_name,code", [("INT", 130), ("TERM", 143)])
def test_a_signal_during_submit_cancels_what_was_submitted(slurm, tmp_path, signal_name, code):
    slurm.set("sbatch.signal.bench.sbatch", signal_name)
    (tmp_path / "r.yaml").write_text(RECIPE)
    done = orchc(slurm, "submit", "r.yaml", "--run-dir", "run", cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    submitted = sorted(path.name.rsplit(".", 1)[1] for path in slurm.root.glob("sbatch.args.*"))
    cancelled = [word for call in slurm.calls("scancel") for word in call[2].split() if word != "--me"]
    assert submitted and sorted(cancelled) == submitted
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["state"] == "failed" and "SIG" + signal_name in recorded["error"]


def test_run_json_that_cannot_be_saved_cancels_and_names_the_jobs(slurm, tmp_path):
    # the first sbatch turns run.json into a folder: every later save fails (like a full disk)
    (slurm.bin / "sbatch").write_text((slurm.bin / "sbatch").read_text().replace(
        'echo "$n"\n', 'rm -f run.json; mkdir -p run.json; echo "$n"\n'))
    (tmp_path / "r.yaml").write_text(RECIPE)
    done = orchc(slurm, "submit", "r.yaml", "--run-dir", "run", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "run.json" in done.stderr and "101" in done.stderr
    assert [call[2] for call in slurm.calls("scancel")] == ["--me 101"]
    assert len(slurm.calls("sbatch")) == 1                                  # nothing submitted after the failed save


def test_the_run_folder_never_reaches_sbatch_export(slurm, tmp_path):
    run = submitted_run(slurm, tmp_path, "runs/x,LD_PRELOAD=evil.so")
    assert (run / "run.json").exists()
    for args_file in slurm.root.glob("sbatch.args.*"):
        assert "LD_PRELOAD" not in args_file.read_text() and str(run) not in args_file.read_text()
    for call in slurm.calls("sbatch"):
        assert call[1] == str(run.resolve())           # submitted from the run folder: SLURM_SUBMIT_DIR
    env = (slurm.root / "sbatch.env.102").read_text()
    assert "ORCHC_RUN_DIR" not in env


def test_submit_and_submit_sh_run_the_same_sbatch_commands(slurm, tmp_path):
    run = submitted_run(slurm, tmp_path)
    by_orchc = [call[2] for call in slurm.calls("sbatch")]
    (slurm.root / "calls.log").unlink()
    (slurm.root / "next").write_text("100")
    done = subprocess.run(["bash", str(run / "submit.sh")], capture_output=True, text=True, env=slurm.env())
    assert done.returncode == 0, done.stderr
    assert [call[2] for call in slurm.calls("sbatch")] == by_orchc


# --- 6b: run.json and marker files are checked when read ------------------------------------------

def test_a_slurm_id_that_is_not_digits_never_reaches_scancel(slurm, tmp_path):
    run = write_run(tmp_path / "run", [job("bench", "--name=victim")])
    done = orchc(slurm, "cancel", run, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "slurm_id" in done.stderr and not slurm.calls("scancel")


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"jobs": [{"name": "a", "slurm_id": ""}]}', "\xff\xfe", "null"],
                         ids=["deeply-nested", "empty-id", "not-utf8", "null"])
def test_a_damaged_run_json_is_a_clear_error(slurm, tmp_path, text):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_bytes(text.encode("latin-1") if text == "\xff\xfe" else text.encode())
    for command in ("status", "cancel", "results"):
        done = orchc(slurm, command, "run", cwd=tmp_path)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("orchc: error: ") and "run.json" in done.stderr
    assert not slurm.calls("scancel")


@pytest.mark.parametrize("kind", ["binary", "directory"])
def test_a_strange_stopped_marker_does_not_crash_results(slurm, tmp_path, kind):
    run = write_run(tmp_path / "run", [job("bench", "7")])
    folder = run / "results" / "bench"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text('{"ok": 1}')
    if kind == "binary":
        (folder / "stopped").write_bytes(b"\xff\x00\xfe" * 10)
    else:
        (folder / "stopped").mkdir()
    done = orchc(slurm, "results", run, cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


# --- results while a client runs ------------------------------------------------------------------

def test_results_show_each_jobs_state_and_no_empty_row(slurm, tmp_path):
    run = write_run(tmp_path / "run", [job("redis", "7", "service"), job("bench", "8"), job("late", "9")])
    slurm.set("squeue.out", "7|RUNNING|n|1:00|0|||redis_0123abcd|\n8|RUNNING|n|0:30|0|||bench_0123abcd|\n"
              "9|PENDING||0:00|0|||late_0123abcd|\n")
    (run / "results" / "bench").mkdir(parents=True)
    (run / "results" / "bench" / "results.json").write_text('{"tests": {"SET": {"rps": 10}}}')
    done = orchc(slurm, "results", run, "--csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [line.split(",") for line in done.stdout.splitlines()]
    assert rows[0] == ["run", "point", "repeat", "job", "slurm_id", "type", "state", "status", "metric", "value",
                       "unit", "parameters"]
    assert ["run", "", "", "bench", "8", "redis_client", "RUNNING", "", "tests.SET.rps", "10", "", ""] in rows
    late = [row for row in rows if row[3] == "late"]
    assert late and late[0][6] == "PENDING" and late[0][9] == "no results"
    table = orchc(slurm, "results", run, cwd=tmp_path).stdout
    assert "no results yet" in table                                       # says why there is nothing yet


def test_booleans_print_as_true_and_false_in_every_format(slurm, tmp_path):
    run = write_run(tmp_path / "run", [job("bench", "8")])
    slurm.set("squeue.out", "8|RUNNING|n|0:30|0|||bench_0123abcd|\n")
    (run / "results" / "bench").mkdir(parents=True)
    (run / "results" / "bench" / "results.json").write_text('{"warm": true, "cold": false}')
    table = orchc(slurm, "results", run, cwd=tmp_path).stdout
    csv = orchc(slurm, "results", run, "--csv", cwd=tmp_path).stdout
    data = json.loads(orchc(slurm, "results", run, "--json", cwd=tmp_path).stdout)
    for text in (table, csv):
        assert "True" not in text and "False" not in text
        assert "true" in text and "false" in text
    assert data["bench"]["warm"] is True and data["bench"]["cold"] is False


def test_results_of_the_documented_shape_show_units_status_and_parameters(slurm, tmp_path):
    run = write_run(tmp_path / "run", [job("bench", "8")])
    slurm.set("squeue.out", "8|COMPLETED|n|0:30|0|||bench_0123abcd|\n")
    (run / "results" / "bench").mkdir(parents=True)
    shaped = {"schema": "orchc-results/1", "tool": "t", "status": "partial", "stopped_by": "duration", "error": None,
              "metrics": {"ttft_p99_ms": 12.5, "output_tokens_per_s": 300.0, "requests_ok_count": 9,
                          "wall_time_s": 2.0, "recall_at_10_ratio": 0.9},
              "parameters": {"concurrent": 4, "prompts": ["a, \"b\""]}}
    (run / "results" / "bench" / "results.json").write_text(json.dumps(shaped))
    table = orchc(slurm, "results", run, cwd=tmp_path).stdout
    assert re.search(r"ttft_p99_ms\s.*12\.5\s.*\bms\b", table) and re.search(r"output_tokens_per_s\s.*300\.0\s.*1/s", table)
    assert re.search(r"stopped_by\s.*duration", table) and "parameters" not in table
    rows = list(csv.reader(io.StringIO(orchc(slurm, "results", run, "--csv", cwd=tmp_path).stdout)))
    by_metric = {row[8]: row for row in rows[1:]}
    assert by_metric["requests_ok_count"][9:11] == ["9", "count"] and by_metric["wall_time_s"][10] == "s"
    assert by_metric["recall_at_10_ratio"][10] == "ratio" and by_metric["status"][9] == "partial"
    assert all(row[:8] == ["run", "", "", "bench", "8", "redis_client", "COMPLETED", "partial"] for row in rows[1:])
    assert all(json.loads(row[11]) == shaped["parameters"] for row in rows[1:])
