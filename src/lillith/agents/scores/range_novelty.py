"""Frames outside every value a channel had lately."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lillith.records import read_arrays

F64 = npt.NDArray[np.float64]
A = npt.NDArray[Any]


_NO_DAY = -(1 << 62)  # (a day number no stream time has)


class RangeState(NamedTuple):
    """The range: ``lo``, ``hi`` float64 (C,), since the start; ``count`` int64
    (), frames; per day block (K = max(days, 1)): ``blk_lo``, ``blk_hi``
    float64 (K, C), ``blk_day`` int64 (K,) (the day each holds, or none),
    ``blk_n`` int64 (K,) frames; ``day`` int64 (), the current day; ``days``
    int64 (), the days covered."""

    lo: A
    hi: A
    count: A  # type: ignore[assignment]  # (the snapshot key; shadows tuple.count)
    blk_lo: A
    blk_hi: A
    blk_day: A
    blk_n: A
    day: A
    days: A


class RangeNovelty:
    """Flags frames outside every value seen lately (per channel).

    A channel's range is the smallest and largest value it has had over the
    last ``days`` days of stream time (day blocks: the current day and the
    ``days - 1`` before it), or since the start when ``days`` is 0 or the
    frames carry no time. A frame is an excursion when, once ``warm`` frames
    lie in that range, one of its channels lies more than ``tol`` times the
    channel's range beyond it; the frame then widens the range. A sensor
    reading beyond anything in its recent history is news even where the
    forecast error is ordinary (Numenta's NAB detector has the same rule, its
    "spatial anomaly", with tolerance 0.05, without forgetting). Forgetting
    bounds how long one glitch can mask later excursions.

    Parameters
    ----------
    n_channels : int
        Width of a frame.
    tol : float
        Margin beyond the range, as a fraction of it (>= 0).
    warm : int
        Frames in the range before any excursion is flagged.
    days : int
        Days of stream time the range covers (0: since the start).
    """

    def __init__(self, n_channels: int, *, tol: float = 0.2, warm: int = 50,
                 days: int = 0) -> None:
        self.n_channels = int(n_channels)
        self.tol = float(tol)
        self.warm = int(warm)
        self.days = int(days)
        self.lo = np.zeros(self.n_channels)  # since the start
        self.hi = np.zeros(self.n_channels)
        self.count = 0
        k = max(self.days, 1)
        self.blk_lo = np.zeros((k, self.n_channels))  # per day block (ring by day number)
        self.blk_hi = np.zeros((k, self.n_channels))
        self.blk_day = np.full(k, _NO_DAY, dtype=np.int64)  # _NO_DAY: empty
        self.blk_n = np.zeros(k, dtype=np.int64)
        self.day = _NO_DAY  # day number of the current block (days since the epoch)
        # range and frame count of the blocks before the current one (cached per day)
        self._past_lo = np.full(self.n_channels, np.inf)
        self._past_hi = np.full(self.n_channels, -np.inf)
        self._past_n = 0
        self._seed = False  # restored without blocks: seed the first day with the range

    def _enter_day(self, d: int) -> None:
        """Make day ``d`` the current block and cache the range of the others."""
        k = d % self.days
        if self._seed:  # (an older snapshot: its whole range stands for the first day)
            self._seed = False
            self.blk_day[k], self.blk_n[k] = d, self.count
            self.blk_lo[k], self.blk_hi[k] = self.lo, self.hi
        elif self.blk_day[k] != d:
            self.blk_day[k], self.blk_n[k] = d, 0
            self.blk_lo[k] = np.inf
            self.blk_hi[k] = -np.inf
        self.day = d
        live = self.blk_day > d - self.days
        live[k] = False
        self._past_n = int(self.blk_n[live].sum())
        self._past_lo = self.blk_lo[live].min(axis=0, initial=np.inf)
        self._past_hi = self.blk_hi[live].max(axis=0, initial=-np.inf)

    def _beyond(self, x: F64, lo: F64, hi: F64) -> bool:
        """Whether a channel of ``x`` lies more than ``tol`` times its range
        [``lo``, ``hi``] beyond it (a channel without a range never does)."""
        margin = self.tol * (hi - lo)
        return bool(((margin > 0) & ((x > hi + margin) | (x < lo - margin))).any())

    def _day_of(self, t: float | None) -> int | None:
        """The day block a frame at ``t`` counts in (None: no day blocks apply).
        A frame without time counts in the current day; a time going back, too."""
        if self.days <= 0:
            return None
        if t is None:
            return None if self.day == _NO_DAY else self.day
        return max(math.floor(t / 86400.0), self.day)

    def _window(self, d: int) -> tuple[F64, F64, int, F64, F64, int]:
        """The current block's range and count and the other blocks' range and
        count as they are once day ``d`` is the current one (see :meth:`_enter_day`)."""
        k = d % self.days
        if d == self.day:
            return (self.blk_lo[k], self.blk_hi[k], int(self.blk_n[k]), self._past_lo,
                    self._past_hi, self._past_n)
        if self._seed:
            lo, hi, n = self.lo, self.hi, self.count
        elif self.blk_day[k] != d:
            lo, hi, n = np.full(self.n_channels, np.inf), np.full(self.n_channels, -np.inf), 0
        else:
            lo, hi, n = self.blk_lo[k], self.blk_hi[k], int(self.blk_n[k])
        live = self.blk_day > d - self.days
        live[k] = False
        return (lo, hi, n, self.blk_lo[live].min(axis=0, initial=np.inf),
                self.blk_hi[live].max(axis=0, initial=-np.inf), int(self.blk_n[live].sum()))

    def score_one(self, x: F64, t: float | None = None) -> bool:
        """Whether frame ``x`` (shape (C,), input units) at stream time ``t`` (s
        since the epoch, or None) is an excursion. Changes nothing:
        :meth:`learn_one` folds it into the range."""
        d = self._day_of(t)
        if d is not None:
            lo, hi, n, past_lo, past_hi, past_n = self._window(d)
            return (n + past_n >= self.warm
                    and self._beyond(x, np.minimum(past_lo, lo), np.maximum(past_hi, hi)))
        return self.count >= max(self.warm, 1) and self._beyond(x, self.lo, self.hi)

    def update_one(self, x: F64, t: float | None = None) -> bool:
        """:meth:`score_one` then :meth:`learn_one`: whether ``x`` at ``t`` is an
        excursion, then has it folded into the range."""
        outside = self.score_one(x, t)
        self.learn_one(x, t)
        return outside

    def learn_one(self, x: F64, t: float | None = None) -> None:
        """Fold frame ``x`` at stream time ``t`` into the range (and its day block)."""
        d = self._day_of(t)
        if d is not None:
            if d != self.day:
                self._enter_day(d)
            k = d % self.days
            np.minimum(self.blk_lo[k], x, out=self.blk_lo[k])
            np.maximum(self.blk_hi[k], x, out=self.blk_hi[k])
            self.blk_n[k] += 1
        if self.count == 0:  # the range since the start
            self.lo[:] = x
            self.hi[:] = x
        else:
            np.minimum(self.lo, x, out=self.lo)
            np.maximum(self.hi, x, out=self.hi)
        self.count += 1

    def state(self) -> RangeState:
        """The range, day blocks and counter as a :class:`RangeState` of copies."""
        return RangeState(self.lo.copy(), self.hi.copy(), np.array(self.count, dtype=np.int64),
                          self.blk_lo.copy(), self.blk_hi.copy(), self.blk_day.copy(),
                          self.blk_n.copy(), np.array(self.day, dtype=np.int64),
                          np.array(self.days, dtype=np.int64))

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """:meth:`state` as a dict of arrays (the snapshot's ``range/`` keys)."""
        return self.state()._asdict()

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`. Without day blocks of this length
        (an older snapshot, or another ``days``), the range since the start
        stands for the first day that follows.

        Raises
        ------
        StateError
            When an array is missing or does not fit (another width).
        """
        c = self.n_channels
        blocks = ("blk_lo", "blk_hi", "blk_day", "blk_n", "day", "days")
        a = read_arrays(state, {"lo": (np.float64, (c,)), "hi": (np.float64, (c,)),
                                "count": (np.int64, ()), "blk_lo": (np.float64, None),
                                "blk_hi": (np.float64, None), "blk_day": (np.int64, None),
                                "blk_n": (np.int64, None), "day": (np.int64, ()),
                                "days": (np.int64, ())}, what="range", optional=blocks)
        self.lo, self.hi = a["lo"], a["hi"]
        self.count = int(a["count"])
        k = max(self.days, 1)
        if (self.days > 0 and all(b in a for b in blocks) and int(a["days"]) == self.days
                and a["blk_lo"].shape == a["blk_hi"].shape == (k, c)
                and a["blk_day"].shape == a["blk_n"].shape == (k,)):
            self.blk_lo, self.blk_hi = a["blk_lo"], a["blk_hi"]
            self.blk_day, self.blk_n = a["blk_day"], a["blk_n"]
            self.day = _NO_DAY
            self._seed = False
            d = int(a["day"])
            if d != _NO_DAY:
                self._enter_day(d)
        else:
            self.blk_day[:] = _NO_DAY
            self.blk_n[:] = 0
            self.day = _NO_DAY
            self._seed = self.count > 0
