"""Stage 5, emit: compiled recipes -> files on disk, all or nothing.

Output folders (`-o DIR`): compiles into one DIR take turns (an flock on
`DIR/.orchc.lock`), so concurrent compiles end with one consistent set. Each
file is written under `DIR/.orchc-tmp/` and renamed into place, so a reader
never sees half a file and a killed compile leaves its debris only there (the
next compile empties it). orchc never writes through a symbolic link that leads
out of DIR, and deletes only files that a manifest it wrote for the same recipe
lists, when the digest of those files still matches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import stat
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .errors import ClusterError, Collector, OrchcError
from .plan import ALLOCATION_SCRIPT, MANIFEST, plan_from_manifest, submit_script
from .render import render_job, render_recipe
from .resolve import Recipe, ResolvedJob

SUBMIT = "submit.sh"
GENERATOR = "orchc"
LOCK = ".orchc.lock"
STAGING = ".orchc-tmp"
_MANIFEST_LIMIT = 1 << 20


class OutputError(ClusterError):
    """An output folder orchc must not or cannot write (reported like a ClusterError: exit status 1)."""


@dataclass
class Output:
    """One compiled recipe: file name (relative to its folder) -> text."""

    recipe: Recipe
    files: dict[str, str]
    manifest: dict[str, Any]


def script_name(job: ResolvedJob) -> str:
    return f"{job.name}.sbatch"


def submission_order(recipe: Recipe) -> list[ResolvedJob]:
    """Services first, then clients, each in recipe order: every client comes after its target."""
    return [j for j in recipe.jobs if j.role == "service"] + [j for j in recipe.jobs if j.role == "client"]


def build_output(recipe: Recipe, scripts: dict[str, str] | None = None) -> Output:
    """The files of one recipe: its scripts (job name -> text; rendered here unless given), submit.sh and manifest.json."""
    scripts = render_recipe(recipe) if scripts is None else scripts
    manifest, files = _manifest_and_plan_files(recipe)
    files.update({script_name(job): scripts[job.name] for job in recipe.jobs})
    manifest["digest"] = digest(files)
    files[MANIFEST] = manifest_text(manifest)
    return Output(recipe, files, manifest)


def _manifest_and_plan_files(recipe: Recipe) -> tuple[dict[str, Any], dict[str, str]]:
    """The manifest (without its digest) and the files made from it: submit.sh, and allocation.sbatch
    for `allocation: one`."""
    manifest = build_manifest(recipe)
    files: dict[str, str] = {}
    allocation = _one_allocation(recipe)   # allocation: one -> allocation.sbatch, submitted alone
    if allocation is not None:
        files[ALLOCATION_SCRIPT], manifest["allocation"] = allocation
        manifest["files"] = sorted([*manifest["files"], ALLOCATION_SCRIPT])
    files[SUBMIT] = submit_script(plan_from_manifest(manifest))
    return manifest, files


def _one_allocation(recipe: Recipe) -> tuple[str, dict[str, Any]] | None:
    if recipe.allocation is None:
        return None
    from .allocation import one_allocation  # only `allocation:` needs it: the common compile starts sooner

    return one_allocation(recipe)


def manifest_text(manifest: dict[str, Any]) -> str:
    """`json.dumps(manifest, indent=2, sort_keys=True)` and a newline: the same text, written without the
    pure-Python encoder json uses whenever it indents (a 100,000-job sweep's manifest took it 1.6 s)."""
    try:
        return _indented(manifest, "\n") + "\n"
    except _NotPlain:
        return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


class _NotPlain(Exception):
    """A value `_indented` leaves to json: a float, a key that is not a string, or a type JSON does not have."""


_STRING: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _indented(value: Any, newline: str) -> str:
    """The JSON text of `value` as json.dumps(indent=2, sort_keys=True) writes it, `newline` being a line
    break and the indent of the line `value` starts on."""
    if isinstance(value, str):
        return _STRING(value)
    if value is None or value is True or value is False:
        return "null" if value is None else "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    inner = newline + "  "
    if isinstance(value, dict):
        if not value:
            return "{}"
        if not all(type(key) is str for key in value):
            raise _NotPlain
        return "{" + ",".join(f"{inner}{_STRING(key)}: {_indented(item, inner)}" for key, item in sorted(value.items())) \
            + newline + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        return "[" + ",".join(inner + _indented(item, inner) for item in value) + newline + "]"
    raise _NotPlain


class Digest:
    """What a manifest vouches for: the names and contents of the files it lists (but itself), fed in
    the order of their names."""

    def __init__(self) -> None:
        self._hasher = hashlib.sha256()

    def add(self, name: str, data: bytes) -> None:
        self._hasher.update(f"{name}\0{len(data)}\0".encode())
        self._hasher.update(data)

    def text(self) -> str:
        return f"sha256:{self._hasher.hexdigest()}"


def digest(files: dict[str, str]) -> str:
    hasher = Digest()
    for name in sorted(files):
        if name != MANIFEST:
            hasher.add(name, files[name].encode("utf-8"))
    return hasher.text()


def build_manifest(recipe: Recipe) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "generator": GENERATOR,
        "recipe": recipe.name,
        "source": Path(recipe.file).name,
        "site": recipe.site.name,
        "runtime": recipe.site.runtime,
        "files": sorted([*(script_name(job) for job in recipe.jobs), SUBMIT, MANIFEST]),
        "jobs": [
            {
                "name": job.name,
                "type": job.typedef.name,
                "role": job.role,
                "job_id": job.job_id,
                "script": script_name(job),
                "target": job.target,
                "depends_on": [job.target] if job.target else [],
                **({"after_end": list(recipe.waits_for[job.name])} if recipe.waits_for.get(job.name) else {}),
                **({"point": job.point, "repeat": job.repeat} if job.point else {}),
            }
            for job in submission_order(recipe)
        ],
    }
    if recipe.points:
        manifest["sweep"] = {"keys": [key for key, _ in recipe.points[0][1]], "repeat": recipe.repeat,
                             "points": [{"point": name, "values": dict(values)} for name, values in recipe.points]}
    if recipe.references:
        manifest["references"] = recipe.references
    return manifest


