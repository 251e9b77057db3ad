"""`NeuralFabric3D`: a 3D grid of dendritic neurons as structure-of-arrays.

All state is held as contiguous float32 arrays over neurons (one object owns
them, as brian2 and norse hold neuron state); connectivity is CSR
(:class:`~lillith.fabric.topology.Connectivity`) built by a wiring; one step
is one call of a numba kernel (:mod:`lillith.fabric._fabric_kernels`). The
arrays and the stepping are :class:`~lillith.fabric.fabric_core.FabricCore`'s;
this class adds evolution (fitness, apoptosis, regrowth, lineage: through
:mod:`lillith.fabric.evolution` and :mod:`lillith.fabric.rewire`) and the
state round-trip (:class:`~lillith.fabric.fabric_state.FabricState`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from lillith.errors import FabricError, StateError
from lillith.fabric import _evolution_kernels as EK
from lillith.fabric import _fabric_kernels as K
from lillith.fabric import evolution as E
from lillith.fabric import rewire as W
from lillith.fabric.fabric_core import MODES, PRESETS, FabricCore
from lillith.fabric.fabric_state import OPTIONAL, FabricState, legacy_defaults
from lillith.fabric.fabric_state import spec as fabric_spec
from lillith.fabric.topology import feedback_start
from lillith.records import read_arrays

__all__ = ["MODES", "PRESETS", "NeuralFabric3D"]

# per-neuron arrays a preserving split copies from the parent
_INHERITED = ("v", "m_na", "n_k", "c_ca", "vb", "cab", "hot", "ref", "adapt", "theta", "act",
              "_pending")
_FITNESS = ("importance", "act_mean", "act_sq", "diversity", "fitness")


class NeuralFabric3D(FabricCore):
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
    fitness_decay : float
        Keep factor in [0, 1) of the fitness moving averages updated by
        :meth:`observe_importance` (``x <- d * x + (1 - d) * sample``).
    fitness_weights : FitnessWeights or mapping, optional
        Objectives of the fitness; default importance only.
    """

    def observe_importance(self, grad_features: npt.ArrayLike, *,
                           decay: float | None = None) -> None:
        """Update the fitness averages from the loss gradient of the pooled features.

        Call once per training step with the gradient that step computed;
        uses the current activations. Per neuron ``i`` in pooling slab ``f``:
        importance sample ``|act_i * readout_i * grad_f / |f||``; also the
        activity averages behind the other objectives. Each average moves as
        ``x <- d * x + (1 - d) * sample``; then :attr:`fitness` is recomputed
        from them (:class:`~lillith.fabric.evolution.FitnessWeights`).

        Parameters
        ----------
        grad_features : array_like, shape (n_features,)
            ``dLoss / d pooled()``, finite.
        decay : float, optional
            Keep factor ``d`` in [0, 1); default :attr:`fitness_decay`.

        Raises
        ------
        FabricError
            On a wrong shape, non-finite values or a bad decay.
        """
        g = np.asarray(grad_features, dtype=np.float32).reshape(-1)
        if g.shape[0] != self.n_features:
            raise FabricError("gradient has wrong width", width=g.shape[0],
                              n_features=self.n_features)
        if not np.all(np.isfinite(g)):
            raise FabricError("gradient contains NaN or Inf")
        keep = self.fitness_decay if decay is None else float(decay)
        if not (np.isfinite(keep) and 0.0 <= keep < 1.0):
            raise FabricError("decay must lie in [0, 1)", decay=decay)
        EK._observe(self.act, self.readout, g, self.n_features, keep, self.importance,
                   self.act_mean, self.act_sq, self.diversity)
        self._combine_fitness()

    def _combine_fitness(self) -> None:
        EK._combine(self.fitness_weights.as_array(), self.indptr, self.w, self.importance,
                   self.act_mean, self.act_sq, self.diversity, self._fit_scratch, self.fitness)

    def apoptosis(
        self,
        *,
        strategies: E.StrategySpec,
        step: int | None = None,
        seed: int | None = None,
        allow_sensory: bool = False,
    ) -> dict[str, Any]:
        """One round of neuron death and regrowth, per z-layer.

        In each z-layer the lowest-fitness neurons (at most ``prune_rate`` of
        the layer) die and each slot is refilled from healthy parents of the
        same layer (see :func:`lillith.fabric.evolution.plan_apoptosis` and
        :func:`~lillith.fabric.evolution.rewire`); newborns get fresh ids,
        their parents' ids, ``generation = max(parent generations) + 1`` and
        ``birth_step = step``. The connectivity is rebuilt (rows change
        length) and checked; this allocates, so run it every K steps, not
        per step.

        ``"preservation"`` splits the parent (Net2Net): the child is an exact
        copy (incoming row with its branch layout, sensory row, all dynamic
        state including plasticity traces, tau, population), the parent's
        outgoing weights and readout are shared equally with its children, so
        with plasticity 0 the next step's activations and pooled features equal
        those of the fabric with the dead neurons merely silenced (to float
        rounding). ``"mutation"`` and ``"crossover"`` give a fresh neuron at
        rest with noisy / blended incoming weights, readout 1 and the dead
        neuron's outgoing synapses.

        Parameters
        ----------
        strategies : LayerStrategy, mapping, sequence or {z: strategy}
            One strategy for every z-layer, one per z-layer, or some layers
            only (see :func:`lillith.fabric.evolution.strategies_per_layer`).
        step : int, optional
            Step recorded as the newborns' birth step; default the fabric's
            step counter.
        seed : int, optional
            Seed of this round's random choices together with ``step``;
            default the fabric's seed.
        allow_sensory : bool
            Whether neurons with sensory synapses may die and parent.

        Returns
        -------
        dict
            ``step``, ``died`` / ``born`` (totals), ``nnz_before``,
            ``nnz_after`` and ``layers``: per z-layer with a strategy,
            ``layer``, ``strategy``, ``prune_rate``, ``size``, ``died`` (ids),
            ``born`` (ids), ``parents`` (``[id, id or -1]`` per newborn),
            ``slots`` (indices), ``alpha`` (crossover blend factors),
            ``turnover`` (newborns) and ``skipped`` (deaths without a parent).

        Raises
        ------
        FabricError
            On an invalid strategy.
        """
        Z = self.shape[2]
        per_layer = E.strategies_per_layer(strategies, Z)
        step_v = self.step_count if step is None else int(step)
        seed_v = self.seed if seed is None else int(seed)
        if step_v < 0 or seed_v < 0:
            raise FabricError("step and seed must be >= 0", step=step_v, seed=seed_v)
        rng = np.random.default_rng(np.random.SeedSequence([seed_v, step_v]))
        sensory = np.diff(self.s_indptr) > 0
        plan = E.plan_apoptosis(self.fitness, self._layer_size, per_layer, self._group,
                                sensory, bool(allow_sensory), rng)
        nnz_before = self.nnz
        died = self.neuron_id[plan.slots].copy()
        if plan.size:
            new = W.rewire(self._topology_of(vars(self)), plan, self.n_branches,
                           self.params.w_max, rng)
            W.check_topology(new, self.n, self.n_branches, self.n_inputs, self.n_gates)
            self._regrow(plan, step_v)
            for key in ("indptr", "bptr", "indices", "w", "polarity", "feedback", "gate",
                        "s_indptr", "s_indices", "s_wsigned"):
                setattr(self, key, getattr(new, key))
            self._refresh_topology()
            self._combine_fitness()
        return self._apoptosis_report(plan, per_layer, died, step_v, nnz_before)

    def _regrow(self, plan: E.Plan, step: int) -> None:
        """Per-neuron arrays of the newborns (topology is rewired separately)."""
        slots, p1, p2 = plan.slots, plan.parent1, plan.parent2
        pres = plan.kind == E.PRESERVATION
        fresh = ~pres
        # lineage (parents are survivors, so their ids are read before any change)
        pid1 = self.neuron_id[p1]
        pid2 = np.where(p2 >= 0, self.neuron_id[np.maximum(p2, 0)], -1)
        gen = self.generation[p1]
        gen = np.where(p2 >= 0, np.maximum(gen, self.generation[np.maximum(p2, 0)]), gen)
        self.neuron_id[slots] = self.next_id + np.arange(plan.size, dtype=np.int64)
        self.next_id += plan.size
        self.parent_ids[slots, 0] = pid1
        self.parent_ids[slots, 1] = pid2
        self.generation[slots] = gen + 1
        self.birth_step[slots] = step
        self.tau[slots] = self.tau[p1]
        self.population[slots] = self.population[p1]
        # fitness record: inherited (mean of both parents for crossover), so a
        # newborn is not culled before it has been measured
        for key in _FITNESS:
            arr = getattr(self, key)
            val = arr[p1].astype(np.float64)
            val = np.where(p2 >= 0, 0.5 * (val + arr[np.maximum(p2, 0)]), val)
            arr[slots] = val.astype(np.float32)
        # preserving split: exact copy of the parent, readout shared equally
        s_p, p_p = slots[pres], p1[pres]
        for key in _INHERITED:
            arr = getattr(self, key)
            arr[s_p] = arr[p_p]
        if s_p.size:
            n_child = np.bincount(p_p, minlength=self.n)
            parents = np.nonzero(n_child)[0]
            share = self.readout[parents] / (n_child[parents] + 1).astype(np.float32)
            self.readout[parents] = share
            self.readout[s_p] = self.readout[p_p]
            if np.any(self._pending[s_p]):
                self._has_pending = True
        # mutation / crossover: a fresh neuron at rest, default readout
        s_f = slots[fresh]
        if s_f.size:
            for key in _INHERITED:
                getattr(self, key)[s_f] = 0.0
            self.v[s_f] = np.float32(self.params.e_leak)
            self.readout[s_f] = 1.0

    def _apoptosis_report(self, plan: E.Plan, per_layer: list[E.LayerStrategy | None],
                          died: npt.NDArray[np.int64], step: int, nnz_before: int
                          ) -> dict[str, Any]:
        layers: list[dict[str, Any]] = []
        born = self.neuron_id[plan.slots]
        pids = self.parent_ids[plan.slots]
        for z, st in enumerate(per_layer):
            if st is None:
                continue
            sel = plan.layer == z
            layers.append({
                "layer": z,
                "strategy": st.regrowth,
                "prune_rate": st.prune_rate,
                "mutation_strength": st.mutation_strength,
                "size": self._layer_size,
                "died": died[sel].tolist(),
                "born": born[sel].tolist(),
                "parents": pids[sel].tolist(),
                "slots": plan.slots[sel].tolist(),
                "alpha": [float(a) for a in plan.alpha[sel] if np.isfinite(a)],
                "turnover": int(sel.sum()),
                "skipped": int(plan.skipped[z]),
            })
        return {"step": step, "died": plan.size, "born": plan.size, "nnz_before": nnz_before,
                "nnz_after": self.nnz, "layers": layers}

    def lineage(self) -> dict[str, npt.NDArray[Any]]:
        """Lineage of the living neurons (copies), indexed by neuron slot.

        Returns
        -------
        dict
            ``neuron_id`` (n,) int64 unique; ``parent_ids`` (n, 2) int64, -1 for
            none; ``generation`` (n,) int32; ``birth_step`` (n,) int64.
        """
        return {"neuron_id": self.neuron_id.copy(), "parent_ids": self.parent_ids.copy(),
                "generation": self.generation.copy(), "birth_step": self.birth_step.copy()}

    def state(self) -> FabricState:
        """The whole fabric as a :class:`FabricState` of copies: the dynamic
        state, the plastic weights, the topology (which evolution may change:
        rows, branch pointer, skip gates), the readout weights, the fitness
        averages, the lineage, the constants and the step counter."""
        own = {"pending": self._pending, "goal": self._goal, "params": self._p,
               "step": np.array(self.step_count, dtype=np.int64),
               "next_id": np.array(self.next_id, dtype=np.int64),
               "hot_gain": np.array(self.hot_gain, dtype=np.float64),
               "shape": np.array(self.shape, dtype=np.int64),
               "sizes": np.array([self.n_inputs, self.n_branches, self.n_segments,
                                  self.n_features, self.seed], dtype=np.int64),
               "modes": np.array([self.noise_scale, self.intent_gain,
                                  self.bidirectional_weight], dtype=np.float64)}
        return FabricState(**{k: np.array(own[k] if k in own else getattr(self, k), copy=True)
                              for k in FabricState._fields})

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """:meth:`state` as a dict of arrays (the snapshot's ``fabric/`` keys)."""
        return self.state()._asdict()

    def set_state(self, state: Mapping[str, npt.ArrayLike]) -> None:
        """Restore from :meth:`get_state`; the fabric then continues bit-identically.

        Every array is checked against this fabric's sizes (the topology's
        against the state's own synapse and gate counts), then the topology
        and the constants are checked for consistency. Arrays added since a
        state was written (evolution, skip gates, pending plasticity) take a
        fresh fabric's defaults (:func:`~lillith.fabric.fabric_state.legacy_defaults`).

        Raises
        ------
        StateError
            When arrays are missing, shapes or dtypes do not fit this fabric,
            or the topology or constants are inconsistent. The fabric is left
            unchanged.
        """
        n, Kb, S = self.n, self.n_branches, self.n_segments
        head = read_arrays(state, {"shape": (np.int64, (3,)), "sizes": (np.int64, (5,))},
                           what="fabric")
        shape = tuple(int(v) for v in head["shape"])
        sizes = [int(v) for v in head["sizes"]]
        mine = [self.n_inputs, self.n_branches, self.n_segments, self.n_features]
        if shape != self.shape or sizes[:4] != mine:
            raise StateError("fabric state belongs to another configuration",
                             shape=shape, expected_shape=self.shape, sizes=sizes[:4],
                             expected_sizes=mine)
        if ("gate" in state) != ("gate_pairs" in state):
            raise StateError("fabric state must hold gate and gate_pairs together")
        nnz, s_nnz, n_gates = (np.asarray(state[k]).shape[0] if k in state else 0
                               for k in ("indices", "s_indices", "gate_pairs"))
        a = read_arrays(state, fabric_spec(n, nnz, s_nnz, n_gates, Kb, S), what="fabric",
                        optional=OPTIONAL)
        ptr = a["indptr"]
        if ptr[0] != 0 or ptr[-1] != nnz or np.any(np.diff(ptr) < 0):
            raise StateError("fabric state has an inconsistent CSR row pointer")
        if nnz and (a["indices"].min() < 0 or a["indices"].max() >= n):
            raise StateError("fabric state has synapse indices out of range")
        if s_nnz and (a["s_indices"].min() < 0 or a["s_indices"].max() >= self.n_inputs):
            raise StateError("fabric state has sensory channels out of range")
        try:
            feedback_start(a["indptr"], a["feedback"])
        except FabricError as e:
            raise StateError("fabric state has feedback synapses before forward ones") from e
        legacy_defaults(a, Kb, self.params.gate_logit0,
                        (self.noise_scale, self.intent_gain, self.bidirectional_weight))
        rec = FabricState(**a)
        try:
            W.check_topology(self._topology_of(a), n, Kb, self.n_inputs,
                             rec.gate_pairs.shape[0])
        except FabricError as e:
            raise StateError("fabric state has an inconsistent topology",
                             reason=e.message) from e
        # the constructor's checks, on the restored constants: the step kernel
        # divides by them without a zero test (error_model="numpy")
        try:
            self.params.with_packed(rec.params).validate(rec.tau)
        except FabricError as e:
            raise StateError("fabric state has unusable constants", reason=e.message) from e
        next_id = int(rec.next_id)
        if np.unique(rec.neuron_id).shape[0] != n or next_id <= int(rec.neuron_id.max()):
            raise StateError("fabric state has duplicate neuron ids or a stale id counter",
                             next_id=next_id)
        self._load(rec)

    def _load(self, rec: FabricState) -> None:
        """Commit a checked record."""
        own = ("pending", "goal", "params", "step", "next_id", "hot_gain", "shape", "sizes",
               "modes")
        for key, arr in rec._asdict().items():
            if key not in own:
                setattr(self, key, arr)
        self.next_id = int(rec.next_id)
        self._refresh_topology()
        self._p = rec.params
        self._act_next = np.zeros(self.n, dtype=np.float32)
        self._pending = rec.pending
        self._has_pending = bool(np.any(self._pending))
        self._goal = rec.goal
        self.noise_scale, self.intent_gain, self.bidirectional_weight = (
            float(v) for v in rec.modes)
        self.seed = int(rec.sizes[4])
        self.hot_gain = float(rec.hot_gain)
        self._hot_decay = float(np.exp(-float(self._p[K.P_DT]) / float(self._p[K.P_TAU_H])))
        self.step_count = int(rec.step)
