"""Hierarchical wiring: z-slices grouped into layers with feed-forward, skip,
feedback and lateral pathways (the skip pathway optionally gated)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Unpack

import numpy as np
import numpy.typing as npt

from lillith.errors import WiringError
from lillith.fabric.wiring.base import ShapeLike, Wiring, WiringOptions
from lillith.fabric.wiring.checks import as_int, check_int
from lillith.fabric.wiring.sampling import local_pairs, near_choice

IntArray = npt.NDArray[np.int64]


def _layer_bounds(Z: int, layers: object) -> tuple[list[int], int | list[int] | None]:
    """Layer z-boundaries ``[0, ..., Z]`` and the normalised ``layers`` argument."""
    if layers is None:
        return list(range(Z + 1)), None
    m = as_int(layers)
    if m is not None:
        if not 1 <= m <= Z:
            raise WiringError("layers must lie in [1, Z]", layers=layers, Z=Z)
        return [(i * Z) // m for i in range(m + 1)], m
    vals = [as_int(v) for v in layers] if isinstance(layers, Iterable) else [None]
    given = [v for v in vals if v is not None]
    if len(given) != len(vals):
        raise WiringError("layers must be None, an int or a list of z-boundaries", layers=layers)
    b = list(given)
    if b[:1] != [0]:
        b.insert(0, 0)
    if b[-1] != Z:
        b.append(Z)
    if any(hi <= lo for lo, hi in itertools.pairwise(b)) or b[-1] != Z:
        raise WiringError(
            "layer z-boundaries must increase strictly within [0, Z]", layers=layers, Z=Z
        )
    return b, given


class Hierarchical(Wiring, builtin=True):
    """Layers of z-slices with feed-forward, skip, feedback and lateral pathways.

    Parameters
    ----------
    shape : tuple of int
        Fabric shape ``(X, Y, Z)``.
    layers : None, int or list of int, optional
        Grouping of z-slices into layers: ``None`` makes every z-slice a
        layer, an int ``m`` splits ``Z`` into ``m`` near-equal layers, a list
        gives the z where each layer starts (``0`` and ``Z`` may be omitted),
        e.g. ``[0, 4, 8]`` with ``Z = 16`` gives ``[0, 4), [4, 8), [8, 16)``.
    fan_in : int, default 9
        Feed-forward inputs per neuron from the previous layer, chosen first
        among neurons within ``radius`` in x and y of the same position, then
        at random from the rest of that layer.
    skip : bool, default True
        Add skip connections from layer ``l - skip_distance``.
    skip_distance : int, default 2
        Layer distance spanned by skip connections (>= 2).
    skip_fan_in : int, default 3
        Skip inputs per neuron.
    feedback : bool, default True
        Add top-down feedback from layer ``l + 1`` (flagged ``feedback = 1``).
    feedback_fan_in : int, default 3
        Feedback inputs per neuron.
    lateral : bool, default True
        Add local in-plane connections (within ``radius`` in x and y, same z).
    radius : int, default 1
        Spatial radius of the preferred feed-forward / skip / feedback
        sources and of lateral connections.
    skip_gates : bool, default False
        Gate the skip pathway: every synapse from layer ``l - skip_distance``
        onto layer ``l`` (including explicitly added ones) carries the gate of
        the pair ``(l - skip_distance, l)``, a learned value in (0, 1) that
        multiplies its current (see ``docs/model.md``).
    **options
        ``n_inputs``, ``seed``, ``tau_m``, ``inhibitory_fraction``: see :class:`Wiring`.
    """

    def __init__(
        self,
        shape: ShapeLike,
        *,
        layers: int | Sequence[int] | None = None,
        fan_in: int = 9,
        skip: bool = True,
        skip_distance: int = 2,
        skip_fan_in: int = 3,
        feedback: bool = True,
        feedback_fan_in: int = 3,
        lateral: bool = True,
        radius: int = 1,
        skip_gates: bool = False,
        **options: Unpack[WiringOptions],
    ) -> None:
        super().__init__(shape, **options)
        self.skip_gates = bool(skip_gates)
        self._bounds, self.layers = _layer_bounds(self.shape[2], layers)
        self.fan_in = check_int("fan_in", fan_in, 0)
        self.skip = bool(skip)
        self.skip_distance = check_int("skip_distance", skip_distance, 2)
        self.skip_fan_in = check_int("skip_fan_in", skip_fan_in, 0)
        self.feedback = bool(feedback)
        self.feedback_fan_in = check_int("feedback_fan_in", feedback_fan_in, 0)
        self.lateral = bool(lateral)
        self.radius = check_int("radius", radius, 0)

    @property
    def layer_bounds(self) -> tuple[int, ...]:
        """z where each layer starts, followed by ``Z``."""
        return tuple(self._bounds)

    @property
    def n_layers(self) -> int:
        """Number of layers."""
        return len(self._bounds) - 1

    @property
    def layer_ids(self) -> npt.NDArray[np.int32]:
        """Layer of every neuron, shape ``(n,)``, int32."""
        X, Y, _ = self.shape
        z_layer = np.repeat(np.arange(self.n_layers, dtype=np.int32), np.diff(self._bounds))
        return np.repeat(z_layer, X * Y)

    def _project(self, src_layer: int, dst_layer: int, k: int) -> None:
        XY = self.shape[0] * self.shape[1]
        b = self._bounds
        src, dst = near_choice(
            self.rng, self.shape,
            (b[src_layer] * XY, b[src_layer + 1] * XY),
            (b[dst_layer] * XY, b[dst_layer + 1] * XY),
            k, self.radius,
        )
        self._add_synapses(src, dst)

    def _gates(
        self, src: IntArray, dst: IntArray
    ) -> tuple[npt.NDArray[np.int32] | None, npt.NDArray[np.int32] | None]:
        """One gate per (source layer, target layer) pair of the skip pathway."""
        if not self.skip_gates:
            return None, None
        lid = self.layer_ids
        ls, ld = lid[src], lid[dst]
        is_skip = (ld - ls) == self.skip_distance
        targets = np.unique(ld[is_skip]).astype(np.int32)
        pairs = np.stack([targets - self.skip_distance, targets], axis=1).astype(np.int32)
        gate = np.full(src.shape[0], -1, dtype=np.int32)
        gate[is_skip] = np.searchsorted(targets, ld[is_skip]).astype(np.int32)
        return gate, pairs.reshape(-1, 2)

    def _connect(self) -> None:
        L = self.n_layers
        for lay in range(1, L):
            self._project(lay - 1, lay, self.fan_in)
            if self.skip and lay - self.skip_distance >= 0:
                self._project(lay - self.skip_distance, lay, self.skip_fan_in)
        if self.feedback:
            for lay in range(L - 1):
                self._project(lay + 1, lay, self.feedback_fan_in)
        if self.lateral:
            src, dst = local_pairs(self.shape, self.radius, planar=True)
            self._add_synapses(src, dst)