def write_outputs(outputs: list[Output], out_dir: Path) -> int:
    """Write outputs compiled in memory under `out_dir/<recipe>/`; returns how many files they have."""
    return _write_all([partial(_stage_files, output, out_dir) for output in outputs], out_dir)


def write_recipes(recipes: list[Recipe], out_dir: Path) -> int:
    """Render and write every recipe under `out_dir/<recipe>/`, one script at a time: a script is rendered,
    hashed into the manifest's digest and staged, and then let go, so memory does not grow with the
    scripts' text (a 100,000-job sweep). Nothing is put in place until every recipe rendered: a render
    error leaves the output folder as it was. Returns how many files the recipes have."""
    workers()   # a wrong ORCHC_WORKERS is an error before anything is written, whatever the recipes' size
    return _write_all([partial(_stage_recipe, recipe, out_dir) for recipe in recipes], out_dir)


def render_all(recipes: list[Recipe]) -> None:
    """Everything `write_recipes` makes, made and let go (what `orchc validate` checks): the render errors
    of every recipe, each the one a compile gives, and nothing kept or written."""
    problems = Collector()
    for recipe in recipes:
        try:
            _manifest_and_plan_files(recipe)
            for job in recipe.jobs:
                render_job(job, recipe)
        except OrchcError as error:
            problems.absorb(error)
    problems.raise_if_any()


