"""Evolution of the fabric while it runs: fitness, apoptosis and regrowth (seed 002).

Functions over the fabric's arrays; :class:`~lillith.fabric.neural_fabric.NeuralFabric3D`
owns the arrays and calls them (``observe_importance``, ``apoptosis``).

- **Fitness.** Per neuron, the importance ``|a_i * r_i * dL/dp_f / |f||`` of
  its contribution to the pooled feature ``f`` it belongs to (a first-order
  Taylor estimate of the loss change if it fell silent), kept as an
  exponential moving average; optionally combined with diversity, stability
  and energy efficiency (:class:`FitnessWeights`, seed 002 idea 7).
- **Apoptosis.** Per z-layer, the lowest-fitness neurons (at most
  ``prune_rate`` of the layer) die; each slot is regrown from healthy
  parents of the same layer by function-preserving split (Net2Net),
  mutation or crossover (:class:`LayerStrategy`, seed 002 ideas 1 and 5).
  The CSR connectivity is rebuilt so every invariant the step kernel relies
  on still holds (:func:`check_topology`).
- **Lineage.** Every neuron has a unique id, up to two parent ids, a
  generation and a birth step (seed 002 idea 4).

Equations, choices and their reasons: ``docs/model.md``, section "Evolution".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from numba import njit

from lillith.errors import FabricError

__all__ = [
    "CROSSOVER_ALPHA",
    "CROSSOVER_NOISE",
    "MAX_PRUNE_RATE",
    "REGROWTH",
    "FitnessWeights",
    "LayerStrategy",
    "Plan",
    "StrategySpec",
    "Topology",
    "check_topology",
    "default_branch_ptr",
    "plan_apoptosis",
    "rewire",
    "strategies_per_layer",
    "synapse_branch",
]

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Regrowth = Literal["preservation", "mutation", "crossover"]

REGROWTH: tuple[str, ...] = ("preservation", "mutation", "crossover")
"""Regrowth strategies, in the order of their codes in :class:`Plan` (0, 1, 2)."""
PRESERVATION, MUTATION, CROSSOVER = 0, 1, 2
MAX_PRUNE_RATE = 0.5
"""Largest fraction of a layer that may die in one apoptosis round."""
CROSSOVER_ALPHA = (0.3, 0.7)
"""Range of the blend factor ``alpha ~ U[lo, hi]`` of crossover."""
CROSSOVER_NOISE = 0.25
"""Crossover noise as a fraction of the mutation noise of the same strength."""


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerStrategy:
    """How one z-layer evolves in an apoptosis round.

    Attributes
    ----------
    prune_rate : float
        Fraction of the layer's neurons that may die per round, in
        ``[0, MAX_PRUNE_RATE]``; the count is ``floor(prune_rate * layer size)``.
    mutation_strength : float
        Noise scale (>= 0) of ``"mutation"`` (and, times ``CROSSOVER_NOISE``,
        of ``"crossover"``), relative to the spread of the parent's weights.
    regrowth : {"preservation", "mutation", "crossover"}
        How a dead neuron's slot is refilled.
    """

    prune_rate: float = 0.05
    mutation_strength: float = 0.3
    regrowth: Regrowth = "preservation"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.prune_rate) and 0.0 <= self.prune_rate <= MAX_PRUNE_RATE):
            raise FabricError("prune_rate must lie in [0, MAX_PRUNE_RATE]",
                              prune_rate=self.prune_rate, max=MAX_PRUNE_RATE)
        if not (math.isfinite(self.mutation_strength) and self.mutation_strength >= 0.0):
            raise FabricError("mutation_strength must be finite and >= 0",
                              mutation_strength=self.mutation_strength)
        if self.regrowth not in REGROWTH:
            raise FabricError("unknown regrowth strategy", regrowth=self.regrowth,
                              known=list(REGROWTH))

    @classmethod
    def coerce(cls, obj: LayerStrategy | Mapping[str, Any]) -> LayerStrategy:
        """A strategy from an instance or a mapping of its fields.

        Raises
        ------
        FabricError
            On unknown keys or invalid values.
        """
        if isinstance(obj, LayerStrategy):
            return obj
        if isinstance(obj, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(obj) - known)
            if unknown:
                raise FabricError("unknown layer strategy keys", unknown=unknown)
            return cls(**dict(obj))
        raise FabricError("a layer strategy must be a LayerStrategy or a mapping",
                          kind=type(obj).__name__)

    @property
    def code(self) -> int:
        """Regrowth code (index in :data:`REGROWTH`)."""
        return REGROWTH.index(self.regrowth)


StrategySpec = LayerStrategy | Mapping[Any, Any] | Sequence[Any]
"""A strategy for every layer, one per layer, or ``{z: strategy}``."""


def strategies_per_layer(strategies: StrategySpec, n_layers: int) -> list[LayerStrategy | None]:
    """One strategy (or ``None``: no apoptosis) per z-layer.

    Parameters
    ----------
    strategies
        A single strategy (instance or field mapping) for every layer; a
        sequence of ``n_layers`` strategies; or a mapping ``{z: strategy}``
        (layers not named are left alone).
    n_layers : int
        Number of z-layers.

    Raises
    ------
    FabricError
        On a sequence of the wrong length, a layer out of range or a bad strategy.
    """
    if isinstance(strategies, LayerStrategy):
        return [strategies] * n_layers
    if isinstance(strategies, Mapping):
        keys = list(strategies)
        if keys and all(isinstance(k, str) for k in keys):
            one = LayerStrategy.coerce(strategies)
            return [one] * n_layers
        out: list[LayerStrategy | None] = [None] * n_layers
        for k, v in strategies.items():
            if isinstance(k, bool) or not isinstance(k, int | np.integer) or not (
                    0 <= int(k) < n_layers):
                raise FabricError("strategy layer out of range", layer=k, n_layers=n_layers)
            out[int(k)] = LayerStrategy.coerce(v)
        return out
    if isinstance(strategies, Sequence) and not isinstance(strategies, str):
        if len(strategies) != n_layers:
            raise FabricError("need one strategy per z-layer", given=len(strategies),
                              n_layers=n_layers)
        return [LayerStrategy.coerce(s) for s in strategies]
    raise FabricError("strategies must be a strategy, a sequence or a mapping",
                      kind=type(strategies).__name__)


@dataclass(frozen=True)
class FitnessWeights:
    """Weights of the fitness objectives (seed 002 idea 7).

    With the default (importance only) the fitness is the raw importance
    EMA. Otherwise every objective is divided by its mean over the fabric
    (so each has mean 1 and the weights mean what they say) and the fitness
    is their weighted sum, dimensionless.

    Attributes
    ----------
    importance : float
        ``|activation * readout * gradient|`` (EMA).
    diversity : float
        EMA of ``|a_i - mean activation of i's pooling slab|``.
    stability : float
        ``1 / (1 + var_i / mean var)``, var from EMAs of ``a`` and ``a^2``
        (note: a silent neuron is perfectly stable).
    energy : float
        ``1 / (1 + m_i / mean m)``, ``m_i`` the mean incoming weight magnitude.
    """

    importance: float = 1.0
    diversity: float = 0.0
    stability: float = 0.0
    energy: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (math.isfinite(v) and v >= 0.0):
                raise FabricError("fitness weights must be finite and >= 0", name=f.name,
                                  value=v)

    @classmethod
    def coerce(cls, obj: FitnessWeights | Mapping[str, float] | None) -> FitnessWeights:
        """Weights from an instance, a mapping of fields, or ``None`` (defaults)."""
        if obj is None:
            return cls()
        if isinstance(obj, FitnessWeights):
            return obj
        if isinstance(obj, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(obj) - known)
            if unknown:
                raise FabricError("unknown fitness weights", unknown=unknown)
            return cls(**{k: float(v) for k, v in obj.items()})
        raise FabricError("fitness weights must be FitnessWeights or a mapping",
                          kind=type(obj).__name__)

    def as_array(self) -> F64:
        """``[importance, diversity, stability, energy]``, float64."""
        return np.array([self.importance, self.diversity, self.stability, self.energy],
                        dtype=np.float64)


# ---------------------------------------------------------------------------
# fitness kernels
# ---------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _observe(
    act: np.ndarray,
    readout: np.ndarray,
    grad: np.ndarray,
    n_out: int,
    keep: float,
    importance: np.ndarray,
    act_mean: np.ndarray,
    act_sq: np.ndarray,
    diversity: np.ndarray,
) -> None:
    """Update the per-neuron fitness EMAs in place (no allocation).

    ``act``, ``readout`` (n,) float32; ``grad`` (n_out,) float32, dLoss/dpooled;
    the pooling groups are those of :func:`lillith.fabric._fabric_kernels._pool`.
    ``x <- keep * x + (1 - keep) * sample`` for importance ``|a r g / |f||``,
    ``a``, ``a^2`` and ``|a - slab mean|``.
    """
    n = act.shape[0]
    lr = 1.0 - keep
    for g in range(n_out):
        lo = g * n // n_out
        hi = (g + 1) * n // n_out
        cnt = max(hi - lo, 1)
        mean = 0.0
        for i in range(lo, hi):
            mean += act[i]
        mean /= cnt
        gg = grad[g] / cnt
        for i in range(lo, hi):
            a = float(act[i])
            imp = abs(a * readout[i] * gg)
            importance[i] = keep * importance[i] + lr * imp
            act_mean[i] = keep * act_mean[i] + lr * a
            act_sq[i] = keep * act_sq[i] + lr * a * a
            diversity[i] = keep * diversity[i] + lr * abs(a - mean)


@njit(cache=True, nogil=True)
def _combine(
    weights: np.ndarray,
    indptr: np.ndarray,
    w: np.ndarray,
    importance: np.ndarray,
    act_mean: np.ndarray,
    act_sq: np.ndarray,
    diversity: np.ndarray,
    scratch: np.ndarray,
    fitness: np.ndarray,
) -> None:
    """Combined fitness (see :class:`FitnessWeights`) into ``fitness`` (n,) float32.

    ``weights`` (4,) float64; ``scratch`` (2, n) float32 receives the
    stability and efficiency terms.
    """
    n = importance.shape[0]
    wi, wd, ws, we = weights[0], weights[1], weights[2], weights[3]
    if wd == 0.0 and ws == 0.0 and we == 0.0:
        for i in range(n):
            fitness[i] = wi * importance[i]
        return
    s_imp = 0.0
    s_div = 0.0
    s_var = 0.0
    s_m = 0.0
    for i in range(n):
        s_imp += importance[i]
        s_div += diversity[i]
        var = max(float(act_sq[i]) - float(act_mean[i]) * float(act_mean[i]), 0.0)
        scratch[0, i] = var
        s_var += var
        m = 0.0
        if we != 0.0:
            lo = indptr[i]
            hi = indptr[i + 1]
            for j in range(lo, hi):
                m += abs(w[j])
            if hi > lo:
                m /= hi - lo
        scratch[1, i] = m
        s_m += m
    m_var = s_var / max(n, 1)
    m_m = s_m / max(n, 1)
    s_stab = 0.0
    s_eff = 0.0
    for i in range(n):
        stab = 1.0 / (1.0 + scratch[0, i] / m_var) if m_var > 0.0 else 1.0
        eff = 1.0 / (1.0 + scratch[1, i] / m_m) if m_m > 0.0 else 1.0
        scratch[0, i] = stab
        scratch[1, i] = eff
        s_stab += stab
        s_eff += eff
    c_imp = wi * n / s_imp if s_imp > 0.0 else 0.0
    c_div = wd * n / s_div if s_div > 0.0 else 0.0
    c_stab = ws * n / s_stab if s_stab > 0.0 else 0.0
    c_eff = we * n / s_eff if s_eff > 0.0 else 0.0
    for i in range(n):
        fitness[i] = (c_imp * importance[i] + c_div * diversity[i]
                      + c_stab * scratch[0, i] + c_eff * scratch[1, i])


# ---------------------------------------------------------------------------
# topology helpers
# ---------------------------------------------------------------------------
def default_branch_ptr(indptr: I64, n_branches: int) -> I64:
    """Branch pointer of the default layout, shape (n * K + 1,), int64.

    Branch ``k`` of row ``i`` is the k-th of ``K`` contiguous blocks of the row;
    the first ``len % K`` blocks hold ``len // K + 1`` synapses, the others
    ``len // K``. ``bptr[i * K] == indptr[i]``.
    """
    K = int(n_branches)
    n = indptr.shape[0] - 1
    ln = np.diff(indptr)
    base, extra = ln // K, ln % K
    sizes = base[:, None] + (np.arange(K)[None, :] < extra[:, None])
    out = np.empty(n * K + 1, dtype=np.int64)
    out[0] = 0
    np.cumsum(sizes.reshape(-1), out=out[1:])
    return out


def synapse_branch(bptr: I64, n_branches: int, nnz: int) -> tuple[I64, I64]:
    """Postsynaptic row and branch of every synapse, each shape (nnz,), int64."""
    flat = np.searchsorted(bptr, np.arange(nnz, dtype=np.int64), side="right") - 1
    rows, br = np.divmod(flat.astype(np.int64), int(n_branches))
    return rows, br


def gate_lists(indptr: I64, indices: I32, gate: I32, n_gates: int) -> tuple[I64, I64, I64]:
    """Synapses of each gate, for the gate learning rule.

    Returns
    -------
    gate_ptr : ndarray, shape (n_gates + 1,), int64
    gate_pre, gate_post : ndarray, shape (n_gated,), int64
        Pre- and postsynaptic neuron of each gated synapse, grouped by gate.
    """
    n = indptr.shape[0] - 1
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    sel = np.nonzero(gate >= 0)[0]
    order = sel[np.argsort(gate[sel], kind="stable")]
    ptr = np.zeros(n_gates + 1, dtype=np.int64)
    np.cumsum(np.bincount(gate[sel], minlength=n_gates)[:n_gates], out=ptr[1:])
    return ptr, indices[order].astype(np.int64), rows[order]


@dataclass
class Topology:
    """The fabric's connectivity arrays (what apoptosis rewires).

    Attributes
    ----------
    indptr : (n + 1,) int64
        Row pointer, rows = postsynaptic neurons.
    bptr : (n * K + 1,) int64
        Branch pointer: branch k of row i is ``[bptr[i*K + k], bptr[i*K + k + 1])``.
    indices : (nnz,) int32
        Presynaptic neurons.
    w : (nnz,) float32
        Plastic weight magnitudes.
    polarity : (nnz,) int8
    feedback : (nnz,) uint8
    gate : (nnz,) int32
        Skip gate of each synapse, -1 ungated.
    s_indptr : (n + 1,) int64
    s_indices : (s_nnz,) int32
    s_wsigned : (s_nnz,) float32
        Sensory synapses (signed weights).
    """

    indptr: I64
    bptr: I64
    indices: I32
    w: F32
    polarity: npt.NDArray[np.int8]
    feedback: npt.NDArray[np.uint8]
    gate: I32
    s_indptr: I64
    s_indices: I32
    s_wsigned: F32


def check_topology(t: Topology, n: int, n_branches: int, n_inputs: int, n_gates: int) -> None:
    """Check every CSR invariant the step kernel relies on.

    Rows monotone and complete; branch pointer consistent with rows
    (``bptr[i*K] == indptr[i]``, monotone); indices in range; per row
    forward synapses before feedback ones; gates in ``[-1, n_gates)``;
    sensory CSR consistent; weights finite and >= 0; array lengths agree.

    Raises
    ------
    FabricError
        Naming the first invariant that fails.
    """
    K = int(n_branches)
    nnz = int(t.indices.shape[0])
    if t.indptr.shape != (n + 1,) or t.bptr.shape != (n * K + 1,):
        raise FabricError("row or branch pointer has the wrong length",
                          indptr=t.indptr.shape, bptr=t.bptr.shape, n=n, n_branches=K)
    for name, arr in (("w", t.w), ("polarity", t.polarity), ("feedback", t.feedback),
                      ("gate", t.gate)):
        if arr.shape != (nnz,):
            raise FabricError("synapse array length differs from nnz", array=name,
                              shape=arr.shape, nnz=nnz)
    if t.indptr[0] != 0 or t.indptr[-1] != nnz or np.any(np.diff(t.indptr) < 0):
        raise FabricError("CSR row pointer is not monotone from 0 to nnz")
    if np.any(np.diff(t.bptr) < 0) or not np.array_equal(t.bptr[::K], t.indptr):
        raise FabricError("branch pointer is not monotone within the rows")
    if nnz and (int(t.indices.min()) < 0 or int(t.indices.max()) >= n):
        raise FabricError("presynaptic index out of range", n=n)
    rows = np.repeat(np.arange(n), np.diff(t.indptr))
    fb = t.feedback.astype(bool)
    if fb.size and np.any(fb[:-1] & ~fb[1:] & (rows[:-1] == rows[1:])):
        raise FabricError("rows must list forward synapses before feedback synapses")
    if nnz and (int(t.gate.min()) < -1 or int(t.gate.max()) >= n_gates):
        raise FabricError("gate index out of range", n_gates=n_gates)
    if nnz and (not np.all(np.isfinite(t.w)) or float(t.w.min()) < 0.0):
        raise FabricError("weights must be finite and >= 0")
    s_nnz = int(t.s_indices.shape[0])
    if (t.s_indptr.shape != (n + 1,) or t.s_indptr[0] != 0 or t.s_indptr[-1] != s_nnz
            or np.any(np.diff(t.s_indptr) < 0) or t.s_wsigned.shape != (s_nnz,)):
        raise FabricError("sensory CSR is inconsistent")
    if s_nnz and (int(t.s_indices.min()) < 0 or int(t.s_indices.max()) >= n_inputs):
        raise FabricError("sensory channel out of range", n_inputs=n_inputs)
    if s_nnz and not np.all(np.isfinite(t.s_wsigned)):
        raise FabricError("sensory weights must be finite")


# ---------------------------------------------------------------------------
# planning: who dies, who parents
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """One apoptosis round: dying slots and their parents, in processing order.

    Attributes
    ----------
    slots : (m,) int64
        Indices of the neurons that die; the newborn takes the same index.
    parent1 : (m,) int64
        Parent index (the first parent for crossover).
    parent2 : (m,) int64
        Second parent (crossover), -1 otherwise.
    kind : (m,) int64
        Regrowth code (0 preservation, 1 mutation, 2 crossover).
    strength : (m,) float64
        Mutation strength of the slot's layer.
    alpha : (m,) float64
        Crossover blend factor (NaN for the other strategies).
    layer : (m,) int64
        z-layer of each slot.
    skipped : (n_layers,) int64
        Per layer, planned deaths that found no parent (they live on).
    """

    slots: I64
    parent1: I64
    parent2: I64
    kind: I64
    strength: F64
    alpha: F64
    layer: I64
    skipped: I64

    @property
    def size(self) -> int:
        """Number of neurons replaced."""
        return int(self.slots.shape[0])


def _probs(f: F64) -> F64:
    """Sampling probabilities proportional to fitness, all positive."""
    f = np.where(np.isfinite(f) & (f > 0), f, 0.0)
    total = float(f.sum())
    m = f.shape[0]
    if total <= 0.0:
        return np.full(m, 1.0 / m)
    p = 0.999 * (f / total) + 0.001 / m
    out: F64 = p / p.sum()
    return out


def plan_apoptosis(
    fitness: F32,
    layer_size: int,
    strategies: Sequence[LayerStrategy | None],
    group: I64,
    sensory: npt.NDArray[np.bool_],
    allow_sensory: bool,
    rng: np.random.Generator,
) -> Plan:
    """Choose the dying neurons of each z-layer and their parents.

    Parameters
    ----------
    fitness : ndarray, shape (n,), float32
    layer_size : int
        Neurons per z-layer (``X * Y``); layer ``z`` is ``[z * XY, (z + 1) * XY)``.
    strategies : sequence of LayerStrategy or None, length Z
    group : ndarray, shape (n,), int64
        Pooling group of each neuron; a preserving split keeps parent and
        child in one group (else the pooled features could not be preserved).
    sensory : ndarray, shape (n,), bool
        Neurons with sensory synapses.
    allow_sensory : bool
        When False, sensory neurons neither die nor parent.
    rng : numpy.random.Generator

    Returns
    -------
    Plan

    Notes
    -----
    In each layer the eligible neurons are ranked by fitness (ties broken at
    random); the lowest ``floor(prune_rate * layer size)`` die (at most all
    but one eligible). Survivors in the upper half of the ranking are the
    healthy ones; parents are drawn among them with probability proportional
    to fitness. A preserving split draws from the healthy neurons of the
    slot's pooling group, else from any survivor of that group; a slot with
    no candidate is skipped. Crossover draws two distinct parents (from all
    survivors when fewer than two are healthy; with a single survivor it
    degenerates to one parent, ``alpha = 1``).
    """
    XY = int(layer_size)
    slots: list[int] = []
    p1s: list[int] = []
    p2s: list[int] = []
    kinds: list[int] = []
    strengths: list[float] = []
    alphas: list[float] = []
    layers: list[int] = []
    skipped = np.zeros(len(strategies), dtype=np.int64)
    f64 = fitness.astype(np.float64)
    for z, st in enumerate(strategies):
        if st is None or st.prune_rate <= 0.0:
            continue
        members = np.arange(z * XY, (z + 1) * XY, dtype=np.int64)
        eligible = members if allow_sensory else members[~sensory[members]]
        k = min(math.floor(st.prune_rate * XY + 1e-9), eligible.shape[0] - 1)
        if k <= 0:
            continue
        tie = np.asarray(rng.random(eligible.shape[0]), dtype=np.float64)
        order = np.lexsort((tie, f64[eligible]))
        dying = eligible[order[:k]]
        surv = eligible[order[k:]]
        healthy = surv[surv.shape[0] // 2:]
        code = st.code
        for d in dying.tolist():
            p2 = -1
            alpha = math.nan
            if code == PRESERVATION:
                pool = healthy[group[healthy] == group[d]]
                if pool.shape[0] == 0:
                    pool = surv[group[surv] == group[d]]
                if pool.shape[0] == 0:
                    skipped[z] += 1
                    continue
                p1 = int(rng.choice(pool, p=_probs(f64[pool])))
            elif code == MUTATION:
                p1 = int(rng.choice(healthy, p=_probs(f64[healthy])))
            else:
                pool = healthy if healthy.shape[0] >= 2 else surv
                if pool.shape[0] >= 2:
                    pair = rng.choice(pool, size=2, replace=False, p=_probs(f64[pool]))
                    p1, p2 = int(pair[0]), int(pair[1])
                    alpha = float(rng.uniform(*CROSSOVER_ALPHA))
                else:
                    p1, alpha = int(pool[0]), 1.0
            slots.append(d)
            p1s.append(p1)
            p2s.append(p2)
            kinds.append(code)
            strengths.append(st.mutation_strength)
            alphas.append(alpha)
            layers.append(z)
    return Plan(
        slots=np.asarray(slots, dtype=np.int64),
        parent1=np.asarray(p1s, dtype=np.int64),
        parent2=np.asarray(p2s, dtype=np.int64),
        kind=np.asarray(kinds, dtype=np.int64),
        strength=np.asarray(strengths, dtype=np.float64),
        alpha=np.asarray(alphas, dtype=np.float64),
        layer=np.asarray(layers, dtype=np.int64),
        skipped=skipped,
    )


# ---------------------------------------------------------------------------
# surgery: rebuild the CSR arrays
# ---------------------------------------------------------------------------
def _ranges(starts: I64, lengths: I64) -> I64:
    """Concatenation of ``arange(s, s + l)`` for each pair, int64."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offs = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out: I64 = np.repeat(starts, lengths) + (np.arange(total, dtype=np.int64) - offs)
    return out


