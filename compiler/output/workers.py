"""A second process for big compiles: a forked helper that takes work from the same queue as this process.

Only `emit.py` uses it. The work is a list of positions (scripts, in the order their digest wants them);
both processes take the next few from a `Queue` until none is left, so they end together whatever else
each has to do and however fast each CPU runs. The helper does `work(position)` (render and stage one
script) and sends back on a pipe, as it goes, the position, the bytes (for the digest) and whether it
staged a file; it shares nothing else with this process, and leaves by os._exit, so it never runs this
process's cleanup. Linux only (fork, memfd_create, sched_getaffinity); elsewhere one process does all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import sys
from collections.abc import Callable, Iterator

from ..core.errors import ClusterError, OrchcError

PARALLEL_FROM = 256
"""Scripts in a compile from which a second process renders some of them (below, forking costs more)."""
WORKERS_VARIABLE = "ORCHC_WORKERS"


class WorkersError(ClusterError):
    """ORCHC_WORKERS is wrong, or the helper ended in an unexpected way (reported like a ClusterError)."""


def workers() -> int:
    """Processes that render a compile's scripts: 2 when this process may run on 2 CPUs, else 1;
    ORCHC_WORKERS=1 keeps everything in one process."""
    text = os.environ.get(WORKERS_VARIABLE, "")
    if text:
        if text not in ("1", "2"):
            raise WorkersError(f"{WORKERS_VARIABLE}={text[:20]!r}: give 1 or 2")
        return int(text)
    # Linux only: there fork is plain and sched_getaffinity says which CPUs this process may use (macOS has
    # neither a safe fork for every process nor that call).
    return 2 if sys.platform.startswith("linux") and len(os.sched_getaffinity(0)) >= 2 else 1


class Queue:
    """Positions 0 .. total-1, handed out a few at a time to whichever process asks first. The next position
    is a number in a memory file both processes share, taken under a POSIX record lock (held per process,
    unlike flock, so it excludes a forked child)."""

    CHUNK = 4

    def __init__(self, total: int, fd: int) -> None:
        self.total, self.fd = total, fd
        os.pwrite(self.fd, bytes(8), 0)

    @classmethod
    def made(cls, total: int) -> Queue | None:
        """A queue in memory (not in the output folder: a cluster's parallel file system may refuse record
        locks), or None where none can be made: then one process does everything."""
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


_FRAME = struct.Struct("<IIB")   # what the helper sends per position: the position, the size of its bytes, staged or not
_RENDER_ERROR = 3


class Helper:
    """The forked process. `work(position)` -> (the bytes made, whether a file was staged); an OrchcError there
    ends the helper, and `collect` answers False."""

    def __init__(self, queue: Queue, skip: set[int], work: Callable[[int], tuple[bytes, bool]]) -> None:
        reading, writing = os.pipe()
        with contextlib.suppress(OSError):   # room for a few hundred scripts: the helper rarely waits for a reader
            fcntl.fcntl(writing, fcntl.F_SETPIPE_SZ, 1 << 20)
        pid = os.fork()
        if pid == 0:   # the helper
            status = 4
            try:
                os.close(reading)
                with os.fdopen(writing, "wb") as pipe:
                    for position in queue.positions():
                        if position not in skip:
                            data, staged = work(position)
                            pipe.write(_FRAME.pack(position, len(data), staged) + data)
                            pipe.flush()
                status = 0
            except OrchcError:
                status = _RENDER_ERROR
            except BaseException:
                status = 4
            finally:
                os._exit(status)
        os.close(writing)
        os.set_blocking(reading, False)
        self.pid: int | None = pid
        self.reading = reading
        self.buffer = bytearray()

    def collect(self, take: Callable[[int, bytes, bool], None], wait: bool) -> bool:
        """`take(position, bytes, staged)` for what the helper sent so far (`wait`: for all it will send, and
        reap it); False when its work raised an OrchcError."""
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
            self._take(chunk, take)
        os.close(self.reading)
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        code = os.waitstatus_to_exitcode(status)
        if code == _RENDER_ERROR:
            return False
        if code != 0 or self.buffer:   # what went missing otherwise is found by the digest
            raise WorkersError(f"the process rendering scripts beside this one ended with status {code}; "
                               "nothing was written")
        return True

    def _take(self, chunk: bytes, take: Callable[[int, bytes, bool], None]) -> None:
        buffer = self.buffer
        buffer += chunk
        start = 0
        while len(buffer) - start >= _FRAME.size:
            position, size, staged = _FRAME.unpack_from(buffer, start)
            end = start + _FRAME.size + size
            if end > len(buffer):
                break
            take(position, bytes(buffer[start + _FRAME.size:end]), bool(staged))
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
