"""Hidden-unit fitness and lineage of the tile FFN.

A hidden unit is a pair ``(t, j)``: column ``j`` of ``w1[t]``, entry ``b1[t, j]``
and row ``j`` of ``w2[t]``.

* **Fitness.** While gradients are recorded (``track=True`` and autograd on),
  the forward pass puts a tensor hook on the chosen tiles' hidden activation
  ``a`` (N, H); on backward it adds ``|a * dL/da|``, averaged over the tokens
  each tile received, into a per-unit EMA ``unit_importance`` (T, H) (decay
  ``fitness_decay`` per backward, only for tiles that received tokens). About
  eight small tensor operations per backward; nothing at all without
  gradients. Optionally (``fitness_diversity`` / ``fitness_stability`` > 0)
  the hook also keeps EMAs of ``a``, ``a^2`` and ``a a^T`` per tile, from
  which :meth:`SparseLookupFFNv2.fitness_components` derives *diversity*
  (1 - mean ``|corr|`` with the other units of the tile) and *stability*
  (``E[a]^2 / E[a^2]``, 1 for a constant activation); *energy*
  (1 - weight norm / the tile's largest) needs no tracking. Each component
  is in [0, 1] within its tile (importance divided by the tile's maximum);
  :meth:`SparseLookupFFNv2.unit_fitness` is their weighted mean (default
  importance only; the multi-objective mix of :meth:`configure_fitness` otherwise).
* **Lineage.** Every unit has a unique int64 id, two parent ids (-1: none),
  a generation and a birth step; ids are never reused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from lillith.agents.tiles.base import TileBase
from lillith.agents.tiles.common import FITNESS_NAMES


class TileFitness(TileBase):
    """Records and combines hidden-unit fitness; keeps the units' lineage."""

    def _fitness_hook(self, hidden: Tensor, idx: Tensor, counts: Tensor) -> Any:
        """Backward hook on the hidden activation (N, 1, H) of the chosen tiles."""

        def hook(grad: Tensor) -> None:
            with torch.no_grad():
                self._observe_fitness(hidden, grad, idx, counts)

        return hook

    def _observe_fitness(self, hidden: Tensor, grad: Tensor, idx: Tensor, counts: Tensor) -> None:
        """Fold one batch's ``|a * dL/da|`` (and activity moments) into the EMAs."""
        T, H = self.num_tiles, self.tile_hidden
        a = hidden.view(-1, H)
        imp = a * grad.reshape(-1, H)
        sums = imp.new_zeros(T, H).index_add_(0, idx, imp.abs_())
        cf = counts.to(a.dtype).unsqueeze(1)  # (T, 1)
        inv = cf.clamp_min(1.0).reciprocal_()
        w = cf.clamp_max(1.0).mul_(1.0 - self.fitness_decay)  # (T, 1), 0 where unseen
        self.unit_importance.lerp_(sums.mul_(inv), w)  # weight 0 leaves a row bit-unchanged
        self.unit_fitness_obs.add_(counts.clamp_max(1))
        weights = self.fitness_weights
        if weights["diversity"] > 0.0 or weights["stability"] > 0.0:
            self.unit_act_mean.lerp_(a.new_zeros(T, H).index_add_(0, idx, a).mul_(inv), w)
            self.unit_act_sq.lerp_(a.new_zeros(T, H).index_add_(0, idx, a * a).mul_(inv), w)
            if self.unit_act_cross.shape[0] == T:
                cross = a.new_zeros(T, H, H).index_add_(0, idx, a.unsqueeze(2) * a.unsqueeze(1))
                self.unit_act_cross.lerp_(cross.mul_(inv.unsqueeze(2)), w.unsqueeze(2))

    def fitness_components(self) -> dict[str, npt.NDArray[np.float32]]:
        """The four fitness components per hidden unit, each float32 (T, H) in [0, 1].

        Returns
        -------
        dict of str to numpy.ndarray
            ``importance``: ``unit_importance`` divided by its tile's maximum
            (0 for a tile never observed); ``diversity``: 1 - mean over the
            tile's other units of ``|corr(a_j, a_k)|`` from the activity EMAs
            (1 while no cross moments are tracked); ``stability``:
            ``E[a]^2 / E[a^2]`` (0 while untracked); ``energy``: 1 - norm of
            the unit's weights ``(w1[:, j], b1[j], w2[j, :])`` divided by the
            tile's largest.
        """
        with torch.no_grad():
            comps = self._fitness_tensors(FITNESS_NAMES)
        return {k: v.cpu().numpy().astype(np.float32) for k, v in comps.items()}

    def _fitness_tensors(self, names: tuple[str, ...]) -> dict[str, Tensor]:
        T, H = self.num_tiles, self.tile_hidden
        out: dict[str, Tensor] = {}
        eps = 1e-12
        if "importance" in names:
            imp = torch.nan_to_num(self.unit_importance.detach(), nan=0.0, posinf=0.0)
            imp = imp.clamp_min(0.0)
            out["importance"] = imp / imp.amax(1, keepdim=True).clamp_min(eps)
        if "stability" in names or "diversity" in names:
            mean = self.unit_act_mean.detach()
            sq = self.unit_act_sq.detach()
            var = (sq - mean * mean).clamp_min(0.0)
            if "stability" in names:
                out["stability"] = ((mean * mean) / sq.clamp_min(eps)).clamp(0.0, 1.0)
            if "diversity" in names:
                if self.unit_act_cross.shape[0] != T or H < 2:
                    out["diversity"] = torch.ones_like(mean)
                else:
                    cov = self.unit_act_cross.detach() - mean.unsqueeze(2) * mean.unsqueeze(1)
                    sd = var.sqrt()
                    corr = (cov / (sd.unsqueeze(2) * sd.unsqueeze(1)).clamp_min(eps)).abs()
                    corr = corr.clamp(0.0, 1.0) * (1.0 - torch.eye(H, device=corr.device))
                    out["diversity"] = 1.0 - corr.sum(2) / (H - 1)
        if "energy" in names:
            norm = (
                self.w1.detach().square().sum(1)
                + self.b1.detach().square()
                + self.w2.detach().square().sum(2)
            ).sqrt()
            out["energy"] = 1.0 - norm / norm.amax(1, keepdim=True).clamp_min(eps)
        return out

    def unit_fitness(self) -> Tensor:
        """Combined hidden-unit fitness, float32 (T, H) in [0, 1], a detached copy.

        The weighted mean of :meth:`fitness_components` with the weights of
        :meth:`configure_fitness` (components of weight 0 are not computed).
        Only comparisons within a tile are meaningful.
        """
        weights = {k: w for k, w in self.fitness_weights.items() if w > 0.0}
        with torch.no_grad():
            comps = self._fitness_tensors(tuple(weights))
            total = sum(weights.values())
            fit = torch.zeros_like(self.unit_importance)
            for name, w in weights.items():
                fit.add_(comps[name], alpha=w / total)
        return fit

    def unit_lineage(self) -> dict[str, npt.NDArray[np.int64]]:
        """Lineage of the current hidden units (copies).

        Returns
        -------
        dict of str to numpy.ndarray
            ``ids`` int64 (T, H), unique, never reused; ``parents`` int64
            (T, H, 2), parent ids (-1: none; one parent for preservation and
            mutation, two for crossover); ``generation`` int64 (T, H), 0 for
            units made at initialisation or by :meth:`reseed_tile`, else
            ``1 + max(parents' generations)``; ``birth`` int64 (T, H), the
            ``step`` of the apoptosis (or reseed, -1 if none was given) that
            made the unit, 0 at initialisation; ``next_id`` int64 (1,).
        """
        return {
            "ids": self._lineage_ids.copy(),
            "parents": self._lineage_parents.copy(),
            "generation": self._lineage_generation.copy(),
            "birth": self._lineage_birth.copy(),
            "next_id": np.array([self._next_unit_id], dtype=np.int64),
        }

    def _reset_units(self, t: int, step: int) -> None:
        """Fresh lineage (no parents) and empty fitness for every unit of tile ``t``."""
        H = self.tile_hidden
        self._lineage_ids[t] = np.arange(self._next_unit_id, self._next_unit_id + H)
        self._next_unit_id += H
        self._lineage_parents[t] = -1
        self._lineage_generation[t] = 0
        self._lineage_birth[t] = step
        with torch.no_grad():
            self.unit_importance[t] = 0.0
            self.unit_fitness_obs[t] = 0
            self.unit_act_mean[t] = 0.0
            self.unit_act_sq[t] = 0.0
            if self.unit_act_cross.shape[0] == self.num_tiles:
                self.unit_act_cross[t] = 0.0
