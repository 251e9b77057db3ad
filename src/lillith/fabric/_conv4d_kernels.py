"""Numba kernels of the 4D convolution (:mod:`lillith.fabric.conv4d`).

Parallel (``prange``) loop kernels compiled with ``cache=True, nogil=True,
parallel=True``: the forward pass and the input gradient are gathers (no
write races), the weight gradient is parallel over kernel offsets. Arrays are
C-contiguous and channels-last; :func:`lillith.fabric.conv4d.conv4d_forward`
and :func:`~lillith.fabric.conv4d.conv4d_backward` are their typed wrappers
(they validate and raise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt
from numba import prange

FloatArray = npt.NDArray[np.floating[Any]]

_F = TypeVar("_F", bound=Callable[..., Any])


def _jit(fn: _F) -> _F:
    """``numba.njit(cache=True, nogil=True, parallel=True)`` with its type kept."""
    return cast(_F, numba.njit(cache=True, nogil=True, parallel=True)(fn))


# --------------------------------------------------------------------------- #
# numba kernels (private). Arrays are C-contiguous; ``wr`` is the kernel in
# the layout (kx, ky, kz, kt, in, out) so the innermost loop runs over output
# channels contiguously in both ``wr`` and the output / gradient arrays.
# The kernels are dtype-generic (float32 and float64 both compile).
# --------------------------------------------------------------------------- #


@_jit
def _fwd_kernel(
    x: FloatArray,
    wr: FloatArray,
    bias: FloatArray,
    gain: FloatArray,
    sx: int,
    sy: int,
    sz: int,
    st: int,
    px: int,
    py: int,
    pz: int,
    pt: int,
    y: FloatArray,
) -> None:
    """y[b, ox, oy, oz, ot, o] = gain[o] * (bias[o] + sum x_pad * W); fills ``y``."""
    B, X, Y, Z, T, C = x.shape
    KX, KY, KZ, KT = wr.shape[0], wr.shape[1], wr.shape[2], wr.shape[3]
    CO = wr.shape[5]
    OX, OY, OZ, OT = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
    for job in prange(B * OX):
        b = job // OX
        ox = job - b * OX
        acc = np.empty_like(bias)
        x0 = ox * sx - px
        dx0 = max(0, -x0)
        dx1 = min(KX, X - x0)
        for oy in range(OY):
            y0 = oy * sy - py
            dy0 = max(0, -y0)
            dy1 = min(KY, Y - y0)
            for oz in range(OZ):
                z0 = oz * sz - pz
                dz0 = max(0, -z0)
                dz1 = min(KZ, Z - z0)
                for ot in range(OT):
                    t0 = ot * st - pt
                    dt0 = max(0, -t0)
                    dt1 = min(KT, T - t0)
                    for o in range(CO):
                        acc[o] = bias[o]
                    for dx in range(dx0, dx1):
                        ix = x0 + dx
                        for dy in range(dy0, dy1):
                            iy = y0 + dy
                            for dz in range(dz0, dz1):
                                iz = z0 + dz
                                for dt in range(dt0, dt1):
                                    it = t0 + dt
                                    for i in range(C):
                                        xv = x[b, ix, iy, iz, it, i]
                                        for o in range(CO):
                                            acc[o] += xv * wr[dx, dy, dz, dt, i, o]
                    for o in range(CO):
                        y[b, ox, oy, oz, ot, o] = acc[o] * gain[o]


@_jit
def _grad_w_kernel(
    x: FloatArray,
    g: FloatArray,
    sx: int,
    sy: int,
    sz: int,
    st: int,
    px: int,
    py: int,
    pz: int,
    pt: int,
    gwr: FloatArray,
) -> None:
    """gwr[dx, dy, dz, dt, i, o] = sum_{b, pos} x_pad[b, pos*s + d, i] * g[b, pos, o].

    Parallel over kernel offsets; each offset owns its (in, out) slab of ``gwr``.
    ``gwr`` is overwritten.
    """
    B, X, Y, Z, T, C = x.shape
    KX, KY, KZ, KT = gwr.shape[0], gwr.shape[1], gwr.shape[2], gwr.shape[3]
    CO = gwr.shape[5]
    OX, OY, OZ, OT = g.shape[1], g.shape[2], g.shape[3], g.shape[4]
    for kk in prange(KX * KY * KZ * KT):
        dt = kk % KT
        rem = kk // KT
        dz = rem % KZ
        rem = rem // KZ
        dy = rem % KY
        dx = rem // KY
        buf = np.zeros((C, CO), dtype=gwr.dtype)
        for b in range(B):
            for ox in range(OX):
                ix = ox * sx - px + dx
                if ix < 0 or ix >= X:
                    continue
                for oy in range(OY):
                    iy = oy * sy - py + dy
                    if iy < 0 or iy >= Y:
                        continue
                    for oz in range(OZ):
                        iz = oz * sz - pz + dz
                        if iz < 0 or iz >= Z:
                            continue
                        for ot in range(OT):
                            it = ot * st - pt + dt
                            if it < 0 or it >= T:
                                continue
                            for i in range(C):
                                xv = x[b, ix, iy, iz, it, i]
                                for o in range(CO):
                                    buf[i, o] += xv * g[b, ox, oy, oz, ot, o]
        for i in range(C):
            for o in range(CO):
                gwr[dx, dy, dz, dt, i, o] = buf[i, o]


@_jit
def _grad_x_kernel(
    g: FloatArray,
    wr: FloatArray,
    sx: int,
    sy: int,
    sz: int,
    st: int,
    px: int,
    py: int,
    pz: int,
    pt: int,
    gx: FloatArray,
) -> None:
    """gx[b, ix, iy, iz, it, i] = sum over outputs reading that input of g * W (gather).

    ``gx`` (shape of the unpadded input) is overwritten.
    """
    B, X, Y, Z, T, C = gx.shape
    KX, KY, KZ, KT = wr.shape[0], wr.shape[1], wr.shape[2], wr.shape[3]
    CO = wr.shape[5]
    OX, OY, OZ, OT = g.shape[1], g.shape[2], g.shape[3], g.shape[4]
    for job in prange(B * X):
        b = job // X
        ix = job - b * X
        acc = np.empty(C, dtype=gx.dtype)
        for iy in range(Y):
            for iz in range(Z):
                for it in range(T):
                    for i in range(C):
                        acc[i] = 0.0
                    for dx in range(KX):
                        nx = ix + px - dx
                        if nx < 0:
                            break
                        if nx % sx != 0:
                            continue
                        ox = nx // sx
                        if ox >= OX:
                            continue
                        for dy in range(KY):
                            ny = iy + py - dy
                            if ny < 0:
                                break
                            if ny % sy != 0:
                                continue
                            oy = ny // sy
                            if oy >= OY:
                                continue
                            for dz in range(KZ):
                                nz = iz + pz - dz
                                if nz < 0:
                                    break
                                if nz % sz != 0:
                                    continue
                                oz = nz // sz
                                if oz >= OZ:
                                    continue
                                for dt in range(KT):
                                    nt = it + pt - dt
                                    if nt < 0:
                                        break
                                    if nt % st != 0:
                                        continue
                                    ot = nt // st
                                    if ot >= OT:
                                        continue
                                    for i in range(C):
                                        for o in range(CO):
                                            acc[i] += (
                                                g[b, ox, oy, oz, ot, o] * wr[dx, dy, dz, dt, i, o]
                                            )
                    for i in range(C):
                        gx[b, ix, iy, iz, it, i] = acc[i]
