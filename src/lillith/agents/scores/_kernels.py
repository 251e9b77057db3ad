"""Numba kernels of the scores (private; their classes wrap and check them)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _shift_stat(x: np.ndarray, loc: np.ndarray, scale: np.ndarray, ewma: np.ndarray,
                var: np.ndarray, rate: float) -> float:  # pragma: no cover (jit)
    """The shift statistic ``q`` that :func:`_shift_step` returns for frame ``x``,
    computed by the same operations, without changing anything (arguments as
    there)."""
    q = 0.0
    floor = 1e-12 * rate / (2.0 - rate)
    for c in range(x.shape[0]):
        s = max(scale[c], 1e-3 * (1.0 + abs(loc[c])))
        d = (x[c] - loc[c]) / s
        d = min(max(d, -10.0), 10.0)
        e = ewma[c] + rate * (d - ewma[c])
        q += e * e / max(var[c], floor)
    return q


@njit(cache=True, nogil=True)
def _shift_step(x: np.ndarray, loc: np.ndarray, scale: np.ndarray, ewma: np.ndarray,
                var: np.ndarray, rate: float, r: float) -> float:  # pragma: no cover (jit)
    """One frame of the shift statistic, in place.

    ``x`` (C,) the frame; ``loc``, ``scale`` (C,) the baseline, ``ewma`` (C,)
    the moving average of the deviations, ``var`` (C,) its usual square, all
    float64, updated in place; ``rate`` the moving average's rate, ``r`` the
    baseline's rate for this frame. Returns ``q = sum_c ewma_c^2 / var_c``
    (before ``var`` learns this frame).
    """
    q = 0.0
    floor = 1e-12 * rate / (2.0 - rate)
    for c in range(x.shape[0]):
        s = max(scale[c], 1e-3 * (1.0 + abs(loc[c])))
        d = (x[c] - loc[c]) / s
        d = min(max(d, -10.0), 10.0)
        ewma[c] += rate * (d - ewma[c])
        e2 = ewma[c] * ewma[c]
        q += e2 / max(var[c], floor)
        var[c] += r * (min(e2, 9.0 * var[c]) - var[c])
        dev = min(max(x[c] - loc[c], -3.0 * s), 3.0 * s)
        loc[c] += r * dev
        scale[c] += r * (1.25 * abs(dev) - scale[c])
    return q
