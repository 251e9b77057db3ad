"""Frames from one topic per channel: last-value hold at a fixed tick, with staleness marks.

Some sensor networks publish each channel on its own topic
(``plant/line1/temp``, ``plant/line1/rpm``), at its own pace. An agent bound
with ``tick_s`` takes the channel's name from the last topic level, keeps the
latest value of each channel, and at every tick assembles a frame of those
values (last-value hold). A channel not updated for ``stale_s`` seconds is
marked stale in the frame's output; once every channel is stale the ticks
stop producing frames (a silent network is not fed to the agent as a frozen
signal), and they resume with the next update. No frame is produced before
every channel has been seen once.

Pure bookkeeping: the daemon calls :meth:`Assembler.update` as messages
arrive and :meth:`Assembler.frame` on its tick; times are the caller's
monotonic clock in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Assembled:
    """One assembled frame.

    Attributes
    ----------
    values : ndarray, shape (C,), float64
        The latest value of each channel, in the configured order.
    stale : tuple of str
        Channels whose latest value is older than ``stale_s``.
    """

    values: npt.NDArray[np.float64]
    stale: tuple[str, ...]


class Assembler:
    """Latest value per channel; a frame per tick.

    Parameters
    ----------
    channels : sequence of str
        Channel names, in frame order.
    stale_s : float
        Age (s) beyond which a channel's value is marked stale.
    """

    def __init__(self, channels: Sequence[str], *, stale_s: float) -> None:
        if not channels:
            raise ValueError("an assembler needs at least one channel")
        if stale_s <= 0:
            raise ValueError("stale_s must be positive")
        self.channels = tuple(channels)
        self.index = {c: i for i, c in enumerate(self.channels)}
        self.stale_s = stale_s
        self._values = np.zeros(len(self.channels), dtype=np.float64)
        self._updated = np.full(len(self.channels), -np.inf)
        self.updates = 0

    def update(self, channel: str, value: float, now: float) -> None:
        """Record ``value`` as the latest of ``channel`` (a name from ``channels``)."""
        i = self.index[channel]
        self._values[i] = value
        self._updated[i] = now
        self.updates += 1

    def frame(self, now: float) -> Assembled | None:
        """The frame of this tick, or ``None`` (a channel never seen, or all stale)."""
        if not np.all(np.isfinite(self._updated)):
            return None
        old = now - self._updated > self.stale_s
        if old.all():
            return None
        stale = tuple(c for c, s in zip(self.channels, old, strict=True) if s)
        return Assembled(self._values.copy(), stale)
