"""What the agent says of a frame: news (the reported likelihood) and the alarm state."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lillith.records import read_arrays

# the raw score's terms, by index (Evidence.source): the reason an alarm gives
TERMS = ("forecast", "novelty", "level")
# every alarm reason, in the order of REASON_CODES (0: no alarm)
REASONS = ("", *TERMS, "range", "stuck", "context", "shift")
REASON_CODES = {r: i for i, r in enumerate(REASONS)}


class Evidence(NamedTuple):
    """What the detector's sources say of one frame (see :class:`Detector`).

    Attributes
    ----------
    raw : float
        Raw anomaly score (>= 0).
    likelihood : float
        Likelihood of the raw scores' short mean against their window, undamped.
    source : int
        The raw score's largest weighted term: 0 forecast error, 1 SOM
        novelty, 2 level (index in :data:`TERMS`).
    recurs : bool
        The short mean came at this time of day on most of the last days
        (asked only when ``likelihood`` reaches the detector's floor, else False).
    range : bool
        A channel lies beyond its recent range (an excursion).
    stuck : bool
        A channel's run of repeats just reached its alarm length.
    stuck_on : bool
        A flagged run of repeats goes on.
    context : float
        Likelihood of the last day's departure from the usual week (0.5: none).
    shift : float
        Likelihood of the recent mean's shift from the long-run baseline.
    """

    raw: float
    likelihood: float
    source: int
    recurs: bool
    range: bool
    stuck: bool
    stuck_on: bool
    context: float
    shift: float


class Decision(NamedTuple):
    """The agent's answer for one frame.

    Attributes
    ----------
    likelihood : float
        Reported anomaly likelihood in [0, 1]: high at news, damped during a rest.
    alarm : bool
        The agent considers the frame anomalous now.
    reason : str
        What raised the current alarm (one of :data:`REASONS`; empty when none).
    onset : bool
        This frame started an alarm.
    """

    likelihood: float
    alarm: bool
    reason: str
    onset: bool


def _damp(lik: float) -> float:
    return 0.5 * min(lik, 0.5) if lik > 0.5 else lik


class AlarmState:
    """Decides news and the alarm state from each frame's :class:`Evidence`.

    **News** (the reported likelihood, what NAB scores): a range excursion or
    a stuck run (likelihood 1.0), with ``shift_news`` a shift whose
    likelihood reaches ``shift_level`` (its own likelihood), or a raw-score or weekly-context
    likelihood that reaches ``alarm`` (the larger of the two; not when the
    level recurred at this time on most of the last days, and only while a
    token of the budget is left: ``budget`` tokens, one earned back every
    ``budget_period`` frames; excursions and shifts need none). News starts
    a rest of ``suppress`` frames during which every likelihood above 0.5 is
    damped to ``0.5 * min(lik, 0.5)``: what follows repeats that news.
    Likelihoods that reach ``alarm`` but are not news are damped the same way.

    **Alarm state**: news turns it on, with the news' reason; it stays on
    while the condition that raised it lasts: the raw-score or context
    likelihood at least ``hold``. Independently of rests and tokens, a range
    excursion is an alarm for its frame, a stuck run for as long as it goes
    on, and a shift from when its likelihood reaches ``shift_level`` for as
    long as that likelihood is at least ``hold``. The reason is the one that
    turned the alarm on, until it goes off.

    The parameters come from the scoring settings
    (:func:`~lillith.agents.scores.detector.alarm_state`), which validate them
    (:class:`~lillith.agents.config.ScoreSettings`).

    Parameters
    ----------
    alarm : float
        Likelihood of news from the raw scores or the weekly context, in (0.5, 1].
    hold : float
        Likelihood that keeps an alarm on, in [0, 1).
    suppress : int
        Rest after news (frames).
    budget, budget_period : int
        Tokens (0: no budget) and frames per token earned back.
    range_alarm, stuck_alarm, context_alarm, shift_alarm, recurrence : bool
        Whether each source may raise news and alarms (recurrence: whether a
        recurring level is vetoed).
    shift_level : float
        Shift likelihood that turns the alarm on (and is news with
        ``shift_news``), in (0.5, 1].
    shift_news : bool
        Whether a shift is news as well as an alarm.
    """

    def __init__(self, *, alarm: float = 0.9999, hold: float = 0.5, suppress: int = 200,
                 budget: int = 8, budget_period: int = 2000, range_alarm: bool = True,
                 stuck_alarm: bool = False, context_alarm: bool = True,
                 shift_alarm: bool = True, shift_level: float = 0.999,
                 shift_news: bool = False, recurrence: bool = True) -> None:
        self.alarm = float(alarm)
        self.hold = float(hold)
        self.suppress = int(suppress)
        self.budget = int(budget)
        self.refill = 1.0 / max(int(budget_period), 1)
        self.range_alarm = bool(range_alarm)
        self.stuck_alarm = bool(stuck_alarm)
        self.context_alarm = bool(context_alarm)
        self.shift_alarm = bool(shift_alarm)
        self.shift_level = float(shift_level)
        self.shift_news = bool(shift_news)
        self.recurrence = bool(recurrence)
        self.rest = 0
        self.tokens = float(self.budget)
        self.on = np.zeros(4, dtype=bool)  # raw-score, context, stuck, shift condition holds
        self.reason = ""

    def step(self, ev: Evidence) -> Decision:
        """Decide on one frame (see the class); the state moves on."""
        if self.budget:
            self.tokens = min(self.tokens + self.refill, float(self.budget))
        lik = ev.likelihood
        ctx = ev.context if self.context_alarm else 0.5
        shift = ev.shift if self.shift_alarm else 0.5
        recurs = self.recurrence and ev.recurs
        exc = ("range" if self.range_alarm and ev.range
               else "stuck" if self.stuck_alarm and ev.stuck else "")
        out = lik
        news = ""
        if self.rest > 0:
            self.rest -= 1
            out = _damp(lik)
        elif exc:
            out, news = 1.0, exc
        elif self.shift_news and shift >= self.shift_level:
            out, news = max(lik, shift), "shift"
        elif (lik >= self.alarm and not recurs) or ctx >= self.alarm:
            if self.budget and self.tokens < 1.0:
                out = _damp(lik)  # over budget: not news
            else:
                if self.budget:
                    self.tokens -= 1.0
                out = max(lik, ctx)
                news = TERMS[ev.source] if lik >= self.alarm and not recurs else "context"
        elif lik >= self.alarm:  # the level recurred at this time on the last days
            out = _damp(lik)
        if news:
            self.rest = self.suppress
        on = self.on
        on[0] = (on[0] or news in TERMS) and lik >= self.hold
        on[1] = (on[1] or news == "context") and ctx >= self.hold
        on[2] = (on[2] or exc == "stuck") and ev.stuck_on
        on[3] = (on[3] or shift >= self.shift_level) and shift >= self.hold
        alarm = bool(news) or bool(exc) or bool(on.any())
        onset = alarm and not self.reason
        if not alarm:
            self.reason = ""
        elif onset:
            self.reason = news or exc or ("shift" if on[3] else "stuck")
        return Decision(out, alarm, self.reason, onset)

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Rest, tokens and alarm conditions as plain arrays."""
        return {"rest": np.array(self.rest, dtype=np.int64), "tokens": np.array(self.tokens),
                "on": self.on.copy(),
                "reason": np.array(REASON_CODES[self.reason], dtype=np.int64)}

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state` (a smaller budget caps the tokens).

        Every array may be missing, and the conditions and reason may be in
        another layout (older snapshots): the rest is then over, the budget
        full, no condition on.

        Raises
        ------
        StateError
            When an array is not one number (rest, tokens, reason) or holds a
            float where an int is kept.
        """
        a = read_arrays(state, {"rest": (np.int64, ()), "tokens": (np.float64, ()),
                                "on": (np.bool_, None), "reason": (np.int64, ())},
                        what="alarm", optional=("rest", "tokens", "on", "reason"))
        self.rest = int(a.get("rest", 0))
        self.tokens = min(float(a.get("tokens", self.budget)), float(self.budget))
        on = a.get("on")
        self.on = on if on is not None and on.shape == (4,) else np.zeros(4, dtype=bool)
        code = int(a.get("reason", 0))
        self.reason = REASONS[code] if 0 <= code < len(REASONS) else ""
