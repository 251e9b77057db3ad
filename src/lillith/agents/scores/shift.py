"""Sustained shift of a frame's recent mean away from the stream's long-run baseline."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from lillith.agents.scores._kernels import _shift_stat, _shift_step
from lillith.records import read_arrays

F64 = npt.NDArray[np.float64]


def chi2_likelihood(q: float, dof: int) -> float:
    """``P(X <= q)`` for ``X ~ chi2(dof)``, by the Wilson-Hilferty cube-root
    transform and the logistic form of the normal CDF the agent's likelihoods
    use (``1 / (1 + exp(-1.7 z))``).

    Parameters
    ----------
    q : float
        Statistic, >= 0.
    dof : int
        Degrees of freedom, >= 1.

    Returns
    -------
    float
        In (0, 1).
    """
    k = float(dof)
    c = 2.0 / (9.0 * k)
    z = ((max(q, 0.0) / k) ** (1.0 / 3.0) - (1.0 - c)) / math.sqrt(c)
    return 1.0 / (1.0 + math.exp(-1.7 * max(min(z, 400.0), -400.0)))


class ShiftDetector:
    """How far the recent mean of every channel lies from its long-run baseline.

    Per channel c, a baseline location ``m_c`` and scale ``s_c`` follow the
    frames as the agent's normaliser does (a Huber-clipped running mean and
    mean absolute deviation) but slowly: their rate is ``1/(n+1)`` down to
    ``1/memory``. Each frame's deviation ``d_c = (x_c - m_c) / s_c`` (clipped
    to +-10) feeds an exponential moving average ``e_c`` of rate ``rate``
    (memory ~ ``1/rate`` frames), and ``v_c``, the running mean of ``e_c^2``
    (Huber-clipped at 9 v_c, rate as the baseline's), says how far ``e_c``
    usually strays. The statistic ``q = sum_c e_c^2 / v_c`` is ~ chi2(C) while
    nothing has changed, whatever each channel's own noise or wander (a
    drifting channel strays far as a matter of course, so it counts less); a
    shift of a quiet channel by a few of its usual deviations, held for
    ``~1/rate`` frames, makes it large. :meth:`score_one` returns
    ``P(chi2(C) <= q)`` (0.5 during the first ``warm`` frames); :meth:`learn_one`
    folds the frame in.

    Parameters
    ----------
    n_channels : int
        Width of a frame, >= 1.
    rate : float
        Rate of the moving average of the deviations, in (0, 1].
    memory : int
        Frames the baseline remembers (its slowest rate is ``1/memory``), >= 1.
    warm : int
        Frames seen before the statistic is reported, >= 0.
    """

    def __init__(self, n_channels: int, *, rate: float = 0.02, memory: int = 2000,
                 warm: int = 50) -> None:
        self.n_channels = int(n_channels)
        self.rate = float(rate)
        self.memory = int(memory)
        self.warm = int(warm)
        self.loc = np.zeros(self.n_channels)
        self.scale = np.ones(self.n_channels)
        self.ewma = np.zeros(self.n_channels)
        self.var = np.full(self.n_channels, self.rate / (2.0 - self.rate))
        self.count = 0
        self.stat = 0.0  # the latest q

    def score_one(self, x: F64) -> float:
        """The likelihood of the shift statistic once frame ``x`` (shape (C,),
        input units) is in, in (0, 1) (0.5 during the first ``warm`` frames).
        Changes nothing: :meth:`learn_one` folds the frame in."""
        if self.count == 0 or self.count + 1 <= self.warm:
            return 0.5
        q = _shift_stat(np.ascontiguousarray(x, dtype=np.float64), self.loc, self.scale,
                        self.ewma, self.var, self.rate)
        return chi2_likelihood(q, self.n_channels)

    def update_one(self, x: F64) -> float:
        """:meth:`score_one` then :meth:`learn_one` in one pass: returns the
        likelihood ``score_one(x)`` returned (the statistic the step computes
        is the one ``score_one`` computes), then has ``x`` folded in."""
        warming = self.count == 0 or self.count + 1 <= self.warm
        self.learn_one(x)
        return 0.5 if warming else chi2_likelihood(self.stat, self.n_channels)

    def learn_one(self, x: F64) -> None:
        """Fold frame ``x`` into the baseline, the moving average and its usual
        square (the statistic of this frame is kept in :attr:`stat`)."""
        if self.count == 0:
            self.loc = x.astype(np.float64).copy()
            self.scale = np.maximum(np.abs(x) * 0.1, 1e-3 * (1.0 + np.abs(x)))
            self.count = 1
            self.stat = 0.0
            return
        r = max(1.0 / (self.count + 1), 1.0 / self.memory)
        self.stat = _shift_step(np.ascontiguousarray(x, dtype=np.float64), self.loc,
                                self.scale, self.ewma, self.var, self.rate, r)
        self.count += 1

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Baseline, averages and counter as plain arrays."""
        return {"loc": self.loc.copy(), "scale": self.scale.copy(), "ewma": self.ewma.copy(),
                "var": self.var.copy(), "count": np.array(self.count, dtype=np.int64),
                "stat": np.array(self.stat)}

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`.

        Raises
        ------
        StateError
            When an array is missing or does not fit (another width).
        """
        c = self.n_channels
        a = read_arrays(state, {"loc": (np.float64, (c,)), "scale": (np.float64, (c,)),
                                "ewma": (np.float64, (c,)), "var": (np.float64, (c,)),
                                "count": (np.int64, ()), "stat": (np.float64, ())},
                        what="shift")
        self.loc, self.scale, self.ewma, self.var = a["loc"], a["scale"], a["ewma"], a["var"]
        self.count = int(a["count"])
        self.stat = float(a["stat"])