def _write_all(stagers: list[Callable[[int, int], _Staged]], out_dir: Path) -> int:
    made_folder = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        made_lock = not (out_dir / LOCK).exists()
        with _locked(out_dir), _staging(out_dir) as staging:
            problems = Collector()
            staged: list[_Staged] = []
            for stager in stagers:
                try:
                    staged.append(stager(staging, len(staged)))
                except OrchcError as error:
                    problems.absorb(error)
            if problems.problems:
                # A compile that fails leaves no trace: not even the lock or the folder it made for itself.
                if made_lock:
                    with contextlib.suppress(OSError):
                        (out_dir / LOCK).unlink()
                problems.raise_if_any()
            for recipe_files in staged:
                _commit(recipe_files, out_dir, staging)
            return sum(len(recipe_files.names) for recipe_files in staged)
    except OSError as exc:
        raise OutputError(f"cannot write {exc.filename or out_dir}: {exc.strerror or exc}") from None
    except OrchcError:
        if made_folder:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


@dataclass
class _Staged:
    """One recipe's files: every name, and where in the staging folder each new or changed one waits."""

    recipe: str
    names: list[str]
    waiting: dict[str, str]


def _stage_recipe(recipe: Recipe, out_dir: Path, staging: int, number: int) -> _Staged:
    scripts = {script_name(job): job for job in recipe.jobs}
    names = sorted([*_plan_names(recipe), *scripts])
    ordered = [name for name in names if name in scripts]
    existing = _existing_folder(out_dir, recipe.name)
    waiting: dict[str, str] = {}
    hashed = _InOrder(names)

    def take(name: str, text: str) -> None:
        data = text.encode("utf-8")
        hashed.put(name, data)
        _stage(name, data, existing, staging, f"{number}.{len(waiting)}", waiting)

    helper: _Helper | None = None
    queue: _Queue | None = None
    try:
        rendered: dict[str, str] = {}
        if len(ordered) >= PARALLEL_FROM and workers() > 1:
            queue = _Queue.made(len(ordered))
        if queue is not None:
            # A type's first script costs tens of times the next (templates loaded and compiled): one of each
            # type rendered here first, so that the helper inherits what they loaded instead of loading it again
            rendered = _first_of_each_type(ordered, scripts, recipe)
            helper = _Helper(ordered, set(rendered), queue, recipe, scripts, existing, staging, f"{number}.h")
        manifest, files = _manifest_and_plan_files(recipe)   # while the helper renders
        for name in [*files, *rendered]:
            take(name, files[name] if name in files else rendered[name])
        for position in (range(len(ordered)) if queue is None else queue.positions()):
            name = ordered[position]
            if name in rendered:
                continue
            try:
                take(name, render_job(scripts[name], recipe))
            except OrchcError:
                _canonical_error(recipe)
                raise
            if helper is not None and not helper.collect(hashed, waiting, wait=False):
                _canonical_error(recipe)
        manifest["digest"] = _DIGEST_SLOT
        text = manifest_text(manifest)   # while the helper ends: only the digest is left to fill in
        if helper is not None:
            if not helper.collect(hashed, waiting, wait=True):
                _canonical_error(recipe)
            helper = None
        slot = f'\n  "digest": "{_DIGEST_SLOT}"'
        assert text.count(slot) == 1   # nested values are indented deeper: this line is the manifest's own
        text = text.replace(slot, f'\n  "digest": "{hashed.text()}"')
        _stage(MANIFEST, text.encode("utf-8"), existing, staging, f"{number}.m", waiting)
    finally:
        if helper is not None:
            helper.stop()
        if queue is not None:
            queue.close()
        if existing is not None:
            os.close(existing)
    return _Staged(recipe.name, [*names, MANIFEST], waiting)


def _first_of_each_type(names: list[str], scripts: dict[str, ResolvedJob], recipe: Recipe) -> dict[str, str]:
    """The scripts of the first job of each type among `names`, rendered (a render error: the one a compile
    in memory gives)."""
    first: dict[str, str] = {}
    for name in names:
        first.setdefault(scripts[name].typedef.name, name)
    try:
        return {name: render_job(scripts[name], recipe) for name in first.values()}
    except OrchcError:
        _canonical_error(recipe)
        raise


