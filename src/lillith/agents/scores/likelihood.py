"""Raw anomaly scores as a likelihood over a rolling window."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lillith.errors import StateError
from lillith.records import read_arrays

F64 = npt.NDArray[np.float64]
A = npt.NDArray[Any]


class LikelihoodState(NamedTuple):
    """The likelihood's windows: ``raw`` float64 (short,), the last raw scores
    (a ring); ``buf`` float64 (window,), the levels (a ring); ``pos`` int64 (),
    the next slot of ``buf``; ``count`` int64 (), raw scores seen; ``sums``
    float64 (2,), the sum and sum of squares of ``buf``."""

    raw: A
    buf: A
    pos: A
    count: A  # type: ignore[assignment]  # (the snapshot key; shadows tuple.count)
    sums: A


class AnomalyLikelihood:
    """Turn raw anomaly scores into a likelihood in [0, 1] over a rolling window.

    As Numenta's anomaly likelihood: the current level is the mean of the
    last ``short`` raw scores; its distribution is estimated from the same
    short means over the last ``window`` steps before this one (their mean
    and standard deviation, the latter floored at 5 % of the mean and at
    10 % of ``expected``).
    ``z = (level - mean) / std`` and ``likelihood = 1 / (1 + exp(-1.7 z))``,
    a logistic approximation of the normal CDF whose tail does not round to
    1.0 before z ~ 20, so strong anomalies stay ranked. Until ``min_history``
    steps have been seen the likelihood is 0.5. What is done with a high
    likelihood (alarms, rest periods) is :class:`lillith.agents.scores.alarm.AlarmState`'s.

    Parameters
    ----------
    window : int
        Rolling window of short means (steps).
    short : int
        Steps averaged for the current level.
    min_history : int
        Steps needed before the likelihood departs from 0.5.
    expected : float
        Mean of the raw scores by construction, if they have one (the
        agent's: the sum of its terms' weights, each term being divided by
        its running mean); 0 for none. A window far below it (terms that
        contribute nothing, as for a channel that never changed) then does
        not make a level still below it look like news.
    """

    def __init__(self, *, window: int = 2000, short: int = 3, min_history: int = 50,
                 expected: float = 0.0) -> None:
        self.window = int(window)
        self.short = int(short)
        self.min_history = int(min_history)
        self.expected = float(expected)
        self.raw = np.zeros(self.short)
        self.buf = np.zeros(self.window)
        self.sum = 0.0
        self.sumsq = 0.0
        self.pos = 0
        self.count = 0
        self.level = 0.0  # the latest step's level (short mean of raw scores)

    def score_one(self, raw: float) -> float:
        """The likelihood, in [0, 1], of the level (the mean of the last
        ``short`` raw scores, ``raw`` the newest) against the window before it.
        Changes nothing: :meth:`learn_one` folds ``raw`` in."""
        short = self.short
        ring = self.raw.copy()
        ring[self.count % short] = raw
        count = self.count + 1
        m = min(count, short)
        level = float(ring[:m].sum() / m)  # (np.mean's bits, less overhead)
        return self._likelihood(level, count)

    def _likelihood(self, level: float, count: int) -> float:
        """The likelihood of ``level``, the ``count``-th, against the window before it."""
        n = min(count - 1, self.window)
        if count <= self.min_history or n <= 0:
            return 0.5
        mu = self.sum / n
        var = max(self.sumsq / n - mu * mu, 0.0)
        sd = max(math.sqrt(var), 0.05 * abs(mu), 0.1 * self.expected, 1e-12)
        z = (level - mu) / sd
        return 1.0 / (1.0 + math.exp(-1.7 * max(min(z, 400.0), -400.0)))

    def learn_one(self, raw: float) -> None:
        """Fold raw score ``raw`` in: the level (kept in :attr:`level`) and the window."""
        self.update_one(raw)

    def update_one(self, raw: float) -> float:
        """:meth:`score_one` then :meth:`learn_one` in one pass: returns the
        likelihood ``score_one(raw)`` returned, then folds ``raw`` in."""
        self.raw[self.count % self.short] = raw
        self.count += 1
        m = min(self.count, self.short)
        level = float(self.raw[:m].sum() / m)
        self.level = level
        lik = self._likelihood(level, self.count)  # (against the window before it)
        n = min(self.count - 1, self.window)
        # running sums over the window; recomputed exactly once per window so
        # rounding cannot drift
        if n == self.window:
            old = float(self.buf[self.pos])
            self.sum -= old
            self.sumsq -= old * old
        self.buf[self.pos] = level
        self.sum += level
        self.sumsq += level * level
        self.pos = (self.pos + 1) % self.window
        if self.pos == 0:
            self.sum = float(self.buf.sum())
            self.sumsq = float(np.dot(self.buf, self.buf))
        return lik

    def state(self) -> LikelihoodState:
        """The windows and counters as a :class:`LikelihoodState` of copies."""
        return LikelihoodState(self.raw.copy(), self.buf.copy(),
                               np.array(self.pos, dtype=np.int64),
                               np.array(self.count, dtype=np.int64),
                               np.array([self.sum, self.sumsq]))

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """:meth:`state` as a dict of arrays (the snapshot's ``lik/`` and ``wlik/`` keys)."""
        return self.state()._asdict()

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state` (an older snapshot's rest period and
        alarm tokens, kept here once, are ignored: :class:`AlarmState` reads them).

        Raises
        ------
        StateError
            When an array is missing or does not fit (another window length,
            a position outside the window).
        """
        a = read_arrays(state, {"raw": (np.float64, (self.short,)),
                                "buf": (np.float64, (self.window,)),
                                "pos": (np.int64, ()), "count": (np.int64, ()),
                                "sums": (np.float64, (2,))}, what="likelihood")
        if not 0 <= int(a["pos"]) < self.window or int(a["count"]) < 0:
            raise StateError("likelihood state has a position out of its window",
                             pos=int(a["pos"]), window=self.window, count=int(a["count"]))
        self.sum, self.sumsq = (float(v) for v in a["sums"])
        self.buf, self.raw = a["buf"], a["raw"]
        self.pos = int(a["pos"])
        self.count = int(a["count"])
        m = min(self.count, self.short)
        self.level = float(self.raw[:m].sum() / m) if m else 0.0
