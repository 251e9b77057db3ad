"""What the agent says of each frame (:class:`Metrics`), and the count of frames
whose stream time went back or repeated (:class:`FrameLog`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class Metrics:
    """What the agent learned from one frame.

    Attributes
    ----------
    step : int
        0-based index of the frame in the agent's life.
    t : float or None
        Stream time of the frame as given by the caller.
    loss : float
        Mean squared error of the previous forecast of this frame, in
        normalised units (0.0 on the first frame, which had no forecast).
    anomaly_score : float
        Raw anomaly score (relative prediction error plus weighted relative
        SOM quantisation error), >= 0.
    anomaly_likelihood : float
        Likelihood in [0, 1] that the recent raw scores are unusual: high
        at news, damped during the rest that follows (docs/agent.md).
    alarm : bool
        The agent considers this frame anomalous now (for as long as the
        condition that raised the alarm lasts).
    alarm_reason : str
        What raised the current alarm: ``forecast``, ``novelty``, ``level``,
        ``range``, ``stuck``, ``context`` or ``shift``; empty when no alarm.
    alarm_onset : bool
        This frame started an alarm.
    prediction : list of float
        Forecast of the next frame, in the input's units.
    bmu : int
        SOM best-matching unit (flat index); -1 when the fabric is ablated.
    mode : str
        Propagation mode of this step.
    energy, learning_drive, mood : float
        BioSystem state after this step.
    skipped : bool
        True when learning was skipped (energy gate shut or learning off).
    """

    step: int
    t: float | None
    loss: float
    anomaly_score: float
    anomaly_likelihood: float
    prediction: list[float]
    bmu: int
    mode: str
    energy: float
    learning_drive: float
    mood: float
    skipped: bool
    alarm: bool = False
    alarm_reason: str = ""
    alarm_onset: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)


class FrameLog:
    """Counts frames whose stream time goes back or repeats (they are processed
    in the order given: every time-based feature takes a time going back as the
    latest time, see the scores).

    Attributes
    ----------
    back : int
        Frames whose time is earlier than the latest time before them.
    repeated : int
        Frames whose time equals the latest time.
    latest : float
        Latest stream time seen (``-inf`` before any).
    """

    def __init__(self) -> None:
        self.back = 0
        self.repeated = 0
        self.latest = -math.inf

    def observe(self, t: float | None) -> None:
        """Count frame time ``t`` (None: a frame without time, not counted)."""
        if t is None:
            return
        if t < self.latest:
            self.back += 1
        elif t == self.latest:
            self.repeated += 1
        else:
            self.latest = t

    def as_array(self) -> npt.NDArray[np.float64]:
        """``[back, repeated, latest, 1 if a time was seen else 0]``, float64 (finite)."""
        seen = math.isfinite(self.latest)
        return np.array([self.back, self.repeated, self.latest if seen else 0.0, float(seen)],
                        dtype=np.float64)

    def load(self, a: npt.NDArray[Any]) -> None:
        """Restore from :meth:`as_array`."""
        v = np.asarray(a, dtype=np.float64)
        self.back, self.repeated = int(v[0]), int(v[1])
        self.latest = float(v[2]) if v.size > 3 and v[3] > 0 else -math.inf