class _Queue:
    """The scripts of a recipe, handed out a few at a time to whichever process asks first, so that both end
    together whatever else each has to do and however fast each CPU runs. The next position is a number in a
    memory file both share, taken under a POSIX record lock (held per process, unlike flock)."""

    CHUNK = 4

    def __init__(self, total: int, fd: int) -> None:
        self.total, self.fd = total, fd
        os.pwrite(self.fd, bytes(8), 0)

    @classmethod
    def made(cls, total: int) -> _Queue | None:
        """A queue in memory (not in the output folder: a cluster's parallel file system may refuse record
        locks), or None where none can be made: then one process renders everything."""
        try:
            return cls(total, os.memfd_create("orchc-queue", os.MFD_CLOEXEC))
        except (AttributeError, OSError):   # no memfd_create (not Linux), or refused (a seccomp profile)
            return None

    def positions(self) -> Iterator[int]:
        """The positions this process takes, a few at a time, until none is left."""
        while True:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            try:
                start = int.from_bytes(os.pread(self.fd, 8, 0), "little")
                os.pwrite(self.fd, min(start + self.CHUNK, self.total).to_bytes(8, "little"), 0)
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)
            if start >= self.total:
                return
            yield from range(start, min(start + self.CHUNK, self.total))

    def close(self) -> None:
        os.close(self.fd)


_DIGEST_SLOT = "sha256:" + "?" * 64
"""Where the digest goes in a manifest written before the digest is known (a digest has no `?`)."""


def _plan_names(recipe: Recipe) -> list[str]:
    """The names of the files `_manifest_and_plan_files` makes, known before it runs."""
    return [SUBMIT] if recipe.allocation is None else [SUBMIT, ALLOCATION_SCRIPT]


class _InOrder:
    """The digest of files that arrive in any order (from two processes), fed in the order of their names as
    soon as each file's predecessors are in: only the files that arrived early are held."""

    def __init__(self, names: list[str]) -> None:
        self._names = names
        self._next = 0
        self._early: dict[str, bytes] = {}
        self._hasher = Digest()

    def put(self, name: str, data: bytes) -> None:
        self._early[name] = data
        names, early = self._names, self._early
        while self._next < len(names) and names[self._next] in early:
            self._hasher.add(names[self._next], early.pop(names[self._next]))
            self._next += 1

    def text(self) -> str:
        if self._next != len(self._names):
            raise OutputError(f"{self._names[self._next]}: a rendered script went missing while the scripts were written")
        return self._hasher.text()


PARALLEL_FROM = 256
"""Job scripts in one recipe from which a second process renders some of them (below, forking costs more)."""
WORKERS_VARIABLE = "ORCHC_WORKERS"


def workers() -> int:
    """Processes that render one recipe's scripts: 2 when this process may run on 2 CPUs, else 1;
    ORCHC_WORKERS=1 keeps everything in one process."""
    text = os.environ.get(WORKERS_VARIABLE, "")
    if text:
        if text not in ("1", "2"):
            raise OutputError(f"{WORKERS_VARIABLE}={text[:20]!r}: give 1 or 2")
        return int(text)
    # Linux only: there fork is plain and sched_getaffinity says which CPUs this process may use (macOS has
    # neither a safe fork for every process nor that call).
    return 2 if sys.platform.startswith("linux") and len(os.sched_getaffinity(0)) >= 2 else 1


def _canonical_error(recipe: Recipe) -> None:
    """Raise the render error of the first failing job in recipe order, the one a compile in memory gives."""
    render_recipe(recipe)


_FRAME = struct.Struct("<IIB")   # a script from the helper: its position among the scripts, its size, staged or not


