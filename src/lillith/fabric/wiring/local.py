"""Local wirings: :class:`Local3D` (a Chebyshev neighbourhood) and :class:`MultiScale`
(fast, medium and slow populations over it, slow ones with long-range inputs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

import numpy as np
import numpy.typing as npt

from lillith.fabric.wiring.base import ShapeLike, Wiring, WiringOptions
from lillith.fabric.wiring.checks import check_int, check_triple
from lillith.fabric.wiring.sampling import (
    chebyshev,
    fill_distinct,
    grid_coords,
    local_pairs,
    row_chunks,
    smallest_k,
    split_counts,
)

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class Local3D(Wiring, builtin=True):
    """Local 3D neighbourhood: each neuron hears every neuron within ``radius``.

    Parameters
    ----------
    shape : tuple of int
        Fabric shape ``(X, Y, Z)``.
    radius : int, default 1
        Chebyshev radius; 1 gives the 26-neighbourhood (7 inputs at a corner,
        no wrap-around).
    **options
        ``n_inputs``, ``seed``, ``tau_m``, ``inhibitory_fraction``: see :class:`Wiring`.
    """

    def __init__(
        self,
        shape: ShapeLike,
        *,
        radius: int = 1,
        **options: Unpack[WiringOptions],
    ) -> None:
        super().__init__(shape, **options)
        self.radius = check_int("radius", radius, 0)

    def _connect(self) -> None:
        src, dst = local_pairs(self.shape, self.radius)
        self._add_synapses(src, dst)


class MultiScale(Local3D, builtin=True):
    """Fast, medium and slow populations over a local 3D neighbourhood.

    Neurons are assigned at random (exact counts from ``fractions``) to the
    fast (population 0), medium (1) and slow (2) populations, each with its
    own membrane time constant. Every neuron is wired like :class:`Local3D`;
    each slow neuron also receives ``long_range`` synapses from random
    neurons outside its neighbourhood (integration over space).

    Parameters
    ----------
    shape : tuple of int
        Fabric shape ``(X, Y, Z)``.
    fractions : sequence of 3 float, default (0.5, 0.3, 0.2)
        Shares of fast / medium / slow neurons (normalised).
    taus : sequence of 3 float, default (5.0, 20.0, 80.0)
        Membrane time constants of the populations, ms.
    radius : int, default 1
        Local Chebyshev radius.
    long_range : int, default 4
        Extra long-range inputs per slow neuron (fewer only when the fabric
        has fewer neurons outside the neighbourhood).
    **options
        ``n_inputs``, ``seed``, ``tau_m``, ``inhibitory_fraction``: see
        :class:`Wiring` (``tau_m`` is superseded by ``taus``).
    """

    def __init__(
        self,
        shape: ShapeLike,
        *,
        fractions: Sequence[float] = (0.5, 0.3, 0.2),
        taus: Sequence[float] = (5.0, 20.0, 80.0),
        radius: int = 1,
        long_range: int = 4,
        **options: Unpack[WiringOptions],
    ) -> None:
        super().__init__(shape, radius=radius, **options)
        self.fractions = check_triple("fractions", fractions, positive=False)
        self.taus = check_triple("taus", taus, positive=True)
        self.long_range = check_int("long_range", long_range, 0)

    def _connect(self) -> None:
        n = self.n_neurons
        counts = split_counts(n, self.fractions)
        perm = self.rng.permutation(n).astype(np.int64)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for p in range(3):
            members = perm[bounds[p] : bounds[p + 1]]
            self.set_population(members, p)
            self.set_tau(members, self.taus[p])
        super()._connect()
        slow = np.sort(perm[bounds[2] : bounds[3]])
        if self.long_range and slow.size:
            src, dst = self._long_range(slow)
            self._add_synapses(src, dst)

    def _long_range(self, rows: IntArray) -> tuple[IntArray, IntArray]:
        shape, r, k, n = self.shape, self.radius, self.long_range, self.n_neurons
        coords = grid_coords(shape, rows)
        local = np.ones(rows.size, dtype=np.int64)
        for c, size in zip(coords, shape, strict=True):
            local *= np.minimum(c + r, size - 1) - np.maximum(c - r, 0) + 1
        if int((n - local).min()) >= 2 * k:
            slots = np.full((rows.size, k), -1, dtype=np.int64)

            def near(row_idx: IntArray, vals: IntArray) -> BoolArray:
                return chebyshev(shape, rows[row_idx], vals) <= r

            fill_distinct(self.rng, slots, 0, n, near)
            return slots.ravel(), np.repeat(rows, k)
        srcs: list[IntArray] = []
        dsts: list[IntArray] = []
        everyone = np.arange(n, dtype=np.int64)
        for a, b in row_chunks(rows.size, n):
            keys = self.rng.random((b - a, n))
            keys[chebyshev(shape, rows[a:b, None], everyone[None, :]) <= r] = np.inf
            part, ok = smallest_k(keys, k)
            rr, cc = np.nonzero(ok)
            srcs.append(part[rr, cc])
            dsts.append(rows[a:b][rr])
        return np.concatenate(srcs), np.concatenate(dsts)
