"""Random sparse wiring: a fixed number of distinct random inputs per neuron."""

from __future__ import annotations

from typing import Unpack

import numpy as np

from lillith.fabric.wiring.base import ShapeLike, Wiring, WiringOptions
from lillith.fabric.wiring.checks import check_int
from lillith.fabric.wiring.sampling import sample_rows


class Random(Wiring, builtin=True):
    """Random sparse wiring: exactly ``fan_in`` distinct random inputs per neuron.

    Parameters
    ----------
    shape : tuple of int
        Fabric shape ``(X, Y, Z)``.
    fan_in : int, default 16
        Presynaptic partners per neuron (no self-loops); when
        ``fan_in >= n - 1`` every other neuron.
    **options
        ``n_inputs``, ``seed``, ``tau_m``, ``inhibitory_fraction``: see :class:`Wiring`.
    """

    def __init__(
        self,
        shape: ShapeLike,
        *,
        fan_in: int = 16,
        **options: Unpack[WiringOptions],
    ) -> None:
        super().__init__(shape, **options)
        self.fan_in = check_int("fan_in", fan_in, 0)

    def _connect(self) -> None:
        n = self.n_neurons
        offs = sample_rows(self.rng, n, n - 1, self.fan_in)
        k = offs.shape[1]
        dst = np.arange(n, dtype=np.int64)[:, None]
        src = offs + (offs >= dst)
        self._add_synapses(src.ravel(), np.repeat(dst.ravel(), k))
