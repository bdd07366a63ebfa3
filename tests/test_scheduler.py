"""The run side (compiler/run/runs.py and the run commands) against the in-process fake scheduler: no SLURM needed."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from compiler.core.errors import ClusterError
from compiler.output.pipeline import Options, compile_all
from compiler.output.plan import read_plan
from compiler.run import runs
from compiler.run.scheduler import FakeScheduler, register_scheduler

RECIPE = ("site: local\nservices:\n  - name: cache\n    type: redis\n  - name: db\n    type: redis\n    ports: [6380]\n"
          "clients:\n  - name: load\n    type: redis_client\n    target: db\n  - name: bench\n    type: redis_client\n"
          "    target: cache\n")


@pytest.fixture
def fake(monkeypatch) -> FakeScheduler:
    scheduler = FakeScheduler()
    register_scheduler("fake")(lambda: scheduler)
    monkeypatch.setenv(runs.SCHEDULER_VARIABLE, "fake")
    return scheduler


@pytest.fixture
def output(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    (compiled,) = compile_all([tmp_path / "r.yaml"], Options())
    return compiled


def test_submit_follows_the_manifest_services_first_clients_after_their_target(fake, output, tmp_path):
    run = runs.submit(output, tmp_path / "run", fake)
    assert [(job.name, job.slurm_id) for job in run.jobs] == [("cache", "1000"), ("db", "1001"), ("load", "1002"),
                                                              ("bench", "1003")]
    assert fake.dependencies("1002") == ("1001",) and fake.dependencies("1003") == ("1000",)
    assert fake.environment("1003") == {"ORCHC_TARGET_JOB_ID": "1000"} and fake.environment("1000") == {}
    assert {job.job.cwd for job in fake.jobs.values()} == {(tmp_path / "run").resolve()}
    assert [step.name for step in read_plan(tmp_path / "run").steps] == [job.name for job in run.jobs]
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["state"] == "submitted" and saved["scheduler"] == "fake"


def test_run_json_is_saved_after_every_submit(fake, output, tmp_path, monkeypatch):
    seen: list[list[str]] = []
    fake.on_submit = lambda job_id: seen.append(
        [job["slurm_id"] for job in json.loads((tmp_path / "run" / "run.json").read_text())["jobs"]])
    runs.submit(output, tmp_path / "run", fake)
    assert seen == [[], ["1000"], ["1000", "1001"], ["1000", "1001", "1002"]]   # each id on disk before the next submit


@pytest.mark.parametrize("failure", ["submit", "save", "interrupt", "bug"])
def test_any_failure_cancels_everything_submitted_and_records_why(fake, output, tmp_path, monkeypatch, failure):
    saves = {"count": 0}
    real_save = runs.save_run

    def save(run_dir: Path, run: runs.Run) -> None:
        saves["count"] += 1
        if saves["count"] == 3 and failure != "submit":   # after the second job's id came back
            raise {"save": OSError(28, "No space left on device", str(run_dir / "run.json")),
                   "interrupt": KeyboardInterrupt(), "bug": TypeError("a bug")}[failure]
        real_save(run_dir, run)

    monkeypatch.setattr(runs, "save_run", save)
    fake.fail_submit = {"load.sbatch": "Invalid partition"} if failure == "submit" else {}
    expected = {"submit": ClusterError, "save": ClusterError, "interrupt": runs.Interrupted, "bug": TypeError}[failure]
    with pytest.raises(expected) as raised:
        runs.submit(output, tmp_path / "run", fake)
    assert all(job.state == "CANCELLED" for job in fake.jobs.values())
    cancelled = [args for method, args in fake.calls if method == "cancel"]
    assert len(cancelled) == 1 and set(cancelled[0]) == set(fake.jobs)
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["state"] == "failed"
    reason = {"submit": "Invalid partition", "save": "No space left", "interrupt": "SIGINT", "bug": "a bug"}[failure]
    assert reason in saved["error"]
    if expected is not TypeError:
        assert str(raised.value).startswith("submit load.sbatch failed: Invalid partition" if failure == "submit"
                                            else ("cannot save" if failure == "save" else "submit interrupted by SIGINT"))
    _, reloaded = runs.load_run(str(tmp_path / "run"))
    assert reloaded.state == "failed"


def test_a_failed_cancel_never_hides_the_original_error(fake, output, tmp_path):
    fake.fail_submit = {"bench.sbatch": "QOS limit"}
    fake.fail_cancel = "controller down"
    with pytest.raises(ClusterError) as raised:
        runs.submit(output, tmp_path / "run", fake)
    message = str(raised.value)
    assert message.startswith("submit bench.sbatch failed: QOS limit")
    assert "could not cancel" in message and "scancel 1000 1001 1002" in message


def test_an_unwritable_run_json_names_the_jobs_to_cancel(fake, output, tmp_path, monkeypatch):
    def save(run_dir: Path, run: runs.Run) -> None:
        if run.jobs:
            raise OSError(30, "Read-only file system", str(run_dir / "run.json"))
        runs.write_atomic(run_dir / runs.RUN_FILE, run.to_json())

    monkeypatch.setattr(runs, "save_run", save)
    with pytest.raises(ClusterError, match=r"could not record the failure in .*run.json.*submitted SLURM job\(s\) 1000"):
        runs.submit(output, tmp_path / "run", fake)
    assert fake.jobs["1000"].state == "CANCELLED" and len(fake.jobs) == 1


def test_an_existing_run_folder_is_refused_before_anything_is_submitted(fake, output, tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ClusterError, match="already exists"):
        runs.submit(output, tmp_path / "run", fake)
    assert fake.calls == []


def test_status_polls_once_per_refresh(fake, output, tmp_path, orchc):
    runs.submit(output, tmp_path / "run", fake)
    fake.advance("1000", "RUNNING")
    fake.calls.clear()
    result = orchc("status", tmp_path / "run", "--json")
    assert result.code == 0, result.err
    assert [method for method, _ in fake.calls] == ["poll"]
    states = {row["job"]: row["state"] for row in json.loads(result.out)["jobs"]}
    assert states == {"cache": "RUNNING", "db": "PENDING", "load": "PENDING", "bench": "PENDING"}


def test_watch_ends_when_every_job_ended(fake, output, tmp_path, orchc):
    runs.submit(output, tmp_path / "run", fake)
    for job_id in fake.jobs:
        fake.advance(job_id, "COMPLETED")
    result = orchc("status", tmp_path / "run", "--watch", "--interval", "0")
    assert result.code == 0 and result.out.count("COMPLETED") == 4


def test_watch_gives_up_on_a_job_the_scheduler_forgot(fake, output, tmp_path, orchc):
    runs.submit(output, tmp_path / "run", fake)
    fake.forget("1001")
    result = orchc("status", tmp_path / "run", "--watch", "--interval", "0.01", "--unknown-limit", "0.1")
    assert result.code == 1
    assert "job db (SLURM job 1001) has been in state UNKNOWN" in result.err


def test_a_hanging_scheduler_is_a_clear_error(fake, output, tmp_path, orchc):
    runs.submit(output, tmp_path / "run", fake)
    fake.hang.add("poll")
    result = orchc("status", tmp_path / "run")
    assert result.code == 1 and result.err.startswith("orchc: error: fake poll did not answer")
    result = orchc("results", tmp_path / "run", "--csv")       # results stay readable without job states
    assert result.code == 0 and "warning: job states unknown" in result.err


def test_cancel_by_name(fake, output, tmp_path, orchc):
    runs.submit(output, tmp_path / "run", fake)
    result = orchc("cancel", tmp_path / "run", "bench", "load")
    assert result.code == 0 and "1003, 1002" in result.out
    assert fake.jobs["1003"].state == "CANCELLED" and fake.jobs["1000"].state == "PENDING"
    result = orchc("cancel", tmp_path / "run", "nosuch")
    assert result.code == 1 and "no job nosuch in this run" in result.err


def test_results_beside_states_while_clients_run(fake, output, tmp_path, orchc):
    runs.submit(output, tmp_path / "run", fake)
    fake.advance("1003", "RUNNING")
    folder = tmp_path / "run" / "results" / "bench"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text('{"tests": {"GET": {"rps": 5.5}}, "partial": true')   # mid-write
    result = orchc("results", tmp_path / "run", "--csv")
    rows = list(csv.reader(io.StringIO(result.out)))
    assert ["run", "", "", "load", "1002", "redis_client", "PENDING", "", "-", "no results", "", ""] in rows
    assert any(row[3:7] == ["bench", "1003", "redis_client", "RUNNING"] and row[8] == "error"
               and "still being written" in row[9] for row in rows)
    (folder / "results.json").write_text('{"tests": {"GET": {"rps": 5.5}}, "partial": true}')
    (folder / "stopped").write_text("SIGUSR1\n")
    data = json.loads(orchc("results", tmp_path / "run", "--json").out)
    assert data["bench"] == {"tests": {"GET": {"rps": 5.5}}, "partial": True, "stopped_by": "SIGUSR1",
                             "job_state": "RUNNING"}
    assert data["load"] == {"job_state": "PENDING"}


@pytest.mark.parametrize("marker", [b"SIGUSR1\n", b"\xff\xfe", b"x" * 10_000, b"$(reboot)"])
def test_a_stopped_marker_is_shown_only_when_it_is_one_word(fake, tmp_path, marker):
    folder = tmp_path / "results" / "bench"
    folder.mkdir(parents=True)
    (folder / "stopped").write_bytes(marker)
    shown = runs._client_results(tmp_path, "results/bench")["stopped_by"]
    assert shown == ("SIGUSR1" if marker == b"SIGUSR1\n" else "(unreadable marker)")


def test_a_fifo_marker_is_not_waited_on(tmp_path):
    folder = tmp_path / "results" / "bench"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "stopped")
    os.mkfifo(folder / "results.json")
    data = runs._client_results(tmp_path, "results/bench")
    assert data["stopped_by"] == "(unreadable marker)" and "not a regular file" in data["error"]


@pytest.mark.parametrize("change,message", [
    ({"state": "weird"}, "unknown state"),
    ({"jobs": [{"name": "a", "role": "client", "slurm_id": "12 13"}]}, "not a job id"),
    ({"jobs": [{"name": "../etc", "role": "client", "slurm_id": "12"}]}, "no valid name"),
    ({"jobs": [{"name": "a", "role": "admin", "slurm_id": "12"}]}, "role"),
    ({"jobs": [{"name": "a", "role": "client", "slurm_id": "1"}, {"name": "a", "role": "client", "slurm_id": "2"}]},
     "same name"),
    ({"scheduler": "--evil"}, "scheduler is not a name"),
])
def test_run_json_is_validated(change, message):
    data = {"recipe": "r", "state": "submitted", "jobs": [], **change}
    with pytest.raises(ClusterError, match=message):
        runs.parse_run(json.dumps(data), "run.json")
