"""Synapses as a wiring collects them, and their assembly into CSR rows."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lillith.fabric.wiring.sampling import empty_int

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


class SynapseStore:
    """Append-only list of synapses ``(pre, dst, polarity, weight)``.

    ``pre`` is a presynaptic neuron or, for sensory synapses, an input channel.
    Scalar additions go to Python lists and are flushed into array chunks so
    the order of additions is preserved.
    """

    def __init__(self) -> None:
        self._chunks: list[tuple[IntArray, IntArray, F32Array, FloatArray]] = []
        self._pre: list[int] = []
        self._dst: list[int] = []
        self._pol: list[float] = []
        self._w: list[float] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add_one(self, pre: int, dst: int, pol: float, w: float) -> None:
        self._pre.append(pre)
        self._dst.append(dst)
        self._pol.append(pol)
        self._w.append(w)
        self._size += 1

    def add_many(self, pre: IntArray, dst: IntArray, pol: F32Array, w: FloatArray) -> None:
        if pre.size == 0:
            return
        self._flush()
        self._chunks.append((pre, dst, pol, w))
        self._size += int(pre.size)

    def _flush(self) -> None:
        if self._pre:
            self._chunks.append((
                np.asarray(self._pre, dtype=np.int64),
                np.asarray(self._dst, dtype=np.int64),
                np.asarray(self._pol, dtype=np.float32),
                np.asarray(self._w, dtype=np.float64),
            ))
            self._pre, self._dst, self._pol, self._w = [], [], [], []

    def arrays(self) -> tuple[IntArray, IntArray, F32Array, FloatArray]:
        self._flush()
        if not self._chunks:
            return (empty_int(), empty_int(), np.empty(0, np.float32), np.empty(0, np.float64))
        if len(self._chunks) > 1:
            self._chunks = [
                (
                    np.concatenate([c[0] for c in self._chunks]),
                    np.concatenate([c[1] for c in self._chunks]),
                    np.concatenate([c[2] for c in self._chunks]),
                    np.concatenate([c[3] for c in self._chunks]),
                )
            ]
        return self._chunks[0]


def merge_csr(
    first: tuple[IntArray, IntArray, F32Array, FloatArray],
    second: tuple[IntArray, IntArray, F32Array, FloatArray],
    n_rows: int,
    n_cols: int,
    *,
    drop_self: bool,
) -> tuple[IntArray, IntArray, F32Array, FloatArray, npt.NDArray[np.int64]]:
    """Concatenate, drop self pairs / duplicates (first wins) and sort by (dst, pre)."""
    pre = np.concatenate([first[0], second[0]])
    dst = np.concatenate([first[1], second[1]])
    pol = np.concatenate([first[2], second[2]])
    w = np.concatenate([first[3], second[3]])
    if drop_self:
        keep = pre != dst
        pre, dst, pol, w = pre[keep], dst[keep], pol[keep], w[keep]
    _, idx = np.unique(dst * max(n_cols, 1) + pre, return_index=True)
    pre, dst, pol, w = pre[idx], dst[idx], pol[idx], w[idx]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=n_rows), out=indptr[1:])
    return pre, dst, pol, w, indptr
