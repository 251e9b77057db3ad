"""The fabric's core: its arrays, connectivity and dynamics, one step at a time.

:class:`FabricCore` builds the structure-of-arrays from a wiring, steps the
numba kernel (:mod:`lillith.fabric._fabric_kernels`) and reads the outputs;
:class:`~lillith.fabric.neural_fabric.NeuralFabric3D` adds evolution and the
state round-trip on top of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from lillith.errors import FabricError
from lillith.fabric import _fabric_kernels as K
from lillith.fabric import evolution as E
from lillith.fabric import rewire as W
from lillith.fabric.params import FabricParams
from lillith.fabric.topology import (
    Connectivity,
    Shape3,
    feedback_start,
    index_of,
    n_neurons,
    row_normalised,
)

F32 = npt.NDArray[np.float32]
Mode = Literal["normal", "random", "intentional", "bidirectional"]
MODES: dict[str, int] = {
    "normal": K.MODE_NORMAL,
    "random": K.MODE_RANDOM,
    "intentional": K.MODE_INTENTIONAL,
    "bidirectional": K.MODE_BIDIRECTIONAL,
}
PRESETS: dict[str, Shape3] = {
    "small": (5, 5, 16),
    "medium": (13, 13, 64),
    "large": (17, 17, 128),
}
# neuron count from which the parallel kernel pays for its thread start-up
PARALLEL_THRESHOLD = 2048
# below this the hotspot gain is folded into the stored traces
HOT_GAIN_FLOOR = 1e-12



class FabricCore:
    """Arrays, connectivity and stepping of a fabric (parameters as
    :class:`~lillith.fabric.neural_fabric.NeuralFabric3D`'s)."""

    def __init__(
        self,
        shape: Shape3 = PRESETS["small"],
        *,
        n_inputs: int = 1,
        wiring: Any = None,
        n_branches: int = 5,
        n_segments: int = 10,
        n_features: int = 64,
        params: FabricParams | None = None,
        noise_scale: float = 2.0,
        intent_gain: float = 0.5,
        bidirectional_weight: float = 0.5,
        parallel: bool | None = None,
        seed: int = 0,
        fitness_decay: float = 0.99,
        fitness_weights: E.FitnessWeights | Mapping[str, float] | None = None,
    ) -> None:
        shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        if min(shape) < 1:
            raise FabricError("fabric shape must be positive", shape=shape)
        if n_inputs < 1 or n_branches < 1 or n_segments < 1 or n_features < 1:
            raise FabricError("sizes must be >= 1", n_inputs=n_inputs, n_branches=n_branches,
                              n_segments=n_segments, n_features=n_features)
        if not 0.0 <= bidirectional_weight <= 1.0:
            raise FabricError("bidirectional_weight must lie in [0, 1]",
                              bidirectional_weight=bidirectional_weight)
        self.shape: Shape3 = shape
        self.n = n_neurons(shape)
        self.n_inputs = int(n_inputs)
        self.n_branches = int(n_branches)
        self.n_segments = int(n_segments)
        self.n_features = min(int(n_features), self.n)
        self.params = params or FabricParams()
        self.noise_scale = float(noise_scale)
        self.intent_gain = float(intent_gain)
        self.bidirectional_weight = float(bidirectional_weight)
        self.parallel = self.n >= PARALLEL_THRESHOLD if parallel is None else bool(parallel)
        self.seed = int(seed)
        if not (np.isfinite(fitness_decay) and 0.0 <= fitness_decay < 1.0):
            raise FabricError("fitness_decay must lie in [0, 1)", fitness_decay=fitness_decay)
        self.fitness_decay = float(fitness_decay)
        self.fitness_weights = E.FitnessWeights.coerce(fitness_weights)
        conn = self._connectivity(wiring)
        self.params.validate(conn.tau)
        self._p = self.params.pack()
        weight0 = self._init_topology(conn)
        self._init_dynamics(weight0)
        self._init_evolution()
        self._refresh_topology()

    def _connectivity(self, wiring: Any) -> Connectivity:
        if wiring is None:
            from lillith.fabric.wiring import Local3D

            wiring = Local3D(self.shape, seed=self.seed)
        conn = wiring if isinstance(wiring, Connectivity) else wiring.build()
        if not isinstance(conn, Connectivity):
            raise FabricError("wiring must be a Wiring or a Connectivity")
        if conn.shape != self.shape:
            raise FabricError("wiring shape differs from fabric shape",
                              wiring_shape=conn.shape, shape=self.shape)
        conn.validate()
        if conn.s_indices.size and conn.n_inputs != self.n_inputs:
            raise FabricError("wiring's sensory synapses address another input width",
                              wiring_inputs=conn.n_inputs, n_inputs=self.n_inputs)
        return conn

    def _init_topology(self, conn: Connectivity) -> F32:
        """Topology arrays from ``conn``; returns the initial weights in row order."""
        rng = np.random.default_rng(self.seed)
        nnz = conn.nnz
        # within each row: forward / lateral synapses first, feedback last
        rows = np.repeat(np.arange(self.n), np.diff(conn.indptr))
        order = np.lexsort((np.arange(nnz), conn.feedback, rows))
        self.indptr = conn.indptr.copy()
        self.indices = conn.indices[order]
        self.polarity = conn.polarity[order].astype(np.int8)
        self.feedback = conn.feedback[order]
        weight0 = conn.weight[order]
        # branch k of a neuron takes the k-th contiguous block of its CSR row
        # (neighbouring presynaptic neurons cluster on one branch) and the
        # m-th synapse of a branch lands on its segment m mod n_segments; the
        # blocks are kept explicit (bptr) so evolution can resize them
        self.bptr = W.default_branch_ptr(self.indptr, self.n_branches)
        if conn.gate is not None and conn.gate_pairs is not None:
            self.gate = conn.gate[order].astype(np.int32)
            self.gate_pairs = conn.gate_pairs.astype(np.int32).reshape(-1, 2)
        else:
            self.gate = np.full(conn.nnz, -1, dtype=np.int32)
            self.gate_pairs = np.zeros((0, 2), dtype=np.int32)
        n_gates = self.gate_pairs.shape[0]
        self.gate_logit = np.full(n_gates, self.params.gate_logit0, dtype=np.float32)
        self.gate_val = np.zeros(n_gates, dtype=np.float32)
        K._gate_values(self.gate_logit, self.gate_val)
        if conn.s_indices.size:
            self.s_indptr = conn.s_indptr.copy()
            self.s_indices = conn.s_indices.copy()
            # scale each neuron's sensory weights by 1/sqrt(fan-in), like the
            # dense projection below, so drive does not grow with the width
            fan = np.diff(conn.s_indptr)
            rows = np.repeat(np.arange(self.n), fan)
            scale = 1.0 / np.sqrt(np.maximum(fan[rows], 1))
            self.s_wsigned = (conn.s_weight * conn.s_polarity * scale).astype(np.float32)
        else:
            face = self.shape[0] * self.shape[1]
            counts = np.zeros(self.n, dtype=np.int64)
            counts[:face] = self.n_inputs
            self.s_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            self.s_indices = np.tile(np.arange(self.n_inputs, dtype=np.int32), face)
            self.s_wsigned = (rng.standard_normal(face * self.n_inputs)
                              / np.sqrt(self.n_inputs)).astype(np.float32)
        self.tau = conn.tau.astype(np.float32, copy=True)
        self.population = conn.population.copy()
        self.neuron_id = np.arange(self.n, dtype=np.int64)
        return weight0

    def _init_dynamics(self, weight0: F32) -> None:
        n, Kb, S = self.n, self.n_branches, self.n_segments
        e_l = np.float32(self.params.e_leak)
        self.v = np.full(n, e_l, dtype=np.float32)
        self.m_na = np.zeros(n, dtype=np.float32)
        self.n_k = np.zeros(n, dtype=np.float32)
        self.c_ca = np.zeros(n, dtype=np.float32)
        self.vb = np.zeros((n, Kb), dtype=np.float32)
        self.cab = np.zeros((n, Kb), dtype=np.float32)
        self.hot = np.zeros((n, Kb, S), dtype=np.float32)  # traces / hot_gain
        self.hot_gain = 1.0
        self._hot_decay = float(np.exp(-self.params.dt / self.params.tau_hotspot))
        self.ref = np.zeros(n, dtype=np.float32)
        self.adapt = np.zeros(n, dtype=np.float32)
        self.theta = np.zeros(n, dtype=np.float32)
        self.act = np.zeros(n, dtype=np.float32)
        self._act_next = np.zeros(n, dtype=np.float32)
        # scratch of the step kernel (per-branch and per-soma input currents)
        self._branch_in = np.zeros(n * Kb, dtype=np.float32)
        self._soma_in = np.zeros(n, dtype=np.float32)
        self.w = row_normalised(self.indptr, weight0, self.polarity, self.params.g_inh)
        self.step_count = 0
        self._pending = np.zeros((n, Kb, S), dtype=np.float32)
        self._has_pending = False
        self._x = np.zeros(self.n_inputs, dtype=np.float32)
        self._goal = np.zeros(n, dtype=np.float32)
        self._features = np.zeros(self.n_features, dtype=np.float32)

    def _init_evolution(self) -> None:
        n = self.n
        self.readout = np.ones(n, dtype=np.float32)
        self.fitness = np.zeros(n, dtype=np.float32)
        self.importance = np.zeros(n, dtype=np.float32)
        self.act_mean = np.zeros(n, dtype=np.float32)
        self.act_sq = np.zeros(n, dtype=np.float32)
        self.diversity = np.zeros(n, dtype=np.float32)
        self._fit_scratch = np.zeros((2, n), dtype=np.float32)
        self.parent_ids = np.full((n, 2), -1, dtype=np.int64)
        self.generation = np.zeros(n, dtype=np.int32)
        self.birth_step = np.zeros(n, dtype=np.int64)
        self.next_id = n
        F, XY = self.n_features, self.shape[0] * self.shape[1]
        bounds = np.arange(F + 1, dtype=np.int64) * n // F
        self._group = np.repeat(np.arange(F, dtype=np.int64), np.diff(bounds))
        self._layer_size = XY

    def _refresh_topology(self) -> None:
        """Arrays derived from the topology (after construction, evolution, restore)."""
        self.fb_start = feedback_start(self.indptr, self.feedback)
        self._gate_ptr, self._gate_pre, self._gate_post = W.gate_lists(
            self.indptr, self.indices, self.gate, self.n_gates)

    def step(
        self,
        x: npt.ArrayLike | None = None,
        *,
        mode: Mode = "normal",
        goal: npt.ArrayLike | None = None,
        plasticity: float = 1.0,
        substeps: int = 1,
    ) -> F32:
        """Advance the fabric by ``substeps`` time steps under sensor drive ``x``.

        Parameters
        ----------
        x : array_like, shape (n_inputs,), optional
            Sensor drive (dimensionless, typically normalised to unit scale),
            applied as a current during each substep of this call only;
            nothing accumulates across calls. ``None`` means no drive.
        mode : {"normal", "random", "intentional", "bidirectional"}
            Propagation mode.
        goal : array_like, shape (n,) or (X, Y, Z), optional
            Target activation pattern in [0, 1] for ``intentional`` mode.
        plasticity : float
            Multiplier (>= 0) of the plasticity rate, e.g. the agent's energy
            gate times its learning drive; 0 freezes the weights (and the
            skip gates, which otherwise follow their rule after each substep).
        substeps : int
            Number of time steps of ``dt`` each.

        Returns
        -------
        ndarray, shape (n,), float32
            Read-only view of the activations in [0, 1]; overwritten by the
            next step (copy it to keep it).
        """
        code = MODES.get(mode)
        if code is None:
            raise FabricError("unknown propagation mode", mode=mode, modes=sorted(MODES))
        if not (math.isfinite(plasticity) and plasticity >= 0.0):
            raise FabricError("plasticity multiplier must be finite and >= 0",
                              plasticity=plasticity)
        if substeps < 1:
            raise FabricError("substeps must be >= 1", substeps=substeps)
        if x is None:
            self._x[:] = 0.0
        else:
            xa = np.asarray(x, dtype=np.float32).reshape(-1)
            if xa.shape[0] != self.n_inputs:
                raise FabricError("input has wrong width", width=xa.shape[0],
                                  n_inputs=self.n_inputs)
            if not np.isfinite(xa).all():  # (ndarray.all: ~2 us per step less than np.all)
                raise FabricError("input contains NaN or Inf")
            self._x[:] = xa
        if code == K.MODE_INTENTIONAL:
            if goal is None:
                raise FabricError("intentional mode needs a goal pattern")
            self.set_goal(goal)
        gated = self.n_gates > 0
        if gated:
            kernel = K._step_parallel_gated if self.parallel else K._step_serial_gated
        else:
            kernel = K._step_parallel if self.parallel else K._step_serial
        gate_rate = self._gate_rate(float(plasticity)) if gated else 0.0
        for _ in range(substeps):
            kernel(
                self._p, code, self.noise_scale, self.intent_gain, self.bidirectional_weight,
                float(plasticity), np.uint64(self.seed), np.uint64(self.step_count),
                self._advance_hot_gain(),
                self.bptr, self.indices, self.polarity, self.fb_start, self.gate, self.gate_val,
                self.s_indptr, self.s_indices, self.s_wsigned,
                self.tau, self._x, self._goal, self._pending, self._has_pending, self.w,
                self.v, self.m_na, self.n_k, self.c_ca, self.vb, self.cab, self.hot,
                self.ref, self.adapt, self.theta, self.act, self._act_next,
                self._branch_in, self._soma_in,
            )
            self.act, self._act_next = self._act_next, self.act
            self._has_pending = False
            self.step_count += 1
            if gate_rate > 0.0:
                K._gate_update(self._gate_ptr, self._gate_pre, self._gate_post, self.act,
                               gate_rate, self.params.gate_decay, self.params.gate_logit0,
                               self.gate_logit, self.gate_val)
        view = self.act.view()
        view.flags.writeable = False
        return view

    forward = step

    def _gate_rate(self, plasticity: float) -> float:
        """Step size of the gate rule: ``eta_gate * plasticity``, at most ``1 / gate_decay``."""
        rate = self.params.eta_gate * plasticity
        if self.params.gate_decay > 0.0:
            rate = min(rate, 1.0 / self.params.gate_decay)
        return rate

    def _advance_hot_gain(self) -> float:
        """Decay the hotspot gain by one step; returns ``1 / gain`` for the kernel.

        The traces share one exponential decay, carried by a scalar instead of
        an element-wise multiply per step; when the gain gets small it is
        folded back into the stored array (every ~1,400 steps by default).
        """
        if self.hot_gain < HOT_GAIN_FLOOR:
            K._scale_inplace(self.hot, self.hot_gain)
            self.hot_gain = 1.0
        self.hot_gain *= self._hot_decay
        return 1.0 / self.hot_gain

    def set_goal(self, goal: npt.ArrayLike) -> None:
        """Set the goal pattern of ``intentional`` mode.

        Parameters
        ----------
        goal : array_like, shape (n,) or (X, Y, Z)
            Target activations; clipped to [0, 1]; must be finite.
        """
        g = np.asarray(goal, dtype=np.float32)
        if g.shape == self.shape:
            g = self._from_map(g)
        g = g.reshape(-1)
        if g.shape[0] != self.n or not np.all(np.isfinite(g)):
            raise FabricError("goal must be finite with one value per neuron",
                              size=int(g.size), n=self.n)
        np.clip(g, 0.0, 1.0, out=self._goal)

    def add_synaptic_input(
        self,
        neuron: int | tuple[int, int, int],
        dendrite_idx: int,
        segment_idx: int,
        weight: float,
        activation: float,
    ) -> None:
        """Inject one synaptic input, consumed by the next step only.

        Parameters
        ----------
        neuron : int or (x, y, z)
            Target neuron.
        dendrite_idx, segment_idx : int
            Branch in ``[0, n_branches)`` and segment in ``[0, n_segments)``.
        weight, activation : float
            The current is ``weight * activation`` (dimensionless).
        """
        i = self._index(neuron)
        if not (0 <= dendrite_idx < self.n_branches and 0 <= segment_idx < self.n_segments):
            raise FabricError("dendrite or segment out of range", dendrite_idx=dendrite_idx,
                              segment_idx=segment_idx)
        cur = float(weight) * float(activation)
        if not np.isfinite(cur):
            raise FabricError("synaptic input must be finite", weight=weight,
                              activation=activation)
        self._pending[i, dendrite_idx, segment_idx] += np.float32(cur)
        self._has_pending = True

    @property
    def activation(self) -> F32:
        """Activations of the last step, shape (n,), float32 in [0, 1] (read-only)."""
        view = self.act.view()
        view.flags.writeable = False
        return view

    @property
    def activation_map(self) -> F32:
        """Activations as a grid, shape (X, Y, Z), float32 (a copy)."""
        return self._to_map(self.act)

    def pooled(self, out: F32 | None = None) -> F32:
        """Pooled feature vector: readout-weighted mean activation over ``n_features`` slabs.

        Feature ``f = sum_{i in slab f} readout_i * act_i / |slab f|``; slab ``f``
        covers neurons ``[f * n // F, (f + 1) * n // F)`` (consecutive z-layers).
        The readout weights are 1 until a preserving split halves them.

        Parameters
        ----------
        out : ndarray, shape (n_features,), float32, optional
            Buffer to write into (no allocation); default an internal buffer
            that the next call overwrites.

        Returns
        -------
        ndarray, shape (n_features,), float32
        """
        buf = self._features if out is None else out
        K._pool_weighted(self.act, self.readout, self.n_features, buf)
        return buf

    def dendrite_voltage(self, neuron: int | tuple[int, int, int]) -> F32:
        """Branch voltages of one neuron, shape (n_branches,), mV above rest."""
        out: F32 = self.vb[self._index(neuron)].copy()
        return out

    def hotspots(self, neuron: int | tuple[int, int, int]) -> F32:
        """Segment activity traces of one neuron, shape (n_branches, n_segments)."""
        out: F32 = (self.hot[self._index(neuron)] * np.float32(self.hot_gain)).astype(np.float32)
        return out

    def ion_channels(self, neuron: int | tuple[int, int, int]) -> dict[str, float]:
        """Gate states in [0, 1] of one neuron: ``{"Na": m, "K": n, "Ca": c}``."""
        i = self._index(neuron)
        return {"Na": float(self.m_na[i]), "K": float(self.n_k[i]), "Ca": float(self.c_ca[i])}

    @property
    def nnz(self) -> int:
        """Number of recurrent synapses."""
        return int(self.indices.shape[0])

    @property
    def n_gates(self) -> int:
        """Number of skip gates (0 unless the wiring gates its skip connections)."""
        return int(self.gate_pairs.shape[0])

    def skip_gates(self) -> F32:
        """Current skip gate values ``sigmoid(logit)``, shape (n_gates,), float32 in (0, 1).

        Gate ``q`` multiplies the current of every skip synapse from layer
        ``skip_gate_pairs()[q, 0]`` onto layer ``skip_gate_pairs()[q, 1]``.
        """
        out: F32 = self.gate_val.copy()
        return out

    def skip_gate_pairs(self) -> npt.NDArray[np.int32]:
        """``(source layer, target layer)`` of each gate, shape (n_gates, 2), int32.

        Layers are numbered as in the wiring (:class:`Hierarchical` layers).
        """
        out: npt.NDArray[np.int32] = self.gate_pairs.copy()
        return out

    def _topology_of(self, a: Mapping[str, Any]) -> W.Topology:
        return W.Topology(
            indptr=a["indptr"], bptr=a["bptr"], indices=a["indices"], w=a["w"],
            polarity=a["polarity"], feedback=a["feedback"], gate=a["gate"],
            s_indptr=a["s_indptr"], s_indices=a["s_indices"], s_wsigned=a["s_wsigned"])

    def _index(self, neuron: int | tuple[int, int, int]) -> int:
        if isinstance(neuron, tuple):
            return index_of(*neuron, self.shape)
        i = int(neuron)
        if not 0 <= i < self.n:
            raise FabricError("neuron index out of range", index=i, n=self.n)
        return i

    def _to_map(self, a: F32) -> F32:
        X, Y, Z = self.shape
        return np.ascontiguousarray(a.reshape(Z, X, Y).transpose(1, 2, 0))

    def _from_map(self, m: F32) -> F32:
        return np.ascontiguousarray(m.transpose(2, 0, 1)).reshape(-1)

    def __repr__(self) -> str:
        return (f"NeuralFabric3D(shape={self.shape}, n={self.n}, nnz={self.nnz}, "
                f"branches={self.n_branches}, segments={self.n_segments}, "
                f"step={self.step_count})")

