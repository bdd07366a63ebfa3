"""Reading and writing files safely: bounded reads that follow no link inside a run folder, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path


class LinkInRunFolder(OSError):
    """A symbolic link met inside a run folder: orchc follows none (a run folder is data, possibly hostile)."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ELOOP, f"{path} is a symbolic link: orchc follows no link inside a run folder",
                         str(path))

    def __str__(self) -> str:
        return str(self.strerror)


def open_in_run(run_dir: Path, relative: str) -> int:
    """A descriptor for reading `relative` (a/b/c) inside `run_dir`, opened one component at a time below the
    run folder with O_NOFOLLOW: a symbolic link (to a file or a folder) is a LinkInRunFolder error, a missing
    file a FileNotFoundError. The run folder itself is reached as the user named it (their link is theirs)."""
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise OSError(errno.EINVAL, f"{relative!r} is not a path inside a run folder", relative)
    folder = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                opened = os.open(part, flags, dir_fd=folder)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(folder, part):
                    raise LinkInRunFolder(run_dir.joinpath(*parts[:index + 1])) from None
                raise
            os.close(folder)
            folder = opened
        return os.dup(folder)
    finally:
        os.close(folder)


def _is_link(folder: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


def read_in_run(run_dir: Path, relative: str, limit: int) -> str:
    """The text of `relative` inside `run_dir` (see open_in_run, read_regular): every reader of a run folder's
    files goes through here."""
    return _read_text(open_in_run(run_dir, relative), run_dir / relative, limit)


def read_regular(path: Path, limit: int) -> str:
    """A regular file's text (UTF-8, at most `limit` bytes); a FIFO, device or folder is an OSError, never a hang;
    the file itself being a symbolic link is a LinkInRunFolder error (inside a run folder, use read_in_run)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise LinkInRunFolder(path) from None
        raise
    return _read_text(fd, path, limit)


def _read_text(fd: int, path: Path, limit: int) -> str:
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file", str(path))
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(0, f"larger than {limit} bytes", str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise OSError(0, "not UTF-8 text", str(path)) from None


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
