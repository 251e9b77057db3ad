"""The records an evolving agent keeps: every birth and death, what drives each
neuron, and the recent predictor inputs the surgery policy reads.

docs/evolution.md says what a round does with them; :class:`Lineage` only
keeps them, and is in the agent's snapshots under ``evo/``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lillith.agents.config import EvolutionConfig
from lillith.errors import StateError
from lillith.records import read_arrays

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

FABRIC, TILE = 0, 1
"""Kinds in the birth and death records: a fabric neuron, a tile hidden unit."""
PROFILE_GRID = 4
"""SOM regions of the specialization profile: the map cut into at most 4 x 4 blocks."""


class EvolutionState(NamedTuple):
    """An agent's evolution records (the snapshot keys under ``evo/``).

    Attributes
    ----------
    counters : int64 (4,)
        Step the next round is due at, rounds done, position and fill of the
        ring of recent predictor inputs.
    births : int64 (B, 6)
        ``kind, id, parent0, parent1, generation, step`` (parent -1: none).
    deaths : int64 (D, 3)
        ``kind, id, step``.
    death_fitness : float32 (D,)
        Fitness when it died.
    profile : float32 (R + C, n)
        Specialization profile: R SOM regions, then C channels, per neuron.
    recent_h : float32 (recent, d_model); recent_err : float32 (recent,)
        Ring of recent predictor inputs ``tanh(proj(features))`` and their errors.
    """

    counters: I64
    births: I64
    deaths: I64
    death_fitness: F32
    profile: F32
    recent_h: F32
    recent_err: F32


class Lineage:
    """Birth and death records, the specialization profile and the recent inputs.

    Parameters
    ----------
    config : EvolutionConfig
    n_channels : int
        Width of a frame.
    d_model : int
        Width of the predictor's inputs to the tiles.
    map_shape : tuple of int, optional
        The SOM's map (None when the fabric is ablated: no regions).
    n_neurons : int
        Fabric neurons profiled (0: none, when evolution is off or the fabric ablated).
    """

    def __init__(self, config: EvolutionConfig, n_channels: int, d_model: int,
                 map_shape: tuple[int, ...] | None, n_neurons: int) -> None:
        self.config = config
        self.next_due = config.warmup
        self.rounds = 0
        self.births = np.zeros((0, 6), dtype=np.int64)
        self.deaths = np.zeros((0, 3), dtype=np.int64)
        self.death_fitness = np.zeros(0, dtype=np.float32)
        self.recent_h = np.zeros((config.recent, d_model), dtype=np.float32)
        self.recent_err = np.zeros(config.recent, dtype=np.float32)
        self.recent_pos = 0
        self.recent_len = 0
        self.region = np.zeros(0, dtype=np.int64)
        self.n_regions = 0
        if map_shape is not None:
            gx, gy = min(PROFILE_GRID, map_shape[0]), min(PROFILE_GRID, map_shape[1])
            coords = np.unravel_index(np.arange(int(np.prod(map_shape))), map_shape)
            self.region = ((coords[0] * gx // map_shape[0]) * gy
                           + coords[1] * gy // map_shape[1]).astype(np.int64)
            self.n_regions = gx * gy
        self.n_channels = n_channels
        self.profile = np.zeros((self.n_regions + n_channels, n_neurons), dtype=np.float32)
        self._tmp = np.zeros((n_channels, n_neurons), dtype=np.float32)

    # ---------------------------------------------------------------- records
    def record(self, kind: int, step: int, died: I64, fit: npt.NDArray[Any], born: I64,
               parents: I64, gen: npt.NDArray[Any]) -> None:
        """Add the deaths ``died`` (ids, with their fitness ``fit``) and the births
        ``born`` (ids, ``parents`` (k, 2), generations ``gen``) of one kind at
        ``step``; beyond ``config.history`` records the oldest go first."""
        if died.size:
            rows = np.stack([np.full(died.size, kind), died, np.full(died.size, step)], axis=1)
            self.deaths = np.concatenate([self.deaths, rows.astype(np.int64)])
            self.death_fitness = np.concatenate([self.death_fitness,
                                                 np.asarray(fit, dtype=np.float32)])
        if born.size:
            rows = np.column_stack([np.full(born.size, kind), born, parents[:, 0],
                                    parents[:, 1], gen, np.full(born.size, step)])
            self.births = np.concatenate([self.births, rows.astype(np.int64)])
        cap = self.config.history
        if self.births.shape[0] > cap:
            self.births = self.births[-cap:].copy()
        if self.deaths.shape[0] > cap:
            self.deaths = self.deaths[-cap:].copy()
            self.death_fitness = self.death_fitness[-cap:].copy()

    def history(self) -> dict[str, npt.NDArray[Any]]:
        """Every birth and death kept (copies): ``births`` int64 (B, 6), ``deaths``
        int64 (D, 3), ``death_fitness`` float32 (D,) (see :class:`EvolutionState`)."""
        return {"births": self.births.copy(), "deaths": self.deaths.copy(),
                "death_fitness": self.death_fitness.copy()}

    # ---------------------------------------------------------------- profile
    def observe_profile(self, bmu: int, z: F64, act: F32) -> None:
        """Fold one frame into the specialization profile (EMA, rate
        ``profile_rate``): row ``region(bmu)`` moves toward the activations
        ``act`` (shape (n,)), the channel rows toward ``z_c * act`` (``z``
        the normalised frame, shape (C,))."""
        rate = np.float32(self.config.profile_rate)
        row = self.profile[self.region[bmu]]
        row += rate * (act - row)
        tmp = self._tmp
        np.multiply(z.astype(np.float32)[:, None], act[None, :], out=tmp)
        tmp -= self.profile[self.n_regions:]
        tmp *= rate
        self.profile[self.n_regions:] += tmp

    def inherit(self, slots: I64, parents: I64, preserve: npt.NDArray[np.bool_]) -> None:
        """Newborn neurons in ``slots`` take their parent's profile where ``preserve``,
        an empty one otherwise."""
        if self.profile.shape[1]:
            self.profile[:, slots] = np.where(preserve[None, :], self.profile[:, parents],
                                              np.float32(0.0))

    # ---------------------------------------------------------------- recent inputs
    def observe_inputs(self, h: F32, err: F32) -> None:
        """Add predictor inputs ``h`` (k, d_model) and their errors ``err`` (k,) to the ring."""
        R = self.recent_h.shape[0]
        for i in range(h.shape[0]):
            self.recent_h[self.recent_pos] = h[i]
            self.recent_err[self.recent_pos] = err[i]
            self.recent_pos = (self.recent_pos + 1) % R
        self.recent_len = min(R, self.recent_len + h.shape[0])

    def recent(self) -> tuple[F32, F32]:
        """The ring's inputs and errors, oldest slot first as stored (views)."""
        n = self.recent_len
        return self.recent_h[:n], self.recent_err[:n]

    # ---------------------------------------------------------------- state
    def state(self) -> EvolutionState:
        """The records as an :class:`EvolutionState` of copies."""
        return EvolutionState(
            np.array([self.next_due, self.rounds, self.recent_pos, self.recent_len],
                     dtype=np.int64),
            self.births.copy(), self.deaths.copy(), self.death_fitness.copy(),
            self.profile.copy(), self.recent_h.copy(), self.recent_err.copy())

    def set_state(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Restore from :meth:`state`'s ``_asdict()``.

        Raises
        ------
        StateError
            An array is missing or has the wrong shape (the profile and the
            ring must fit this agent).
        """
        a = read_arrays(state, {
            "counters": (np.int64, (4,)), "births": (np.int64, None),
            "deaths": (np.int64, None), "death_fitness": (np.float32, None),
            "profile": (np.float32, self.profile.shape),
            "recent_h": (np.float32, self.recent_h.shape),
            "recent_err": (np.float32, self.recent_err.shape)}, what="evolution")
        rec = EvolutionState(**a)
        if rec.death_fitness.shape[0] != rec.deaths.reshape(-1, 3).shape[0]:
            raise StateError("evolution state has one fitness per death",
                             deaths=rec.deaths.shape, death_fitness=rec.death_fitness.shape)
        c = rec.counters
        self.next_due, self.rounds = int(c[0]), int(c[1])
        self.recent_pos, self.recent_len = int(c[2]), int(c[3])
        self.births = rec.births.reshape(-1, 6)
        self.deaths = rec.deaths.reshape(-1, 3)
        self.death_fitness = rec.death_fitness
        self.profile[...] = rec.profile
        self.recent_h[...] = rec.recent_h
        self.recent_err[...] = rec.recent_err
