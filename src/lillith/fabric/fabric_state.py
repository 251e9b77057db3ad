"""The state record of :class:`~lillith.fabric.neural_fabric.NeuralFabric3D`.

One :class:`FabricState` holds everything a fabric is; its fields are the
snapshot keys under ``fabric/`` (docs/snapshots.md). Sizes: ``n`` neurons,
``nnz`` recurrent synapses, ``s`` sensory synapses, ``g`` skip gates, ``K``
branches and ``S`` segments per branch, ``P`` model constants
(:data:`lillith.fabric._fabric_kernels.N_PARAMS`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lillith.fabric import _fabric_kernels as K
from lillith.fabric import rewire as W
from lillith.records import Spec

A = npt.NDArray[Any]

OPTIONAL = ("bptr", "gate", "gate_pairs", "gate_logit", "gate_val", "readout", "fitness",
            "importance", "act_mean", "act_sq", "diversity", "parent_ids", "generation",
            "birth_step", "next_id", "pending", "goal", "hot_gain", "modes")
"""Fields a state may lack (written before evolution, skip gates and the
part-filled plasticity existed): :func:`legacy_defaults` fills them."""


class FabricState(NamedTuple):
    """A fabric's whole state.

    Attributes
    ----------
    v : float32 (n,)
        Somatic voltage, mV.
    m_na, n_k, c_ca : float32 (n,)
        Na, K and Ca gate states in [0, 1].
    vb, cab : float32 (n, K)
        Branch voltage (mV above rest) and branch calcium in [0, 1].
    hot : float32 (n, K, S)
        Segment activity traces divided by ``hot_gain``.
    ref, adapt, theta : float32 (n,)
        Refractoriness in [0, 1], adaptation, BCM sliding threshold.
    act : float32 (n,)
        Activations of the last step, in [0, 1].
    w : float32 (nnz,)
        Plastic synapse weights (signed by ``polarity``), CSR order.
    indptr : int64 (n + 1,)
        CSR row pointer (rows: postsynaptic neurons; forward synapses first).
    indices : int32 (nnz,)
        Presynaptic neuron of each synapse.
    polarity : int8 (nnz,)
        +1 excitatory, -1 inhibitory.
    feedback : uint8 (nnz,)
        1 for a synapse from a higher z-layer.
    s_indptr : int64 (n + 1,); s_indices : int32 (s,); s_wsigned : float32 (s,)
        Sensory synapses: CSR rows, input channel, signed weight.
    tau : float32 (n,)
        Membrane time constant, ms.
    population : int8 (n,)
        Population label of each neuron.
    neuron_id : int64 (n,)
        Unique id of the neuron in each slot (never reused).
    bptr : int64 (n K + 1,)
        Branch blocks of each CSR row.
    gate : int32 (nnz,)
        Skip gate of each synapse (-1: ungated).
    gate_pairs : int32 (g, 2)
        (source layer, target layer) of each gate.
    gate_logit, gate_val : float32 (g,)
        Gate logits and ``sigmoid(logit)``.
    readout : float32 (n,)
        Pooling weight of each neuron (1 until a preserving split halves it).
    fitness, importance, act_mean, act_sq, diversity : float32 (n,)
        Combined fitness and its moving averages.
    parent_ids : int64 (n, 2)
        Parents' ids (-1: none).
    generation : int32 (n,); birth_step : int64 (n,)
        Lineage of each living neuron.
    next_id : int64 ()
        The next neuron id to issue.
    pending : float32 (n, K, S)
        Plasticity accumulated by :meth:`add_synaptic_input`, applied at the next step.
    goal : float32 (n,)
        Goal pattern of intentional mode.
    step : int64 ()
        Steps taken.
    hot_gain : float64 ()
        Common factor of the segment traces.
    shape : int64 (3,)
        (X, Y, Z).
    sizes : int64 (5,)
        n_inputs, n_branches, n_segments, n_features, seed.
    params : float32 (P,)
        Model constants (:class:`~lillith.fabric.params.FabricParams`, packed).
    modes : float64 (3,)
        noise_scale, intent_gain, bidirectional_weight.
    """

    v: A
    m_na: A
    n_k: A
    c_ca: A
    vb: A
    cab: A
    hot: A
    ref: A
    adapt: A
    theta: A
    act: A
    w: A
    indptr: A
    indices: A
    polarity: A
    feedback: A
    s_indptr: A
    s_indices: A
    s_wsigned: A
    tau: A
    population: A
    neuron_id: A
    bptr: A
    gate: A
    gate_pairs: A
    gate_logit: A
    gate_val: A
    readout: A
    fitness: A
    importance: A
    act_mean: A
    act_sq: A
    diversity: A
    parent_ids: A
    generation: A
    birth_step: A
    next_id: A
    pending: A
    goal: A
    step: A
    hot_gain: A
    shape: A
    sizes: A
    params: A
    modes: A


def spec(n: int, nnz: int, s_nnz: int, n_gates: int, Kb: int, S: int) -> Spec:
    """dtype and shape of every field of a fabric of these sizes."""
    f32, i64 = np.float32, np.int64
    out: dict[str, tuple[Any, tuple[int, ...] | None]] = {
        "v": (f32, (n,)), "m_na": (f32, (n,)), "n_k": (f32, (n,)), "c_ca": (f32, (n,)),
        "vb": (f32, (n, Kb)), "cab": (f32, (n, Kb)), "hot": (f32, (n, Kb, S)),
        "ref": (f32, (n,)), "adapt": (f32, (n,)), "theta": (f32, (n,)), "act": (f32, (n,)),
        "w": (f32, (nnz,)), "indptr": (i64, (n + 1,)), "indices": (np.int32, (nnz,)),
        "polarity": (np.int8, (nnz,)), "feedback": (np.uint8, (nnz,)),
        "s_indptr": (i64, (n + 1,)), "s_indices": (np.int32, (s_nnz,)),
        "s_wsigned": (f32, (s_nnz,)), "tau": (f32, (n,)), "population": (np.int8, (n,)),
        "neuron_id": (i64, (n,)), "bptr": (i64, (n * Kb + 1,)), "gate": (np.int32, (nnz,)),
        "gate_pairs": (np.int32, (n_gates, 2)), "gate_logit": (f32, (n_gates,)),
        "gate_val": (f32, (n_gates,)), "readout": (f32, (n,)), "fitness": (f32, (n,)),
        "importance": (f32, (n,)), "act_mean": (f32, (n,)), "act_sq": (f32, (n,)),
        "diversity": (f32, (n,)), "parent_ids": (i64, (n, 2)), "generation": (np.int32, (n,)),
        "birth_step": (i64, (n,)), "next_id": (i64, None), "pending": (f32, (n, Kb, S)),
        "goal": (f32, (n,)), "step": (i64, None), "hot_gain": (np.float64, None),
        "shape": (i64, (3,)), "sizes": (i64, (5,)), "params": (f32, (K.N_PARAMS,)),
        "modes": (np.float64, (3,)),
    }
    return out


def legacy_defaults(a: dict[str, A], n_branches: int, gate_logit0: float,
                    modes: tuple[float, float, float]) -> None:
    """Fill, in place, the fields a state written before them lacks (see
    :data:`OPTIONAL`) with what a fresh fabric has: the default branch layout,
    no gates, readout 1, zero fitness, no parents, no pending plasticity, no
    goal, trace gain 1 and this fabric's mode constants ``modes``."""
    n, nnz = a["indptr"].shape[0] - 1, a["indices"].shape[0]
    if "bptr" not in a:
        a["bptr"] = W.default_branch_ptr(a["indptr"], n_branches)
    if "gate" not in a:
        a["gate"] = np.full(nnz, -1, dtype=np.int32)
        a["gate_pairs"] = np.zeros((0, 2), dtype=np.int32)
    n_gates = a["gate_pairs"].shape[0]
    if "gate_logit" not in a:
        a["gate_logit"] = np.full(n_gates, gate_logit0, dtype=np.float32)
    if "gate_val" not in a:
        a["gate_val"] = np.zeros(n_gates, dtype=np.float32)
        K._gate_values(a["gate_logit"], a["gate_val"])
    a.setdefault("readout", np.ones(n, dtype=np.float32))
    for key in ("fitness", "importance", "act_mean", "act_sq", "diversity"):
        a.setdefault(key, np.zeros(n, dtype=np.float32))
    a.setdefault("parent_ids", np.full((n, 2), -1, dtype=np.int64))
    a.setdefault("generation", np.zeros(n, dtype=np.int32))
    a.setdefault("birth_step", np.zeros(n, dtype=np.int64))
    a.setdefault("next_id", np.array(int(a["neuron_id"].max(initial=-1)) + 1, dtype=np.int64))
    Kb = n_branches
    S = a["hot"].shape[2]
    a.setdefault("pending", np.zeros((n, Kb, S), dtype=np.float32))
    a.setdefault("goal", np.zeros(n, dtype=np.float32))
    a.setdefault("hot_gain", np.array(1.0, dtype=np.float64))
    a.setdefault("modes", np.array(modes, dtype=np.float64))
