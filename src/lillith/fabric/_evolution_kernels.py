"""Numba kernels of the fabric's fitness (:mod:`lillith.fabric.evolution`):
the moving averages behind it and their combination. Pure functions over
arrays, in place; :meth:`lillith.fabric.neural_fabric.NeuralFabric3D.observe_importance`
is their typed wrapper (it validates and raises)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _observe(
    act: np.ndarray,
    readout: np.ndarray,
    grad: np.ndarray,
    n_out: int,
    keep: float,
    importance: np.ndarray,
    act_mean: np.ndarray,
    act_sq: np.ndarray,
    diversity: np.ndarray,
) -> None:
    """Update the per-neuron fitness EMAs in place (no allocation).

    ``act``, ``readout`` (n,) float32; ``grad`` (n_out,) float32, dLoss/dpooled;
    the pooling groups are those of :func:`lillith.fabric._fabric_kernels._pool`.
    ``x <- keep * x + (1 - keep) * sample`` for importance ``|a r g / |f||``,
    ``a``, ``a^2`` and ``|a - slab mean|``.
    """
    n = act.shape[0]
    lr = 1.0 - keep
    for g in range(n_out):
        lo = g * n // n_out
        hi = (g + 1) * n // n_out
        cnt = max(hi - lo, 1)
        mean = 0.0
        for i in range(lo, hi):
            mean += act[i]
        mean /= cnt
        gg = grad[g] / cnt
        for i in range(lo, hi):
            a = float(act[i])
            imp = abs(a * readout[i] * gg)
            importance[i] = keep * importance[i] + lr * imp
            act_mean[i] = keep * act_mean[i] + lr * a
            act_sq[i] = keep * act_sq[i] + lr * a * a
            diversity[i] = keep * diversity[i] + lr * abs(a - mean)


@njit(cache=True, nogil=True)
def _combine(
    weights: np.ndarray,
    indptr: np.ndarray,
    w: np.ndarray,
    importance: np.ndarray,
    act_mean: np.ndarray,
    act_sq: np.ndarray,
    diversity: np.ndarray,
    scratch: np.ndarray,
    fitness: np.ndarray,
) -> None:
    """Combined fitness (see :class:`FitnessWeights`) into ``fitness`` (n,) float32.

    ``weights`` (4,) float64; ``scratch`` (2, n) float32 receives the
    stability and efficiency terms.
    """
    n = importance.shape[0]
    wi, wd, ws, we = weights[0], weights[1], weights[2], weights[3]
    if wd == 0.0 and ws == 0.0 and we == 0.0:
        for i in range(n):
            fitness[i] = wi * importance[i]
        return
    s_imp = 0.0
    s_div = 0.0
    s_var = 0.0
    s_m = 0.0
    for i in range(n):
        s_imp += importance[i]
        s_div += diversity[i]
        var = max(float(act_sq[i]) - float(act_mean[i]) * float(act_mean[i]), 0.0)
        scratch[0, i] = var
        s_var += var
        m = 0.0
        if we != 0.0:
            lo = indptr[i]
            hi = indptr[i + 1]
            for j in range(lo, hi):
                m += abs(w[j])
            if hi > lo:
                m /= hi - lo
        scratch[1, i] = m
        s_m += m
    m_var = s_var / max(n, 1)
    m_m = s_m / max(n, 1)
    s_stab = 0.0
    s_eff = 0.0
    for i in range(n):
        stab = 1.0 / (1.0 + scratch[0, i] / m_var) if m_var > 0.0 else 1.0
        eff = 1.0 / (1.0 + scratch[1, i] / m_m) if m_m > 0.0 else 1.0
        scratch[0, i] = stab
        scratch[1, i] = eff
        s_stab += stab
        s_eff += eff
    c_imp = wi * n / s_imp if s_imp > 0.0 else 0.0
    c_div = wd * n / s_div if s_div > 0.0 else 0.0
    c_stab = ws * n / s_stab if s_stab > 0.0 else 0.0
    c_eff = we * n / s_eff if s_eff > 0.0 else 0.0
    for i in range(n):
        fitness[i] = (c_imp * importance[i] + c_div * diversity[i]
                      + c_stab * scratch[0, i] + c_eff * scratch[1, i])
