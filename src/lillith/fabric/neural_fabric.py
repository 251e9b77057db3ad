"""`NeuralFabric3D`: a 3D grid of dendritic neurons as structure-of-arrays.

All state is held as contiguous float32 arrays over neurons (one object owns
them, as brian2 and norse hold neuron state); connectivity is CSR
(:class:`~lillith.fabric.topology.Connectivity`) built by a wiring; one step
is one call of a numba kernel (:mod:`lillith.fabric._kernels`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from lillith.errors import FabricError, StateError
from lillith.fabric import _kernels as K
from lillith.fabric.params import FabricParams
from lillith.fabric.topology import Connectivity, Shape3, index_of, n_neurons

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

_DYNAMIC = ("v", "m_na", "n_k", "c_ca", "vb", "cab", "hot", "ref", "adapt", "theta",
            "act", "w")
_TOPOLOGY = ("indptr", "indices", "polarity", "feedback",
             "s_indptr", "s_indices", "s_wsigned", "tau", "population", "neuron_id")


class NeuralFabric3D:
    """A plastic recurrent 3D fabric of dendritic neurons.

    Parameters
    ----------
    shape : tuple of int
        Grid ``(X, Y, Z)``; neuron ``(x, y, z)`` has flat index
        ``z * X * Y + x * Y + y``.
    n_inputs : int
        Width of the sensor drive passed to :meth:`step`.
    wiring : Wiring or Connectivity, optional
        Recurrent connectivity. Default: ``Local3D(shape)`` (26-neighbourhood).
        When it defines no sensory synapses, the input is projected densely
        onto the sensory face (the z = 0 layer) with seeded random weights.
    n_branches, n_segments : int
        Dendritic branches per neuron (K) and segments per branch (S).
    n_features : int
        Size of the pooled feature vector (:meth:`pooled`).
    params : FabricParams, optional
        Model constants.
    noise_scale : float
        Standard deviation of the exploration noise in ``random`` mode, mV.
    intent_gain : float
        Gain toward the goal pattern in ``intentional`` mode.
    bidirectional_weight : float
        Weight of top-down feedback synapses in ``bidirectional`` mode; the
        forward (lateral and feed-forward) synapses get ``1 - weight``.
    parallel : bool, optional
        Use the ``prange`` kernel; default: when ``n >= 2048``.
    seed : int
        Seeds the input projection, the synapse-to-segment placement and the
        exploration noise.
    """

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
        conn = self._connectivity(wiring)
        self.params.validate(conn.tau)
        self._p = self.params.pack()
        self._init_topology(conn)
        self._init_dynamics(conn)

    # ------------------------------------------------------------------ setup
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

    def _init_topology(self, conn: Connectivity) -> None:
        rng = np.random.default_rng(self.seed)
        nnz = conn.nnz
        # within each row: forward / lateral synapses first, feedback last
        rows = np.repeat(np.arange(self.n), np.diff(conn.indptr))
        order = np.lexsort((np.arange(nnz), conn.feedback, rows))
        self.indptr = conn.indptr.copy()
        self.indices = conn.indices[order]
        self.polarity = conn.polarity[order].astype(np.int8)
        self.feedback = conn.feedback[order]
        self._weight0 = conn.weight[order]
        self.fb_start = _feedback_start(self.indptr, self.feedback)
        # branch k of a neuron takes the k-th contiguous block of its CSR row
        # (neighbouring presynaptic neurons cluster on one branch) and the
        # m-th synapse of a branch lands on its segment m mod n_segments
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

    def _init_dynamics(self, conn: Connectivity) -> None:
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
        self.w = _row_normalised(self.indptr, self._weight0, self.polarity, self.params.g_inh)
        self.step_count = 0
        self._pending = np.zeros((n, Kb, S), dtype=np.float32)
        self._has_pending = False
        self._x = np.zeros(self.n_inputs, dtype=np.float32)
        self._goal = np.zeros(n, dtype=np.float32)
        self._features = np.zeros(self.n_features, dtype=np.float32)

    # ------------------------------------------------------------------ stepping
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
            gate times its learning drive; 0 freezes the weights.
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
        if not (np.isfinite(plasticity) and plasticity >= 0.0):
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
            if not np.all(np.isfinite(xa)):
                raise FabricError("input contains NaN or Inf")
            self._x[:] = xa
        if code == K.MODE_INTENTIONAL:
            if goal is None:
                raise FabricError("intentional mode needs a goal pattern")
            self.set_goal(goal)
        kernel = K._step_parallel if self.parallel else K._step_serial
        for _ in range(substeps):
            kernel(
                self._p, code, self.noise_scale, self.intent_gain, self.bidirectional_weight,
                float(plasticity), np.uint64(self.seed), np.uint64(self.step_count),
                self._advance_hot_gain(),
                self.indptr, self.indices, self.polarity, self.fb_start,
                self.s_indptr, self.s_indices, self.s_wsigned,
                self.tau, self._x, self._goal, self._pending, self._has_pending, self.w,
                self.v, self.m_na, self.n_k, self.c_ca, self.vb, self.cab, self.hot,
                self.ref, self.adapt, self.theta, self.act, self._act_next,
            )
            self.act, self._act_next = self._act_next, self.act
            self._has_pending = False
            self.step_count += 1
        view = self.act.view()
        view.flags.writeable = False
        return view

    forward = step

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

    # ------------------------------------------------------------------ outputs
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
        """Pooled feature vector: mean activation over ``n_features`` depth slabs.

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
        K._pool(self.act, self.n_features, buf)
        return buf

    def dendrite_voltage(self, neuron: int | tuple[int, int, int]) -> F32:
        """Branch voltages of one neuron, shape (n_branches,), mV above rest."""
        out: F32 = self.vb[self._index(neuron)].copy()
        return out

    def dendrite_calcium(self, neuron: int | tuple[int, int, int]) -> F32:
        """Branch calcium of one neuron, shape (n_branches,), in [0, 1]."""
        out: F32 = self.cab[self._index(neuron)].copy()
        return out

    def hotspots(self, neuron: int | tuple[int, int, int]) -> F32:
        """Segment activity traces of one neuron, shape (n_branches, n_segments)."""
        out: F32 = (self.hot[self._index(neuron)] * np.float32(self.hot_gain)).astype(np.float32)
        return out

    @property
    def hotspot_traces(self) -> F32:
        """All segment activity traces, shape (n, n_branches, n_segments), float32 (a copy)."""
        return (self.hot * np.float32(self.hot_gain)).astype(np.float32)

    def ion_channels(self, neuron: int | tuple[int, int, int]) -> dict[str, float]:
        """Gate states in [0, 1] of one neuron: ``{"Na": m, "K": n, "Ca": c}``."""
        i = self._index(neuron)
        return {"Na": float(self.m_na[i]), "K": float(self.n_k[i]), "Ca": float(self.c_ca[i])}

    def membrane_potential(self) -> F32:
        """Somatic voltages as a grid, shape (X, Y, Z), mV (a copy)."""
        return self._to_map(self.v)

    @property
    def nnz(self) -> int:
        """Number of recurrent synapses."""
        return int(self.indices.shape[0])

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Whole fabric as a plain dict of numpy arrays (copies).

        Holds the dynamic state, the plastic weights, the topology (which
        evolution may change), the constants and the step counter.
        """
        d: dict[str, npt.NDArray[Any]] = {k: getattr(self, k).copy() for k in _DYNAMIC}
        d.update({k: getattr(self, k).copy() for k in _TOPOLOGY})
        d["pending"] = self._pending.copy()
        d["goal"] = self._goal.copy()
        d["step"] = np.array(self.step_count, dtype=np.int64)
        d["hot_gain"] = np.array(self.hot_gain, dtype=np.float64)
        d["shape"] = np.array(self.shape, dtype=np.int64)
        d["sizes"] = np.array([self.n_inputs, self.n_branches, self.n_segments,
                               self.n_features, self.seed], dtype=np.int64)
        d["params"] = self._p.copy()
        d["modes"] = np.array([self.noise_scale, self.intent_gain, self.bidirectional_weight],
                              dtype=np.float64)
        return d

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`get_state`; the fabric then continues bit-identically.

        Raises
        ------
        StateError
            When keys are missing, or shapes / dtypes do not fit this fabric.
        """
        missing = sorted(set(_DYNAMIC + _TOPOLOGY + ("step", "shape", "sizes", "params"))
                         - set(state))
        if missing:
            raise StateError("fabric state lacks arrays", missing=missing)
        shape = tuple(int(s) for s in state["shape"])
        sizes = [int(s) for s in state["sizes"]]
        mine = [self.n_inputs, self.n_branches, self.n_segments, self.n_features]
        if shape != self.shape or sizes[:4] != mine:
            raise StateError("fabric state belongs to another configuration",
                             shape=shape, expected_shape=self.shape, sizes=sizes[:4],
                             expected_sizes=mine)
        n, nnz = self.n, int(np.asarray(state["indices"]).shape[0])
        s_nnz = int(np.asarray(state["s_indices"]).shape[0])
        Kb, S = self.n_branches, self.n_segments
        spec: dict[str, tuple[Any, tuple[int, ...]]] = {
            "v": (np.float32, (n,)), "m_na": (np.float32, (n,)), "n_k": (np.float32, (n,)),
            "c_ca": (np.float32, (n,)), "vb": (np.float32, (n, Kb)),
            "cab": (np.float32, (n, Kb)), "hot": (np.float32, (n, Kb, S)),
            "ref": (np.float32, (n,)), "adapt": (np.float32, (n,)),
            "theta": (np.float32, (n,)), "act": (np.float32, (n,)),
            "w": (np.float32, (nnz,)), "indptr": (np.int64, (n + 1,)),
            "indices": (np.int32, (nnz,)), "polarity": (np.int8, (nnz,)),
            "feedback": (np.uint8, (nnz,)),
            "s_indptr": (np.int64, (n + 1,)),
            "s_indices": (np.int32, (s_nnz,)), "s_wsigned": (np.float32, (s_nnz,)),
            "tau": (np.float32, (n,)), "population": (np.int8, (n,)),
            "neuron_id": (np.int64, (n,)),
        }
        arrays: dict[str, npt.NDArray[Any]] = {}
        for key, (dtype, shp) in spec.items():
            arr = np.asarray(state[key])
            if arr.shape != shp:
                raise StateError("fabric state array has wrong shape", array=key,
                                 shape=arr.shape, expected=shp)
            if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                raise StateError("fabric state array has wrong dtype", array=key,
                                 dtype=str(arr.dtype), expected=np.dtype(dtype).name)
            arrays[key] = np.ascontiguousarray(arr, dtype=dtype).copy()
        ptr = arrays["indptr"]
        if ptr[0] != 0 or ptr[-1] != nnz or np.any(np.diff(ptr) < 0):
            raise StateError("fabric state has an inconsistent CSR row pointer")
        if nnz and (arrays["indices"].min() < 0 or arrays["indices"].max() >= n):
            raise StateError("fabric state has synapse indices out of range")
        if s_nnz and (arrays["s_indices"].min() < 0
                      or arrays["s_indices"].max() >= self.n_inputs):
            raise StateError("fabric state has sensory channels out of range")
        try:
            fb_start = _feedback_start(arrays["indptr"], arrays["feedback"])
        except FabricError as e:
            raise StateError("fabric state has feedback synapses before forward ones") from e
        params = np.asarray(state["params"], dtype=np.float32)
        if params.shape != (K.N_PARAMS,):
            raise StateError("fabric parameter vector has wrong length", length=params.size)
        for key, arr in arrays.items():
            setattr(self, key, arr)
        self.fb_start = fb_start
        self._p = params.copy()
        self._act_next = np.zeros(n, dtype=np.float32)
        if "pending" in state:
            self._pending = np.ascontiguousarray(state["pending"], dtype=np.float32).copy()
            self._has_pending = bool(np.any(self._pending))
        if "goal" in state:
            self._goal = np.ascontiguousarray(state["goal"], dtype=np.float32).copy()
        if "modes" in state:
            ns, ig, bw = (float(v) for v in state["modes"])
            self.noise_scale, self.intent_gain, self.bidirectional_weight = ns, ig, bw
        self.seed = sizes[4]
        self.hot_gain = float(state["hot_gain"]) if "hot_gain" in state else 1.0
        self._hot_decay = float(np.exp(-float(self._p[K.P_DT]) / float(self._p[K.P_TAU_H])))
        self.step_count = int(state["step"])

    # ------------------------------------------------------------------ helpers
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


def _feedback_start(indptr: npt.NDArray[np.int64], feedback: npt.NDArray[np.uint8]
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


def _row_normalised(
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
