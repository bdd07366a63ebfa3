"""Runs: a compiled recipe submitted to a scheduler, recorded in `<run dir>/run.json`.

Lifecycle of a job: Created (compiled into the run dir) -> Submitted -> PENDING ->
RUNNING -> COMPLETED / FAILED / CANCELLED / TIMEOUT. The run dir is where the
jobs run (they are submitted from it, so SLURM_SUBMIT_DIR names it): their
logs, the services' endpoint files and the clients' results all land there.

Submitting is transactional: run.json is rewritten (atomically, synced) after
every submitted job; on any failure, exception or signal everything submitted
is cancelled and run.json says `failed` and why. Everything read back from a run
folder (run.json, results, markers) is checked first: it may be damaged or hostile.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ClusterError
from ..core.files import LinkInRunFolder, read_in_run, write_atomic
from ..output.emit import Output, write_files
from ..output.manifest import MANIFEST, ManifestError, digest, parse_manifest, read_manifest, read_manifest_text, read_plan
from ..output.plan import Submission
from .backends import load_scheduler
from .scheduler import ENDED, UNKNOWN, JobState, Scheduler, is_job_id

if TYPE_CHECKING:
    from .ssh import Connection, Target

RUN_FILE = "run.json"
DEFAULT_ROOT = Path("runs")
SCHEDULER_VARIABLE = "ORCHC_SCHEDULER"
RUN_STATES = ("submitting", "submitted", "failed")
"""what run.json records of submitting; what a run is now is `run_state`"""
FINAL_STATES = ("completed", "failed", "cancelled", "timeout")
"""the states of a run whose every job has ended (run.json records one as `outcome` once a command saw it)"""
UNFINISHED_STATES = ("pending", "running")
EXIT_NOT_COMPLETED = 3
"""exit status of `status --watch` when every job ended but the run did not complete"""
EXIT_NOT_FINISHED = 4
"""exit status of `results --check` and `compare` when a run is still pending or running (and nothing failed)"""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_RUN_LIMIT = 4 << 20
_RESULTS_LIMIT = 64 << 20
_MARKER_LIMIT = 4096
_ORCHC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}_[0-9a-f]{8}")


@dataclass(frozen=True)
class RunJob:
    name: str
    type: str
    role: str
    target: str | None
    script: str
    slurm_id: str
    submitted: str


@dataclass(frozen=True)
class Run:
    recipe: str
    site: str
    created: str
    run_dir: str
    state: str
    error: str | None
    jobs: tuple[RunJob, ...]
    scheduler: str = "slurm"
    orchc_version: str = ""
    command: tuple[str, ...] = ()
    """the orchc command line that made the run"""
    rerun_of: str = ""
    """the run folder whose compiled jobs this run submitted again (orchc rerun)"""
    remote: Target | None = None
    """a run submitted over SSH: how to reach the login node, and (as remote_dir) the run folder there"""
    scripts_hmac: str = ""
    """HMAC-SHA256, with this user's run key, of every file submit wrote (what rerun submits again)"""
    outcome: str = ""
    """the run's final state (FINAL_STATES) once a command saw every job end; '' before"""
    submitted_from: str = ""
    """in the login node's copy of a run submitted over SSH: the host name of the machine that submitted it"""

    def job(self, name: str) -> RunJob:
        for job in self.jobs:
            if job.name == name:
                return job
        raise ClusterError(f"no job {name} in this run (it has: {', '.join(j.name for j in self.jobs) or 'no jobs'})")

    def to_json(self) -> str:
        data = asdict(self)
        data["jobs"] = [asdict(job) for job in self.jobs]
        if not self.submitted_from:
            del data["submitted_from"]
        if self.remote is None:
            del data["remote"]
        else:
            data["remote"] = {"host": self.remote.host, "port": self.remote.port, "user": self.remote.user,
                              "identity_file": self.remote.identity_file, "options": list(self.remote.options),
                              "run_dir": self.remote.remote_dir, "setup": self.remote.setup}
            if self.remote.setup:   # a command run on the login node: only this user's own runs may carry one
                data["remote"]["setup_hmac"] = setup_hmac(run_key(create=True), self.remote.setup)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


