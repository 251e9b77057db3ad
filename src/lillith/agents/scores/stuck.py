"""A channel that repeats its last value for longer than ever before."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lillith.records import read_arrays

F64 = npt.NDArray[np.float64]
A = npt.NDArray[Any]


class StuckState(NamedTuple):
    """The runs: ``last`` float64 (C,), the last frame; ``run``, ``longest``
    int64 (C,), the current and the longest run of repeats; ``flagged`` bool
    (C,), in a run that was flagged; ``count`` int64 (), frames."""

    last: A
    run: A
    longest: A
    flagged: A
    count: A  # type: ignore[assignment]  # (the snapshot key; shadows tuple.count)


class StuckSensor:
    """Flags a channel that repeats its last value for longer than ever before.

    Per channel, the current run (frames in a row equal to the one before,
    exactly: a stuck sensor or a frozen feed repeats its last reading) and
    the longest run it has had. After ``warm`` frames, a frame is flagged
    when a channel's run reaches ``max(min_run, ceil(factor * longest))``
    (once per run). Neither the forecast error nor the level sees a
    flatline: a constant is easy to forecast and sits at the level. A
    channel whose readings repeat by nature (quantised, idle at zero)
    alarms at most a few times while its longest run grows, each time only
    for a run ``factor`` times longer than any before. :meth:`unchanged`
    tells which channels have repeated their first value ever since.

    Parameters
    ----------
    n_channels : int
        Width of a frame.
    factor : float
        How many times the longest run so far a run must last (>= 1).
    min_run : int
        Shortest run ever flagged (frames).
    warm : int
        Frames seen before any run is flagged.
    """

    def __init__(self, n_channels: int, *, factor: float = 2.0, min_run: int = 10,
                 warm: int = 50) -> None:
        self.n_channels = int(n_channels)
        self.factor = float(factor)
        self.min_run = int(min_run)
        self.warm = int(warm)
        self.last = np.zeros(self.n_channels)
        self.run = np.zeros(self.n_channels, dtype=np.int64)
        self.longest = np.zeros(self.n_channels, dtype=np.int64)
        self.flagged = np.zeros(self.n_channels, dtype=bool)  # in a run that was flagged
        self._stuck = False  # (flagged.any(), kept up to date)
        self.count = 0

    def score_one(self, x: F64) -> bool:
        """Whether frame ``x`` (shape (C,), input units) makes a channel's run of
        repeats reach its alarm length. Changes nothing: :meth:`learn_one` folds it in."""
        if self.count == 0 or self.count < self.warm:
            return False
        same = x == self.last
        if not same.any():
            return False
        longest = np.maximum(self.longest, np.where(same, 0, self.run))
        run = np.where(same, self.run + 1, 0)
        need = np.maximum(self.min_run, np.ceil(self.factor * longest))
        return bool((same & (run == need)).any())

    def learn_one(self, x: F64) -> None:
        """Fold frame ``x`` into the runs (a run that reaches its alarm length is flagged)."""
        self.update_one(x)

    def update_one(self, x: F64) -> bool:
        """:meth:`score_one` then :meth:`learn_one` in one pass: returns whether
        ``x`` made a run reach its alarm length, then has it folded in."""
        reached = False
        if self.count > 0:
            same = x == self.last
            if same.any():
                np.maximum(self.longest, np.where(same, 0, self.run), out=self.longest)
                self.run = np.where(same, self.run + 1, 0)
                if self._stuck:
                    self.flagged &= same
                    self._stuck = bool(self.flagged.any())
                if self.count >= self.warm:
                    need = np.maximum(self.min_run, np.ceil(self.factor * self.longest))
                    hit = same & (self.run == need)
                    if hit.any():
                        self.flagged |= hit
                        self._stuck = True
                        reached = True
            elif self.run.any():  # (the usual frame: nothing repeats, no run to end)
                np.maximum(self.longest, self.run, out=self.longest)
                self.run[:] = 0
                if self._stuck:
                    self.flagged[:] = False
                    self._stuck = False
        self.last[:] = x
        self.count += 1
        return reached

    def stuck(self) -> bool:
        """Whether a run that was flagged still goes on (the sensor is still stuck)."""
        return self._stuck

    def unchanged(self) -> npt.NDArray[np.bool_]:
        """Per channel (shape (C,)), whether every frame so far had the first
        frame's value (True before the first frame)."""
        out: npt.NDArray[np.bool_] = self.run >= self.count - 1
        return out

    def state(self) -> StuckState:
        """The runs and counter as a :class:`StuckState` of copies."""
        return StuckState(self.last.copy(), self.run.copy(), self.longest.copy(),
                          self.flagged.copy(), np.array(self.count, dtype=np.int64))

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """:meth:`state` as a dict of arrays (the snapshot's ``stuck/`` keys)."""
        return self.state()._asdict()

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`.

        Raises
        ------
        StateError
            When an array is missing or does not fit (another width).
        """
        c = self.n_channels
        a = read_arrays(state, {"last": (np.float64, (c,)), "run": (np.int64, (c,)),
                                "longest": (np.int64, (c,)), "flagged": (np.bool_, (c,)),
                                "count": (np.int64, ())}, what="stuck-sensor",
                        optional=("flagged",))
        self.last, self.run, self.longest = a["last"], a["run"], a["longest"]
        # (older snapshots: no run counts as flagged)
        self.flagged = a.get("flagged", np.zeros(c, dtype=bool))
        self._stuck = bool(self.flagged.any())
        self.count = int(a["count"])