def _row_spread(values: F64, row_of: I64, n_rows: int) -> F64:
    """Per row: std of ``values`` over the row's entries, or their mean when the std is 0."""
    cnt = np.bincount(row_of, minlength=n_rows).astype(np.float64)
    s1 = np.bincount(row_of, weights=values, minlength=n_rows)
    s2 = np.bincount(row_of, weights=values * values, minlength=n_rows)
    safe = np.maximum(cnt, 1.0)
    mean = s1 / safe
    std = np.sqrt(np.maximum(s2 / safe - mean * mean, 0.0))
    out: F64 = np.where(std > 0.0, std, mean)
    return out


def _lookup(keys_sorted: I64, key: I64) -> tuple[I64, npt.NDArray[np.bool_]]:
    """Position of each ``key`` in ``keys_sorted`` and whether it is present."""
    pos = np.searchsorted(keys_sorted, key)
    pos_c = np.minimum(pos, max(keys_sorted.shape[0] - 1, 0))
    found = (pos < keys_sorted.shape[0]) & (keys_sorted[pos_c] == key) if keys_sorted.size else (
        np.zeros(key.shape[0], dtype=bool))
    return pos_c.astype(np.int64), found


def rewire(
    t: Topology, plan: Plan, n_branches: int, w_max: float, rng: np.random.Generator
) -> Topology:
    """Connectivity after the planned deaths and regrowths (new arrays).

    Parameters
    ----------
    t : Topology
        Current connectivity (not modified).
    plan : Plan
        From :func:`plan_apoptosis`; parents are never slots.
    n_branches : int
        K, branches per neuron.
    w_max : float
        Upper clip of regrown weights.
    rng : numpy.random.Generator
        Source of the mutation / crossover noise.

    Returns
    -------
    Topology

    Notes
    -----
    1. The incoming rows of all slots are dropped, and for preserving slots
       also the dead neuron's outgoing synapses.
    2. Preserving split: every outgoing synapse of a parent with ``c``
       preserving children keeps ``1 / (c + 1)`` of its weight, and each child
       gets a synapse of that weight onto the same target, right after the
       parent's in the same branch block (same polarity, feedback flag, gate).
    3. Each slot's incoming row becomes a copy of its parent's row as it is
       after step 2 (order, branch layout, polarity, flags, gates), with
       self-loops dropped; mutation adds ``N(0, (s * spread)^2)`` to the
       weights (``spread`` = std of the parent row's weights, their mean when
       the std is 0), crossover blends ``alpha * w1 + (1 - alpha) * w2`` over
       the first parent's layout (``w2`` matched by presynaptic neuron,
       0 when the second parent has no such synapse) plus
       ``CROSSOVER_NOISE`` times the mutation noise; weights clipped to
       ``[0, w_max]``. Sensory rows are treated alike (signed weights, no clip).
    4. Mutation and crossover slots keep the dead neuron's outgoing synapses.
    """
    K = int(n_branches)
    n = t.indptr.shape[0] - 1
    nnz = int(t.indices.shape[0])
    m = plan.size
    slots, p1, p2, kind = plan.slots, plan.parent1, plan.parent2, plan.kind
    rows, br = synapse_branch(t.bptr, K, nnz)
    pre = t.indices.astype(np.int64)

    is_slot = np.zeros(n, dtype=bool)
    is_slot[slots] = True
    pres = kind == PRESERVATION
    pres_slot = np.zeros(n, dtype=bool)
    pres_slot[slots[pres]] = True
    pc_parent, pc_child = p1[pres], slots[pres]
    n_child = np.bincount(pc_parent, minlength=n).astype(np.int64)
    c_order = np.argsort(pc_parent, kind="stable")
    sorted_child = pc_child[c_order]
    child_start = np.concatenate([[0], np.cumsum(n_child)[:-1]]).astype(np.int64)
    stride = int(n_child.max()) + 1 if n_child.size else 1

    # -- 1, 2: kept synapses, parents' outgoing split with their children
    keep = np.nonzero(~is_slot[rows] & ~pres_slot[pre])[0]
    k_pre = pre[keep]
    div = n_child[k_pre]
    k_w = t.w[keep].copy()
    split = div > 0
    k_w[split] = k_w[split] / (div[split] + 1).astype(np.float32)
    rep = np.repeat(np.arange(keep.shape[0], dtype=np.int64), div)
    sub = np.arange(rep.shape[0], dtype=np.int64) - np.repeat(np.cumsum(div) - div, div)
    c_src = keep[rep]
    c_pre = sorted_child[child_start[k_pre[rep]] + sub]

    t1_row = np.concatenate([rows[keep], rows[c_src]])
    t1_br = np.concatenate([br[keep], br[c_src]])
    t1_key = np.concatenate([keep * stride, c_src * stride + sub + 1])
    t1_pre = np.concatenate([k_pre, c_pre])
    t1_w = np.concatenate([k_w, k_w[rep]]).astype(np.float32)
    t1_pol = np.concatenate([t.polarity[keep], t.polarity[c_src]])
    t1_fb = np.concatenate([t.feedback[keep], t.feedback[c_src]])
    t1_gate = np.concatenate([t.gate[keep], t.gate[c_src]])
    o1 = np.lexsort((t1_key, t1_br, t1_row))
    t1_row, t1_br, t1_key, t1_pre = t1_row[o1], t1_br[o1], t1_key[o1], t1_pre[o1]
    t1_w, t1_pol, t1_fb, t1_gate = t1_w[o1], t1_pol[o1], t1_fb[o1], t1_gate[o1]
    t1_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(t1_row, minlength=n), out=t1_ptr[1:])

    # -- 3: the slots' incoming rows, copied from their (first) parents
    lens = np.diff(t1_ptr)[p1]
    src = _ranges(t1_ptr[p1], lens)
    slot_of = np.repeat(np.arange(m, dtype=np.int64), lens)
    r_row = slots[slot_of]
    r_pre = t1_pre[src]
    ok = r_pre != r_row
    src, slot_of, r_row, r_pre = src[ok], slot_of[ok], r_row[ok], r_pre[ok]
    r_w = t1_w[src].astype(np.float64)
    r_kind = kind[slot_of]
    noisy = r_kind != PRESERVATION
    if np.any(noisy):
        spread = _row_spread(np.abs(t1_w).astype(np.float64), t1_row, n)
        sigma = plan.strength[slot_of] * spread[p1[slot_of]]
        sigma = np.where(r_kind == CROSSOVER, CROSSOVER_NOISE * sigma, sigma)
        cross = (r_kind == CROSSOVER) & (p2[slot_of] >= 0)
        if np.any(cross):
            code = t1_row * n + t1_pre  # sorted: rows ascending, unique (row, pre)
            c_sorted = np.argsort(code, kind="stable")
            pos, found = _lookup(code[c_sorted], p2[slot_of] * n + r_pre)
            w2 = np.where(found, t1_w[c_sorted[pos]].astype(np.float64), 0.0)
            a = plan.alpha[slot_of]
            r_w = np.where(cross, a * r_w + (1.0 - a) * w2, r_w)
        noise = rng.standard_normal(r_w.shape[0]) * sigma
        r_w = np.where(noisy, np.clip(r_w + noise, 0.0, w_max), r_w)

    # -- assemble: kept + copies + regrown rows, ordered by (row, branch, key)
    a_row = np.concatenate([t1_row, r_row])
    a_br = np.concatenate([t1_br, t1_br[src]])
    a_key = np.concatenate([t1_key, t1_key[src]])
    order = np.lexsort((a_key, a_br, a_row))
    a_row, a_br = a_row[order], a_br[order]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(a_row, minlength=n), out=indptr[1:])
    bptr = np.zeros(n * K + 1, dtype=np.int64)
    np.cumsum(np.bincount(a_row * K + a_br, minlength=n * K), out=bptr[1:])
    new = Topology(
        indptr=indptr,
        bptr=bptr,
        indices=np.concatenate([t1_pre, r_pre])[order].astype(np.int32),
        w=np.concatenate([t1_w, r_w.astype(np.float32)])[order].astype(np.float32),
        polarity=np.concatenate([t1_pol, t1_pol[src]])[order].astype(np.int8),
        feedback=np.concatenate([t1_fb, t1_fb[src]])[order].astype(np.uint8),
        gate=np.concatenate([t1_gate, t1_gate[src]])[order].astype(np.int32),
        s_indptr=t.s_indptr, s_indices=t.s_indices, s_wsigned=t.s_wsigned,
    )
    _rewire_sensory(t, new, plan, rng)
    return new


