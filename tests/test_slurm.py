"""The SLURM backend without a cluster: what it asks squeue/sacct, how it reads the answers, and its timeouts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from compiler import slurm
from compiler.errors import ClusterError
from compiler.scheduler import JobState, Submission


class Commands:
    """Stands in for slurm.run_command: answers by program name, records every call."""

    def __init__(self, answers: dict[str, slurm.Answer]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, command, timeout, cwd=None, env=None) -> slurm.Answer:
        self.calls.append(list(command))
        key = command[0] + (" -c" if "-c" in command else "")
        return self.answers.get(key, slurm.Answer(0, "", ""))


@pytest.fixture
def commands(monkeypatch):
    def install(**answers: tuple[int, str, str]) -> Commands:
        fake = Commands({key.replace("_c", " -c"): slurm.Answer(*value) for key, value in answers.items()})
        monkeypatch.setattr(slurm, "run_command", fake)
        monkeypatch.setattr(slurm.SlurmScheduler, "_completion_file_only", None)
        return fake
    return install


def test_one_squeue_call_for_every_job(commands):
    fake = commands(squeue=(0, "5|RUNNING|node07|1:02|0|\n6|PENDING|||0|\n7|CANCELLED|node07|0:07|15|\n", ""))
    states = slurm.SlurmScheduler(timeout=1).poll("5", "6", "7")
    assert states == {"5": JobState("RUNNING", "node07", "1:02", "0:0"), "6": JobState("PENDING", "", "", "0:0"),
                      "7": JobState("CANCELLED", "node07", "0:07", "0:15")}
    assert [call[0] for call in fake.calls] == ["squeue"]
    assert "5,6,7" in fake.calls[0] and "all" in fake.calls[0]


def test_one_sacct_call_for_the_jobs_squeue_forgot(commands):
    fake = commands(squeue=(0, "5|RUNNING|n|1:02|0|\n", ""),
                    sacct=(0, "6|COMPLETED|0:0|n|00:00:30\n7|FAILED|3:0|n|00:00:02\n", ""))
    states = slurm.SlurmScheduler(timeout=1).poll("5", "6", "7", "8")
    assert states["6"] == JobState("COMPLETED", "n", "00:00:30", "0:0") and states["7"].state == "FAILED"
    assert states["8"].state == "UNKNOWN"
    assert [call[0] for call in fake.calls] == ["squeue", "sacct"] and "6,7,8" in fake.calls[1]


def test_job_completion_file_when_there_is_no_slurmdbd_is_learnt_once(commands):
    row = "6|CANCELLED by 0|0:0|node07|2026-11-25T15:16:11|2026-11-25T16:17:12\n"
    fake = commands(squeue=(1, "", "slurm_load_jobs error: Invalid job id specified"),
                    sacct=(1, "", "Slurm accounting storage is disabled"), sacct_c=(0, row, ""))
    scheduler = slurm.SlurmScheduler(timeout=1)
    assert scheduler.poll("6") == {"6": JobState("CANCELLED", "node07", "01:01:01", "0:0")}
    fake.calls.clear()
    scheduler.poll("6")
    assert [" ".join(call[:2]) for call in fake.calls] == ["squeue -h", "sacct -c"]   # one sacct per refresh


def test_a_failing_squeue_is_an_error_not_a_forgotten_job(commands):
    commands(squeue=(1, "", "slurm_load_jobs error: Unable to contact slurm controller"))
    with pytest.raises(ClusterError, match=r"squeue failed: .*Unable to contact"):
        slurm.SlurmScheduler(timeout=1).poll("5")


def test_ids_that_are_not_digits_never_reach_slurm(commands):
    fake = commands()
    for method in ("poll", "cancel"):
        with pytest.raises(ClusterError, match="digits only"):
            getattr(slurm.SlurmScheduler(timeout=1), method)("5", "--name=victim")
    assert fake.calls == []


def test_sbatch_must_answer_a_job_id(commands, tmp_path):
    commands(sbatch=(0, "Submitted batch job 5\n", ""))
    with pytest.raises(ClusterError, match="not a job id"):
        slurm.SlurmScheduler(timeout=1).submit(Submission(tmp_path / "a.sbatch", tmp_path))


def test_sbatch_arguments_carry_ids_and_never_the_run_folder(commands, tmp_path):
    fake = commands(sbatch=(0, "12;cluster\n", ""))
    folder = tmp_path / "x,LD_PRELOAD=evil"
    job_id = slurm.SlurmScheduler(timeout=1).submit(
        Submission(folder / "bench.sbatch", folder, ("11",), (("ORCHC_TARGET_JOB_ID", "11"),)))
    assert job_id == "12"
    assert fake.calls == [["sbatch", "--parsable", "--dependency=after:11", "--export=ALL,ORCHC_TARGET_JOB_ID=11",
                           "bench.sbatch"]]


def test_an_export_value_that_sbatch_would_split_is_refused(commands, tmp_path):
    commands()
    with pytest.raises(ClusterError, match="--export"):
        slurm.SlurmScheduler(timeout=1).submit(Submission(tmp_path / "a.sbatch", tmp_path, (), (("X", "a,B=c"),)))


def fake_program(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/bash\n{body}\n")
    (folder / name).chmod(0o755)


def test_a_command_that_hangs_is_killed_with_its_children_at_the_timeout(tmp_path, monkeypatch):
    fake_program(tmp_path / "bin", "squeue", f"sleep 30 & echo $! >{tmp_path}/child; wait")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    start = time.monotonic()
    with pytest.raises(ClusterError, match=r"squeue did not answer within 0.5 s"):
        slurm.run_command(["squeue", "-h"], 0.5)
    assert time.monotonic() - start < 5
    child = int((tmp_path / "child").read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_a_missing_or_unrunnable_program_is_a_cluster_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterError, match="sacct not found on PATH"):
        slurm.run_command(["sacct"], 1)
    (tmp_path / "sacct").write_text("#!/nonexistent/interpreter\n")
    (tmp_path / "sacct").chmod(0o755)
    with pytest.raises(ClusterError, match="cannot run sacct"):
        slurm.run_command(["sacct"], 1)


@pytest.mark.parametrize("value", ["abc", "-1", "0"])
def test_a_bad_timeout_setting_is_named(monkeypatch, value):
    monkeypatch.setenv(slurm.TIMEOUT_VARIABLE, value)
    with pytest.raises(ClusterError, match=slurm.TIMEOUT_VARIABLE):
        slurm.command_timeout()


@pytest.mark.parametrize("raw,state", [("COMPLETING", "RUNNING"), ("CONFIGURING", "PENDING"), ("OUT_OF_MEMORY", "FAILED"),
                                       ("TIMEOUT", "TIMEOUT"), ("CANCELLED+", "CANCELLED"), ("", "UNKNOWN")])
def test_states_map_to_the_lifecycle(raw, state):
    assert slurm.normalize_state(raw) == state