class Interrupted(BaseException):
    """A signal stopped `submit` (after rolling back); exit status 128 + signum."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = signum
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_dir(recipe: str, root: Path = DEFAULT_ROOT) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    candidate, index = root / f"{recipe}-{stamp}", 1
    while candidate.exists():
        index += 1
        candidate = root / f"{recipe}-{stamp}-{index}"
    return candidate


def save_run(run_dir: Path, run: Run) -> None:
    write_atomic(run_dir / RUN_FILE, run.to_json(), durable=True)


# --- reading a run back ---------------------------------------------------------------------------

def load_run(ref: str | None, root: Path = DEFAULT_ROOT, pull: bool = True) -> tuple[Path, Run]:
    """A run by folder (or name under runs/); the latest run when `ref` is None. A run submitted over SSH gets
    what changed in its remote folder first (`pull`); when that fails, a warning, and the last copy is read."""
    if ref is None:
        runs = sorted((_created(path), path.parent.name, path.parent) for path in root.glob(f"*/{RUN_FILE}"))
        if not runs:
            raise ClusterError(f"no runs under {root}/; start one with `orchc submit RECIPE`")
        run_dir = runs[-1][2]
    else:
        run_dir = _run_folder(ref, root)
    path = run_dir / RUN_FILE
    try:
        text = read_in_run(run_dir, RUN_FILE, _RUN_LIMIT)
    except LinkInRunFolder as exc:
        raise ClusterError(str(exc)) from None
    except OSError as exc:
        named = ref if ref is not None and run_dir == Path(ref) else str(run_dir)
        raise ClusterError(f"{named}: not an orchc run ({_joined(named, RUN_FILE)}: {exc.strerror or exc})") from None
    run = parse_run(text, str(path))
    if pull:
        refresh_copy(run_dir, run)
    return run_dir, run


def refresh_copy(run_dir: Path, run: Run, unreachable_is_error: bool = False) -> None:
    """pull_run; when that fails, a warning (the last copy is read). `unreachable_is_error`: a login node that does
    not answer is the error (for a command whose next question would fail with the same cause: said once)."""
    if run.remote is None:
        return
    from .ssh import Unreachable

    try:
        pull_run(run_dir, run)
    except ClusterError as error:
        if unreachable_is_error and isinstance(error, Unreachable):
            raise
        from ..core.terminal import terminal_text  # the error may quote the login node's answer

        print(f"orchc: warning: showing the copy of {run_dir} from the last pull: {terminal_text(error, lines=True)}",
              file=sys.stderr)


def _run_folder(ref: str, root: Path) -> Path:
    """The folder `ref` names: itself when it is one or is written as a path (`runs/nope` is not `runs/runs/nope`),
    else the run of that name under `root`."""
    written = Path(ref)
    if written.is_dir() or (not (root / ref).is_dir() and ("/" in ref or os.sep in ref)):
        return written
    return root / ref


def _joined(folder: str, name: str) -> str:
    return folder + name if folder.endswith(("/", os.sep)) else f"{folder}/{name}"


# Never copied between the two sides: run.json is the local record; data/ holds services' data (large).
_NOT_SYNCED = (RUN_FILE, "data")
# Stays on the cluster: a TLS service's private key (the client's certificate and key come over, for `tunnel`).
_NOT_PULLED = (*_NOT_SYNCED, "credentials/*/server.key")
_MIRRORED = ("endpoints",)


def pull_run(run_dir: Path, run: Run) -> None:
    """Copy what changed in the run's remote folder into `run_dir` (rsync: incremental, one round trip)."""
    from .ssh import connection

    if run.remote is None:
        return
    connection(run.remote).pull(run.remote.remote_dir, run_dir, exclude=_NOT_PULLED, mirrored=_MIRRORED)



