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
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..core.errors import Collector, OrchcError, OutputError
from ..core.files import write_atomic
from ..recipe.resolve import Recipe
from ..script.render import render_job, render_recipe
from ..script.runtime import runtime_name, runtime_text
from ..script.shipped import shipped_files
from .manifest import MANIFEST, SUBMIT, Digest, ManifestTooLarge, build_manifest, digest, manifest_bytes, orchc_manifest, script_name
from .plan import ALLOCATION_SCRIPT, plan_from_manifest, submit_script
from .workers import PARALLEL_FROM, Helper, Queue, workers

LOCK = ".orchc.lock"
STAGING = ".orchc-tmp"
_SCRIPT_LIMIT = 64 << 20   # a file a manifest lists that is larger is not one orchc wrote: nothing is removed


@dataclass
class Output:
    """One compiled recipe: file name (relative to its folder) -> text."""

    recipe: Recipe
    files: dict[str, str]
    manifest: dict[str, Any]


def build_output(recipe: Recipe, scripts: dict[str, str] | None = None, self_contained: bool = False) -> Output:
    """The files of one recipe: its scripts (job name -> text; rendered here unless given), the job runtime they
    share (unless `self_contained`: each script holds it), submit.sh and manifest.json."""
    scripts = render_recipe(recipe, self_contained) if scripts is None else scripts
    manifest, files = _manifest_and_plan_files(recipe, self_contained)
    files.update({script_name(job): scripts[job.name] for job in recipe.jobs})
    manifest["digest"] = digest(files)
    files[MANIFEST] = manifest_bytes(manifest, recipe).decode("utf-8")
    return Output(recipe, files, manifest)


