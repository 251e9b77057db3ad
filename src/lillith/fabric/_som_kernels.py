"""Numba kernels of the self-organizing map (:mod:`lillith.fabric.som`).

Plain functions over arrays, compiled with ``@njit(cache=True, nogil=True,
fastmath=False)``; they never allocate, raise or log inside the per-sample
loop, so a batch of online updates is one call that releases the GIL. The
weights are kept feature-major, ``WT`` of shape ``(dim, n_units)`` float32
C-contiguous (the module docstring of :mod:`lillith.fabric.som` says why).
:class:`lillith.fabric.som.SelfOrganizingMap` is their typed wrapper: it
validates arguments and raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
from numba import njit

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: Neighbourhood values below this are treated as zero (the unit is skipped).
NEIGHBOURHOOD_CUTOFF = 1e-4
#: Largest accepted absolute input value. Keeps float32 squared distances
#: finite for any realistic ``dim`` (``(2e15)^2 * 1e6 < 3.4e38``).
MAX_ABS_INPUT = 1e15

_F = TypeVar("_F", bound=Callable[..., Any])


def _kernel(fn: _F) -> _F:
    """Compile ``fn`` with the fabric's numba options, keeping its signature."""
    return cast(_F, njit(cache=True, nogil=True, fastmath=False)(fn))


@_kernel
def _dist_block(x: F32, WT: F32, dist: F32, ua: int, ub: int, k0: int, k1: int) -> None:
    """Features ``k0 <= k < k1`` of the squared Euclidean distance from ``x`` to
    units ``ua <= u < ub``, in place (``k0 = 0`` initialises, later blocks add).

    ``dist[u] = sum_k (x[k] - WT[k, u])^2`` in float32, accumulated
    sequentially in ``k`` in blocks of four aligned at feature 0
    (``(((d + a0) + a1) + a2) + a3``), the remainder one by one: every split
    of the features into such ranges gives the same bits as one pass. The
    inner loops run over units through views starting at ``ua``, so they are
    element-wise with non-negative indices and LLVM vectorises them without
    ``fastmath``.

    Parameters
    ----------
    x : float32 (dim,)
    WT : float32 (dim, n_units)
        Feature-major weights.
    dist : float32 (n_units,)
        Output (entries outside the unit range are untouched).
    ua, ub : int
        Unit range, ``0 <= ua <= ub <= n_units``.
    k0, k1 : int
        Feature range: ``k0`` a multiple of 4, ``k1`` a multiple of 4 or ``dim``.
    """
    n = ub - ua
    D = k1
    dv = dist[ua:ub]
    k = k0
    if k0 == 0:
        if D >= 4:
            # the first block initialises dist (0 + a == a exactly)
            x0 = x[0]
            x1 = x[1]
            x2 = x[2]
            x3 = x[3]
            w0 = WT[0, ua:ub]
            w1 = WT[1, ua:ub]
            w2 = WT[2, ua:ub]
            w3 = WT[3, ua:ub]
            for t in range(n):
                d0 = x0 - w0[t]
                d1 = x1 - w1[t]
                d2 = x2 - w2[t]
                d3 = x3 - w3[t]
                dv[t] = ((d0 * d0 + d1 * d1) + d2 * d2) + d3 * d3
            k = 4
        else:
            for t in range(n):
                dv[t] = np.float32(0.0)
    while k + 4 <= D:
        x0 = x[k]
        x1 = x[k + 1]
        x2 = x[k + 2]
        x3 = x[k + 3]
        w0 = WT[k, ua:ub]
        w1 = WT[k + 1, ua:ub]
        w2 = WT[k + 2, ua:ub]
        w3 = WT[k + 3, ua:ub]
        for t in range(n):
            d0 = x0 - w0[t]
            d1 = x1 - w1[t]
            d2 = x2 - w2[t]
            d3 = x3 - w3[t]
            dv[t] = (((dv[t] + d0 * d0) + d1 * d1) + d2 * d2) + d3 * d3
        k += 4
    while k < D:
        xk = x[k]
        wk = WT[k, ua:ub]
        for t in range(n):
            d = xk - wk[t]
            dv[t] += d * d
        k += 1


@_kernel
def _dist_range(x: F32, WT: F32, dist: F32, ua: int, ub: int) -> None:
    """Squared Euclidean distance from ``x`` to units ``ua <= u < ub`` (all
    features; see :func:`_dist_block`)."""
    _dist_block(x, WT, dist, ua, ub, 0, WT.shape[0])