def parse_run(text: str, source: str) -> Run:
    """run.json's text as a Run; anything unexpected is a ClusterError saying what is wrong."""
    def damaged(why: str) -> ClusterError:
        return ClusterError(f"{source} is damaged: {why}")

    try:
        data = json.loads(text)
    except RecursionError:
        raise damaged("it is nested too deeply") from None
    except ValueError as exc:
        raise damaged(f"not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise damaged("it does not list the run's jobs")
    state = data.get("state", "submitted")
    if state not in RUN_STATES:
        raise damaged(f"unknown state {str(state)[:40]!r}")
    scheduler = data.get("scheduler", "slurm")
    error = data.get("error")
    for key, value in (("recipe", data.get("recipe", "")), ("scheduler", scheduler)):
        if not isinstance(value, str) or (value and not _NAME.fullmatch(value)):
            raise damaged(f"{key} is not a name")
    if error is not None and not isinstance(error, str):
        raise damaged("error is not text")
    outcome = data.get("outcome", "")
    if outcome not in ("", *FINAL_STATES):
        raise damaged(f"unknown outcome {str(outcome)[:40]!r}")
    jobs = tuple(_run_job(job, index, damaged) for index, job in enumerate(data["jobs"]))
    if len({job.name for job in jobs}) != len(jobs):
        raise damaged("two jobs have the same name")
    command = data.get("command", [])
    if not isinstance(command, list) or not all(isinstance(word, str) for word in command):
        raise damaged("command is not a list of words")
    return Run(str(data.get("recipe", "")), _text(data.get("site")), _text(data.get("created")),
               _text(data.get("run_dir")), state, error, jobs, scheduler, _text(data.get("orchc_version")),
               tuple(command), _text(data.get("rerun_of")),
               _remote_place(data.get("remote"), _text(data.get("site")), damaged), _text(data.get("scripts_hmac")),
               outcome, _text(data.get("submitted_from")))


def _remote_place(value: Any, site: str, damaged: Callable[[str], ClusterError]) -> Target | None:
    """run.json's `remote` (a run submitted over SSH), checked as strictly as a site's ssh: block: options
    on the allow-list, or vouched for by the user's own settings for `site`."""
    from .ssh import Target, check_target

    if value is None:
        return None
    keys = {"host", "port", "user", "identity_file", "options", "run_dir", "setup", "setup_hmac"}
    if not isinstance(value, dict) or not set(value) <= keys or not {"host", "run_dir"} <= set(value):
        raise damaged("remote is not {host, port, user, identity_file, options, run_dir, setup, setup_hmac}")
    host, port, user, identity, options, folder = (value.get(key) for key in
                                                   ("host", "port", "user", "identity_file", "options", "run_dir"))
    if not isinstance(host, str) or not isinstance(folder, str) or not folder.startswith("/"):
        raise damaged("remote needs a host and an absolute run_dir")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise damaged("remote port is not a number")
    setup = value.get("setup") or ""
    if any(item is not None and not isinstance(item, str) for item in (user, identity, setup)):
        raise damaged("remote user, identity_file and setup are text")
    if setup and not _setup_vouched(setup, value.get("setup_hmac")):
        raise damaged("remote setup is not vouched for by your run key: a run folder made by another user or "
                      "machine runs no ssh.setup of its own on your login node (submit it again from here)")
    if options is None:
        options = []
    if not isinstance(options, list) or not all(isinstance(option, str) for option in options):
        raise damaged("remote options are not a list of Key=Value")
    try:
        return check_target(Target(host, port, user, identity, folder, tuple(options), site, setup))
    except ClusterError as error:
        raise damaged(f"remote: {error}") from None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _run_job(job: Any, index: int, damaged: Callable[[str], ClusterError]) -> RunJob:
    if not isinstance(job, dict):
        raise damaged(f"job {index + 1} is not a mapping")
    name, role, slurm_id, target = job.get("name"), job.get("role"), job.get("slurm_id"), job.get("target")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise damaged(f"job {index + 1} has no valid name")
    if role not in ("service", "client"):
        raise damaged(f"job {name}: role must be service or client")
    if not isinstance(slurm_id, str) or not is_job_id(slurm_id):
        raise damaged(f"job {name}: slurm_id {str(slurm_id)[:40]!r} is not a job id (digits only, or ARRAY_TASK)")
    if target is not None and (not isinstance(target, str) or not _NAME.fullmatch(target)):
        raise damaged(f"job {name}: target is not a job name")
    return RunJob(name, _text(job.get("type")), role, target, _text(job.get("script")), slurm_id,
                  _text(job.get("submitted")))


def _created(path: Path) -> str:
    try:
        data = json.loads(read_in_run(path.parent, RUN_FILE, _RUN_LIMIT))
        return str(data.get("created", "")) if isinstance(data, dict) else ""
    except (OSError, ValueError, RecursionError):
        return ""


def scheduler_for(run: Run) -> Scheduler:
    if run.remote is not None:
        return remote_scheduler(run.remote, run.scheduler)
    return load_scheduler(run.scheduler)


def remote_scheduler(target: Target, name: str = "slurm") -> Scheduler:
    """The SLURM backend running its commands on the login node over the one connection to `target`."""
    from .slurm import SlurmScheduler
    from .ssh import connection, runner_for

    if name != "slurm":
        raise ClusterError(f"scheduler {name!r} cannot run over SSH (only slurm does)")
    return SlurmScheduler(runner=runner_for(connection(target)))


def default_scheduler() -> Scheduler:
    return load_scheduler(os.environ.get(SCHEDULER_VARIABLE) or "slurm")


# --- the run key: what lets rerun tell the scripts this user submitted from anyone else's ------------

RUN_KEY = "run-key"
_HMAC_PREFIX = "hmac-sha256:"


def run_key_path() -> Path:
    """$XDG_CONFIG_HOME/orchc/run-key (default ~/.config/orchc/run-key)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "orchc" / RUN_KEY


def run_key(create: bool) -> bytes:
    """This user's run key: 32 random bytes (as 64 hex digits) in a file of mode 0600 made on first use (`create`:
    at submit); a missing key when not creating, or a key file another user could read or write, is an error."""
    path = run_key_path()
    if create and not os.path.lexists(path):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass                                   # another orchc made it first: read theirs
        else:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ClusterError(f"no key at {path}: runs are vouched for by a key orchc makes there at submit") from None
    except OSError as exc:
        raise ClusterError(f"cannot read the run key {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        text = handle.read(200).strip()
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise ClusterError(f"the run key {path} must be a file of yours that only you can read (chmod 600)")
    if not re.fullmatch(rb"[0-9a-f]{64}", text):
        raise ClusterError(f"the run key {path} is damaged (not 64 hex digits); delete it to make a new one")
    return bytes.fromhex(text.decode("ascii"))


def setup_hmac(key: bytes, setup: str) -> str:
    """HMAC-SHA256 of a run's ssh.setup: run.json carries it, so a setup runs only from this user's own runs."""
    return scripts_hmac(key, {"ssh.setup": setup})


def _setup_vouched(setup: str, mac: Any) -> bool:
    try:
        key = run_key(create=False)
    except ClusterError:
        return False
    return isinstance(mac, str) and hmac.compare_digest(mac, setup_hmac(key, setup))


def scripts_hmac(key: bytes, files: dict[str, str]) -> str:
    """HMAC-SHA256 of every file (name, length and bytes, in the order of their names)."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for name in sorted(files):
        data = files[name].encode("utf-8")
        mac.update(f"{name}\0{len(data)}\0".encode())
        mac.update(data)
    return _HMAC_PREFIX + mac.hexdigest()