def _manifest_and_plan_files(recipe: Recipe, self_contained: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """The manifest (without its digest) and the files made with it: submit.sh, allocation.sbatch for
    `allocation: one`, the job runtime the scripts source and the programs their types ship (none of those
    two when each script holds them)."""
    manifest = build_manifest(recipe)
    files: dict[str, str] = {}
    if not self_contained:
        files[runtime_name()] = runtime_text()
        files.update(shipped_files(recipe))
        manifest["files"] = sorted([*manifest["files"], *files])
    allocation = _one_allocation(recipe)   # allocation: one -> allocation.sbatch, submitted alone
    if allocation is not None:
        files[ALLOCATION_SCRIPT], manifest["allocation"] = allocation
        manifest["files"] = sorted([*manifest["files"], ALLOCATION_SCRIPT])
    arrays = _arrays(recipe)   # more jobs than the site runs at once -> job arrays of the sweep's clients
    if arrays:
        files.update(arrays[0])
        manifest["arrays"] = arrays[1]
        manifest["files"] = sorted([*manifest["files"], *arrays[0]])
    files[SUBMIT] = submit_script(plan_from_manifest(manifest, MANIFEST))
    return manifest, files


def _one_allocation(recipe: Recipe) -> tuple[str, dict[str, Any]] | None:
    if recipe.allocation is None:
        return None
    from ..script.allocation import one_allocation  # only `allocation:` needs it: the common compile starts sooner

    return one_allocation(recipe, ALLOCATION_SCRIPT)


def _arrays(recipe: Recipe) -> tuple[dict[str, str], list[dict[str, Any]]] | None:
    """(the arrays' scripts and tasks files, the manifest's `arrays` entries), or None when the recipe has no array."""
    if "max_running" not in recipe.site.limits:
        return None
    from ..script.arrays import array_groups, array_script, manifest_entry, tasks_text

    groups = array_groups(recipe)
    if not groups:
        return None
    files: dict[str, str] = {}
    for group in groups:
        files[group.script] = array_script(group, recipe)
        files[group.tasks] = tasks_text(group)
    return files, [manifest_entry(group) for group in groups]


def write_recipes(recipes: list[Recipe], out_dir: Path, self_contained: bool = False) -> int:
    """Render and write every recipe under `out_dir/<recipe>/`, one script at a time: a script is rendered,
    hashed into its manifest's digest and staged, and then let go, so memory does not grow with the
    scripts' text (a 100,000-job sweep). Nothing is put in place until every recipe rendered: a render
    error leaves the output folder as it was. Returns how many files the recipes have."""
    workers()   # a wrong ORCHC_WORKERS is an error before anything is written, whatever the recipes' size
    return _write_all(partial(_stage_recipes, recipes, out_dir, self_contained), out_dir)


def render_all(recipes: list[Recipe], self_contained: bool = False) -> None:
    """Everything `write_recipes` makes, made and let go (what `orchc validate` checks): the render errors
    of every recipe, each the one a compile gives, and nothing kept or written."""
    problems = Collector()
    for recipe in recipes:
        try:
            _manifest_and_plan_files(recipe, self_contained)
            for job in recipe.jobs:
                render_job(job, recipe, self_contained)
        except OrchcError as error:
            problems.absorb(error)
    problems.raise_if_any()


def _write_all(stage: Callable[[int], list[_Staged]], out_dir: Path) -> int:
    made_folder = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        made_lock = not (out_dir / LOCK).exists()
        with _locked(out_dir), _staging(out_dir) as staging:
            try:
                staged = stage(staging)
            except OrchcError:
                # A compile that fails leaves no trace: not even the lock or the folder it made for itself.
                if made_lock:
                    with contextlib.suppress(OSError):
                        (out_dir / LOCK).unlink()
                raise
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
    """One recipe's files: every name, where in the staging folder each new or changed one waits, and the files
    the previous compile wrote (its manifest, read before anything is staged)."""

    recipe: str
    names: list[str]
    waiting: dict[str, str]
    previous: set[str]


def _stage_recipes(recipes: list[Recipe], out_dir: Path, self_contained: bool, staging: int) -> list[_Staged]:
    """Render, hash and stage the files of every recipe. The scripts of all recipes are taken from one queue:
    by this process alone, or for PARALLEL_FROM scripts or more on 2 CPUs also by a forked helper (workers.py).
    A render error anywhere gives the errors a compile in one process gives, recipe by recipe."""
    folders = [_Folder(recipe, out_dir, number, self_contained) for number, recipe in enumerate(recipes)]
    # in the order of names, the order each manifest's digest takes them in: few arrive before their turn
    work = [(folder, name) for folder in folders for name in sorted(folder.scripts)]
    queue = Queue.made(len(work)) if len(work) >= PARALLEL_FROM and workers() > 1 else None
    helper: Helper | None = None
    try:
        rendered: dict[int, str] = {}
        if queue is not None:
            # A type's first script costs tens of times the next (templates loaded and compiled): one of each
            # type rendered here first, so that the helper inherits what they loaded instead of loading it again
            rendered = _first_of_each_type(work)
            helper = Helper(queue, set(rendered), _helper_work(work, staging))

        def from_helper(position: int, data: bytes, staged: bool) -> None:
            folder, name = work[position]
            folder.take(name, data, staging, f"h{position}" if staged else None)

        for folder in folders:   # while the helper renders
            folder.plan(staging)
        for position, text in rendered.items():
            folder, name = work[position]
            folder.stage(name, text.encode("utf-8"), staging)
        for position in (range(len(work)) if queue is None else queue.positions()):
            if position in rendered:
                continue
            folder, name = work[position]
            folder.stage(name, render_job(folder.scripts[name], folder.recipe, folder.self_contained).encode("utf-8"), staging)
            if helper is not None and not helper.collect(from_helper, wait=False):
                raise _HelperFailed
        if helper is not None and not helper.collect(from_helper, wait=True):
            raise _HelperFailed
        return [folder.staged() for folder in folders]
    except (OrchcError, _HelperFailed) as error:
        if helper is not None:
            helper.stop()
        if isinstance(error, ManifestTooLarge):   # every script rendered
            raise
        render_all(recipes, self_contained)   # raises the errors of each recipe, in order, as one process finds them
        raise OutputError("a script failed to render in one process only; nothing was written") from None
    finally:
        if helper is not None:
            helper.stop()
        if queue is not None:
            queue.close()
        for folder in folders:
            folder.close()


class _HelperFailed(Exception):
    """A script failed to render in the helper."""


def _helper_work(work: list[tuple[_Folder, str]], staging: int) -> Callable[[int], tuple[bytes, bool]]:
    """What the helper does with a position: render and stage that script; (its bytes, whether a file was
    staged). It keeps one output folder open, that of the recipe it works on."""
    last: _Folder | None = None

    def one(position: int) -> tuple[bytes, bool]:
        nonlocal last
        folder, name = work[position]
        if last is not None and last is not folder:
            last.close()
        last = folder
        data = render_job(folder.scripts[name], folder.recipe, folder.self_contained).encode("utf-8")
        staged: dict[str, str] = {}
        _stage(name, data, folder.existing(), staging, f"h{position}", staged)
        return data, name in staged

    return one


def _first_of_each_type(work: list[tuple[_Folder, str]]) -> dict[int, str]:
    """The scripts of the first job of each type, rendered, by position."""
    first: dict[str, int] = {}
    for position, (folder, name) in enumerate(work):
        first.setdefault(folder.scripts[name].typedef.name, position)
    rendered = {}
    for position in first.values():
        folder, name = work[position]
        rendered[position] = render_job(folder.scripts[name], folder.recipe, folder.self_contained)
    return rendered


class _Folder:
    """One recipe's files while they are staged: its plan files and manifest (made here), the digest of its
    files fed in the order of their names as they arrive from either process, and its output folder (open
    while its files are staged, to leave unchanged files alone)."""

    def __init__(self, recipe: Recipe, out_dir: Path, number: int, self_contained: bool) -> None:
        self.recipe, self.out_dir, self.number, self.self_contained = recipe, out_dir, number, self_contained
        self.scripts = {script_name(job): job for job in recipe.jobs}
        self.names: list[str] = []
        self.hashed = _InOrder([])
        self.waiting: dict[str, str] = {}
        self.manifest: dict[str, Any] | None = None
        self.finished: _Staged | None = None
        self._fd: int | None = None
        self._opened = False
        # an output folder orchc must not write through, or a manifest there it did not write, is an error here,
        # before any render
        self.previous = _previous_files(self.existing(), out_dir, recipe.name)
        self.close()

    def existing(self) -> int | None:
        if not self._opened:
            self._fd, self._opened = _existing_folder(self.out_dir, self.recipe.name), True
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._opened = None, False

    def plan(self, staging: int) -> None:
        """Make the manifest (without its digest) and the plan files, and stage those: before any script of
        the recipe is staged (the digest is taken over all its files, in the order of their names)."""
        self.manifest, files = _manifest_and_plan_files(self.recipe, self.self_contained)
        self.names = sorted([*files, *self.scripts])
        self.hashed = _InOrder(self.names)
        for name, text in files.items():
            self.stage(name, text.encode("utf-8"), staging)
        self.close()   # opened again when its scripts come: a compile of many recipes holds few folders open

    def stage(self, name: str, data: bytes, staging: int) -> None:
        """Stage a file made in this process."""
        temp = f"{self.number}.{len(self.waiting)}"
        _stage(name, data, self.existing(), staging, temp, self.waiting)
        self.take(name, data, staging, None)

    def take(self, name: str, data: bytes, staging: int, temp: str | None) -> None:
        """Hash a file (`temp`: the helper staged it there); stage the manifest once every file is in."""
        if temp is not None:
            self.waiting[name] = temp
        self.hashed.put(name, data)
        if self.hashed.complete() and self.manifest is not None and self.finished is None:
            self.manifest["digest"] = self.hashed.text()
            _stage(MANIFEST, manifest_bytes(self.manifest, self.recipe), self.existing(), staging,
                   f"{self.number}.m", self.waiting)
            self.finished = _Staged(self.recipe.name, [*self.names, MANIFEST], self.waiting, self.previous)
            self.close()

    def staged(self) -> _Staged:
        if self.finished is None:
            raise OutputError(f"{self.recipe.name}: {self.hashed.missing()}: a rendered script went missing while "
                              "the scripts were written")
        return self.finished


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

    def complete(self) -> bool:
        return self._next == len(self._names)

    def missing(self) -> str:
        return self._names[self._next] if self._next < len(self._names) else ""

    def text(self) -> str:
        return self._hasher.text()


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
        stale = staged.previous - set(staged.names)
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


def _previous_files(existing: int | None, out_dir: Path, recipe: str) -> set[str]:
    return set() if existing is None else _files_we_wrote(existing, out_dir / recipe, recipe)


def _files_we_wrote(folder: int, shown: Path, recipe: str) -> set[str]:
    """The files the manifest in `folder` (shown as `shown`) lists, if they are still as orchc wrote them; none
    when there is no manifest. A manifest orchc did not write for `recipe` is an error (manifest.orchc_manifest)."""
    manifest = orchc_manifest(folder, shown, recipe)
    if manifest is None:
        return set()
    names = manifest.get("files")
    if not isinstance(names, list) or not all(isinstance(n, str) and _plain_name(n) for n in names):
        return set()
    hasher = Digest()
    for name in sorted(set(names) - {MANIFEST}):   # as digest() takes them, one file in memory at a time
        data = _read_regular(folder, name, _SCRIPT_LIMIT)
        if data is None:
            return set()
        hasher.add(name, data)
    return set(names) if hasher.text() == manifest.get("digest") else set()


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")


def write_files(folder: Path, files: dict[str, str]) -> list[Path]:
    """Write `files` (name -> text) into an existing `folder` orchc just made; scripts are made executable."""
    written = []
    for name, text in sorted(files.items(), key=lambda item: item[0] == MANIFEST):
        write_atomic(folder / name, text, executable=name.endswith((".sh", ".sbatch")))
        written.append(folder / name)
    return sorted(written)