#: Features summed before the first pruning check of :func:`_bmu_pruned`, and
#: between checks (a multiple of 4, the blocking of :func:`_dist_range`).
PRUNE_BLOCK = 64


@_kernel
def _acc_alive(x: F32, WT: F32, dist: F32, alive: I64, na: int, k0: int, k1: int) -> None:
    """Add features ``k0 <= k < k1`` to ``dist[u]`` for the units ``alive[:na]``.

    Same grouping as :func:`_dist_block` (blocks of 4 aligned at feature 0,
    the remainder one by one at the end), so a unit's sum is bit-identical
    to the full pass. ``k0`` is a multiple of 4; ``k1`` is too, or ``dim``.
    """
    k = k0
    while k + 4 <= k1:
        x0 = x[k]
        x1 = x[k + 1]
        x2 = x[k + 2]
        x3 = x[k + 3]
        w0 = WT[k]
        w1 = WT[k + 1]
        w2 = WT[k + 2]
        w3 = WT[k + 3]
        for a in range(na):
            u = alive[a]
            d0 = x0 - w0[u]
            d1 = x1 - w1[u]
            d2 = x2 - w2[u]
            d3 = x3 - w3[u]
            dist[u] = (((dist[u] + d0 * d0) + d1 * d1) + d2 * d2) + d3 * d3
        k += 4
    while k < k1:
        xk = x[k]
        wk = WT[k]
        for a in range(na):
            u = alive[a]
            d = xk - wk[u]
            dist[u] += d * d
        k += 1


@_kernel
def _bmu_pruned(x: F32, WT: F32, dist: F32, alive: I64) -> tuple[int, np.float32]:
    """Best-matching unit by partial distance elimination; the same result as
    ``_argmin`` after ``_dist_all`` (index and squared distance, bit for bit).

    The first ``PRUNE_BLOCK`` features are summed for every unit (vectorised);
    the unit with the smallest partial sum is completed, and its squared
    distance bounds the minimum. Partial sums only grow as features are added
    (non-negative terms, monotone rounding), so a unit whose partial sum
    already exceeds the bound can be neither the BMU nor tie with it, and is
    dropped; the survivors are summed on, re-checked every ``PRUNE_BLOCK``
    features. Every sum keeps the grouping of :func:`_dist_block`, so the
    survivors' distances are those of the full pass. On clustered data most
    units drop out after the first block, which saves most of the pass over
    the weights (the memory-bound half of an update); when few drop out the
    vectorised pass simply goes on.

    Parameters
    ----------
    x : float32 (dim,)
    WT : float32 (dim, n_units)
    dist : float32 (n_units,)
        Scratch; on return exact for the surviving units only.
    alive : int64 (n_units,)
        Scratch for the surviving unit indices.
    """
    D = WT.shape[0]
    U = WT.shape[1]
    if D < 2 * PRUNE_BLOCK:
        _dist_range(x, WT, dist, 0, U)
        return _argmin(dist)
    _dist_block(x, WT, dist, 0, U, 0, PRUNE_BLOCK)
    cand, partial = _argmin(dist)
    # complete the candidate (same grouping), then put its partial sum back
    alive[0] = cand
    _acc_alive(x, WT, dist, alive, 1, PRUNE_BLOCK, D)
    bound = dist[cand]
    dist[cand] = partial
    na = 0
    for u in range(U):
        if dist[u] <= bound:
            alive[na] = u
            na += 1
    k = PRUNE_BLOCK
    if 2 * na > U:  # little pruned: go on with the vectorised pass
        _dist_block(x, WT, dist, 0, U, PRUNE_BLOCK, D)
        return _argmin(dist)
    while k < D:
        k1 = min(D, k + PRUNE_BLOCK)
        if D - k1 < 4:
            k1 = D
        _acc_alive(x, WT, dist, alive, na, k, k1)
        k = k1
        m = 0
        for a in range(na):
            u = alive[a]
            if dist[u] <= bound:
                alive[m] = u
                m += 1
        na = m
    best = dist[alive[0]]
    bi = alive[0]
    for a in range(1, na):
        u = alive[a]
        if dist[u] < best:  # ascending indices: the first of equals wins, as _argmin
            best = dist[u]
            bi = u
    return bi, best


@_kernel
def _dist_all(x: F32, WT: F32, dist: F32) -> None:
    """Squared Euclidean distance from ``x`` to every unit (see ``_dist_range``)."""
    _dist_range(x, WT, dist, 0, WT.shape[1])