def _rewire_sensory(old: Topology, new: Topology, plan: Plan, rng: np.random.Generator) -> None:
    """Sensory rows of the slots: copies of their parents' (step 3 of :func:`rewire`)."""
    n = old.s_indptr.shape[0] - 1
    m = plan.size
    slots, p1, p2, kind = plan.slots, plan.parent1, plan.parent2, plan.kind
    s_len = np.diff(old.s_indptr)
    s_rows = np.repeat(np.arange(n, dtype=np.int64), s_len)
    is_slot = np.zeros(n, dtype=bool)
    is_slot[slots] = True
    keep = np.nonzero(~is_slot[s_rows])[0]
    lens = s_len[p1]
    src = _ranges(old.s_indptr[p1], lens)
    slot_of = np.repeat(np.arange(m, dtype=np.int64), lens)
    r_ch = old.s_indices[src].astype(np.int64)
    r_w = old.s_wsigned[src].astype(np.float64)
    r_kind = kind[slot_of]
    noisy = r_kind != PRESERVATION
    if np.any(noisy):
        spread = _row_spread(np.abs(old.s_wsigned).astype(np.float64), s_rows, n)
        sigma = plan.strength[slot_of] * spread[p1[slot_of]]
        sigma = np.where(r_kind == CROSSOVER, CROSSOVER_NOISE * sigma, sigma)
        cross = (r_kind == CROSSOVER) & (p2[slot_of] >= 0)
        if np.any(cross):
            n_in = int(old.s_indices.max()) + 1 if old.s_indices.size else 1
            code = s_rows * n_in + old.s_indices.astype(np.int64)
            c_sorted = np.argsort(code, kind="stable")
            pos, found = _lookup(code[c_sorted], p2[slot_of] * n_in + r_ch)
            w2 = np.where(found, old.s_wsigned[c_sorted[pos]].astype(np.float64), 0.0)
            a = plan.alpha[slot_of]
            r_w = np.where(cross, a * r_w + (1.0 - a) * w2, r_w)
        noise = rng.standard_normal(r_w.shape[0]) * sigma
        r_w = np.where(noisy, r_w + noise, r_w)
    a_row = np.concatenate([s_rows[keep], slots[slot_of]])
    a_key = np.concatenate([keep, src])
    order = np.lexsort((a_key, a_row))
    s_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(a_row, minlength=n), out=s_indptr[1:])
    new.s_indptr = s_indptr
    new.s_indices = np.concatenate([old.s_indices[keep], r_ch])[order].astype(np.int32)
    new.s_wsigned = np.concatenate([old.s_wsigned[keep], r_w.astype(np.float32)]
                                   )[order].astype(np.float32)
