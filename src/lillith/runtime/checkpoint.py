"""Checkpoint cadence of one agent: when to snapshot, and the write off the loop.

The copy of the state is taken by the agent's own worker at a step boundary
(the caller passes it in); the write (checksums, encoding, fsync, rename)
runs in threads through zarr's async API, so the event loop stays responsive
and the worker keeps processing frames while a snapshot is written. One
write at a time per agent. In the daemon, a checkpoint that falls due while the
previous one is still being written waits for the next occasion (live frames
are not held back for storage); a run over a local source waits for the write
instead (``due(step, while_busy=True)``), so its snapshots fall at the same
steps however slow the disk is.

A snapshot that fails (a full disk, a state that cannot be copied) is
retried with exponential backoff (``retry_min_s`` doubling to
``retry_max_s``), not at every occasion, and logged once per change of
state: ``snapshot_failed`` when snapshots start failing (or fail for another
reason), ``snapshot_recovered`` when one is written again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from lillith.errors import StateError
from lillith.state.snapshot import SnapshotInfo, SnapshotStore

log = structlog.get_logger(component="checkpoint")


class Checkpointer:
    """Snapshot cadence and writes of one agent.

    Parameters
    ----------
    store : SnapshotStore
    agent : str
        Agent name (for the logs).
    every_frames : int, optional
        Snapshot once this many frames were processed since the last one.
    every_seconds : float, optional
        Snapshot once this much time passed since the last one.
    retry_min_s, retry_max_s : float
        Backoff after a failed snapshot: the next attempt on the cadence
        waits ``retry_min_s``, doubling with each failure in a row up to
        ``retry_max_s``.
    """

    def __init__(self, store: SnapshotStore, *, agent: str = "default",
                 every_frames: int | None = None, every_seconds: float | None = None,
                 retry_min_s: float = 1.0, retry_max_s: float = 60.0) -> None:
        self.store = store
        self.agent = agent
        self.every_frames = every_frames
        self.every_seconds = every_seconds
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.failing = 0  # failures in a row
        self._retry_at = 0.0  # monotonic time before which the cadence does not retry
        self._failed_since = 0.0
        self._last_error: str | None = None
        self.last_step: int | None = None
        self.last_time = time.monotonic()
        self.last: SnapshotInfo | None = None
        self.failures = 0
        self.written = 0
        self.last_seconds = 0.0  # how long the last successful write took
        self.last_written_at: float | None = None  # its wall-clock time (s since the epoch)
        self._busy = asyncio.Lock()
        self._dirty = False
        self._writing: int | None = None  # the step of the write in progress

    def touch(self) -> None:
        """The state changed without a frame (a command, an evolution round): the
        next snapshot is taken even at the step of the last one."""
        self._dirty = True

    def mark(self, step: int) -> None:
        """Record that the state at ``step`` is already on storage (after a resume)."""
        self.last_step = step
        self.last_time = time.monotonic()

    @property
    def busy(self) -> bool:
        """A write is in progress."""
        return self._busy.locked()

    def due(self, step: int, *, while_busy: bool = False) -> bool:
        """Is a snapshot due at ``step``?

        With ``while_busy`` False, never while a write is in progress; with
        True the caller is to :meth:`wait` for that write before taking the
        state. The cadence counts from the step (and start time) of the write
        in progress, if any, else from the last snapshot's."""
        last = self._writing if self._writing is not None else self.last_step
        if (self.busy and not while_busy) or (step == last and not self._dirty):
            return False
        if self.failing and time.monotonic() < self._retry_at:
            return False
        since = step - (last or 0)
        if self.every_frames is not None and since >= self.every_frames:
            return True
        return (self.every_seconds is not None and step > (last or 0)
                and time.monotonic() - self.last_time >= self.every_seconds)

    async def write(self, state: dict[str, Any], step: int, *, reason: str) -> SnapshotInfo | None:
        """Write ``state`` (a private copy) taken at ``step``; log, never raise on I/O.

        Returns the snapshot's info, or None when it was skipped (the same
        step is already saved) or failed (logged as ``snapshot_failed``; the
        previous snapshot stays the one ``LATEST`` names).
        """
        async with self._busy:
            if step == self.last_step and not self._dirty:
                return None
            dirty, self._dirty = self._dirty, False
            t0 = time.perf_counter()
            self._writing = step
            # the time cadence counts from the start of a write (a write slower than
            # the cadence is followed by the next at once, not a cadence later)
            self.last_time = time.monotonic()
            try:
                info = await self.store.awrite(state, step=step)
            except StateError as e:
                self._dirty = self._dirty or dirty
                self.failed(step, reason, e.message, **e.fields)
                return None
            except Exception as e:  # beyond what the store turns into a StateError: a
                # snapshot that cannot be written is a failed snapshot, never a crash
                self._dirty = self._dirty or dirty
                self.failed(step, reason, "snapshot write failed", detail=repr(e)[:500])
                return None
            finally:
                self._writing = None
            self.last_step = step
            self.last = info
            self.written += 1
            self.last_seconds = time.perf_counter() - t0
            self.last_written_at = time.time()
            log.info("snapshot_written", agent=self.agent, name=info.name, step=step,
                     bytes=info.bytes, seconds=round(time.perf_counter() - t0, 4),
                     reason=reason)
            if self.failing:
                log.warning("snapshot_recovered", agent=self.agent, name=info.name, step=step,
                            failures=self.failing,
                            seconds_failing=round(time.monotonic() - self._failed_since, 1))
                self.failing = 0
                self._last_error = None
            return info

    def failed(self, step: int, trigger: str, error: str, **fields: object) -> None:
        """Count a failed snapshot at ``step`` (taken for ``trigger``: cadence,
        command, shutdown), back off, and log it if it is news (the first
        failure in a row, or another error than the last one): the event
        ``snapshot_failed`` with ``error`` and ``fields`` (the store's: sizes,
        ``reason`` such as "disk full", path)."""
        now = time.monotonic()
        self.failures += 1
        if not self.failing:
            self._failed_since = now
        self.failing += 1
        delay = min(self.retry_min_s * 2.0 ** (self.failing - 1), self.retry_max_s)
        self._retry_at = now + delay
        self.last_time = now
        if error != self._last_error:
            self._last_error = error
            own = {"agent", "step", "trigger", "error", "retry_in_s", "event"}
            log.error("snapshot_failed", agent=self.agent, step=step, trigger=trigger,
                      error=error, retry_in_s=round(delay, 3),
                      **{k: v for k, v in fields.items() if k not in own})
        else:
            log.debug("snapshot_failed_again", agent=self.agent, step=step,
                      failures=self.failing, retry_in_s=round(delay, 3))

    async def wait(self) -> None:
        """Wait until no write is in progress."""
        async with self._busy:
            pass