def vouched(source: Path, old: Run, files: dict[str, str]) -> str:
    """What rerun checked, once `files` (read from `source`) verify against the HMAC run.json recorded at
    submit; a ClusterError saying what was checked when they do not."""
    listed = ", ".join(sorted(files))
    what = f"the HMAC-SHA256 of {len(files)} files of {source} ({listed}) with your run key {run_key_path()}"
    again = "compile and submit the recipe again instead"
    if not old.scripts_hmac.startswith(_HMAC_PREFIX):
        raise ClusterError(f"{source}: its run.json records no HMAC of its scripts (made by an older orchc, or not "
                           f"by orchc): nothing vouches that you compiled them; {again}")
    try:
        key = run_key(create=False)
    except ClusterError as error:
        raise ClusterError(f"{source}: cannot check {what}: {error}; {again}") from None
    if not hmac.compare_digest(scripts_hmac(key, files), old.scripts_hmac):
        raise ClusterError(f"{source}: rerun checked {what} against the one its run.json recorded at submit: it does "
                           f"not verify (a file was changed after submit, or the run was made with another user's or "
                           f"machine's key); {again}")
    return f"checked: {what}: verified against the HMAC recorded when you submitted them"


# --- submitting -----------------------------------------------------------------------------------

RESOLVED_FILE = "resolved.json"


def submit(output: Output, run_dir: Path, scheduler: Scheduler, command: tuple[str, ...] = (),
           remote: Connection | None = None) -> Run:
    """Write the compiled recipe (and every job as resolved, in resolved.json) into `run_dir` and submit its
    jobs in the manifest's order.

    Raises ClusterError (or Interrupted for a signal) after cancelling whatever was submitted.
    """
    resolved = {"recipe": output.recipe.name, "site": output.recipe.site.name,
                "points": [{"point": name, "values": dict(values)} for name, values in output.recipe.points],
                "jobs": {job.name: job.values() for job in output.recipe.jobs}}
    files = {**output.files, RESOLVED_FILE: json.dumps(resolved, indent=2, sort_keys=True, default=str) + "\n"}
    return submit_files(files, output.recipe.site.name, run_dir, scheduler, Run("", "", "", "", "", None, (),
                                                                                  command=command), remote)


def rerun(source: Path, run_dir: Path, scheduler: Scheduler, command: tuple[str, ...] = (),
          remote: Connection | None = None, say: Callable[[str], None] | None = None) -> Run:
    """Submit the jobs a run compiled again, byte for byte, as a new run, once every file verifies against the
    HMAC run.json recorded at submit with this user's key (`vouched`); `say` is told what was checked."""
    old, files, checked = vouched_files(source)
    if say is not None:
        say(checked)
    template = Run("", "", "", "", "", None, (), command=command, rerun_of=str(source.resolve()))
    return submit_files(files, old.site, run_dir, scheduler, template, remote)


