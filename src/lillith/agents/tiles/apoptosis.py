"""Apoptosis of the tile FFN's hidden units: the least fit die, their slots regrow.

* **Apoptosis** (:meth:`SparseLookupFFNv2.apoptosis`) removes, per unfrozen
  observed tile, the ``floor(prune_rate * H)`` least fit units and regrows
  each slot from fitness-weighted parents among the tile's survivors, by
  functional preservation (an exact Net2Net split: output unchanged), mutation
  or crossover (output-weight row of the child starts at zero: output
  unchanged too, see the method). Optimiser moments of the regrown slices
  are zeroed in place.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch

from lillith.agents.tiles.common import (
    REGROWTH_STRATEGIES,
    TileError,
    check_weight,
    make_generator,
    reset_optimizer_moments,
)
from lillith.agents.tiles.surgery_ops import TileSurgery


class TileApoptosis(TileSurgery):
    """Hidden-unit death and regrowth (:meth:`apoptosis`)."""

    def apoptosis(
        self,
        *,
        prune_rate: float,
        regrowth: str = "preservation",
        mutation_strength: float = 0.1,
        step: int,
        optimizer: torch.optim.Optimizer | None = None,
        seed: int | None = None,
        min_age: int = 0,
        min_observations: int = 1,
    ) -> dict[str, Any]:
        """Remove the least fit hidden units of each tile and regrow their slots.

        For every tile that is not frozen and has at least
        ``min_observations`` fitness observations, the
        ``k = min(floor(prune_rate * H), H - 1)`` units of lowest
        :meth:`unit_fitness` among those at least ``min_age`` steps old die
        (ties: lowest index). Each dead unit is first silenced (its ``w2`` row
        zeroed), then its slot ``c`` is refilled from parents drawn among the
        tile's survivors with probability proportional to fitness:

        * ``"preservation"`` (Net2Net split of one parent ``p``):
          ``w1[:, c] = w1[:, p]``, ``b1[c] = b1[p]``, then ``w2[p, :]`` is
          halved and copied to ``w2[c, :]``. Parent and child compute the same
          activation and share the parent's output, so the FFN's output equals
          that of the pruned network (up to float summation order). The two
          share the parent's importance (halved: ``dL/da`` halves with
          ``w2``) and its activity statistics.
        * ``"mutation"``: ``w1[:, c] = w1[:, p] + e``, ``b1[c] = b1[p] + e0``,
          ``e ~ N(0, (mutation_strength * rms(w1[:, p]))^2)``; ``w2[c, :] = 0``.
        * ``"crossover"``: two distinct parents ``p1, p2``,
          ``alpha ~ U(0.3, 0.7)``, ``w1[:, c] = alpha w1[:, p1] + (1 - alpha)
          w1[:, p2] + e`` (``b1`` likewise) with the "small" noise
          ``e ~ N(0, (0.5 * mutation_strength * rms(blend))^2)``;
          ``w2[c, :] = 0``. With a single survivor it falls back to mutation.

        Mutation and crossover children start with a zero output row, so the
        FFN's output is again that of the pruned network, whatever the noise:
        the change an apoptosis makes is bounded by the dead units'
        contributions. The child's ``w2`` row gets gradient at once
        (``a_c * dL/dy``) and its input weights follow as it grows. Their
        importance starts at the median of the tile's survivors (so they are
        not the obvious next victims), their activity statistics at the first
        parent's. Lineage: a new unique id, parent ids, generation
        ``1 + max(parents')``, birth ``step``.

        Parameters
        ----------
        prune_rate : float
            Largest fraction of each tile's units to remove, in [0, 1).
            Rounded down per tile: ``prune_rate < 1 / H`` removes nothing.
        regrowth : {"preservation", "mutation", "crossover"}, default "preservation"
        mutation_strength : float, default 0.1
            Noise relative to the parent's weight scale (>= 0).
        step : int
            The caller's step, stored as the birth step of the new units and
            in the history.
        optimizer : torch.optim.Optimizer, optional
            When given, its per-element state for the regrown slices of
            ``w1``, ``b1`` and ``w2`` (Adam's ``exp_avg``, ``exp_avg_sq``, ...)
            is zeroed in place (:func:`reset_optimizer_moments`); the
            parameter objects stay the same.
        seed : int, optional
            Seed of the draws (parents, noise, alpha). ``None``: the module's
            init generator (part of the state, so a restored module draws the
            same; it also feeds :meth:`reseed_tile`).
        min_age : int, default 0
            Units younger than this many steps (``step - birth``) are spared.
        min_observations : int, default 1
            Tiles with fewer fitness observations (backward passes with tokens)
            are skipped: their fitness says nothing yet.

        Returns
        -------
        dict
            ``op`` "apoptosis"; ``step``; ``strategy`` (as requested);
            ``died``, ``born`` (lists of unit ids, in birth order: ``born[i]``
            replaced ``died[i]``); ``parents`` (list of [id, id], -1 for
            none); ``tiles``, ``units`` (tile and slot of each birth);
            ``strategies`` (per birth: the one used); ``turnover`` dict:
            ``died``, ``born`` (counts), ``per_tile`` (list of T counts),
            ``fraction`` (of all units), ``frozen_skipped``,
            ``unobserved_skipped`` (lists of tiles); ``moments_reset`` (state
            tensors modified).

        Raises
        ------
        TileError
            Invalid arguments (nothing changed).
        """
        rate = float(prune_rate)
        if not (math.isfinite(rate) and 0.0 <= rate < 1.0):
            raise TileError("prune_rate must be in [0, 1)", prune_rate=prune_rate)
        if regrowth not in REGROWTH_STRATEGIES:
            raise TileError(
                "regrowth must be one of " + ", ".join(REGROWTH_STRATEGIES), regrowth=regrowth
            )
        strength = check_weight("mutation_strength", mutation_strength)
        for name, value in (
            ("step", step),
            ("min_age", min_age),
            ("min_observations", min_observations),
        ):
            if isinstance(value, bool):
                raise TileError(f"{name} must be an integer", **{name: value})
            try:
                operator.index(value)
            except TypeError as e:
                raise TileError(f"{name} must be an integer", **{name: value}) from e
        step_i = operator.index(step)
        age_min = operator.index(min_age)
        obs_min = operator.index(min_observations)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TileError("optimizer must be a torch.optim.Optimizer")
        gen = self._gen if seed is None else make_generator(seed)
        T, H, d = self.num_tiles, self.tile_hidden, self.d_model
        k = min(math.floor(rate * H + 1e-9), H - 1)
        fit = self.unit_fitness().cpu()
        frozen = self.frozen_mask.cpu().numpy()
        obs = self.unit_fitness_obs.cpu().numpy()
        old_enough = (step_i - self._lineage_birth) >= age_min  # (T, H)
        has_cross = self.unit_act_cross.shape[0] == T
        dev = self.w1.device
        w1, b1, w2 = self.w1, self.b1, self.w2
        imp = self.unit_importance
        died: list[int] = []
        born: list[int] = []
        parents_out: list[list[int]] = []
        tiles_out: list[int] = []
        units_out: list[int] = []
        used: list[str] = []
        per_tile = [0] * T
        frozen_skipped: list[int] = []
        unobserved_skipped: list[int] = []
        with torch.no_grad():
            for t in range(T) if k > 0 else ():
                if frozen[t]:
                    frozen_skipped.append(t)
                    continue
                if obs[t] < obs_min:
                    unobserved_skipped.append(t)
                    continue
                f = fit[t]
                order = torch.argsort(f, stable=True).tolist()
                dead = [j for j in order if old_enough[t, j]][:k]
                if not dead:
                    continue
                dead_set = set(dead)
                survivors = [j for j in range(H) if j not in dead_set]
                surv = torch.tensor(survivors, dtype=torch.int64)
                pw = f[surv].double().clamp_min(0.0)
                pw = pw + 1e-6 * float(pw.max()) + 1e-12
                newborn_imp = float(imp[t, surv.to(dev)].median())
                w2[t, torch.tensor(dead, device=dev)] = 0.0  # silence the dead
                tile_died: list[int] = []
                tile_born: list[int] = []
                for c in dead:
                    strategy = regrowth
                    if strategy == "crossover" and len(survivors) < 2:
                        strategy = "mutation"
                    n_par = 2 if strategy == "crossover" else 1
                    pick = torch.multinomial(pw, n_par, replacement=False, generator=gen)
                    par = [survivors[i] for i in pick.tolist()]
                    p = par[0]
                    if strategy == "preservation":
                        w1[t, :, c] = w1[t, :, p]
                        b1[t, c] = b1[t, p]
                        w2[t, p].mul_(0.5)
                        w2[t, c] = w2[t, p]
                        imp[t, p] *= 0.5
                        imp[t, c] = imp[t, p]
                    else:
                        if strategy == "mutation":
                            base_w, base_b, rel = w1[t, :, p], b1[t, p], strength
                        else:
                            alpha = 0.3 + 0.4 * float(torch.rand((), generator=gen))
                            q = par[1]
                            base_w = alpha * w1[t, :, p] + (1.0 - alpha) * w1[t, :, q]
                            base_b = alpha * b1[t, p] + (1.0 - alpha) * b1[t, q]
                            rel = 0.5 * strength
                        scale = float(base_w.square().mean().sqrt())
                        if not (math.isfinite(scale) and scale > 0.0):
                            scale = 1.0 / math.sqrt(d)
                        noise = (torch.randn(d + 1, generator=gen) * (rel * scale)).to(dev)
                        w1[t, :, c] = base_w + noise[:d]
                        b1[t, c] = base_b + noise[d]
                        w2[t, c] = 0.0
                        imp[t, c] = newborn_imp
                    self.unit_act_mean[t, c] = self.unit_act_mean[t, p]
                    self.unit_act_sq[t, c] = self.unit_act_sq[t, p]
                    if has_cross:
                        cross = self.unit_act_cross[t]
                        cross[c, :] = cross[p, :]
                        cross[:, c] = cross[:, p]
                        cross[c, c] = cross[p, p]
                    # lineage
                    par_ids = [int(self._lineage_ids[t, j]) for j in par]
                    new_id = self._next_unit_id
                    self._next_unit_id += 1
                    tile_died.append(int(self._lineage_ids[t, c]))
                    tile_born.append(new_id)
                    self._lineage_ids[t, c] = new_id
                    pair = [*par_ids, -1][:2]
                    self._lineage_parents[t, c] = pair
                    self._lineage_generation[t, c] = 1 + max(
                        int(self._lineage_generation[t, j]) for j in par
                    )
                    self._lineage_birth[t, c] = step_i
                    parents_out.append(pair)
                    tiles_out.append(t)
                    units_out.append(c)
                    used.append(strategy)
                died.extend(tile_died)
                born.extend(tile_born)
                per_tile[t] = len(tile_died)
                self._record(
                    "apoptosis",
                    t,
                    regrowth,
                    agent_step=step_i,
                    died=tile_died,
                    born=tile_born,
                )
        moments = 0
        if optimizer is not None and tiles_out:
            tt = torch.tensor(tiles_out, dtype=torch.int64, device=dev)
            cc = torch.tensor(units_out, dtype=torch.int64, device=dev)
            moments += reset_optimizer_moments(optimizer, self.w1, (tt, slice(None), cc))
            moments += reset_optimizer_moments(optimizer, self.b1, (tt, cc))
            moments += reset_optimizer_moments(optimizer, self.w2, (tt, cc, slice(None)))
        return {
            "op": "apoptosis",
            "step": step_i,
            "strategy": regrowth,
            "died": died,
            "born": born,
            "parents": parents_out,
            "tiles": tiles_out,
            "units": units_out,
            "strategies": used,
            "turnover": {
                "died": len(died),
                "born": len(born),
                "per_tile": per_tile,
                "fraction": len(died) / (T * H),
                "frozen_skipped": frozen_skipped,
                "unobserved_skipped": unobserved_skipped,
            },
            "moments_reset": moments,
        }