@_kernel
def _argmin(dist: F32) -> tuple[int, np.float32]:
    """Index and value of the smallest entry (first one on ties)."""
    best = dist[0]
    bi = 0
    for u in range(1, dist.shape[0]):
        if dist[u] < best:
            best = dist[u]
            bi = u
    return bi, best


@_kernel
def _profile(p: F64, g: F64, side: int, b: int, r: int) -> None:
    """``p[i] = g[|i - b|]`` within radius ``r`` of ``b``, else 0, for ``i < side``."""
    for i in range(side):
        o = abs(i - b)
        p[i] = g[o] if o <= r else 0.0


@_kernel
def _apply(x: F32, WT: F32, coef: F32, ua: int, ub: int) -> None:
    """``WT[k, u] += coef[u] * (x[k] - WT[k, u])`` for ``ua <= u < ub``.

    The loop runs over views starting at ``ua`` so that every index is a
    plain non-negative ``range`` counter, which LLVM can vectorise.
    """
    c = coef[ua:ub]
    n = ub - ua
    for k in range(WT.shape[0]):
        xk = x[k]
        wk = WT[k, ua:ub]
        for t in range(n):
            wk[t] += c[t] * (xk - wk[t])


@_kernel
def _first_bad_row(X: F32, limit: float) -> int:
    """Index of the first row of ``X`` holding a value with ``not |v| <= limit``.

    Catches NaN, +/-inf and values beyond ``limit``; -1 when every row is fine.
    """
    for n in range(X.shape[0]):
        row = X[n]
        bad = 0
        for k in range(row.shape[0]):
            bad |= not (abs(row[k]) <= limit)
        if bad:
            return n
    return -1


@_kernel
def _train(
    X: F32,
    WT: F32,
    shape3: I64,
    params: F64,
    counters: I64,
    gtab: F64,
    scratch: F32,
    alive: I64,
    hits: I64,
    ring_bmu: I64,
    ring_qe: F64,
    out_bmu: I64,
) -> int:
    """Sequential online updates over the rows of ``X`` (in place).

    Every row is checked first (finite, ``|v| <= limit``); if any fails,
    nothing is learned and the index of the first bad row is returned.
    Otherwise returns -1.

    Parameters
    ----------
    X : float32 (n, dim)
        Samples, learned in row order.
    WT : float32 (dim, n_units)
        Feature-major weights, updated in place.
    shape3 : int64 (3,)
        Map shape padded to 3D with trailing ones.
    params : float64 (7,)
        ``sigma0, sigma_min, lr0, lr_min, decay_steps, h_min, limit``.
    counters : int64 (3,)
        ``step, ring_pos, ring_len``; updated in place.
    gtab : float64 (5, L), ``L >= max(max(shape3), shape3[1] * shape3[2])``
        Scratch: row 0 the Gaussian of a grid offset, rows 1-3 its profile
        along each axis around the BMU, row 4 the product of the last two.
    scratch : float32 (2, n_units)
        Scratch: distances and learning coefficients.
    alive : int64 (n_units,)
        Scratch of the BMU search (:func:`_bmu_pruned`).
    hits : int64 (2, n_units)
        Lifetime BMU counts (row 0) and BMU counts over the recent ring
        (row 1); in place.
    ring_bmu : int64 (window,), ring_qe : float64 (window,)
        Ring buffers of recent BMUs and their Euclidean distances.
    out_bmu : int64 (n,)
        BMU flat index of each row (found before that row's update).

    Notes
    -----
    ``h = exp(-(di^2 + dj^2 + dm^2) / (2 sigma^2))`` is evaluated as the
    product ``g(di) g(dj) g(dm)`` of one table ``g(o) = exp(-o^2 / (2
    sigma^2))``; ``h < h_min`` gives coefficient 0. Only the contiguous run
    of units spanning the bounding box of the truncation radius is touched.
    """
    sigma0 = params[0]
    sigma_min = params[1]
    lr0 = params[2]
    lr_min = params[3]
    decay_steps = params[4]
    h_min = params[5]
    bad = _first_bad_row(X, params[6])
    if bad >= 0:
        return bad
    s0 = shape3[0]
    s1 = shape3[1]
    s2 = shape3[2]
    s12 = s1 * s2
    smax = max(s0, max(s1, s2))
    window = ring_bmu.shape[0]
    dist = scratch[0]
    coef = scratch[1]
    g = gtab[0]
    p0 = gtab[1]
    p1 = gtab[2]
    p2 = gtab[3]
    p12 = gtab[4]
    step = counters[0]
    pos = counters[1]
    length = counters[2]
    for n in range(X.shape[0]):
        x = X[n]
        b, d2 = _bmu_pruned(x, WT, dist, alive)
        out_bmu[n] = b
        # bookkeeping: lifetime hits, recent ring (BMU + distance)
        hits[0, b] += 1
        if length == window:
            hits[1, ring_bmu[pos]] -= 1
        else:
            length += 1
        ring_bmu[pos] = b
        ring_qe[pos] = math.sqrt(np.float64(d2))
        hits[1, b] += 1
        pos += 1
        if pos == window:
            pos = 0
        # schedule (step count only)
        e = math.exp(-np.float64(step) / decay_steps)
        sigma = sigma_min + (sigma0 - sigma_min) * e
        lr = lr_min + (lr0 - lr_min) * e
        inv2s2 = 1.0 / (2.0 * sigma * sigma)
        # Gaussian of a grid offset, up to the truncation radius r
        r = 0
        for o in range(smax):
            v = math.exp(-np.float64(o * o) * inv2s2)
            g[o] = v
            if v < h_min:
                break
            r = o
        b0 = b // s12
        rem = b - b0 * s12
        b1 = rem // s2
        b2 = rem - b1 * s2
        _profile(p0, g, s0, b0, r)
        _profile(p1, g, s1, b1, r)
        _profile(p2, g, s2, b2, r)
        for j in range(s1):
            for m in range(s2):
                p12[j * s2 + m] = p1[j] * p2[m]
        i0 = max(0, b0 - r)
        i1 = min(s0 - 1, b0 + r)
        j0 = max(0, b1 - r)
        j1 = min(s1 - 1, b1 + r)
        for i in range(i0, i1 + 1):
            pi = p0[i]
            ci = coef[i * s12 : (i + 1) * s12]
            for t in range(s12):
                h = pi * p12[t]
                ci[t] = np.float32(lr * h) if h >= h_min else np.float32(0.0)
        # one contiguous run of units covering the bounding box; units of the
        # run outside the box have coefficient 0 (one long vectorised loop
        # beats many short ones even with the extra work)
        _apply(x, WT, coef, i0 * s12 + j0 * s2, i1 * s12 + (j1 + 1) * s2)
        step += 1
    counters[0] = step
    counters[1] = pos
    counters[2] = length
    return -1


