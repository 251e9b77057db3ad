"""Online statistics of a stream: robust normaliser and anomaly likelihood.

Both run on step counts only (never wall-clock) and keep their whole state
as plain numpy arrays for snapshots.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from lillith.errors import ConfigError, StateError

F64 = npt.NDArray[np.float64]


class RobustNormalizer:
    """Per-channel online normalisation robust to outliers and drift.

    Location ``m`` and scale ``s`` follow the stream with a Huber-clipped
    exponential moving average: a sample more than ``clip`` scales from the
    location moves the statistics as if it were ``clip`` scales away, so a
    spike barely shifts them while a sustained level shift is tracked within
    about ``1 / alpha`` steps. The rate starts at ``1 / (t + 1)`` (an exact
    running mean for the first samples) and decays to the floor ``alpha``.

    Parameters
    ----------
    n_channels : int
        Width of a frame.
    alpha : float
        Floor of the adaptation rate per step (1 / effective memory).
    clip : float
        Huber clip in scale units.
    min_scale : float
        Floor of the scale relative to ``1 + |m|``, so a constant channel
        does not divide by zero.
    z_max : float
        Normalised values are clipped to ``[-z_max, z_max]``.
    """

    def __init__(
        self,
        n_channels: int,
        *,
        alpha: float = 2e-3,
        clip: float = 3.0,
        min_scale: float = 1e-3,
        z_max: float = 10.0,
    ) -> None:
        self.n_channels = int(n_channels)
        self.alpha = float(alpha)
        self.clip = float(clip)
        self.min_scale = float(min_scale)
        self.z_max = float(z_max)
        self.mean = np.zeros(self.n_channels)
        self.scale = np.ones(self.n_channels)
        self.count = 0

    def _floor(self) -> F64:
        return self.min_scale * (1.0 + np.abs(self.mean))

    def transform(self, x: F64) -> F64:
        """Normalise ``x`` (shape (C,), input units) with the current statistics
        (zeros before the first frame has been learned: with no statistics yet,
        a frame lies at its own location, so an untrained forecast of it is
        persistence)."""
        if self.count == 0:
            return np.zeros(self.n_channels)
        z: F64 = (x - self.mean) / np.maximum(self.scale, self._floor())
        # (np.clip's values, without its per-call overhead)
        np.maximum(z, -self.z_max, out=z)
        np.minimum(z, self.z_max, out=z)
        return z

    def effective_scale(self) -> F64:
        """Scale used by :meth:`transform` and :meth:`inverse` (floored), shape (C,)."""
        out: F64 = np.maximum(self.scale, self._floor())
        return out

    def inverse(self, z: F64) -> F64:
        """Map normalised values back to input units, shape (C,)."""
        out: F64 = self.mean + z * self.effective_scale()
        return out

    def learn_one(self, x: F64) -> None:
        """Update the statistics with one frame ``x`` (shape (C,))."""
        if self.count == 0:
            self.mean = x.astype(np.float64).copy()
            self.scale = np.maximum(np.abs(x) * 0.1, self._floor())
            self.count = 1
            return
        rate = max(1.0 / (self.count + 1), self.alpha)
        s = np.maximum(self.scale, self._floor())
        lim = self.clip * s
        dev = x - self.mean  # clipped to [-lim, lim] (np.clip's values, less overhead)
        np.maximum(dev, -lim, out=dev)
        np.minimum(dev, lim, out=dev)
        self.mean = self.mean + rate * dev
        # mean absolute deviation * 1.25 estimates the std of a normal
        self.scale = self.scale + rate * (1.25 * np.abs(dev) - self.scale)
        self.count += 1

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Statistics as plain arrays."""
        return {"mean": self.mean.copy(), "scale": self.scale.copy(),
                "count": np.array(self.count, dtype=np.int64)}

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`."""
        mean = np.asarray(state["mean"], dtype=np.float64)
        if mean.shape != (self.n_channels,):
            raise StateError("normaliser state has another width", shape=mean.shape,
                             expected=(self.n_channels,))
        self.mean = mean.copy()
        self.scale = np.asarray(state["scale"], dtype=np.float64).copy()
        self.count = int(state["count"])


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
        """Add one raw score and return the likelihood of the current step's
        level (kept in :attr:`level`) against the window before it."""
        self.raw[self.count % self.short] = raw
        self.count += 1
        m = min(self.count, self.short)
        level = float(self.raw[:m].sum() / m)  # (np.mean's bits, less overhead)
        self.level = level
        n = min(self.count - 1, self.window)
        lik = 0.5
        if self.count > self.min_history and n > 0:
            mu = self.sum / n
            var = max(self.sumsq / n - mu * mu, 0.0)
            sd = max(math.sqrt(var), 0.05 * abs(mu), 0.1 * self.expected, 1e-12)
            z = (level - mu) / sd
            lik = 1.0 / (1.0 + math.exp(-1.7 * max(min(z, 400.0), -400.0)))
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

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Windows and counters as plain arrays."""
        return {"raw": self.raw.copy(), "buf": self.buf.copy(),
                "pos": np.array(self.pos, dtype=np.int64),
                "count": np.array(self.count, dtype=np.int64),
                "sums": np.array([self.sum, self.sumsq])}

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state` (an older snapshot's rest period and
        alarm tokens, kept here once, are ignored: :class:`AlarmState` reads them).

        Raises
        ------
        StateError
            When the windows have another length.
        """
        buf = np.asarray(state["buf"], dtype=np.float64)
        raw = np.asarray(state["raw"], dtype=np.float64)
        if buf.shape != (self.window,) or raw.shape != (self.short,):
            raise StateError("likelihood windows have another length", shape=buf.shape,
                             expected=(self.window,))
        self.sum, self.sumsq = (float(v) for v in state["sums"])
        self.buf = buf.copy()
        self.raw = raw.copy()
        self.pos = int(state["pos"])
        self.count = int(state["count"])
        m = min(self.count, self.short)
        self.level = float(self.raw[:m].sum() / m) if m else 0.0


_NO_DAY = -(1 << 62)  # (a day or time-bin number no stream time has)


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

    def score_one(self, x: F64, t: float | None = None) -> bool:
        """Whether frame ``x`` (shape (C,), input units) at stream time ``t``
        (s since the epoch, or None) is an excursion; then fold it into the
        range."""
        if self.days > 0 and t is None and self.day != _NO_DAY:
            t = self.day * 86400.0  # (no time: this frame counts in the current day)
        if self.days > 0 and t is not None:
            d = max(math.floor(t / 86400.0), self.day)  # (time going back: this day)
            if d != self.day:
                self._enter_day(d)
            k = d % self.days
            out = (int(self.blk_n[k]) + self._past_n >= self.warm
                   and self._beyond(x, np.minimum(self._past_lo, self.blk_lo[k]),
                                    np.maximum(self._past_hi, self.blk_hi[k])))
            np.minimum(self.blk_lo[k], x, out=self.blk_lo[k])
            np.maximum(self.blk_hi[k], x, out=self.blk_hi[k])
            self.blk_n[k] += 1
        else:
            out = self.count >= max(self.warm, 1) and self._beyond(x, self.lo, self.hi)
        if self.count == 0:  # the range since the start
            self.lo[:] = x
            self.hi[:] = x
        else:
            np.minimum(self.lo, x, out=self.lo)
            np.maximum(self.hi, x, out=self.hi)
        self.count += 1
        return out

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Range, day blocks and counter as plain arrays."""
        return {"lo": self.lo.copy(), "hi": self.hi.copy(),
                "count": np.array(self.count, dtype=np.int64),
                "blk_lo": self.blk_lo.copy(), "blk_hi": self.blk_hi.copy(),
                "blk_day": self.blk_day.copy(), "blk_n": self.blk_n.copy(),
                "day": np.array(self.day, dtype=np.int64),
                "days": np.array(self.days, dtype=np.int64)}

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`. Without day blocks of this length
        (an older snapshot, or another ``days``), the range since the start
        stands for the first day that follows."""
        lo = np.asarray(state["lo"], dtype=np.float64)
        hi = np.asarray(state["hi"], dtype=np.float64)
        if lo.shape != (self.n_channels,) or hi.shape != (self.n_channels,):
            raise StateError("range state has another width", shape=lo.shape,
                             expected=(self.n_channels,))
        self.lo, self.hi = lo.copy(), hi.copy()
        self.count = int(state["count"])
        k = max(self.days, 1)
        day = np.asarray(state.get("blk_day", np.zeros(0)), dtype=np.int64)
        if (self.days > 0 and int(state.get("days", -1)) == self.days and day.shape == (k,)
                and np.asarray(state["blk_lo"]).shape == (k, self.n_channels)):
            self.blk_lo = np.asarray(state["blk_lo"], dtype=np.float64).copy()
            self.blk_hi = np.asarray(state["blk_hi"], dtype=np.float64).copy()
            self.blk_day = day.copy()
            self.blk_n = np.asarray(state["blk_n"], dtype=np.int64).copy()
            self.day = _NO_DAY
            self._seed = False
            d = int(state["day"])
            if d != _NO_DAY:
                self._enter_day(d)
        else:
            self.blk_day[:] = _NO_DAY
            self.blk_n[:] = 0
            self.day = _NO_DAY
            self._seed = self.count > 0


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
        """Whether frame ``x`` (shape (C,), input units) makes a channel's run
        of repeats reach its alarm length; then fold it in."""
        out = False
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
                    out = bool(hit.any())
                    if out:
                        self.flagged |= hit
                        self._stuck = True
            elif self.run.any():  # (the usual frame: nothing repeats, no run to end)
                np.maximum(self.longest, self.run, out=self.longest)
                self.run[:] = 0
                if self._stuck:
                    self.flagged[:] = False
                    self._stuck = False
        self.last[:] = x
        self.count += 1
        return out

    def stuck(self) -> bool:
        """Whether a run that was flagged still goes on (the sensor is still stuck)."""
        return self._stuck

    def unchanged(self) -> npt.NDArray[np.bool_]:
        """Per channel (shape (C,)), whether every frame so far had the first
        frame's value (True before the first frame)."""
        out: npt.NDArray[np.bool_] = self.run >= self.count - 1
        return out

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Runs and counter as plain arrays."""
        return {"last": self.last.copy(), "run": self.run.copy(),
                "longest": self.longest.copy(), "flagged": self.flagged.copy(),
                "count": np.array(self.count, dtype=np.int64)}

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`."""
        last = np.asarray(state["last"], dtype=np.float64)
        if last.shape != (self.n_channels,):
            raise StateError("stuck-sensor state has another width", shape=last.shape,
                             expected=(self.n_channels,))
        self.last = last.copy()
        self.run = np.asarray(state["run"], dtype=np.int64).copy()
        self.longest = np.asarray(state["longest"], dtype=np.int64).copy()
        # (older snapshots: no run counts as flagged)
        flagged = np.asarray(state.get("flagged", np.zeros(self.n_channels)), dtype=bool)
        self.flagged = flagged.copy() if flagged.shape == (self.n_channels,) else np.zeros(
            self.n_channels, dtype=bool)
        self._stuck = bool(self.flagged.any())
        self.count = int(state["count"])


class WeekProfile:
    """How far the last day departs from the usual week, per hour of the week.

    Keeps, per channel, the usual value (input units) of each of the 168
    hours of the week (stream time, UTC) as a running mean. A frame ``dt``
    seconds after the previous one moves its hour's value by
    ``max(1/n, rate * dt / 3600)`` (``n``: frames seen in that hour of the
    week), so an hour of data moves it by about ``rate`` whatever the
    sampling interval.

    Once an hour of the week has data from at least a week before, every
    frame's residual against it is measured in units of the normaliser's
    scale. Raw values are profiled, not normalised ones: the normaliser's
    location follows the last days, so a Monday's normalised values depend
    on the weekend before it. The deviation is
    ``mean_c |mean of the residuals over the last 24 hours|`` (hourly
    buckets: the current hour and the 23 before it). A whole day unlike the
    same days of earlier weeks (a holiday in traffic, a weekday that behaves
    like a Sunday) then stands out even when every frame is ordinary for its
    level and its recent past. Nothing is reported during the first week of
    stream time.

    Parameters
    ----------
    n_channels : int
        Width of a frame.
    rate : float
        Update of an hour's usual value per hour of data (fraction).
    """

    BINS = 168
    HOURS = 24
    _WEEK_S = 7 * 86400.0 - 3600.0  # an hour's first visit may end its hour

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

    def score_one(self, x: F64, scale: F64, t: float) -> float | None:
        """Fold frame ``x`` (shape (C,), input units) at stream time ``t`` (s
        since the epoch) in, its residual measured in ``scale`` (shape (C,),
        input units, > 0); return the deviation of the last 24 hours (>= 0,
        scale units), or None during the first week of stream time (no usual
        week yet)."""
        if self.frames == 0:
            self.start = self.last = t
        dt = min(max(t - self.last, 0.0), 3600.0)
        self.last = t
        self.frames += 1
        h = math.floor(t / 3600.0)
        b = (h + 72) % self.BINS  # the epoch began on a Thursday: bin 0 is Monday 00:00
        n = int(self.seen[b])
        usual = n > 0 and t - float(self.first[b]) >= self._WEEK_S
        r = (x - self.prof[b]) / scale if usual else np.zeros(self.n_channels)
        if n == 0:
            self.first[b] = t
        self.prof[b] += max(1.0 / (n + 1), self.rate * dt / 3600.0) * (x - self.prof[b])
        self.seen[b] = n + 1
        if self.frames == 1:  # (not a sentinel hour: times before 1970 are hours < 0)
            self.hour = h
        elif h > self.hour:  # new hours: their buckets start empty (all, after a day's gap)
            for k in range(self.hour + 1, min(h, self.hour + self.HOURS) + 1):
                self.bsum[k % self.HOURS] = 0.0
                self.bcount[k % self.HOURS] = 0.0
            self.hour = h
        k = self.hour % self.HOURS  # (a time going backwards counts in the newest hour)
        self.bsum[k] += r
        self.bcount[k] += 1.0
        if t - self.start < 7 * 86400.0:
            return None
        mean = self.bsum.sum(axis=0) / max(float(self.bcount.sum()), 1.0)
        return float(np.abs(mean).sum() / mean.size)

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Profile, visits and buckets as plain arrays."""
        return {"prof": self.prof.copy(), "seen": self.seen.copy(), "first": self.first.copy(),
                "bsum": self.bsum.copy(), "bcount": self.bcount.copy(),
                "hour": np.array(self.hour, dtype=np.int64),
                "start": np.array(self.start),
                "last": np.array(self.last),
                "frames": np.array(self.frames, dtype=np.int64)}

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`."""
        prof = np.asarray(state["prof"], dtype=np.float64)
        if prof.shape != (self.BINS, self.n_channels):
            raise StateError("week profile has another shape", shape=prof.shape,
                             expected=(self.BINS, self.n_channels))
        self.prof = prof.copy()
        self.seen = np.asarray(state["seen"], dtype=np.int64).copy()
        self.first = np.asarray(state["first"], dtype=np.float64).copy()
        self.bsum = np.asarray(state["bsum"], dtype=np.float64).copy()
        self.bcount = np.asarray(state["bcount"], dtype=np.float64).copy()
        self.hour = int(state["hour"])
        self.start = float(state["start"])
        self.last = float(state["last"])
        self.frames = int(state["frames"])


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

    def __init__(self, *, days: int = 3, slack: int = 1, tol: float = 5400.0,
                 ratio: float = 0.8, bin_s: float = 600.0, n_terms: int = 3,
                 short: int = 3) -> None:
        if (days < 1 or slack < 0 or not 0.0 <= tol < self.DAY_S / 2 or ratio <= 0
                or bin_s <= 0 or n_terms < 1 or short < 1):
            raise ConfigError("daily recurrence needs days >= 1, slack >= 0, 0 <= tol < 12 h, "
                              "ratio > 0, bin_s > 0, n_terms >= 1 and short >= 1", days=days,
                              slack=slack, tol=tol, ratio=ratio, bin_s=bin_s, n_terms=n_terms,
                              short=short)
        self.days = int(days)
        self.slack = int(slack)
        self.tol = float(tol)
        self.ratio = float(ratio)
        self.bin_s = float(bin_s)
        # a ring of bins long enough that the earliest bin asked for is still there
        n = math.ceil(((self.days + self.slack) * self.DAY_S + self.tol) / self.bin_s) + 2
        self.ids = np.full(n, _NO_DAY, dtype=np.int64)  # absolute bin number held by each slot
        self.peak = np.zeros((n, int(n_terms)))  # per slot, the highest short mean of each term
        self.ring = np.zeros((int(short), int(n_terms)))  # the last steps' terms
        self.count = 0

    def observe(self, t: float, terms: F64) -> None:
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

    def recurs(self, t: float, level: float, weights: F64) -> bool:
        """Whether ``level`` at stream time ``t`` came at this time on ``days``
        of the last ``days + slack`` days (see the class), the earlier bins
        re-measured with ``weights`` (shape (n_terms,): each term's weight
        over its current running mean)."""
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

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Bins and the last steps' terms as plain arrays."""
        return {"ids": self.ids.copy(), "peak": self.peak.copy(), "ring": self.ring.copy(),
                "count": np.array(self.count, dtype=np.int64)}

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`."""
        ids = np.asarray(state["ids"], dtype=np.int64)
        peak = np.asarray(state["peak"], dtype=np.float64)
        ring = np.asarray(state.get("ring", np.zeros(0)), dtype=np.float64)
        if ids.shape != self.ids.shape or peak.shape != self.peak.shape \
                or ring.shape != self.ring.shape:
            raise StateError("daily recurrence bins have another shape", shape=peak.shape,
                             expected=self.peak.shape)
        self.ids = ids.copy()
        self.peak = peak.copy()
        self.ring = ring.copy()
        self.count = int(state["count"])
