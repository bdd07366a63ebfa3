"""Where a job's state comes from once the queue has forgotten it (parsing only; the cluster tests run it for real)."""

from __future__ import annotations

import subprocess

import pytest

from compiler import slurm


def fake_run(outputs: dict[str, tuple[int, str]]):
    def run(command, cwd=None):
        code, out = outputs.get(command[0] + (" -c" if "-c" in command else ""), (0, ""))
        return subprocess.CompletedProcess(command, code, out, "")
    return run


def test_squeue_first(monkeypatch):
    monkeypatch.setattr(slurm, "_run", fake_run({"squeue": (0, "RUNNING|node07|1:02\n")}))
    assert slurm.job_state("5") == slurm.JobState("RUNNING", "node07", "1:02")


def test_scontrol_after_squeue(monkeypatch):
    line = "JobId=5 JobName=x JobState=CANCELLED Reason=None ExitCode=0:15 RunTime=00:00:07 NodeList=node07\n"
    monkeypatch.setattr(slurm, "_run", fake_run({"squeue": (0, ""), "scontrol": (0, line)}))
    assert slurm.job_state("5") == slurm.JobState("CANCELLED", "node07", "00:00:07", "0:15")


def test_job_completion_file_when_there_is_no_slurmdbd(monkeypatch):
    row = "5|CANCELLED by 0|0:0|node07|2026-11-25T15:16:11|2026-11-25T16:17:12\n"
    monkeypatch.setattr(slurm, "_run", fake_run({"squeue": (1, ""), "scontrol": (1, ""), "sacct": (1, ""), "sacct -c": (0, row)}))
    assert slurm.job_state("5") == slurm.JobState("CANCELLED", "node07", "01:01:01", "0:0")


@pytest.mark.parametrize("raw,state", [("COMPLETING", "RUNNING"), ("CONFIGURING", "PENDING"), ("OUT_OF_MEMORY", "FAILED"),
                                       ("TIMEOUT", "TIMEOUT"), ("CANCELLED+", "CANCELLED"), ("", "UNKNOWN")])
def test_states_map_to_the_lifecycle(raw, state):
    assert slurm.normalize_state(raw) == state
