"""numba kernels of the agent's per-frame forecast (inference only, no autograd).

Each row is computed by the same scalar loops whatever the number of rows in
the call, so a frame's forecast has the same bits however a stream is cut
into calls, without padding to a fixed shape; and a call costs microseconds
where torch's (or numpy's) per-operation dispatch cost a fraction of a
millisecond. Pure functions over float32 arrays; the typed wrappers are
:meth:`lillith.agents.tiles.SparseLookupFFNv2.infer` and
:meth:`lillith.agents.agent.TilePredictor.infer`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _ffn_row(x: np.ndarray, use_norm: bool, norm_w: np.ndarray, norm_b: np.ndarray,
             cw1: np.ndarray, cb1: np.ndarray, cw2: np.ndarray, cb2: np.ndarray,
             sig: np.ndarray, score_scale: np.float32, K: int, w1: np.ndarray,
             b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, use_cal: bool, lo: np.ndarray,
             step: np.ndarray, hi: np.ndarray, x_min: np.float32, inv_h: np.float32,
             work: np.ndarray, out: np.ndarray) -> None:
    """Tile FFN output of one token ``x`` (d,) into ``out`` (d,).

    Shapes (float32 throughout): ``norm_w``, ``norm_b`` (d,); ``cw1`` (Hc, d),
    ``cb1`` (Hc,), ``cw2`` (d, Hc), ``cb2`` (d,); ``sig`` (T, d) effective
    signatures, ``K`` tiles per cluster; ``w1`` (T, d, H), ``b1`` (T, H),
    ``w2`` (T, H, d), ``b2`` (T, d); ``lo``, ``step``, ``hi`` (G - 1,) the
    calibration spline's segments on the score axis from ``x_min`` with
    ``inv_h`` segments per unit; ``work`` scratch of at least
    ``2 d + Hc + T + H`` values.
    """
    d = x.shape[0]
    Hc = cw1.shape[0]
    T = sig.shape[0]
    H = w1.shape[2]
    C = T // K
    n_seg = lo.shape[0]
    xn = work[:d]
    code = work[d:2 * d]
    hc = work[2 * d:2 * d + Hc]
    z = work[2 * d + Hc:2 * d + Hc + T]
    hid = work[2 * d + Hc + T:2 * d + Hc + T + H]
    if use_norm:
        mu = np.float32(0.0)
        for j in range(d):
            mu += x[j]
        mu = mu / np.float32(d)
        var = np.float32(0.0)
        for j in range(d):
            v = x[j] - mu
            var += v * v
        var = var / np.float32(d)
        inv = np.float32(1.0) / np.float32(math.sqrt(var + np.float32(1e-5)))
        for j in range(d):
            xn[j] = (x[j] - mu) * inv * norm_w[j] + norm_b[j]
    else:
        for j in range(d):
            xn[j] = x[j]
    for k in range(Hc):
        a = cb1[k]
        for j in range(d):
            a += cw1[k, j] * xn[j]
        hc[k] = a / (np.float32(1.0) + np.float32(math.exp(-a)))
    cn = np.float32(0.0)
    for j in range(d):
        a = cb2[j]
        for k in range(Hc):
            a += cw2[j, k] * hc[k]
        code[j] = a
        cn += a * a
    for t in range(T):
        a = np.float32(0.0)
        for j in range(d):
            a += code[j] * sig[t, j]
        z[t] = a
    best_c = 0
    best_m = np.float32(-np.inf)
    for c in range(C):
        m = np.float32(0.0)
        for k in range(K):
            m += z[c * K + k] * score_scale
        m = m / np.float32(K)
        if m > best_m:
            best_m = m
            best_c = c
    t_best = best_c * K
    for k in range(1, K):
        if z[best_c * K + k] > z[t_best]:
            t_best = best_c * K + k
    sn = np.float32(0.0)
    for j in range(d):
        sn += sig[t_best, j] * sig[t_best, j]
    den = np.float32(math.sqrt(cn)) * np.float32(math.sqrt(sn))
    cos = z[t_best] / max(den, np.float32(1e-8))
    for h in range(H):
        a = b1[t_best, h]
        for j in range(d):
            a += xn[j] * w1[t_best, j, h]
        hid[h] = a / (np.float32(1.0) + np.float32(math.exp(-a)))
    gate = np.float32(1.0)
    if use_cal:
        u = (cos - x_min) * inv_h
        u = min(max(u, np.float32(0.0)), np.float32(n_seg))
        s = min(int(u), n_seg - 1)  # u >= 0: truncation is the floor
        gate = min(lo[s] + (u - np.float32(s)) * step[s], hi[s])
    for j in range(d):
        a = b2[t_best, j]
        for h in range(H):
            a += hid[h] * w2[t_best, h, j]
        out[j] = x[j] + gate * a


@njit(cache=True, nogil=True)
def _ffn_rows(x: np.ndarray, use_norm: bool, norm_w: np.ndarray, norm_b: np.ndarray,
              cw1: np.ndarray, cb1: np.ndarray, cw2: np.ndarray, cb2: np.ndarray,
              sig: np.ndarray, score_scale: np.float32, K: int, w1: np.ndarray,
              b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, use_cal: bool, lo: np.ndarray,
              step: np.ndarray, hi: np.ndarray, x_min: np.float32, inv_h: np.float32,
              work: np.ndarray, out: np.ndarray) -> None:
    """:func:`_ffn_row` for each row of ``x`` (N, d) into ``out`` (N, d)."""
    for r in range(x.shape[0]):
        _ffn_row(x[r], use_norm, norm_w, norm_b, cw1, cb1, cw2, cb2, sig, score_scale, K,
                 w1, b1, w2, b2, use_cal, lo, step, hi, x_min, inv_h, work, out[r])


@njit(cache=True, nogil=True)
def _predict_rows(feats: np.ndarray, last: np.ndarray, pw: np.ndarray, pb: np.ndarray,
                  use_norm: bool, norm_w: np.ndarray, norm_b: np.ndarray,
                  cw1: np.ndarray, cb1: np.ndarray, cw2: np.ndarray, cb2: np.ndarray,
                  sig: np.ndarray, score_scale: np.float32, K: int, w1: np.ndarray,
                  b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, use_cal: bool,
                  lo: np.ndarray, step: np.ndarray, hi: np.ndarray, x_min: np.float32,
                  inv_h: np.float32, hw: np.ndarray, hb: np.ndarray, work: np.ndarray,
                  out: np.ndarray) -> None:
    """The tile predictor's forecast of each row, in one call:
    ``last + head(ffn(tanh(proj(feats))))``.

    ``feats`` (N, F), ``last`` (N, C), ``pw`` (d, F), ``pb`` (d,), ``hw``
    (C, d), ``hb`` (C,), ``out`` (N, C), float32; the tile FFN's arrays as in
    :func:`_ffn_row`; ``work`` scratch of at least ``4 d + Hc + T + H``.
    """
    d = pw.shape[0]
    h = work[:d]
    y = work[d:2 * d]
    rest = work[2 * d:]
    for r in range(feats.shape[0]):
        _linear_row(feats[r], pw, pb, True, h)
        _ffn_row(h, use_norm, norm_w, norm_b, cw1, cb1, cw2, cb2, sig, score_scale, K,
                 w1, b1, w2, b2, use_cal, lo, step, hi, x_min, inv_h, rest, y)
        _linear_row(y, hw, hb, False, out[r])
        for c in range(out.shape[1]):
            out[r, c] += last[r, c]


@njit(cache=True, nogil=True)
def _linear_row(x: np.ndarray, w: np.ndarray, b: np.ndarray, tanh: bool,
                out: np.ndarray) -> None:
    """``out = w @ x + b`` for one row ``x`` (F,), ``w`` (D, F), ``b`` and ``out``
    (D,), float32 (tanh applied when asked)."""
    D, F = w.shape
    for k in range(D):
        a = b[k]
        for j in range(F):
            a += w[k, j] * x[j]
        out[k] = np.float32(math.tanh(a)) if tanh else a
