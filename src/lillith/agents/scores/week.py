"""How far the last day departs from the usual week."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lillith.records import read_arrays

F64 = npt.NDArray[np.float64]
A = npt.NDArray[Any]


class WeekState(NamedTuple):
    """The usual week: ``prof`` float64 (168, C), each hour's usual value
    (input units); ``seen`` int64 (168,), frames in each hour; ``first``
    float64 (168,), each hour's first time; ``bsum`` float64 (24, C), ``bcount``
    float64 (24,), the residuals of the last 24 hours; ``hour`` int64 (), the
    newest hour; ``start``, ``last`` float64 (), the first and the latest time
    (s); ``frames`` int64 ()."""

    prof: A
    seen: A
    first: A
    bsum: A
    bcount: A
    hour: A
    start: A
    last: A
    frames: A


class WeekProfile:
    """How far the last day departs from the usual week, per hour of the week.

    Keeps, per channel, the usual value (input units) of each of the 168
    hours of the week (stream time, UTC) as a running mean. A frame ``dt``
    seconds after the previous one moves its hour's value by
    ``max(1/n, rate * dt / 3600)`` (``n``: frames seen in that hour of the
    week), so an hour of data moves it by about ``rate`` whatever the
    sampling interval.

    Once an hour of the week has data from at least ``WEEKS`` weeks before
    (so its usual value has seen that hour on ``WEEKS`` different weeks and
    one unusual week does not become the usual one), every frame's residual
    against it is measured in units of the normaliser's scale. Raw values
    are profiled, not normalised ones: the normaliser's location follows
    the last days, so a Monday's normalised values depend on the weekend
    before it. The deviation is
    ``mean_c |mean of the residuals over the last 24 hours|`` (hourly
    buckets: the current hour and the 23 before it). A whole day unlike the
    same days of earlier weeks (a holiday in traffic, a weekday that behaves
    like a Sunday) then stands out even when every frame is ordinary for its
    level and its recent past. Nothing is reported during the first
    ``WEEKS`` weeks of stream time.

    Parameters
    ----------
    n_channels : int
        Width of a frame.
    rate : float
        Update of an hour's usual value per hour of data (fraction).
    """

    BINS = 168
    HOURS = 24
    WEEKS = 2
    """Weeks of stream time an hour of the week needs before it is usual."""
    _USUAL_S = WEEKS * 7 * 86400.0 - 3600.0  # an hour's first visit may end its hour

    def __init__(self, n_channels: int, *, rate: float = 0.2) -> None:
        self.n_channels = int(n_channels)
        self.rate = float(rate)
        self.prof = np.zeros((self.BINS, self.n_channels))
        self.seen = np.zeros(self.BINS, dtype=np.int64)
        self.first = np.zeros(self.BINS)
        self.bsum = np.zeros((self.HOURS, self.n_channels))
        self.bcount = np.zeros(self.HOURS)
        self.hour = 0  # hour (since the epoch) of the newest bucket, from the first frame
        self.start = 0.0  # stream time of the first frame
        self.last = 0.0  # and of the latest
        self.frames = 0

    def _hour_of(self, t: float) -> tuple[int, int, bool]:
        """Hour since the epoch, its bin of the week, and whether that bin has
        its usual value from at least ``WEEKS`` weeks before ``t``."""
        h = math.floor(t / 3600.0)
        b = (h + 72) % self.BINS  # the epoch began on a Thursday: bin 0 is Monday 00:00
        usual = int(self.seen[b]) > 0 and t - float(self.first[b]) >= self._USUAL_S
        return h, b, usual

    def _buckets(self, h: int, r: F64, bsum: F64, bcount: F64) -> int:
        """Add residual ``r`` at hour ``h`` to the hourly buckets ``bsum``,
        ``bcount`` (in place; new hours start empty); returns the newest hour."""
        hour = self.hour
        if self.frames == 0:  # (not a sentinel hour: times before 1970 are hours < 0)
            hour = h
        elif h > hour:  # new hours: their buckets start empty (all, after a day's gap)
            for k in range(hour + 1, min(h, hour + self.HOURS) + 1):
                bsum[k % self.HOURS] = 0.0
                bcount[k % self.HOURS] = 0.0
            hour = h
        k = hour % self.HOURS  # (a time going backwards counts in the newest hour)
        bsum[k] += r
        bcount[k] += 1.0
        return hour

    def score_one(self, x: F64, scale: F64, t: float) -> float | None:
        """The deviation of the last 24 hours from the usual week (>= 0, scale
        units) once frame ``x`` (shape (C,), input units) at stream time ``t`` (s
        since the epoch) is in, its residual measured in ``scale`` (shape (C,),
        input units, > 0); None during the first ``WEEKS`` weeks of stream time
        (no usual week yet). Changes nothing: :meth:`learn_one` folds the frame in."""
        start = t if self.frames == 0 else self.start
        if t - start < self.WEEKS * 7 * 86400.0:
            return None
        h, b, usual = self._hour_of(t)
        r = (x - self.prof[b]) / scale if usual else np.zeros(self.n_channels)
        bsum, bcount = self.bsum.copy(), self.bcount.copy()
        self._buckets(h, r, bsum, bcount)
        return self._deviation(bsum, bcount)

    @staticmethod
    def _deviation(bsum: F64, bcount: F64) -> float:
        mean = bsum.sum(axis=0) / max(float(bcount.sum()), 1.0)
        return float(np.abs(mean).sum() / mean.size)

    def learn_one(self, x: F64, scale: F64, t: float) -> None:
        """Fold frame ``x`` at stream time ``t`` into its hour's usual value and
        its residual (in ``scale``) into the hourly buckets."""
        self.update_one(x, scale, t)

    def update_one(self, x: F64, scale: F64, t: float) -> float | None:
        """:meth:`score_one` then :meth:`learn_one` in one pass: returns the
        deviation ``score_one(x, scale, t)`` returned (the buckets it reads are
        the ones the frame leaves), then has the frame folded in."""
        if self.frames == 0:
            self.start = self.last = t
        dt = min(max(t - self.last, 0.0), 3600.0)
        self.last = t
        h, b, usual = self._hour_of(t)
        n = int(self.seen[b])
        r = (x - self.prof[b]) / scale if usual else np.zeros(self.n_channels)
        if n == 0:
            self.first[b] = t
        self.prof[b] += max(1.0 / (n + 1), self.rate * dt / 3600.0) * (x - self.prof[b])
        self.seen[b] = n + 1
        self.hour = self._buckets(h, r, self.bsum, self.bcount)
        self.frames += 1
        if t - self.start < self.WEEKS * 7 * 86400.0:
            return None
        return self._deviation(self.bsum, self.bcount)

    def state(self) -> WeekState:
        """The profile, visits and buckets as a :class:`WeekState` of copies."""
        return WeekState(self.prof.copy(), self.seen.copy(), self.first.copy(),
                         self.bsum.copy(), self.bcount.copy(),
                         np.array(self.hour, dtype=np.int64), np.array(self.start),
                         np.array(self.last), np.array(self.frames, dtype=np.int64))

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """:meth:`state` as a dict of arrays (the snapshot's ``week/`` keys)."""
        return self.state()._asdict()

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`.

        Raises
        ------
        StateError
            When an array is missing or does not fit (another width).
        """
        b, c = self.BINS, self.n_channels
        a = read_arrays(state, {"prof": (np.float64, (b, c)), "seen": (np.int64, (b,)),
                                "first": (np.float64, (b,)),
                                "bsum": (np.float64, self.bsum.shape),
                                "bcount": (np.float64, self.bcount.shape),
                                "hour": (np.int64, ()), "start": (np.float64, ()),
                                "last": (np.float64, ()), "frames": (np.int64, ())},
                        what="week profile")
        self.prof, self.seen, self.first = a["prof"], a["seen"], a["first"]
        self.bsum, self.bcount = a["bsum"], a["bcount"]
        self.hour = int(a["hour"])
        self.start = float(a["start"])
        self.last = float(a["last"])
        self.frames = int(a["frames"])