def vouched_files(source: Path) -> tuple[Run, dict[str, str], str]:
    """The run of `source`, every file its submit wrote, and what was checked: each file verifies against its
    manifest and against the HMAC run.json recorded at submit with this user's key; else a ClusterError."""
    old = parse_run(read_in_run(source, RUN_FILE, _RUN_LIMIT), str(source / RUN_FILE))
    text = read_manifest_text(source)
    if text is None:
        raise ClusterError(f"{source}: not a compiled run: its {MANIFEST} is missing")
    manifest = parse_manifest(text, source / MANIFEST)
    try:
        names = [name for name in manifest["files"] if isinstance(name, str) and _NAME.fullmatch(name)]
        files = {name: read_in_run(source, name, _RUN_LIMIT * 64) for name in names if name != MANIFEST}
    except LinkInRunFolder as exc:
        raise ClusterError(str(exc)) from None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ClusterError(f"cannot read the compiled jobs of {source}: {exc}") from None
    if digest(files) != manifest.get("digest"):
        raise ClusterError(f"{source}: the scripts differ from what its manifest.json vouches for (edited after "
                           "compiling?); compile and submit the recipe again instead")
    files[MANIFEST] = text
    try:
        files[RESOLVED_FILE] = read_in_run(source, RESOLVED_FILE, _RUN_LIMIT * 64)
    except FileNotFoundError:
        pass
    return old, files, vouched(source, old, files)


def submit_files(files: dict[str, str], site: str, run_dir: Path, scheduler: Scheduler, template: Run,
                 remote: Connection | None = None) -> Run:
    """Write `files` into a new `run_dir` and submit the jobs its manifest.json plans; `template` gives what
    run.json records of how the run was made (command, rerun_of).

    With `remote` (a connection to a login node; `scheduler` runs its commands over it), the folder is copied to
    <remote_dir>/<run name> there first and the jobs are submitted from that copy; run.json is the local record,
    and the login node gets a copy of its own once the jobs are submitted (`login_node_record`)."""
    from .. import __version__

    scheduler.ready()
    vouch = scripts_hmac(run_key(create=True), files)
    place: Target | None = None
    if remote is not None:
        from .ssh import prepare

        place = replace(remote.target, remote_dir=prepare(remote, run_dir.name))
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise ClusterError(f"run folder {run_dir} already exists; choose another --run-dir") from None
    except OSError as exc:
        raise ClusterError(f"cannot create run folder {run_dir}: {exc.strerror or exc}") from None
    try:
        write_files(run_dir, files)
        plan = read_plan(run_dir)
        folder = run_dir.resolve()
        run = replace(template, recipe=plan.recipe, site=site, created=_now(), run_dir=str(folder),
                      state="submitting", scheduler=scheduler.name, orchc_version=__version__, remote=place,
                      scripts_hmac=vouch)
        save_run(run_dir, run)
        if place is not None:
            folder = Path(place.remote_dir)       # where sbatch runs: the remote copy
    except OSError as exc:
        raise ClusterError(f"cannot write run folder {run_dir}: {exc.strerror or exc}; nothing was submitted") from None
    ids: dict[str, str] = {}
    with _SignalGuard() as guard:
        try:
            if remote is not None and place is not None:
                guard.checkpoint()
                remote.push(run_dir, place.remote_dir, exclude=_NOT_SYNCED)
            if plan.allocation:   # allocation: one: one job, every recipe job a step of it (allocation.py)
                guard.checkpoint()
                ids[plan.allocation] = scheduler.submit(Submission(folder / plan.allocation, folder))
                run = replace(run, jobs=tuple(RunJob(step.name, step.type, step.role, step.target, step.script,
                                                     ids[plan.allocation], _now()) for step in plan.steps))
                save_run(run_dir, run)
            arrays = plan.array_of()
            steps = {step.name: step for step in plan.steps}
            for step in () if plan.allocation else plan.steps:
                if step.name in arrays:     # an array is submitted at its first task; a task's id is ARRAY_INDEX
                    array, index = arrays[step.name]
                    if index == 0:
                        guard.checkpoint()
                        ids[array.name + "/"] = first = scheduler.submit(array.submission(steps, ids, folder))
                        ids.update({name: f"{first}_{task}" for task, name in enumerate(array.jobs)})
                        run = replace(run, jobs=(*run.jobs, *(RunJob(steps[name].name, steps[name].type, steps[name].role,
                                                                     steps[name].target, steps[name].script, ids[name], _now())
                                                              for name in array.jobs)))
                        save_run(run_dir, run)
                    continue
                guard.checkpoint()
                ids[step.name] = scheduler.submit(step.submission(ids, folder))
                run = replace(run, jobs=(*run.jobs, RunJob(step.name, step.type, step.role, step.target,
                                                           step.script, ids[step.name], _now())))
                save_run(run_dir, run)
            guard.checkpoint()
            run = replace(run, state="submitted")
            save_run(run_dir, run)
            guard.checkpoint()
        except BaseException as exc:  # every way out rolls back
            failure = _roll_back(run_dir, run, ids, exc, scheduler)
            if failure is None:
                raise
            raise failure from None
    if remote is not None and place is not None:
        _record_on_login_node(remote, place.remote_dir, run)
    return run


