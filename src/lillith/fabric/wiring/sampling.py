"""Vectorised geometry and sampling of the wirings: grid coordinates, local
neighbourhoods, distinct random choices per row.

Neurons are numbered layer-major (:mod:`lillith.fabric.topology`): neuron
``i`` of shape ``(X, Y, Z)`` sits at ``z = i // (X Y)``, ``x = (i % (X Y)) // Y``,
``y = i % Y``. Every function draws from the generator it is given, so a
wiring that passes its own is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from lillith.fabric.topology import Shape3, n_neurons

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
RejectFn = Callable[[IntArray, IntArray], BoolArray]

MATRIX_BUDGET = 1 << 21
"""Entries per chunk of the dense random-key matrices used for exact sampling."""


def empty_int() -> IntArray:
    return np.empty(0, dtype=np.int64)


def grid_coords(shape: Shape3, idx: IntArray | None = None) -> tuple[IntArray, IntArray, IntArray]:
    """Grid coordinates ``(x, y, z)`` of ``idx`` (default: every neuron)."""
    X, Y, _ = shape
    if idx is None:
        idx = np.arange(n_neurons(shape), dtype=np.int64)
    z, rem = np.divmod(idx, X * Y)
    x, y = np.divmod(rem, Y)
    return x, y, z


def chebyshev(shape: Shape3, a: IntArray, b: IntArray) -> IntArray:
    """Chebyshev grid distance between neurons ``a`` and ``b`` (broadcasting)."""
    ax, ay, az = grid_coords(shape, a)
    bx, by, bz = grid_coords(shape, b)
    dist: IntArray = np.maximum(np.maximum(np.abs(ax - bx), np.abs(ay - by)), np.abs(az - bz))
    return dist


def local_pairs(shape: Shape3, radius: int, *, planar: bool = False) -> tuple[IntArray, IntArray]:
    """All ``(src, dst)`` pairs within Chebyshev ``radius`` (no wrap, no self pairs).

    With ``planar`` only pairs in the same z-slice are produced.
    """
    X, Y, Z = shape
    XY = X * Y
    dst_all = np.arange(n_neurons(shape), dtype=np.int64)
    x, y, z = grid_coords(shape)

    def axis_masks(coord: IntArray, size: int, r: int) -> dict[int, BoolArray]:
        r = min(r, size - 1)
        return {d: (coord + d >= 0) & (coord + d < size) for d in range(-r, r + 1)}

    mx = axis_masks(x, X, radius)
    my = axis_masks(y, Y, radius)
    mz = axis_masks(z, Z, 0 if planar else radius)
    srcs: list[IntArray] = []
    dsts: list[IntArray] = []
    for dz, okz in mz.items():
        for dx, okx in mx.items():
            okzx = okz & okx
            for dy, oky in my.items():
                if dx == 0 and dy == 0 and dz == 0:
                    continue
                d = dst_all[okzx & oky]
                dsts.append(d)
                srcs.append(d + (dz * XY + dx * Y + dy))
    if not srcs:
        return empty_int(), empty_int()
    return np.concatenate(srcs), np.concatenate(dsts)


def row_chunks(rows: int, width: int) -> list[tuple[int, int]]:
    step = max(1, MATRIX_BUDGET // max(width, 1))
    return [(s, min(rows, s + step)) for s in range(0, rows, step)]


def smallest_k(keys: FloatArray, k: int) -> tuple[IntArray, BoolArray]:
    """Columns of the ``k`` smallest keys of each row and whether they are finite."""
    rows, cols = keys.shape
    k = min(k, cols)
    if k <= 0:
        return np.empty((rows, 0), dtype=np.int64), np.empty((rows, 0), dtype=np.bool_)
    if k < cols:
        part = np.argpartition(keys, k - 1, axis=1)[:, :k].astype(np.int64)
    else:
        part = np.broadcast_to(np.arange(cols, dtype=np.int64), (rows, cols)).copy()
    ok = np.isfinite(np.take_along_axis(keys, part, axis=1))
    return part, ok


def fill_distinct(
    rng: np.random.Generator,
    slots: IntArray,
    low: int,
    high: int,
    reject: RejectFn | None = None,
) -> None:
    """Fill the ``-1`` entries of ``slots`` in place with values from ``[low, high)``.

    Values within a row end up distinct and not rejected by ``reject(rows,
    values)``. Rejection sampling: callers guarantee that every row has at
    least twice as many admissible values as slots, so it converges fast.
    """
    active = np.nonzero((slots < 0).any(axis=1))[0]
    while active.size:
        sub = slots[active]
        empty = sub < 0
        sub[empty] = rng.integers(low, high, size=int(empty.sum()))
        if reject is not None:
            r, c = np.nonzero(empty)
            bad = reject(active[r], sub[r, c])
            sub[r[bad], c[bad]] = -1
        order = np.argsort(sub, axis=1, kind="stable")
        srt = np.take_along_axis(sub, order, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        if dup.any():
            rr, cc = np.nonzero(dup)
            sub[rr, order[rr, cc + 1]] = -1
        slots[active] = sub
        active = active[(sub < 0).any(axis=1)]


def sample_rows(rng: np.random.Generator, rows: int, pool: int, k: int) -> IntArray:
    """``(rows, k)`` matrix of values in ``[0, pool)``, distinct within each row."""
    k = min(k, pool)
    if rows <= 0 or k <= 0:
        return np.empty((max(rows, 0), 0), dtype=np.int64)
    if k == pool:
        return np.broadcast_to(np.arange(pool, dtype=np.int64), (rows, pool)).copy()
    if 2 * k > pool:
        out = np.empty((rows, k), dtype=np.int64)
        for a, b in row_chunks(rows, pool):
            out[a:b] = np.argpartition(rng.random((b - a, pool)), k - 1, axis=1)[:, :k]
        return out
    slots = np.full((rows, k), -1, dtype=np.int64)
    fill_distinct(rng, slots, 0, pool)
    return slots


def split_counts(total: int, fractions: Sequence[float], minimum: int = 0) -> list[int]:
    """Split ``total`` into integer parts proportional to ``fractions``.

    Every part gets at least ``minimum`` (callers ensure it fits); the rest is
    shared by the largest-remainder method, so the parts sum to ``total``.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    fr = fr / fr.sum()
    rest = total - minimum * len(fr)
    raw = fr * rest
    base = np.floor(raw).astype(np.int64)
    left = int(rest - base.sum())
    order = np.argsort(-(raw - base), kind="stable")
    base[order[:left]] += 1
    return [int(v) + minimum for v in base]


