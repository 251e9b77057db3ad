"""Record what an agent's model made of a stream, and replay its scores under other settings.

The scoring settings (``score.*`` but ``norm_alpha``) change nothing the
model learns: they act on :class:`~lillith.agents.scores.detector.FrameTerms`,
what the model hands the detector for each frame. Recording those once per
stream lets every scoring setting be evaluated without running the model
again, and gives the same scores, bit for bit, as an agent run with that
setting (``tests/test_eval.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lillith.agents.agent import Agent
from lillith.agents.config import ScoreSettings
from lillith.agents.metrics import Metrics
from lillith.agents.scores.alarm import REASON_CODES, AlarmState, Evidence
from lillith.agents.scores.detector import Detector, FrameTerms, alarm_state

F64 = npt.NDArray[np.float64]


class TermLog(NamedTuple):
    """Every frame's :class:`FrameTerms` of one stream, as arrays.

    Attributes
    ----------
    x, z, scale : ndarray, float64, shape (n, C)
    miss : ndarray, float64, shape (n, C)
        NaN rows where the frame had no forecast.
    qe : ndarray, float64, shape (n,)
    t : ndarray, float64, shape (n,)
        NaN where the frame had no time.
    """

    x: F64
    z: F64
    miss: F64
    qe: F64
    scale: F64
    t: F64

    @classmethod
    def of(cls, frames: Sequence[FrameTerms], n_channels: int) -> TermLog:
        """Stack recorded frames."""
        n = len(frames)
        nan = np.full(n_channels, np.nan)
        if n == 0:
            e = np.zeros((0, n_channels))
            return cls(e, e, e, np.zeros(0), e, np.zeros(0))
        return cls(np.stack([f.x for f in frames]), np.stack([f.z for f in frames]),
                   np.stack([nan if f.miss is None else f.miss for f in frames]),
                   np.array([f.qe for f in frames]), np.stack([f.scale for f in frames]),
                   np.array([np.nan if f.t is None else f.t for f in frames]))

    def frames(self) -> Iterator[FrameTerms]:
        """The recorded frames, in order."""
        for i in range(self.x.shape[0]):
            miss = self.miss[i]
            t = float(self.t[i])
            yield FrameTerms(self.x[i], self.z[i], None if np.isnan(miss[0]) else miss,
                             float(self.qe[i]), self.scale[i], None if np.isnan(t) else t)


class EvidenceLog(NamedTuple):
    """Every frame's :class:`Evidence` of one stream, as arrays (shape (n,))."""

    raw: F64
    likelihood: F64
    source: npt.NDArray[np.int64]
    recurs: npt.NDArray[np.bool_]
    range: npt.NDArray[np.bool_]
    stuck: npt.NDArray[np.bool_]
    stuck_on: npt.NDArray[np.bool_]
    context: F64
    shift: F64


class Decisions(NamedTuple):
    """Per-frame output of :func:`decide` (shape (n,) each)."""

    likelihood: F64
    alarm: npt.NDArray[np.bool_]
    reason: npt.NDArray[np.int64]  # codes of lillith.agents.scores.alarm.REASONS


def record(agent: Agent, values: npt.ArrayLike, times: Sequence[float | None] | None
           ) -> tuple[list[Metrics], TermLog]:
    """Run ``agent`` over a stream and record what its model made of every frame.

    Parameters
    ----------
    agent : Agent
    values : array_like, shape (n, n_channels)
    times : sequence of float or None, optional
        Stream time of each frame.

    Returns
    -------
    metrics : list of Metrics
    log : TermLog
    """
    agent.term_log = []
    try:
        metrics = agent.process_many(values, times)
        log = TermLog.of(agent.term_log, agent.n_channels)
    finally:
        agent.term_log = None
    return metrics, log


def evidence(log: TermLog, settings: ScoreSettings, *, som: bool,
             recurs_floor: float | None = None) -> EvidenceLog:
    """Replay a :class:`Detector` of ``settings`` over ``log``: its evidence per frame.

    ``recurs_floor``: likelihood from which the daily recurrence is asked
    (default ``settings.alarm``; lower it to decide under lower alarm levels).
    """
    det = Detector(log.x.shape[1], settings, som=som, recurs_floor=recurs_floor)
    evs = [det.evidence(f) for f in log.frames()]
    cols = list(zip(*evs, strict=True)) if evs else [()] * len(Evidence._fields)
    return EvidenceLog(np.array(cols[0], dtype=np.float64), np.array(cols[1], dtype=np.float64),
                       np.array(cols[2], dtype=np.int64), np.array(cols[3], dtype=bool),
                       np.array(cols[4], dtype=bool), np.array(cols[5], dtype=bool),
                       np.array(cols[6], dtype=bool), np.array(cols[7], dtype=np.float64),
                       np.array(cols[8], dtype=np.float64))


def decide(ev: EvidenceLog, settings: ScoreSettings | AlarmState) -> Decisions:
    """Run a fresh :class:`AlarmState` (of ``settings``) over recorded evidence."""
    state = settings if isinstance(settings, AlarmState) else alarm_state(settings)
    n = ev.raw.shape[0]
    lik = np.empty(n)
    alarm = np.zeros(n, dtype=bool)
    reason = np.zeros(n, dtype=np.int64)
    rows: Any = zip(*(c.tolist() for c in ev), strict=True)
    for i, row in enumerate(rows):
        d = state.step(Evidence(*row))
        lik[i] = d.likelihood
        alarm[i] = d.alarm
        reason[i] = REASON_CODES[d.reason]
    return Decisions(lik, alarm, reason)
