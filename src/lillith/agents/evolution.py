"""An evolving agent's round, part by part: fabric apoptosis per z-layer, tile
hidden-unit apoptosis, the tile surgery policy; each birth and death recorded.

:meth:`lillith.agents.agent.Agent.evolve` runs them in that order (docs/evolution.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from lillith.agents.config import AgentConfig, EvolutionConfig
from lillith.agents.lineage import FABRIC, TILE, Lineage
from lillith.agents.tiles import SparseLookupFFNv2, TileSurgeryPolicy
from lillith.fabric.evolution import LayerStrategy
from lillith.fabric.neural_fabric import NeuralFabric3D

F32 = npt.NDArray[np.float32]


def fabric_strategies(config: EvolutionConfig, depth: int) -> dict[int, LayerStrategy]:
    """The apoptosis strategy of each of ``depth`` z-layers (``layers`` overrides
    ``fabric``; a layer mapped to None is left alone)."""
    out: dict[int, LayerStrategy] = {}
    for z in range(depth):
        le = config.layers.get(z, config.fabric)
        if le is not None:
            out[z] = LayerStrategy(prune_rate=le.prune_rate,
                                   mutation_strength=le.mutation_strength,
                                   regrowth=le.regrowth)
    return out


def evolve_fabric(fab: NeuralFabric3D, config: AgentConfig, lineage: Lineage, step: int, *,
                  goals: tuple[F32, ...] = ()) -> dict[str, Any]:
    """Fabric apoptosis at ``step`` (seeded by ``config.seed`` and the step), its
    births and deaths recorded in ``lineage``. A preserving child takes its
    parent's entry of each array of ``goals`` (shape (n,)) and its
    specialization profile; mutation and crossover children start from 0.

    Returns
    -------
    dict
        ``died``, ``born``, ``nnz_before``, ``nnz_after``, ``layers``
        (``layer``, ``strategy``, ``turnover``, ``skipped`` of each layer that changed).
    """
    ev = config.evolution
    fit = fab.fitness.copy()
    rep = fab.apoptosis(strategies=fabric_strategies(ev, fab.shape[2]), step=step,
                        seed=config.seed, allow_sensory=ev.allow_sensory)
    layers = rep["layers"]
    slots = np.array([s for ly in layers for s in ly["slots"]], dtype=np.int64)
    died = np.array([d for ly in layers for d in ly["died"]], dtype=np.int64)
    if slots.size:
        parents = fab.parent_ids[slots].copy()
        lineage.record(FABRIC, step, died, fit[slots], fab.neuron_id[slots].copy(), parents,
                       fab.generation[slots])
        pres = np.array([ly["strategy"] == "preservation"
                         for ly in layers for _ in ly["slots"]], dtype=bool)
        # the first parent's slot from its id (parents are survivors)
        order = np.argsort(fab.neuron_id)
        pslot = order[np.searchsorted(fab.neuron_id[order], parents[:, 0])]
        for goal in goals:
            goal[slots] = np.where(pres, goal[pslot], np.float32(0.0))
        lineage.inherit(slots, pslot, pres)
    return {"died": rep["died"], "born": rep["born"], "nnz_before": rep["nnz_before"],
            "nnz_after": rep["nnz_after"],
            "layers": [{"layer": ly["layer"], "strategy": ly["strategy"],
                        "turnover": ly["turnover"], "skipped": ly["skipped"]}
                       for ly in layers if ly["turnover"] or ly["skipped"]]}


def evolve_tiles(ffn: SparseLookupFFNv2, optimizer: torch.optim.Optimizer,
                 config: EvolutionConfig, lineage: Lineage, step: int) -> dict[str, Any]:
    """Hidden-unit apoptosis in every observed, unfrozen tile (the regrown
    slices' optimiser moments zeroed), recorded in ``lineage``.

    Returns
    -------
    dict
        ``died``, ``born``, ``fraction``, ``strategy``, ``frozen_skipped``,
        ``unobserved_skipped``.
    """
    fit = ffn.unit_fitness().numpy()
    rep = ffn.apoptosis(prune_rate=config.tiles.prune_rate, regrowth=config.tiles.regrowth,
                        mutation_strength=config.tiles.mutation_strength, step=step,
                        optimizer=optimizer, min_observations=config.tile_min_observations)
    tiles = np.asarray(rep["tiles"], dtype=np.int64)
    units = np.asarray(rep["units"], dtype=np.int64)
    if tiles.size:
        lin = ffn.unit_lineage()
        lineage.record(TILE, step, np.asarray(rep["died"], dtype=np.int64), fit[tiles, units],
                       np.asarray(rep["born"], dtype=np.int64),
                       np.asarray(rep["parents"], dtype=np.int64).reshape(-1, 2),
                       lin["generation"][tiles, units])
    tv = rep["turnover"]
    return {"died": tv["died"], "born": tv["born"], "fraction": tv["fraction"],
            "strategy": config.tiles.regrowth, "frozen_skipped": tv["frozen_skipped"],
            "unobserved_skipped": tv["unobserved_skipped"]}


def run_surgery(ffn: SparseLookupFFNv2, policy: TileSurgeryPolicy,
                optimizer: torch.optim.Optimizer, lineage: Lineage,
                step: int) -> list[dict[str, Any]]:
    """The tile surgery policy on the recent predictor inputs and errors; a
    reseeded tile's units die and are born anew (no parents, generation 0),
    recorded in ``lineage``. Returns the policy's operations."""
    recent_h, recent_err = lineage.recent()
    ids = ffn.unit_lineage()["ids"]
    fit = ffn.unit_fitness().numpy()
    ops: list[dict[str, Any]] = policy.run(ffn, recent_inputs=recent_h,
                                           recent_errors=recent_err, step=step,
                                           optimizer=optimizer)
    lin = ffn.unit_lineage()
    t, u = np.nonzero(lin["ids"] != ids)
    if t.size:
        o = np.argsort(lin["ids"][t, u], kind="stable")
        t, u = t[o], u[o]
        lineage.record(TILE, step, ids[t, u], fit[t, u], lin["ids"][t, u],
                       lin["parents"][t, u], lin["generation"][t, u])
    return ops