class _Helper:
    """A forked process that renders and stages scripts of a recipe, taking them from the queue as this process
    does. It shares nothing but the staging folder and the queue: it sends each script's bytes (for the digest,
    which is taken in the order of names) and whether it staged it on a pipe as it goes, and leaves by
    os._exit, so it never runs this process's cleanup."""

    def __init__(self, names: list[str], skip: set[str], queue: _Queue, recipe: Recipe,
                 scripts: dict[str, ResolvedJob], existing: int | None, staging: int, prefix: str) -> None:
        self.names = names
        reading, writing = os.pipe()
        with contextlib.suppress(OSError):   # room for a few hundred scripts: the helper rarely waits for a reader
            fcntl.fcntl(writing, fcntl.F_SETPIPE_SZ, 1 << 20)
        pid = os.fork()
        if pid == 0:   # the helper
            status = 4
            try:
                os.close(reading)
                with os.fdopen(writing, "wb") as pipe:
                    staged: dict[str, str] = {}
                    for position in queue.positions():
                        name = names[position]
                        if name in skip:
                            continue
                        data = render_job(scripts[name], recipe).encode("utf-8")
                        _stage(name, data, existing, staging, f"{prefix}{position}", staged)
                        pipe.write(_FRAME.pack(position, len(data), name in staged) + data)
                        pipe.flush()
                status = 0
            except OrchcError:
                status = 3
            except BaseException:
                status = 4
            finally:
                os._exit(status)
        os.close(writing)
        os.set_blocking(reading, False)
        self.pid: int | None = pid
        self.reading = reading
        self.prefix = prefix
        self.buffer = bytearray()

    def collect(self, hashed: _InOrder, waiting: dict[str, str], wait: bool) -> bool:
        """Take in the scripts the helper sent so far (`wait`: all of them, and the helper's end); False when
        a script failed to render there."""
        if self.pid is None:
            return True
        if wait:
            os.set_blocking(self.reading, True)
        while True:
            try:
                chunk = os.read(self.reading, 1 << 20)
            except BlockingIOError:
                return True
            if not chunk:
                break
            self._take(chunk, hashed, waiting)
        os.close(self.reading)
        assert self.pid is not None
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        code = os.waitstatus_to_exitcode(status)
        if code == 3:
            return False
        if code != 0 or self.buffer:   # a script that went missing is found by the digest
            raise OutputError(f"the process rendering scripts beside this one ended with status {code}; nothing was written")
        return True

    def _take(self, chunk: bytes, hashed: _InOrder, waiting: dict[str, str]) -> None:
        buffer = self.buffer
        buffer += chunk
        start = 0
        while len(buffer) - start >= _FRAME.size:
            index, size, staged = _FRAME.unpack_from(buffer, start)
            end = start + _FRAME.size + size
            if end > len(buffer):
                break
            name = self.names[index]
            hashed.put(name, bytes(buffer[start + _FRAME.size:end]))
            if staged:
                waiting[name] = f"{self.prefix}{index}"
            start = end
        del buffer[:start]

    def stop(self) -> None:
        """After an error or an interrupt here: end the helper and reap it."""
        if self.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(self.pid, 0)
            self.pid = None
            with contextlib.suppress(OSError):
                os.close(self.reading)


def _stage_files(output: Output, out_dir: Path, staging: int, number: int) -> _Staged:
    names = sorted(output.files, key=lambda name: name == MANIFEST)   # the manifest last
    existing = _existing_folder(out_dir, output.recipe.name)
    waiting: dict[str, str] = {}
    try:
        for index, name in enumerate(names):
            _stage(name, output.files[name].encode("utf-8"), existing, staging, f"{number}.{index}", waiting)
    finally:
        if existing is not None:
            os.close(existing)
    return _Staged(output.recipe.name, names, waiting)


def _existing_folder(out_dir: Path, name: str) -> int | None:
    """The recipe's output folder as an open fd when it exists (to leave unchanged files alone), else None."""
    folder = out_dir / name
    if not folder.exists():
        return None
    return os.open(_recipe_folder(out_dir, name), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _stage(name: str, data: bytes, existing: int | None, staging: int, temp: str, waiting: dict[str, str]) -> None:
    if existing is not None and _holds(existing, name, data):
        return
    mode = 0o755 if name.endswith((".sh", ".sbatch")) else 0o644
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=staging)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        os.fchmod(handle.fileno(), mode)
    waiting[name] = temp


