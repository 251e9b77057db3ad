"""One process per state directory: an exclusive ``fcntl`` lock on ``STATE/.lock``.

Two processes writing snapshots into one store would interleave two agents'
histories under one ``LATEST``. ``lillith run`` and ``lillith replay --state``
take the lock before anything else and hold it until they exit; the kernel
drops it when the process dies however it dies (SIGKILL included), so a
crash never leaves a stale lock. The file records the holder (pid, host,
command line), which a refused second process names.

Only local directories are locked (``fcntl`` has no meaning on an object
store): for an fsspec URL, running one daemon per store is the operator's
responsibility.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
from types import TracebackType

from lillith.errors import StateError

LOCK_NAME = ".lock"


class StateLockedError(StateError):
    """The state directory is locked by another process (``holder`` names it)."""


class StateLock:
    """Exclusive lock of a state directory; a context manager.

    Parameters
    ----------
    root : str
        The state directory (created, private, when missing), or an fsspec
        URL (``file://`` URLs are locked as local paths, others not at all).
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.path: str | None = None
        self._fd: int | None = None
        if "://" not in root or root.startswith("file://"):
            self.path = os.path.join(root.removeprefix("file://"), LOCK_NAME)

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StateLockedError` naming the holder."""
        if self.path is None or self._fd is not None:
            return
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise StateLockedError("the state directory is in use by another process",
                              state=self.root, holder=holder or "unknown") from None
        except BaseException:
            os.close(fd)
            raise
        me = f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)[:500]}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays; its content is overwritten by the next holder)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