def login_node_record(run: Run, remote_dir: str) -> Run:
    """The run.json a run submitted over SSH gets in its folder on the login node: the same jobs, found there
    without SSH (no `remote`), and where it came from; `orchc status`, `logs`, `results` work on it there."""
    import socket

    return replace(run, run_dir=remote_dir, remote=None, submitted_from=socket.gethostname())


def _record_on_login_node(remote: Connection, remote_dir: str, run: Run) -> None:
    """Write `login_node_record` into the remote run folder (atomically there); a failure is a warning: the jobs
    are submitted and the local record has them."""
    script = 'umask 077; cat >"$1/.run.json.tmp" && mv -f -- "$1/.run.json.tmp" "$1/run.json"'
    try:
        answer = remote.run(["sh", "-c", script, "orchc-record", remote_dir],
                            stdin=login_node_record(run, remote_dir).to_json())
        problem = "" if answer.code == 0 else (answer.err.strip().splitlines() or [f"exit status {answer.code}"])[-1]
    except ClusterError as error:
        problem = str(error)
    if problem:
        print(f"orchc: warning: the run is submitted, but its run.json could not be copied to {remote_dir} on "
              f"{remote.target.shown()} ({problem[:200]}): orchc there will not know the run", file=sys.stderr)


def _roll_back(run_dir: Path, run: Run, ids: dict[str, str], exc: BaseException,
               scheduler: Scheduler) -> BaseException | None:
    """Cancel what was submitted and record the failure; the error to raise (None: re-raise `exc`)."""
    reason = _reason(exc)
    ids = {name: job_id for name, job_id in ids.items() if "_" not in job_id}   # an array's tasks go with the array
    listed = ", ".join(f"{name} {job_id}" for name, job_id in ids.items())
    notes = []
    if ids:
        try:
            scheduler.cancel(*ids.values())
            notes.append(f"cancelled the jobs already submitted ({listed})")
        except ClusterError as error:
            notes.append(f"could not cancel the jobs already submitted ({listed}): {error}; "
                         f"cancel them by hand: scancel {' '.join(ids.values())}")
    failed = replace(run, state="failed", error="; ".join([reason, *notes]))
    try:
        save_run(run_dir, failed)
        notes.append(f"run recorded in {run_dir}")
    except OSError as error:
        notes.append(f"could not record the failure in {run_dir / RUN_FILE} ({error.strerror or error})"
                     + (f"; it submitted SLURM job(s) {' '.join(ids.values())}" if ids else ""))
    message = "; ".join([reason, *notes])
    if isinstance(exc, Interrupted):
        return Interrupted(exc.signum, message)
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(signal.SIGINT, message)
    if isinstance(exc, (ClusterError, OSError)):
        return ClusterError(message)
    print(f"orchc: error: submit failed unexpectedly; {'; '.join(notes)}", file=sys.stderr)
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Interrupted):
        return f"submit interrupted by {signal.Signals(exc.signum).name}"
    if isinstance(exc, KeyboardInterrupt):
        return "submit interrupted by SIGINT"
    if isinstance(exc, OSError):
        return f"cannot save {exc.filename or RUN_FILE}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__


class _SignalGuard:
    """SIGINT, SIGTERM and SIGHUP during submit are noted, and acted on only at `checkpoint()`: never
    between a submit and the recording of its id, never in the middle of a rollback."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.pending: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, frame: object) -> None:
        if self.pending is None:
            print(f"orchc: {signal.Signals(signum).name}: stopping once the scheduler answers, "
                  "then cancelling what was submitted", file=sys.stderr)
        self.pending = signum

    def checkpoint(self) -> None:
        if self.pending is not None:
            raise Interrupted(self.pending)


# --- following a run ------------------------------------------------------------------------------

def owned(run: Run, job: RunJob, state: JobState) -> JobState:
    """`state` when the scheduler's job (this user's: the backend answers for no other) has a name orchc gives
    `job`: <job>_<8 hex digits>, or <recipe>_<8 hex digits> for a run inside one allocation; else FOREIGN,
    saying why. run.json is data: its ids are never trusted to name the run's jobs."""
    named_by_orchc = _ORCHC_NAME.fullmatch(state.name) is not None
    if state.state == "UNKNOWN" or (named_by_orchc and state.name.rpartition("_")[0] in (job.name, run.recipe)):
        return state
    return JobState("FOREIGN", reason=f"named {state.name[:64]!r}, not {job.name}_<8 hex digits>")


