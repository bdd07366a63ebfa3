"""Generated jobs stop at the first failing command of any phase, say where it came from, and clean up.

Probe types (written into a `--defs` folder) log each phase line into a trace file; one line of one
phase fails. The script, run under bash with the local site, must then: exit non-zero; run nothing of
the type after the failing line (the trace ends there); log one line on stderr holding `error:`, the
phase, the type file and line the failing line came from (`defs/<type>.yaml:LINE`) and the failing
command; leave no process it started (the service's `sleep 300.<unique>`, a benchmark's background
sleep) running; and, for a client whose benchmark failed, still run its results phase.
A line that ends in `|| true` does not stop the job.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import runtime_into

TIMEOUT = 20
FAILING = {
    "false": "false",
    "substitution": "orchc_x=$(false)",
    "pipeline": "false | cat",
    "helper": "orchc_wait_tcp 127.0.0.1 9 1",
}
SERVICE_PHASES = ("setup", "health_check")
CLIENT_PHASES = ("setup", "health_check", "benchmark", "results")


def trace(label: str) -> str:
    return f"printf '%s\\n' {label} >>\"$ORCHC_RUN_DIR/trace\""


def _unique() -> str:
    return f"{random.randrange(10**6, 10**7)}"


@dataclass
class Ran:
    status: int | None
    err: str
    trace: list[str]
    timed_out: bool
    survivors: list[str]
    run_dir: Path


def _pids(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split() if int(pid) != os.getpid()]


def run_script(script: Path, tmp_path: Path, unique: str, extra_env: dict[str, str] | None = None) -> Ran:
    """Run a compiled script under bash; afterwards end (by pid) anything left running with our unique mark."""
    run_dir = tmp_path / "run"
    runtime_into(run_dir, script.parent)
    (tmp_path / "home").mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home"), "ORCHC_RUN_DIR": str(run_dir),
           "LANG": "C.UTF-8", **(extra_env or {})}
    # stdout/stderr go to files, not pipes: a process the job left behind must not keep us waiting
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as errors:
        process = subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=errors, start_new_session=True)
    timed_out = False
    try:
        process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    err = (tmp_path / "stderr").read_bytes()
    time.sleep(0.1)
    pattern = f"sleep [0-9]+\\.{unique}"
    survivors = []
    for pid in _pids(pattern):
        with contextlib.suppress(OSError):
            survivors.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    lines = (run_dir / "trace").read_text().splitlines() if (run_dir / "trace").exists() else []
    return Ran(process.returncode, err.decode("utf-8", "replace"), lines, timed_out, survivors, run_dir)


def _yaml_list(items: list[str], indent: str = "    ") -> str:
    return "".join(f"{indent}- {json.dumps(item)}\n" for item in items)


def phase_lines(phase: str, fail_phase: str | None, failing: str | None, extra: list[str] | None = None) -> list[str]:
    lines = [trace(f"{phase}-1"), *(extra or [])]
    if phase == fail_phase and failing is not None:
        lines.append(failing)
    lines.append(trace(f"{phase}-2"))
    return lines


def line_of(text: str, item: str) -> int:
    """The line of the type file that holds phase item `item`."""
    wanted = f"- {json.dumps(item)}"
    (number,) = [n for n, line in enumerate(text.splitlines(), 1) if line.strip() == wanted]
    return number


def compile_probe(orchc, tmp_path: Path, type_name: str, type_text: str, recipe_text: str) -> Path:
    (tmp_path / "defs").mkdir(exist_ok=True)
    (tmp_path / "defs" / f"{type_name}.yaml").write_text(type_text)
    (tmp_path / "r.yaml").write_text(recipe_text)
    result = orchc("compile", "r.yaml", "--defs", "defs", "--site", "local", "-o", "out", cwd=tmp_path)
    assert result.code == 0, result.err
    (script,) = (tmp_path / "out" / "r").glob("*.sbatch")
    return script


def service_type(fail_phase: str | None, failing: str | None, command: str = "sleep {{ sleep }}") -> str:
    text = ("type: ff_service\nextends: service\ndescription: fail-fast probe service\nfields:\n"
            "  ports: {default: [9]}\n  sleep: {type: string, pattern: '^[0-9.]+$'}\n"
            f"container:\n  command: {json.dumps(command)}\nphases:\n")
    for phase in SERVICE_PHASES:
        text += f"  {phase}{'!' if phase == 'health_check' else ''}:\n" + _yaml_list(phase_lines(phase, fail_phase, failing))
    return text


def client_type(fail_phase: str | None, failing: str | None, background: str | None = None) -> str:
    text = ("type: ff_client\nextends: client\ndescription: fail-fast probe client\nfields: {}\nphases:\n")
    for phase in CLIENT_PHASES:
        extra = [f"{background} &"] if background and phase == "benchmark" else None
        text += f"  {phase}{'!' if phase == 'health_check' else ''}:\n" + _yaml_list(phase_lines(phase, fail_phase, failing, extra))
    return text


def assert_logged(ran: Ran, phase: str, where: str, command: str) -> None:
    lines = [line for line in ran.err.splitlines() if "error:" in line and phase in line and where in line and command in line]
    assert lines, (f"no stderr line with `error:`, the phase {phase!r}, {where!r} and the command {command!r}:\n"
                   f"{ran.err[-3000:]}")


def _trace_until(phases: tuple[str, ...], fail_phase: str) -> list[str]:
    out = []
    for phase in phases:
        out.append(f"{phase}-1")
        if phase == fail_phase:
            return out
        out.append(f"{phase}-2")
    return out


@pytest.mark.parametrize("kind", sorted(FAILING))
@pytest.mark.parametrize("phase", SERVICE_PHASES)
def test_a_failing_service_line_stops_the_job(orchc, tmp_path, phase, kind):
    unique = _unique()
    text = service_type(phase, FAILING[kind])
    script = compile_probe(orchc, tmp_path, "ff_service", text,
                           f"service:\n  name: s\n  type: ff_service\n  sleep: '300.{unique}'\n")
    ran = run_script(script, tmp_path, unique)
    assert not ran.timed_out, f"the job went on after the failing line (killed after {TIMEOUT} s):\n{ran.err[-2000:]}"
    assert ran.status != 0
    assert ran.trace == _trace_until(SERVICE_PHASES, phase), "lines after the failing one ran"
    assert "is ready" not in ran.err and not (ran.run_dir / "endpoints" / "s").exists()
    assert ran.survivors == [], f"left running: {ran.survivors}"
    assert_logged(ran, phase, f"defs/ff_service.yaml:{line_of(text, FAILING[kind])}", FAILING[kind])


def test_a_service_that_dies_at_start_stops_the_job(orchc, tmp_path):
    unique = _unique()
    text = service_type(None, None, command="sh -c 'exit 3' sleep 1." + unique).replace(
        "  health_check!:\n", "  health_check!:\n    - \"orchc_wait_tcp 127.0.0.1 9 10\"\n")
    script = compile_probe(orchc, tmp_path, "ff_service", text, "service:\n  name: s\n  type: ff_service\n  sleep: '1'\n")
    ran = run_script(script, tmp_path, unique)
    assert ran.status != 0 and not ran.timed_out
    assert ran.trace == ["setup-1", "setup-2"], "health-check lines after the failing wait ran"
    assert "is ready" not in ran.err
    located = [line for line in ran.err.splitlines() if "error:" in line and "defs/ff_service.yaml:" in line]
    assert located, f"no error line naming the type file:\n{ran.err[-2000:]}"


@pytest.mark.parametrize("kind", sorted(FAILING))
@pytest.mark.parametrize("phase", CLIENT_PHASES)
def test_a_failing_client_line_stops_the_job(orchc, tmp_path, phase, kind):
    unique = _unique()
    background = f"sleep 300.{unique}" if phase == "benchmark" else None
    text = client_type(phase, FAILING[kind], background)
    script = compile_probe(orchc, tmp_path, "ff_client", text,
                           "client:\n  name: c\n  type: ff_client\n  target_endpoint: '127.0.0.1:9'\n")
    ran = run_script(script, tmp_path, unique)
    assert not ran.timed_out, f"the job did not end within {TIMEOUT} s:\n{ran.err[-2000:]}"
    assert ran.status != 0, "a failed job must exit non-zero"
    expected = _trace_until(CLIENT_PHASES, phase)
    if phase == "benchmark":
        expected += ["results-1", "results-2"]        # results are still collected
    assert ran.trace == expected, "lines after the failing one ran (or results were not collected)"
    assert ran.survivors == [], f"left running: {ran.survivors}"
    assert_logged(ran, phase, f"defs/ff_client.yaml:{line_of(text, FAILING[kind])}", FAILING[kind])


def test_or_true_lets_a_line_fail(orchc, tmp_path):
    text = client_type("never", None)
    for phase in CLIENT_PHASES:
        text = text.replace(f"    - {json.dumps(trace(phase + '-2'))}\n",
                            f"    - \"false || true\"\n    - \"orchc_x=$(false) || true\"\n    - {json.dumps(trace(phase + '-2'))}\n")
    script = compile_probe(orchc, tmp_path, "ff_client", text,
                           "client:\n  name: c\n  type: ff_client\n  target_endpoint: '127.0.0.1:9'\n")
    ran = run_script(script, tmp_path, _unique())
    assert ran.status == 0, ran.err[-2000:]
    assert ran.trace == [f"{phase}-{n}" for phase in CLIENT_PHASES for n in (1, 2)]


def test_a_service_without_failures_runs_every_line(orchc, tmp_path):
    unique = _unique()
    script = compile_probe(orchc, tmp_path, "ff_service", service_type(None, None),
                           f"service:\n  name: s\n  type: ff_service\n  sleep: '1.{unique}'\n")
    ran = run_script(script, tmp_path, unique)
    assert ran.status == 0, ran.err[-2000:]
    assert ran.trace == ["setup-1", "setup-2", "health_check-1", "health_check-2"]


SECRET_SERVICE = """type: ff_secret
extends: service
description: a mysql-like probe whose password is a secret
fields:
  ports: {default: [9]}
  pw:
    secret: true
    default: {file: "$HOME/.orchc/secrets/ff"}
  sleep: {type: string, pattern: '^[0-9.]+$'}
