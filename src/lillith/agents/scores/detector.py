"""From what the model made of a frame to the agent's answer: score, likelihood, alarm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lillith.agents.config import ScoreSettings
from lillith.agents.scores.alarm import AlarmState, Decision, Evidence
from lillith.agents.scores.likelihood import AnomalyLikelihood
from lillith.agents.scores.range_novelty import RangeNovelty
from lillith.agents.scores.recurrence import DailyRecurrence
from lillith.agents.scores.shift import ShiftDetector
from lillith.agents.scores.stuck import StuckSensor
from lillith.agents.scores.week import WeekProfile
from lillith.errors import StateError

F64 = npt.NDArray[np.float64]

# the weekly context (WeekProfile): update of an hour's usual value per hour of
# data, and the window and warm-up of its likelihood (frames)
WEEK_RATE = 0.2
WEEK_WINDOW = 4000
WEEK_MIN_HISTORY = 1000
# the daily recurrence's time bins (s)
RECURRENCE_BIN = 600.0
# the state sections a detector keeps (prefixes of Agent.get_state's keys)
SECTIONS = ("lik", "range", "stuck", "week", "wlik", "echo", "shift", "alarm")


class FrameTerms(NamedTuple):
    """What the model made of one frame: the detector's whole input.

    Attributes
    ----------
    x : ndarray, float64, shape (C,)
        The frame, input units.
    z : ndarray, float64, shape (C,)
        The frame under the normaliser's statistics before it (normalised units).
    miss : ndarray, float64, shape (C,), or None
        ``|z - forecast|`` per channel (normalised units); None before the first forecast.
    qe : float
        SOM quantisation error (0.0 when the fabric is ablated).
    scale : ndarray, float64, shape (C,)
        The normaliser's scale after the frame (input units, > 0).
    t : float or None
        Stream time (s since the epoch), if the frame has one.
    """

    x: F64
    z: F64
    miss: F64 | None
    qe: float
    scale: F64
    t: float | None


class Score(NamedTuple):
    """The detector's answer for one frame.

    Attributes
    ----------
    raw : float
        Raw anomaly score, >= 0.
    likelihood : float
        Reported likelihood in [0, 1] (see :class:`AlarmState`).
    alarm : bool
        The agent considers the frame anomalous now.
    reason : str
        What raised the current alarm ('' when none).
    onset : bool
        This frame started an alarm.
    """

    raw: float
    likelihood: float
    alarm: bool
    reason: str
    onset: bool


def alarm_state(sc: ScoreSettings) -> AlarmState:
    """The :class:`AlarmState` of scoring settings ``sc``."""
    return AlarmState(alarm=sc.alarm, hold=sc.hold, suppress=sc.suppress, budget=sc.budget,
                      budget_period=sc.budget_period, range_alarm=sc.range_alarm,
                      stuck_alarm=sc.stuck_alarm, context_alarm=sc.week_context,
                      shift_alarm=sc.shift_alarm, shift_level=sc.shift_level,
                      shift_news=sc.shift_news, recurrence=sc.recurrence_days > 0)


class Detector:
    """Scores a stream frame by frame from :class:`FrameTerms`.

    Raw score ``w_e e/ē + w_s q/q̄ + w_l l/l̄``: the mean forecast miss ``e``
    (channels that never changed count 0), the SOM quantisation error ``q``
    (when the agent has a SOM) and the level ``l`` (mean ``|z|``), each over
    its running mean (rate ``1/n`` down to 1e-3). The sources of evidence
    (:class:`Evidence`): the raw scores' likelihood
    (:class:`~lillith.agents.scores.likelihood.AnomalyLikelihood`), range excursions
    (:class:`~lillith.agents.scores.range_novelty.RangeNovelty`), stuck runs
    (:class:`~lillith.agents.scores.stuck.StuckSensor`), the weekly context
    (:class:`~lillith.agents.scores.week.WeekProfile`), the daily recurrence
    (:class:`~lillith.agents.scores.recurrence.DailyRecurrence`) and the shift from the
    long-run baseline (:class:`~lillith.agents.scores.shift.ShiftDetector`).
    :class:`AlarmState` turns them into the reported likelihood and the alarm.

    Every source is followed whatever the switches say, so a switch changed
    on a restore finds the history; the switches act in :class:`AlarmState`.

    Parameters
    ----------
    n_channels : int
        Width of a frame.
    settings : ScoreSettings
        The scoring settings (``score.*``).
    som : bool
        Whether the model has a SOM (its term counts in the raw score).
    recurs_floor : float, optional
        Likelihood from which the daily recurrence is asked (default:
        ``settings.alarm``, the only level at which the answer is used;
        lower it to replay the evidence under lower alarm levels).
    """

    def __init__(self, n_channels: int, settings: ScoreSettings, *, som: bool,
                 recurs_floor: float | None = None) -> None:
        self.n_channels = int(n_channels)
        self.settings = sc = settings
        self.som = bool(som)
        self.recurs_floor = sc.alarm if recurs_floor is None else float(recurs_floor)
        self.weights = np.array([sc.err_weight, sc.som_weight if som else 0.0,
                                 sc.level_weight])
        self._w = [float(v) for v in self.weights]
        self.likelihood = AnomalyLikelihood(window=sc.window, short=sc.short,
                                            min_history=sc.min_history,
                                            expected=float(self.weights.sum()))
        self.range = RangeNovelty(self.n_channels, tol=sc.range_tol, warm=sc.min_history,
                                  days=sc.range_days)
        self.stuck = StuckSensor(self.n_channels, factor=sc.stuck_factor,
                                 min_run=sc.stuck_min_run, warm=sc.min_history)
        self.week = WeekProfile(self.n_channels, rate=WEEK_RATE)
        self.week_lik = AnomalyLikelihood(window=WEEK_WINDOW, short=1,
                                          min_history=WEEK_MIN_HISTORY)
        self.echo = (DailyRecurrence(days=sc.recurrence_days, slack=sc.recurrence_slack,
                                     tol=sc.recurrence_tol, ratio=sc.recurrence_ratio,
                                     bin_s=RECURRENCE_BIN, n_terms=3, short=sc.short)
                     if sc.recurrence_days else None)
        self.shift = ShiftDetector(self.n_channels, rate=sc.shift_rate, memory=sc.window,
                                   warm=sc.min_history)
        self.alarm = alarm_state(sc)
        self.means = np.zeros(3)  # running means of the terms (err, qe, level)
        self.n = 0
        self._terms = np.zeros(3)
        self._still = True  # some channel may still be unchanged since the first frame

    def evidence(self, f: FrameTerms) -> Evidence:
        """Fold one frame into every source and return what they say of it."""
        stuck = self.stuck.update_one(f.x)
        if f.miss is None:
            err = 0.0
        else:
            miss = f.miss
            if self._still:  # (once every channel has changed, none can be unchanged again)
                still = self.stuck.unchanged()
                self._still = bool(still.any())
                if self._still:
                    # a channel that never changed has no forecast error to score:
                    # what moves its forecast is the fabric's and the SOM's own state
                    miss = miss.copy()
                    miss[still] = 0.0
            err = float(miss.sum() / miss.size)
        terms = self._terms
        lvl = float(np.abs(f.z).sum() / f.z.size)
        terms[0], terms[1], terms[2] = err, f.qe, lvl
        self.n += 1
        rate = max(1.0 / self.n, 1e-3)
        m, w = self.means, self._w
        m0 = float(m[0]) + rate * (err - float(m[0]))
        m1 = float(m[1]) + rate * (f.qe - float(m[1]))
        m2 = float(m[2]) + rate * (lvl - float(m[2]))
        m[0], m[1], m[2] = m0, m1, m2
        p0, p1, p2 = w[0] * err / (m0 + 1e-9), w[1] * f.qe / (m1 + 1e-9), w[2] * lvl / (m2 + 1e-9)
        raw = p0 + p1 + p2
        source = 0 if p0 >= p1 and p0 >= p2 else (1 if p1 >= p2 else 2)
        lik = self.likelihood.update_one(raw)
        outside = self.range.update_one(f.x, f.t)
        context = 0.5
        recurs = False
        if f.t is not None:
            dev = self.week.update_one(f.x, f.scale, f.t)
            if dev is not None:
                context = self.week_lik.update_one(dev + 1e-6)
            if self.echo is not None:
                if lik >= self.recurs_floor:
                    recurs = self.echo.score_one(f.t, self.likelihood.level,
                                                 weights=self.weights / (self.means + 1e-9))
                self.echo.learn_one(f.t, terms)
        shift = self.shift.update_one(f.x)
        return Evidence(raw, lik, source, recurs, outside, stuck, self.stuck.stuck(), context,
                        shift)

    def score(self, f: FrameTerms) -> Score:
        """Fold one frame in and decide on it (:meth:`evidence`, then :class:`AlarmState`)."""
        ev = self.evidence(f)
        d: Decision = self.alarm.step(ev)
        return Score(ev.raw, d.likelihood, d.alarm, d.reason, d.onset)

    # ---------------------------------------------------------------- state
    def get_state(self) -> dict[str, dict[str, npt.NDArray[Any]]]:
        """Every source's state, by section (see :data:`SECTIONS`)."""
        out = {"lik": self.likelihood.get_state(), "range": self.range.get_state(),
               "stuck": self.stuck.get_state(), "week": self.week.get_state(),
               "wlik": self.week_lik.get_state(), "shift": self.shift.get_state(),
               "alarm": self.alarm.get_state()}
        out["lik"]["means"] = np.array([*self.means, float(self.n)])
        if self.echo is not None:
            out["echo"] = self.echo.get_state()
        return out

    def set_state(self, state: dict[str, dict[str, npt.NDArray[Any]]], *,
                  tolerant: bool = False) -> list[str]:
        """Restore from :meth:`get_state`.

        Sources whose state is missing (an older snapshot) start over; so do
        those whose shape no longer fits when ``tolerant`` (the scoring
        settings changed on a restore), and the daily recurrence's bins in an
        older layout. Returns the sections that started over.

        Raises
        ------
        StateError
            When a section does not fit and ``tolerant`` is False.
        """
        fresh: list[str] = []
        self._still = True
        lik = state.get("lik", {})
        means = lik.get("means")
        if means is not None:
            m = np.asarray(means, dtype=np.float64)
            self.means[:] = m[:3]
            self.n = int(m[3])
        targets: list[tuple[str, Callable[[dict[str, npt.NDArray[Any]]], None]]] = [
            ("lik", self.likelihood.set_state), ("range", self.range.set_state),
            ("stuck", self.stuck.set_state), ("week", self.week.set_state),
            ("wlik", self.week_lik.set_state), ("shift", self.shift.set_state),
            ("alarm", self.alarm.set_state)]
        if self.echo is not None:
            targets.append(("echo", self.echo.set_state))
        for name, load in targets:
            sub = state.get(name)
            if name == "alarm" and not sub:
                # (older snapshots kept the rest period and tokens with the likelihood)
                sub = {k: v for k, v in lik.items() if k in ("rest", "tokens")}
            if not sub:
                fresh.append(name)
                continue
            try:
                load(sub)
            except StateError:
                # (the recurrence's bins had another layout before: they start over)
                if not tolerant and name != "echo":
                    raise
                fresh.append(name)
                self._reset(name)
        return fresh

    def _reset(self, name: str) -> None:
        """Start one source over (a section that no longer fits)."""
        twin = Detector(self.n_channels, self.settings, som=self.som,
                        recurs_floor=self.recurs_floor)
        attr = {"lik": "likelihood", "range": "range", "stuck": "stuck", "week": "week",
                "wlik": "week_lik", "echo": "echo", "shift": "shift", "alarm": "alarm"}[name]
        setattr(self, attr, getattr(twin, attr))