def states(run: Run, scheduler: Scheduler) -> dict[str, JobState]:
    """Every job's state from one poll of the scheduler (FOREIGN for a job that is not the run's)."""
    found = scheduler.poll(*(job.slurm_id for job in run.jobs)) if run.jobs else {}
    return {job.name: owned(run, job, found.get(job.slurm_id, UNKNOWN)) for job in run.jobs}


_FAILURES = (("FAILED", "failed"), ("TIMEOUT", "timeout"), ("CANCELLED", "cancelled"))


def run_state(recorded: str, job_states: Iterable[str]) -> str:
    """The run's one state from run.json's `state` and its jobs' scheduler states (README "Running jobs").

    A submit that failed is `failed`, one still submitting `pending`. While any job is queued or running the
    run is `pending` (nothing has started) or `running`. Once every job has ended: `failed` if any job failed
    (SLURM's NODE_FAIL, OUT_OF_MEMORY and BOOT_FAIL are FAILED here), else `timeout`, else `cancelled`, else
    `unknown` when the scheduler no longer knows a job (or the id names another job), else `completed`."""
    if recorded == "failed":
        return "failed"
    if recorded == "submitting":
        return "pending"
    found = list(job_states)
    if any(state not in ENDED and state != "UNKNOWN" for state in found):
        started = any(state not in ("PENDING", "UNKNOWN") for state in found)
        return "running" if started else "pending"
    for job_state, state in _FAILURES:
        if job_state in found:
            return state
    return "completed" if all(state == "COMPLETED" for state in found) else "unknown"


def current_state(run_dir: Path, run: Run, current: Mapping[str, JobState]) -> str:
    """The run's state from one poll's answer; a final state is recorded in run.json (`outcome`), so that a later
    `orchc runs` (or compare, or --check) knows it without asking the scheduler."""
    state = run_state(run.state, (job.state for job in current.values()))
    if state in FINAL_STATES and run.state == "submitted" and run.outcome != state:
        try:
            save_run(run_dir, replace(run, outcome=state))
        except OSError:
            pass            # a run folder of someone else's, or read-only: the state is still shown
    return state


def known_state(run_dir: Path, run: Run) -> tuple[str, dict[str, JobState] | None]:
    """The run's state and its jobs' states: the recorded outcome of a run seen ended (no poll, job states None),
    else from one poll; `unknown` with a warning when the scheduler does not answer."""
    if run.outcome or run.state == "failed":
        return run.outcome or "failed", None
    try:
        current = states(run, scheduler_for(run))
    except ClusterError as error:
        from ..core.terminal import terminal_text

        print(f"orchc: warning: state of {run_dir.name} unknown: {terminal_text(error, lines=True)}", file=sys.stderr)
        return "unknown", None
    return current_state(run_dir, run, current), current


def state_note(subject: str, state: str, current: Mapping[str, JobState] | None) -> str | None:
    """What a command reading a run's results says first (`subject`: `run NAME`) when the run is still pending or
    running, or ended without completing; None for a run that completed (or whose state is unknown)."""
    if state in UNFINISHED_STATES:
        ended = f" ({sum(job.ended for job in current.values())}/{len(current)} jobs ended)" if current else ""
        return f"{subject} is {state}{ended}: results so far"
    if state in FINAL_STATES and state != "completed":
        jobs = [f"{name} {job.state}" for name, job in (current or {}).items() if job.state != "COMPLETED"]
        named = f" ({', '.join(jobs[:3])}{', ...' if len(jobs) > 3 else ''})" if jobs else ""
        return f"{subject} ended {state}{named}: its results may be incomplete"
    return None


@dataclass(frozen=True)
class Cancelled:
    ids: list[str]
    """the SLURM jobs cancelled (one id for every job run inside one allocation)"""
    refused: list[str]
    """why each id that names a job that is not the run's was left alone"""
    unknown: list[str]
    """ids SLURM knows no job of this user's by (ended long ago, or another user's): left alone"""


