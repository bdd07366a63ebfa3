"""The SLURM backend without a cluster: what it asks squeue/sacct, how it reads the answers, and its timeouts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from compiler.core.errors import ClusterError
from compiler.output.plan import Submission
from compiler.run import slurm
from compiler.run.scheduler import JobState

ME = __import__("pwd").getpwuid(__import__("os").geteuid()).pw_name


class Commands:
    """Stands in for slurm.run_command: answers by program name, records every call."""

    def __init__(self, answers: dict[str, slurm.Answer]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []
        self.envs: list[dict[str, str] | None] = []

    def __call__(self, command, timeout, cwd=None, env=None) -> slurm.Answer:
        self.calls.append(list(command))
        self.envs.append(None if env is None else dict(env))
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
    assert states == {"5": JobState("RUNNING", "node07", "0:01:02", "0:0"), "6": JobState("PENDING", "", "", "0:0"),
                      "7": JobState("CANCELLED", "node07", "0:00:07", "0:15")}
    assert [call[0] for call in fake.calls] == ["squeue"]
    assert "5,6,7" in fake.calls[0] and "all" in fake.calls[0]


def test_one_sacct_call_for_the_jobs_squeue_forgot(commands):
    fake = commands(squeue=(0, "5|RUNNING|n|1:02|0|\n", ""),
                    sacct=(0, f"6|COMPLETED|0:0|n|00:00:30||{ME}|a_0123abcd\n7|FAILED|3:0|n|00:00:02||{ME}|b\n", ""))
    states = slurm.SlurmScheduler(timeout=1).poll("5", "6", "7", "8")
    assert states["6"] == JobState("COMPLETED", "n", "0:00:30", "0:0", name="a_0123abcd") and states["7"].state == "FAILED"
    assert states["8"].state == "UNKNOWN"
    assert [call[0] for call in fake.calls] == ["squeue", "sacct"] and "6,7,8" in fake.calls[1]


def test_job_completion_file_when_there_is_no_slurmdbd_is_learnt_once(commands):
    row = f"6|CANCELLED by 0|0:0|node07|2026-11-25T15:16:11|2026-11-25T16:17:12|{ME}(0)|a_0123abcd\n"
    fake = commands(squeue=(1, "", "slurm_load_jobs error: Invalid job id specified"),
                    sacct=(1, "", "Slurm accounting storage is disabled"), sacct_c=(0, row, ""))
    scheduler = slurm.SlurmScheduler(timeout=1)
    assert scheduler.poll("6") == {"6": JobState("CANCELLED", "node07", "1:01:01", "0:0",
                                                 start="2026-11-25T15:16:11Z", name="a_0123abcd")}
    fake.calls.clear()
    scheduler.poll("6")
    assert [" ".join(call[:2]) for call in fake.calls] == ["squeue --me", "sacct -c"]   # one sacct per refresh


def test_only_the_users_own_jobs_are_answered_for_with_their_names(commands):
    fake = commands(squeue=(0, "5|RUNNING|n|1:02|0|None|N/A|a|b_0123abcd|\n", ""),
                    sacct=(0, f"6|COMPLETED|0:0|n|00:00:30||{ME}|mine\n7|FAILED|3:0|n|00:00:02||not{ME}|theirs\n", ""))
    scheduler = slurm.SlurmScheduler(timeout=1)
    states = scheduler.poll("5", "6", "7")
    assert states["5"].name == "a|b_0123abcd" and states["6"].name == "mine"     # a name may hold a |
    assert states["7"].state == "UNKNOWN"                               # another user's job: nothing said of it
    assert fake.calls[0][:2] == ["squeue", "--me"]
    scheduler.cancel("5")
    assert fake.calls[-1] == ["scancel", "--me", "5"]


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


# squeue 22.05.8 on the test cluster, `-O` with this backend's format (TZ=UTC): a running job, one
# waiting for another, one held, one behind a job that has the node, one behind a higher priority,
# one cancelled while it waited (its StartTime is when it was cancelled), a job running for 2 days.
REAL_SQUEUE = """\
1387|RUNNING|vm|0:02|0|None|2026-11-26T17:27:26|
1388|PENDING||0:00|0|Dependency|N/A|
1389|PENDING||0:00|0|JobHeldUser|N/A|
1418|PENDING||0:00|0|Resources|2026-11-26T17:31:31|
1419|PENDING||0:00|0|Priority|2026-11-26T17:32:00|
1420|CANCELLED||0:00|0|Dependency|2026-11-26T17:27:28|
1421|RUNNING|vm|2-03:04:05|0|None|2026-11-24T14:23:21|
"""


def test_one_squeue_call_tells_why_a_job_waits_and_when_it_should_start(commands):
    fake = commands(squeue=(0, REAL_SQUEUE, ""))
    states = slurm.SlurmScheduler(timeout=1).poll("1387", "1388", "1389", "1418", "1419", "1420", "1421")
    assert states == {
        "1387": JobState("RUNNING", "vm", "0:00:02", "0:0", "", "2026-11-26T17:27:26Z"),
        "1388": JobState("PENDING", "", "0:00:00", "0:0", "Dependency", ""),
        "1389": JobState("PENDING", "", "0:00:00", "0:0", "JobHeldUser", ""),
        "1418": JobState("PENDING", "", "0:00:00", "0:0", "Resources", "2026-11-26T17:31:31Z"),
        "1419": JobState("PENDING", "", "0:00:00", "0:0", "Priority", "2026-11-26T17:32:00Z"),
        "1420": JobState("CANCELLED", "", "0:00:00", "0:0", "", ""),
        "1421": JobState("RUNNING", "vm", "51:04:05", "0:0", "", "2026-11-24T14:23:21Z"),
    }
    assert [call[0] for call in fake.calls] == ["squeue"]          # no second call for --start
    assert "Reason:|" in fake.calls[0][-1] and "StartTime:|" in fake.calls[0][-1]
    assert fake.envs[0] is not None and fake.envs[0]["TZ"] == "UTC" and fake.envs[0]["SLURM_TIME_FORMAT"] == "standard"


def test_the_five_field_answer_of_older_formats_still_reads(commands):
    commands(squeue=(0, "5|RUNNING|node07|1:02|0|\n", ""))
    assert slurm.SlurmScheduler(timeout=1).poll("5") == {"5": JobState("RUNNING", "node07", "0:01:02", "0:0")}


def test_sacct_with_slurmdbd_gives_the_start_in_the_same_format(commands):
    fake = commands(squeue=(0, "", ""), sacct=(0, f"6|COMPLETED|0:0|vm|1-00:00:30|2026-11-25T15:16:11|{ME}|x\n"
                                                  f"7|CANCELLED by 0|0:0|None assigned|00:00:00|None|{ME}|y\n", ""))
    states = slurm.SlurmScheduler(timeout=1).poll("6", "7")
    assert states["6"] == JobState("COMPLETED", "vm", "24:00:30", "0:0", start="2026-11-25T15:16:11Z", name="x")
    assert states["7"].state == "CANCELLED" and states["7"].start == "" and states["7"].elapsed == "0:00:00"
    assert "Elapsed,Start" in fake.calls[1][fake.calls[1].index("-o") + 1]


@pytest.mark.parametrize("raw,shown", [("0:00", "0:00:00"), ("1:02", "0:01:02"), ("59:59", "0:59:59"),
                                       ("1:00:00", "1:00:00"), ("00:00:30", "0:00:30"), ("1-02:03:04", "26:03:04"),
                                       ("12-00:00:00", "288:00:00"), ("INVALID", ""), ("UNLIMITED", ""), ("", "")])
def test_every_duration_is_shown_as_h_mm_ss(raw, shown):
    assert slurm.clock(raw) == shown


@pytest.mark.parametrize("raw,shown", [("2026-11-26T17:31:31", "2026-11-26T17:31:31Z"), ("N/A", ""), ("Unknown", ""),
                                       ("None", ""), ("Thu 17:31", "")])
def test_start_times_are_iso_8601_utc_or_unknown(raw, shown):
    assert slurm.utc_time(raw) == shown