container:
  command: "sleep {{ sleep }}"
  env:
    FF_PASSWORD: "$PW"
phases:
  setup:
    - "printf '%s\\\\n' setup-1 >>\\"$ORCHC_RUN_DIR/trace\\""
"""


@pytest.mark.parametrize("content,mode", [("hunter2\n", 0o644), ("", 0o600)], ids=["mode-644", "empty"])
def test_an_unsafe_secret_file_stops_the_job_before_anything_starts(orchc, tmp_path, content, mode):
    unique = _unique()
    secret = tmp_path / "secret"
    secret.write_text(content)
    secret.chmod(mode)
    script = compile_probe(orchc, tmp_path, "ff_secret", SECRET_SERVICE,
                           f"service:\n  name: s\n  type: ff_secret\n  sleep: '300.{unique}'\n  pw: {{file: {json.dumps(str(secret))}}}\n")
    ran = run_script(script, tmp_path, unique)
    assert not ran.timed_out, f"the job went on with an unusable secret:\n{ran.err[-2000:]}"
    assert ran.status != 0
    assert ran.trace == [], "the setup phase ran although the secret could not be read safely"
    assert ran.survivors == [], f"the service was started: {ran.survivors}"
    assert any("error:" in line and str(secret) in line for line in ran.err.splitlines()), ran.err[-2000:]
    assert "hunter2" not in ran.err


def test_an_unset_secret_variable_stops_the_job_before_anything_starts(orchc, tmp_path):
    unique = _unique()
    script = compile_probe(orchc, tmp_path, "ff_secret", SECRET_SERVICE,
                           f"service:\n  name: s\n  type: ff_secret\n  sleep: '300.{unique}'\n  pw: {{env: ORCHC_FF_UNSET}}\n")
    ran = run_script(script, tmp_path, unique)
    assert ran.status != 0 and not ran.timed_out
    assert ran.trace == [] and ran.survivors == []
    assert "ORCHC_FF_UNSET" in ran.err