def cancel(run: Run, names: list[str], scheduler: Scheduler) -> Cancelled:
    """Cancel the run's jobs (those named, or all) that are still queued or running, after one poll that checks
    each id names a job of this user's that is the run's (`owned`); any other id is left alone and said so."""
    chosen = [run.job(name) for name in names] if names else list(run.jobs)
    by_id: dict[str, RunJob] = {}
    for job in chosen:                         # one id for every job run inside one allocation: its first job
        by_id.setdefault(job.slurm_id, job)
    found = scheduler.poll(*by_id) if by_id else {}
    ids, refused, unknown = [], [], []
    for job_id, job in by_id.items():
        state = owned(run, job, found.get(job_id, UNKNOWN))
        if state.state == "FOREIGN":
            refused.append(f"SLURM job {job_id} (job {job.name}) is not this run's: it is {state.reason}; left alone")
        elif state.state == "UNKNOWN":
            unknown.append(f"SLURM job {job_id} (job {job.name})")
        elif not state.ended:
            ids.append(job_id)
    if ids:
        scheduler.cancel(*ids)
    return Cancelled(ids, refused, unknown)


def results(run_dir: Path, run: Run) -> dict[str, Any]:
    """Each client's results.json (partial or complete), by client name; None when there is none yet."""
    collected: dict[str, Any] = {}
    for job in run.jobs:
        if job.role == "client":
            collected[job.name] = _client_results(run_dir, f"results/{job.name}")
    return collected


def images(run_dir: Path, run: Run) -> dict[str, Any]:
    """The container images each job recorded (`images/<job>.json`: image, source, path, sha256), by job."""
    found: dict[str, Any] = {}
    for job in run.jobs:
        try:
            found[job.name] = json.loads(read_in_run(run_dir, f"images/{job.name}.json", _MARKER_LIMIT * 16))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, RecursionError) as exc:
            found[job.name] = {"error": f"unreadable images/{job.name}.json: {exc}"}
    return found


def _client_results(run_dir: Path, folder: str) -> Any:
    try:
        data: Any = json.loads(read_in_run(run_dir, f"{folder}/results.json", _RESULTS_LIMIT))
    except FileNotFoundError:
        data = None
    except OSError as exc:
        data = {"error": f"unreadable results.json: {exc.strerror or exc}"}
    except RecursionError:
        data = {"error": "unreadable results.json: nested too deeply"}
    except ValueError as exc:
        data = {"error": f"unreadable results.json (still being written?): {exc}"}
    stopped = _marker(run_dir, f"{folder}/stopped")
    if stopped is not None:
        data = {**(data if isinstance(data, dict) else {"results": data} if data is not None else {}),
                "stopped_by": stopped}
    return data


def _marker(run_dir: Path, relative: str) -> str | None:
    """A marker file's one word (None when there is none); anything else is shown, not trusted."""
    try:
        text = read_in_run(run_dir, relative, _MARKER_LIMIT).strip()
    except FileNotFoundError:
        return None
    except OSError:
        return "(unreadable marker)" if os.path.lexists(run_dir / relative) else None
    return text if re.fullmatch(r"[A-Za-z0-9_.:-]{1,40}", text) else "(unreadable marker)"



# --- listing runs (orchc runs) ----------------------------------------------------------------------

@dataclass(frozen=True)
class RunListing:
    folder: Path
    run: Run | None
    """None when run.json cannot be read; `error` says why"""
    error: str | None
    points: int | None
    """the number of sweep points (manifest.json); None for a run of one configuration"""


def list_runs(root: Path = DEFAULT_ROOT) -> list[RunListing]:
    """Every folder under `root` with a run.json, newest last (by created, then name). Reads each run.json
    (size-limited, checked like load_run) and the sweep of its manifest.json; asks no scheduler."""
    listed = []
    for path in sorted(root.glob(f"*/{RUN_FILE}")):
        folder = path.parent
        try:
            run: Run | None = parse_run(read_in_run(folder, RUN_FILE, _RUN_LIMIT), str(path))
            error = None
        except OSError as exc:
            run, error = None, f"unreadable {RUN_FILE}: {exc.strerror or exc}"
        except ClusterError as exc:
            run, error = None, str(exc)
        listed.append(RunListing(folder, run, error, _sweep_points(folder)))
    return sorted(listed, key=lambda entry: (entry.run.created if entry.run else "", entry.folder.name))


def _sweep_points(folder: Path) -> int | None:
    try:
        manifest = read_manifest(folder)
    except (OSError, ManifestError):   # a listing of every run: a damaged one says so when it is opened
        return None
    sweep = manifest.get("sweep")
    points = sweep.get("points") if isinstance(sweep, dict) else None
    return len(points) if isinstance(points, list) else None