def _commit(staged: _Staged, out_dir: Path, staging: int) -> None:
    """Put a recipe's staged files in place, its manifest last, and remove the files only its old manifest listed."""
    fd = os.open(_recipe_folder(out_dir, staged.recipe), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        stale = _files_we_wrote(fd, staged.recipe) - set(staged.names)
        for name in staged.names:   # the manifest is last
            temp = staged.waiting.get(name)
            if temp is not None:
                os.replace(temp, name, src_dir_fd=staging, dst_dir_fd=fd)
        for name in sorted(stale):
            if _is_regular(fd, name):
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """`DIR/.orchc.lock`, held. A compile that failed removes a lock it made, so the lock held must still be
    the file of that name (else another compile may hold the new one): if not, lock again."""
    path = out_dir / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _staging(out_dir: Path) -> Iterator[int]:
    """An empty `DIR/.orchc-tmp/` (what a killed compile left there is removed), open as a folder fd."""
    folder = out_dir / STAGING
    folder.mkdir(exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name in os.listdir(fd):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
        yield fd
    finally:
        for name in os.listdir(fd):   # what an error left staged
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
        os.close(fd)
        with contextlib.suppress(OSError):
            folder.rmdir()


def _recipe_folder(out_dir: Path, name: str) -> Path:
    """`out_dir/name`, created if missing; a symbolic link is followed only when it stays inside out_dir."""
    folder = out_dir / name
    if folder.is_symlink():
        inside = out_dir.resolve()
        resolved = folder.resolve()
        if resolved == inside or inside not in resolved.parents:
            raise OutputError(f"{folder} is a symbolic link to {resolved}, outside {out_dir}; orchc does not write "
                              "through it: remove the link or choose another -o folder")
        folder = resolved
    folder.mkdir(exist_ok=True)
    return folder


def _read_regular(folder: int, name: str, limit: int) -> bytes | None:
    """The bytes of a regular file (no link, FIFO or device: opening those could hang) of at most `limit` bytes."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        return handle.read(limit + 1)


def _holds(folder: int, name: str, data: bytes) -> bool:
    """Whether `name` already has exactly this content: then it is left alone, mtime and all."""
    return _read_regular(folder, name, len(data)) == data


def _is_regular(folder: int, name: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _files_we_wrote(folder: int, recipe: str) -> set[str]:
    """The files the manifest in `folder` lists, if orchc wrote it for `recipe` and they are still as written."""
    raw = _read_regular(folder, MANIFEST, _MANIFEST_LIMIT)
    try:
        manifest = json.loads(raw or b"null")
    except (ValueError, RecursionError):
        return set()
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR or manifest.get("recipe") != recipe:
        return set()
    names = manifest.get("files")
    if not isinstance(names, list) or not all(isinstance(n, str) and _plain_name(n) for n in names):
        return set()
    files = {}
    for name in names:
        data = _read_regular(folder, name, 64 << 20) if name != MANIFEST else b""
        if data is None:
            return set()
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            return set()
    return set(names) if digest(files) == manifest.get("digest") else set()


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")


def write_files(folder: Path, files: dict[str, str]) -> list[Path]:
    """Write `files` (name -> text) into an existing `folder` orchc just made; scripts are made executable."""
    written = []
    for name, text in sorted(files.items(), key=lambda item: item[0] == MANIFEST):
        write_atomic(folder / name, text, executable=name.endswith((".sh", ".sbatch")))
        written.append(folder / name)
    return sorted(written)


def write_atomic(path: Path, text: str, executable: bool = False, durable: bool = False) -> None:
    """Write to a temporary name beside `path`, then rename it into place; `durable` also syncs to disk."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mode = 0o755 if executable else 0o644
    try:
        temp.unlink(missing_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            os.fchmod(handle.fileno(), mode)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
        if durable:
            _sync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