def near_choice(
    rng: np.random.Generator,
    shape: Shape3,
    src_range: tuple[int, int],
    dst_range: tuple[int, int],
    k: int,
    radius: int,
) -> tuple[IntArray, IntArray]:
    """``k`` distinct presynaptic neurons per target, preferring spatially near ones.

    Sources come from the contiguous block ``src_range`` (whole z-slices);
    for a target at plane position ``(x, y)`` the candidates within
    ``radius`` in x and y (any z of the block) are taken first, in random
    order; the remainder is filled with random neurons of the block.
    """
    X, Y, _ = shape
    XY = X * Y
    lo, hi = src_range
    m = hi - lo
    dst = np.arange(dst_range[0], dst_range[1], dtype=np.int64)
    rows = dst.size
    if k <= 0 or m <= 0 or rows == 0:
        return empty_int(), empty_int()
    if m <= k:
        return np.tile(np.arange(lo, hi, dtype=np.int64), rows), np.repeat(dst, m)
    px, py = np.divmod(dst % XY, Y)
    srcs: list[IntArray] = []
    if m <= 2 * k:
        # small source block: exact choice over the whole block, near ones first
        s_all = np.arange(lo, hi, dtype=np.int64)
        sx, sy = np.divmod(s_all % XY, Y)
        for a, b in row_chunks(rows, m):
            far = (np.abs(sx[None, :] - px[a:b, None]) > radius) | (
                np.abs(sy[None, :] - py[a:b, None]) > radius
            )
            keys = rng.random((b - a, m)) + far
            part, _ = smallest_k(keys, k)
            srcs.append((lo + part).ravel())
        return np.concatenate(srcs), np.repeat(dst, k)
    depth = m // XY
    rx, ry = min(radius, X - 1), min(radius, Y - 1)
    gx, gy = np.meshgrid(
        np.arange(-rx, rx + 1, dtype=np.int64), np.arange(-ry, ry + 1, dtype=np.int64),
        indexing="ij",
    )
    dx, dy = gx.ravel(), gy.ravel()
    zoff = np.arange(depth, dtype=np.int64) * XY
    width = dx.size * depth
    for a, b in row_chunks(rows, width):
        cx = px[a:b, None] + dx[None, :]
        cy = py[a:b, None] + dy[None, :]
        valid = (cx >= 0) & (cx < X) & (cy >= 0) & (cy < Y)
        plane = cx * Y + cy
        cand = (lo + plane[:, :, None] + zoff[None, None, :]).reshape(b - a, width)
        keys = rng.random((b - a, width))
        keys[~np.repeat(valid, depth, axis=1)] = np.inf
        part, ok = smallest_k(keys, k)
        slots = np.full((b - a, k), -1, dtype=np.int64)
        slots[:, : part.shape[1]] = np.where(ok, np.take_along_axis(cand, part, axis=1), -1)
        fill_distinct(rng, slots, lo, hi)
        srcs.append(slots.ravel())
    return np.concatenate(srcs), np.repeat(dst, k)