@_kernel
def _bmu_batch(X: F32, WT: F32, dist: F32, out_bmu: I64, out_d2: F64) -> None:
    """BMU index and squared distance (as float64) of every row of ``X``."""
    for n in range(X.shape[0]):
        _dist_all(X[n], WT, dist)
        b, d2 = _argmin(dist)
        out_bmu[n] = b
        out_d2[n] = np.float64(d2)


@_kernel
def _top2_batch(X: F32, WT: F32, dist: F32, out1: I64, out2: I64) -> None:
    """First and second best-matching unit of every row (``n_units >= 2``)."""
    for n in range(X.shape[0]):
        _dist_all(X[n], WT, dist)
        best1 = dist[0]
        i1 = 0
        best2 = dist[1]
        i2 = 1
        if best2 < best1:
            best1, best2 = best2, best1
            i1, i2 = i2, i1
        for u in range(2, dist.shape[0]):
            d2 = dist[u]
            if d2 < best1:
                best2 = best1
                i2 = i1
                best1 = d2
                i1 = u
            elif d2 < best2:
                best2 = d2
                i2 = u
        out1[n] = i1
        out2[n] = i2


@_kernel
def _u_matrix(WT: F32, shape3: I64, out: F64) -> None:
    """Mean Euclidean weight distance of each unit to its Chebyshev-1 neighbours."""
    s0 = shape3[0]
    s1 = shape3[1]
    s2 = shape3[2]
    D = WT.shape[0]
    for i in range(s0):
        for j in range(s1):
            for m in range(s2):
                u = (i * s1 + j) * s2 + m
                total = 0.0
                count = 0
                for ni in range(max(0, i - 1), min(s0, i + 2)):
                    for nj in range(max(0, j - 1), min(s1, j + 2)):
                        for nm in range(max(0, m - 1), min(s2, m + 2)):
                            v = (ni * s1 + nj) * s2 + nm
                            if v == u:
                                continue
                            acc = 0.0
                            for k in range(D):
                                d = np.float64(WT[k, u]) - np.float64(WT[k, v])
                                acc += d * d
                            total += math.sqrt(acc)
                            count += 1
                out[u] = total / count if count > 0 else 0.0
