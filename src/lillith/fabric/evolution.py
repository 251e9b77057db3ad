"""Evolution of the fabric while it runs: fitness, apoptosis and regrowth.

Functions over the fabric's arrays; :class:`~lillith.fabric.neural_fabric.NeuralFabric3D`
owns the arrays and calls them (``observe_importance``, ``apoptosis``). This
module decides (strategies, fitness, who dies and who parents);
:mod:`lillith.fabric.rewire` rebuilds the connectivity;
:mod:`lillith.fabric._evolution_kernels` holds the fitness kernels.

- **Fitness.** Per neuron, the importance ``|a_i * r_i * dL/dp_f / |f||`` of
  its contribution to the pooled feature ``f`` it belongs to (a first-order
  Taylor estimate of the loss change if it fell silent), kept as an
  exponential moving average; optionally combined with diversity, stability
  and energy efficiency (:class:`FitnessWeights`).
- **Apoptosis.** Per z-layer, the lowest-fitness neurons (at most
  ``prune_rate`` of the layer) die; each slot is regrown from healthy
  parents of the same layer by function-preserving split (Net2Net),
  mutation or crossover (:class:`LayerStrategy`).
  The CSR connectivity is rebuilt so every invariant the step kernel relies
  on still holds (:func:`check_topology`).
- **Lineage.** Every neuron has a unique id, up to two parent ids, a
  generation and a birth step.

Equations, choices and their reasons: ``docs/model.md``, section "Evolution".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

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
    "plan_apoptosis",
    "strategies_per_layer",
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
    """Weights of the fitness objectives.

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
# apoptosis
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
