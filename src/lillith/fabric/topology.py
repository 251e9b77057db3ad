"""Topology of the fabric: neuron indexing and the CSR connectivity contract.

Neurons of a fabric of shape ``(X, Y, Z)`` are numbered layer-major so that
each z-layer is one contiguous slab::

    idx = z * (X * Y) + x * Y + y

The sensory face (z = 0) is therefore ``range(0, X * Y)``. Connectivity is
stored as CSR with one row per *postsynaptic* neuron (a gather layout), which
lets the step kernel update every neuron in parallel without write races.
Topology is separate from dynamics: a :class:`Connectivity` holds wiring and
initial weights; the fabric owns the plastic copy of the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lillith.errors import FabricError, WiringError

Shape3 = tuple[int, int, int]
F32 = npt.NDArray[np.float32]


def n_neurons(shape: Shape3) -> int:
    """Number of neurons ``X * Y * Z`` of a fabric shape."""
    return int(shape[0]) * int(shape[1]) * int(shape[2])


def index_of(x: int, y: int, z: int, shape: Shape3) -> int:
    """Flat neuron index of grid position ``(x, y, z)`` (layer-major)."""
    X, Y, Z = shape
    if not (0 <= x < X and 0 <= y < Y and 0 <= z < Z):
        raise WiringError("grid position out of range", position=(x, y, z), shape=shape)
    return z * (X * Y) + x * Y + y


def coords_of(idx: int, shape: Shape3) -> tuple[int, int, int]:
    """Grid position ``(x, y, z)`` of flat neuron index ``idx``."""
    X, Y, _ = shape
    z, rem = divmod(int(idx), X * Y)
    x, y = divmod(rem, Y)
    return x, y, z


def layer_of(shape: Shape3) -> npt.NDArray[np.int32]:
    """z-layer of every neuron, shape ``(n,)``, int32."""
    X, Y, Z = shape
    return np.repeat(np.arange(Z, dtype=np.int32), X * Y)


@dataclass(frozen=True, eq=False)
class Connectivity:
    """Immutable CSR description of a fabric's synapses (gather layout).

    Attributes
    ----------
    shape : tuple of int
        Fabric shape ``(X, Y, Z)``; ``n = X * Y * Z``.
    n_inputs : int
        Number of sensory channels addressed by the sensory synapses
        (0 when the wiring defines none: the fabric then projects its input
        densely onto the sensory face).
    indptr : ndarray, shape (n + 1,), int64
        Row pointer; row ``i`` lists the synapses *onto* neuron ``i``.
    indices : ndarray, shape (nnz,), int32
        Presynaptic neuron of each synapse.
    weight : ndarray, shape (nnz,), float32
        Initial weight magnitude (>= 0, dimensionless).
    polarity : ndarray, shape (nnz,), float32
        +1 for excitatory, -1 for inhibitory.
    feedback : ndarray, shape (nnz,), uint8
        1 where the presynaptic neuron lies in a higher z-layer than the
        postsynaptic one (top-down feedback), else 0.
    s_indptr : ndarray, shape (n + 1,), int64
        Row pointer of the sensory synapses.
    s_indices : ndarray, shape (s_nnz,), int32
        Sensory channel of each sensory synapse, in ``[0, n_inputs)``.
    s_weight : ndarray, shape (s_nnz,), float32
        Sensory weight magnitude (>= 0).
    s_polarity : ndarray, shape (s_nnz,), float32
        +1 / -1.
    tau : ndarray, shape (n,), float32
        Membrane time constant of each neuron in ms.
    population : ndarray, shape (n,), int8
        Population / group label of each neuron (wiring specific, 0 default).
    gate : ndarray, shape (nnz,), int32, optional
        Gate of each synapse: index into ``gate_pairs`` for a gated skip
        synapse, -1 for an ungated one. ``None`` (the default) when the wiring
        has no gated skip connections.
    gate_pairs : ndarray, shape (n_gates, 2), int32, optional
        ``(source layer, target layer)`` of each gate, layers in the wiring's
        own numbering; ``None`` together with ``gate``.
    """

    shape: Shape3
    n_inputs: int
    indptr: npt.NDArray[np.int64]
    indices: npt.NDArray[np.int32]
    weight: npt.NDArray[np.float32]
    polarity: npt.NDArray[np.float32]
    feedback: npt.NDArray[np.uint8]
    s_indptr: npt.NDArray[np.int64]
    s_indices: npt.NDArray[np.int32]
    s_weight: npt.NDArray[np.float32]
    s_polarity: npt.NDArray[np.float32]
    tau: npt.NDArray[np.float32]
    population: npt.NDArray[np.int8]
    gate: npt.NDArray[np.int32] | None = None
    gate_pairs: npt.NDArray[np.int32] | None = None

    @property
    def n_gates(self) -> int:
        """Number of skip gates (0 without gated skip connections)."""
        return 0 if self.gate_pairs is None else int(self.gate_pairs.shape[0])

    @property
    def n(self) -> int:
        """Number of neurons."""
        return n_neurons(self.shape)

    @property
    def nnz(self) -> int:
        """Number of recurrent synapses."""
        return int(self.indices.shape[0])

    def validate(self) -> None:
        """Check dtypes, shapes, ranges and CSR consistency.

        Raises
        ------
        WiringError
            When any array is inconsistent with the contract above.
        """
        n = self.n
        nnz = self.nnz
        expect: dict[str, tuple[npt.NDArray[Any], Any, tuple[int, ...]]] = {
            "indptr": (self.indptr, np.int64, (n + 1,)),
            "indices": (self.indices, np.int32, (nnz,)),
            "weight": (self.weight, np.float32, (nnz,)),
            "polarity": (self.polarity, np.float32, (nnz,)),
            "feedback": (self.feedback, np.uint8, (nnz,)),
            "s_indptr": (self.s_indptr, np.int64, (n + 1,)),
            "s_indices": (self.s_indices, np.int32, (self.s_indices.shape[0],)),
            "s_weight": (self.s_weight, np.float32, (self.s_indices.shape[0],)),
            "s_polarity": (self.s_polarity, np.float32, (self.s_indices.shape[0],)),
            "tau": (self.tau, np.float32, (n,)),
            "population": (self.population, np.int8, (n,)),
        }
        for name, (arr, dtype, shp) in expect.items():
            if arr.dtype != dtype or arr.shape != shp:
                raise WiringError(
                    "connectivity array has wrong dtype or shape",
                    array=name, dtype=str(arr.dtype), shape=arr.shape,
                    expected_dtype=np.dtype(dtype).name, expected_shape=shp,
                )
        for name, ptr, total in (
            ("indptr", self.indptr, nnz),
            ("s_indptr", self.s_indptr, int(self.s_indices.shape[0])),
        ):
            if ptr[0] != 0 or ptr[-1] != total or np.any(np.diff(ptr) < 0):
                raise WiringError("CSR row pointer is not monotone", array=name)
        if nnz and (self.indices.min() < 0 or self.indices.max() >= n):
            raise WiringError("presynaptic index out of range", n=n)
        if self.s_indices.size and (
            self.s_indices.min() < 0 or self.s_indices.max() >= self.n_inputs
        ):
            raise WiringError("sensory channel out of range", n_inputs=self.n_inputs)
        if np.any(self.weight < 0) or np.any(self.s_weight < 0):
            raise WiringError("weight magnitudes must be >= 0")
        for name, pol in (("polarity", self.polarity), ("s_polarity", self.s_polarity)):
            if pol.size and not np.all(np.abs(pol) == 1.0):
                raise WiringError("polarity must be +1 or -1", array=name)
        if not np.all(np.isfinite(self.tau)) or np.any(self.tau <= 0):
            raise WiringError("membrane time constants must be finite and > 0")
        if (self.gate is None) != (self.gate_pairs is None):
            raise WiringError("gate and gate_pairs must be given together")
        if self.gate is not None and self.gate_pairs is not None:
            g, pairs = self.gate, self.gate_pairs
            if g.dtype != np.int32 or g.shape != (nnz,):
                raise WiringError("gate must be int32 with one entry per synapse",
                                  dtype=str(g.dtype), shape=g.shape)
            if pairs.dtype != np.int32 or pairs.ndim != 2 or pairs.shape[1] != 2:
                raise WiringError("gate_pairs must be int32 of shape (n_gates, 2)",
                                  dtype=str(pairs.dtype), shape=pairs.shape)
            if g.size and (g.min() < -1 or g.max() >= pairs.shape[0]):
                raise WiringError("gate index out of range", n_gates=int(pairs.shape[0]))


def feedback_start(indptr: npt.NDArray[np.int64], feedback: npt.NDArray[np.uint8]
                    ) -> npt.NDArray[np.int64]:
    """First feedback synapse of each row, shape (n,), int64.

    Raises
    ------
    FabricError
        When a row has a forward synapse after a feedback one.
    """
    n = indptr.shape[0] - 1
    rows = np.repeat(np.arange(n), np.diff(indptr))
    fb = feedback.astype(bool)
    if fb.size and np.any(fb[:-1] & ~fb[1:] & (rows[:-1] == rows[1:])):
        raise FabricError("rows must list forward synapses before feedback synapses")
    n_fwd = np.bincount(rows[~fb], minlength=n)
    return (indptr[:-1] + n_fwd).astype(np.int64)


def row_normalised(
    indptr: npt.NDArray[np.int64], weight: F32, polarity: npt.NDArray[np.int8], g_inh: float
) -> F32:
    """Balance each neuron's inputs: excitatory weights sum to 1, inhibitory to ``g_inh``.

    Parameters
    ----------
    indptr : ndarray, shape (n + 1,), int64
    weight : ndarray, shape (nnz,), float32, magnitudes >= 0
    polarity : ndarray, shape (nnz,), int8, +1 / -1
    g_inh : float
        Inhibitory-to-excitatory ratio of the summed weights.

    Returns
    -------
    ndarray, shape (nnz,), float32
    """
    n = indptr.shape[0] - 1
    w = weight.astype(np.float64)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    out = np.zeros_like(w)
    for sign, total in ((1.0, 1.0), (-1.0, g_inh)):
        m = polarity == sign
        sums = np.bincount(rows[m], weights=w[m], minlength=n)
        scale = np.where(sums > 0, total / np.where(sums > 0, sums, 1.0), 0.0)
        out[m] = w[m] * scale[rows[m]]
    return out.astype(np.float32)
