"""`orchc prepare`: run a recipe's prepare script (script/prepare.py) on the login node: here, or over SSH when the
site has an `ssh:` target. `orchc submit` runs it first, so jobs find their images ready and never build on a
billed node; it only builds what is missing, and says what it did."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable

from ..core.errors import ClusterError
from ..recipe.resolve import Recipe
from ..script.prepare import prepare_script
from .slurm import kill_group
from .ssh import Connection

TIMEOUT_VARIABLE = "ORCHC_PREPARE_TIMEOUT"
DEFAULT_TIMEOUT = 4 * 3600
"""a vLLM image is ~10 GB: pulled and squashed in 20-40 min on a good day; hours on a slow registry"""


def prepare_timeout() -> float:
    text = os.environ.get(TIMEOUT_VARIABLE, "")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not 0 < value <= 7 * 86400:
        raise ClusterError(f"{TIMEOUT_VARIABLE}={text[:40]!r}: want seconds, more than 0 and at most 604800")
    return value


def prepare(recipe: Recipe, connection: Connection | None = None, say: Callable[[str], None] = print) -> bool:
    """Prepare the recipe's images on the login node; False when its site runs no containers (nothing to do).
    A failure is a ClusterError carrying the script's last error line."""
    script = prepare_script(recipe)
    if script is None:
        return False
    words = [*recipe.site.shell.split(), "-c", script, "orchc-prepare"]
    if connection is None:
        code, err = _run_here(words, prepare_timeout(), say)
    else:
        answer = connection.run(words, timeout=prepare_timeout())
        for line in answer.out.splitlines():
            say(line)
        code, err = answer.code, answer.err
    if code != 0:
        raise ClusterError(f"orchc prepare of recipe {recipe.name} failed: {_cause(err, code)}")
    return True


def _cause(err: str, code: int) -> str:
    """The script's last error line, with the last line the failing program wrote before it (apptainer's FATAL, a
    download's HTTP error), which says why."""
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    ours = [index for index, line in enumerate(lines) if line.startswith("orchc prepare: error: ")]
    if not ours:
        return lines[-1] if lines else f"exit status {code}"
    said = lines[ours[-1]].removeprefix("orchc prepare: error: ")
    before = [line for line in lines[:ours[-1]] if not line.startswith("orchc prepare: ")]
    return f"{said}; its last words: {before[-1][:300]}" if before else said


def _run_here(words: list[str], timeout: float, say: Callable[[str], None]) -> tuple[int, str]:
    """Run the script here, each line of its progress said as it comes; (exit status, stderr). Apptainer's own
    progress goes to stderr, kept for the error."""
    try:
        process = subprocess.Popen(words, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, errors="replace", start_new_session=True)
    except OSError as exc:
        raise ClusterError(f"cannot run {words[0]}: {exc.strerror or exc}") from None
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(process.stderr or ()), daemon=True)
    reader.start()
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, stop)
    timer.start()
    try:
        for line in process.stdout or ():
            say(line.rstrip("\n"))
        process.wait()
        timer.cancel()
        reader.join()
    except BaseException:
        timer.cancel()
        kill_group(process)
        raise
    if timed_out.is_set():
        raise ClusterError(f"orchc prepare did not finish within {timeout:g} s ({TIMEOUT_VARIABLE})")
    return process.returncode, "".join(err)
