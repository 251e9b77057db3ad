"""Whether a raw-score level recurred at this time of day on most of the last days."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lillith.records import read_arrays

F64 = npt.NDArray[np.float64]
A = npt.NDArray[Any]


_NO_BIN = -(1 << 62)  # (a bin number no stream time has)


class RecurrenceState(NamedTuple):
    """The bins: ``ids`` int64 (B,), the time bin each slot holds (or none);
    ``peak`` float64 (B, n_terms), the highest short mean of each term in it;
    ``ring`` float64 (short, n_terms), the last steps' terms; ``count`` int64 ()."""

    ids: A
    peak: A
    ring: A
    count: A  # type: ignore[assignment]  # (the snapshot key; shadows tuple.count)


class DailyRecurrence:
    """Whether a raw-score level recurred at this time of day on most of the last days.

    The raw score is a weighted sum of terms, each divided by its running
    mean (the agent's forecast error, SOM error and level novelty), so the
    same daily forecast miss gives a higher level each day while the forecast
    improves everywhere else and the running means fall. Levels are
    therefore not compared as they were: each ``bin_s``-second bin of stream
    time keeps, per term, the highest short mean (over ``short`` steps, as
    the likelihood's level) of that term's input, and an earlier bin's level
    is re-measured by today's yardstick, ``peak . weights`` with the current
    weights (term weight / running mean).

    A level ``L`` at time ``t`` *recurs* when, on at least ``days`` of the
    last ``days + slack`` days ``d``, a bin within ``tol`` seconds of
    ``t - d`` days re-measures to at least ``ratio * L``. A forecast error
    that comes back at the same time every day (a daily step the recent
    frames cannot announce, a nightly batch job) is then not news once it
    has come on ``days`` earlier days, and one unusual day (the anomaly
    itself, a holiday) does not make it news again for the next days.
    Bins that no frame reached (gaps) count as days without it.

    The detector builds it from the scoring settings, which validate the
    parameters (:class:`~lillith.agents.config.ScoreSettings`).

    Parameters
    ----------
    days : int
        Earlier days that must have had the level (>= 1).
    slack : int
        Further earlier days searched that may lack it (>= 0): the level must
        have come on ``days`` of the last ``days + slack`` days.
    tol : float
        Half-width of the time-of-day window, seconds (< 12 h).
    ratio : float
        Fraction of the current level that counts as the same level (> 0).
    bin_s : float
        Width of a time bin, seconds (> 0).
    n_terms : int
        Terms of the raw score (>= 1).
    short : int
        Steps of the short mean (the likelihood's ``short``, >= 1).
    """

    DAY_S = 86400.0

    def __init__(self, *, days: int = 2, slack: int = 1, tol: float = 5400.0,
                 ratio: float = 0.8, bin_s: float = 600.0, n_terms: int = 3,
                 short: int = 3) -> None:
        self.days = int(days)
        self.slack = int(slack)
        self.tol = float(tol)
        self.ratio = float(ratio)
        self.bin_s = float(bin_s)
        # a ring of bins long enough that the earliest bin asked for is still there
        n = math.ceil(((self.days + self.slack) * self.DAY_S + self.tol) / self.bin_s) + 2
        self.ids = np.full(n, _NO_BIN, dtype=np.int64)  # absolute bin number held by each slot
        self.peak = np.zeros((n, int(n_terms)))  # per slot, the highest short mean of each term
        self.ring = np.zeros((int(short), int(n_terms)))  # the last steps' terms
        self.count = 0

    def learn_one(self, t: float, terms: F64) -> None:
        """Fold the raw-score inputs ``terms`` (shape (n_terms,), each term's
        input before its running mean divides it) of the step at stream time
        ``t`` (s since the epoch) in."""
        short = self.ring.shape[0]
        self.ring[self.count % short] = terms
        self.count += 1
        m = min(self.count, short)
        cur = self.ring[:m].sum(axis=0) / m
        b = math.floor(t / self.bin_s)
        s = b % self.ids.shape[0]
        if self.ids[s] != b:
            self.ids[s] = b
            self.peak[s] = cur
        else:
            np.maximum(self.peak[s], cur, out=self.peak[s])

    def score_one(self, t: float, level: float, weights: F64) -> bool:
        """Whether ``level`` at stream time ``t`` came at this time on ``days``
        of the last ``days + slack`` days (see the class), the earlier bins
        re-measured with ``weights`` (shape (n_terms,): each term's weight
        over its current running mean). Changes nothing."""
        n = self.ids.shape[0]
        need = self.ratio * level
        missed = 0
        for d in range(1, self.days + self.slack + 1):
            c = t - d * self.DAY_S
            found = False
            for b in range(math.floor((c - self.tol) / self.bin_s),
                           math.floor((c + self.tol) / self.bin_s) + 1):
                s = b % n
                if self.ids[s] == b and float(self.peak[s] @ weights) >= need:
                    found = True
                    break
            if not found:
                missed += 1
                if missed > self.slack:
                    return False
        return True

    def state(self) -> RecurrenceState:
        """The bins and the last steps' terms as a :class:`RecurrenceState` of copies."""
        return RecurrenceState(self.ids.copy(), self.peak.copy(), self.ring.copy(),
                               np.array(self.count, dtype=np.int64))

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """:meth:`state` as a dict of arrays (the snapshot's ``echo/`` keys)."""
        return self.state()._asdict()

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`.

        Raises
        ------
        StateError
            When an array is missing or does not fit (another number of bins or terms).
        """
        a = read_arrays(state, {"ids": (np.int64, self.ids.shape),
                                "peak": (np.float64, self.peak.shape),
                                "ring": (np.float64, self.ring.shape),
                                "count": (np.int64, ())}, what="daily recurrence")
        self.ids, self.peak, self.ring = a["ids"], a["peak"], a["ring"]
        self.count = int(a["count"])
