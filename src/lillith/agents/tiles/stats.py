"""What the tile FFN reports about itself: usage, claims, signature analysis,
island and routing statistics, the surgery history."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from lillith.agents.tiles.common import ANALYSIS_THRESHOLD, TERNARY_TOLERANCE, TileError
from lillith.agents.tiles.fitness import TileFitness


class TileStats(TileFitness):
    """Usage and claim counters and the statistics read from them."""

    def _track_claims(self, idx: Tensor, labels: Tensor) -> None:
        lab = labels.to(device=idx.device, dtype=torch.int64)
        valid = lab >= 0
        if not bool(valid.all()):
            lab, idx = lab[valid], idx[valid]
        if lab.numel() == 0:
            return
        n_cls = max(int(lab.max()) + 1, self._claims.shape[1])
        claims = self._claims
        if claims.device != idx.device:
            claims = claims.to(idx.device)
        if n_cls > claims.shape[1]:
            grown = torch.zeros(self.num_tiles, n_cls, dtype=torch.int64, device=idx.device)
            grown[:, : claims.shape[1]] = claims
            claims = grown
        claims += torch.bincount(idx * n_cls + lab, minlength=self.num_tiles * n_cls).view(
            self.num_tiles, n_cls
        )
        self._claims = claims

    def get_signature_analysis(self, tile_idx: int) -> dict[str, Any]:
        """Describe a tile's effective signature.

        A dimension is positive when ``s > ANALYSIS_THRESHOLD`` (0.5),
        negative when ``s < -0.5``, zero otherwise (``|s| <= 0.5``).

        Returns
        -------
        dict
            ``tile_idx`` int, ``positive_dims`` list[int], ``negative_dims``
            list[int], ``zero_count`` int, ``frozen`` bool.
        """
        t = self._check_tile(tile_idx)
        s = self._effective_signatures()[t].detach().cpu().numpy()
        pos = np.flatnonzero(s > ANALYSIS_THRESHOLD)
        neg = np.flatnonzero(s < -ANALYSIS_THRESHOLD)
        return {
            "tile_idx": t,
            "positive_dims": [int(i) for i in pos],
            "negative_dims": [int(i) for i in neg],
            "zero_count": int(s.size - pos.size - neg.size),
            "frozen": bool(self.frozen_mask[t]),
        }

    def get_surgery_history(self) -> list[dict[str, Any]]:
        """Surgery operations, oldest first (copies): the newest
        :attr:`HISTORY_LIMIT` of them (``seq`` keeps counting, so a gap at the
        start shows what was dropped).

        Each entry: ``op`` ("insert", "freeze", "unfreeze", "reseed",
        "apoptosis"), ``tile_idx``, ``tag``, ``step`` (tracked forward calls
        so far), ``seq`` (running operation number), ``frozen`` (state after
        the op). Apoptosis entries (one per tile that changed, ``tag`` the
        strategy) add ``agent_step`` (the ``step`` given to
        :meth:`apoptosis`), ``died`` and ``born`` (lists of unit ids).
        """
        return [dict(h) for h in self._history]

    def get_claim_rate(self, tile_idx: int, target_class: int) -> float:
        """Fraction of tracked tokens of ``target_class`` routed to ``tile_idx``.

        0.0 when the class has not been seen.
        """
        t = self._check_tile(tile_idx)
        try:
            c = operator.index(target_class)
        except TypeError as e:
            raise TileError("target_class must be an integer", target_class=target_class) from e
        if c < 0:
            raise TileError("target_class must be >= 0", target_class=c)
        if c >= self._claims.shape[1]:
            return 0.0
        col = self._claims[:, c]
        total = int(col.sum())
        return 0.0 if total == 0 else int(col[t]) / total

    def get_tile_purity(self, tile_idx: int) -> tuple[int, float]:
        """``(dominant_class, purity)`` of a tile's tracked traffic; ``(-1, 0.0)`` if unused.

        Purity is the fraction of the tile's labelled tokens that belong to
        its dominant class (ties go to the lowest class).
        """
        t = self._check_tile(tile_idx)
        if self._claims.shape[1] == 0:
            return -1, 0.0
        row = self._claims[t]
        total = int(row.sum())
        if total == 0:
            return -1, 0.0
        dom = int(row.argmax())
        return dom, int(row[dom]) / total

    def claim_counts(self) -> npt.NDArray[np.int64]:
        """Tracked claims, int64 (num_tiles, num_classes_seen), a copy."""
        return self._claims.cpu().numpy().copy()

    def reset_claim_tracking(self) -> None:
        """Forget all claim counts (and the classes seen)."""
        self._claims = torch.zeros(self.num_tiles, 0, dtype=torch.int64)

    def get_island_stats(self) -> dict[str, float]:
        """Statistics of the raw effective signatures (no rounding first).

        Returns
        -------
        dict of str to float
            ``ternary_fraction``: fraction of values within
            ``TERNARY_TOLERANCE`` (0.1) of -1, 0 or +1; ``sparsity``: fraction
            within 0.1 of 0; ``mean_pairwise_similarity``: mean ``|cos|`` over
            tile pairs ``i < j`` (0 for a single tile); ``diversity``:
            ``1 - mean_pairwise_similarity``.
        """
        s = self._effective_signatures().detach().double()
        near = (s - torch.round(s.clamp(-1.0, 1.0))).abs() <= TERNARY_TOLERANCE
        zero = s.abs() <= TERNARY_TOLERANCE
        T = s.shape[0]
        if T > 1:
            sn = F.normalize(s, dim=1, eps=1e-12)
            gram = (sn @ sn.t()).abs()
            iu = torch.triu_indices(T, T, 1, device=s.device)
            sim = float(gram[iu[0], iu[1]].mean())
        else:
            sim = 0.0
        return {
            "ternary_fraction": float(near.double().mean()),
            "sparsity": float(zero.double().mean()),
            "mean_pairwise_similarity": sim,
            "diversity": 1.0 - sim,
        }

    def get_routing_stats(self) -> dict[str, Any]:
        """Routing statistics since the last :meth:`reset_stats`.

        Returns
        -------
        dict
            ``num_tiles``, ``num_clusters``, ``active_tiles`` (tiles with at
            least one routed token), ``frozen_tiles``, ``total_tokens`` (int);
            ``usage`` (list of float, per-tile fraction of routed tokens, all
            0 before any token), ``usage_mean``, ``usage_std`` (population)
            of that list; ``usage_ema`` (list of float, see :meth:`tile_usage`).
        """
        counts = self.usage_counts.detach().cpu().numpy().astype(np.float64)
        total = float(counts.sum())
        usage = counts / total if total > 0 else np.zeros_like(counts)
        return {
            "num_tiles": self.num_tiles,
            "num_clusters": self.num_clusters,
            "active_tiles": int(np.count_nonzero(counts)),
            "frozen_tiles": int(self.frozen_mask.sum()),
            "total_tokens": int(total),
            "usage_mean": float(usage.mean()),
            "usage_std": float(usage.std()),
            "usage": [float(u) for u in usage],
            "usage_ema": [float(u) for u in self.tile_usage()],
        }

    def count_usage(self, counts: Tensor) -> None:
        """Count one forward pass's tokens per tile, as :meth:`forward` with
        ``track=True`` does (for a training step computed outside torch).

        Parameters
        ----------
        counts : Tensor, int64 (num_tiles,)
            Tokens routed to each tile by the pass.
        """
        with torch.no_grad():
            self._forward_calls += 1
            self.usage_counts.add_(counts)
            self.usage_ema.mul_(self.usage_decay).add_(
                counts, alpha=(1.0 - self.usage_decay) / int(counts.sum()))

    def tile_usage(self) -> npt.NDArray[np.float64]:
        """Recent usage, float64 (num_tiles,): EMA of per-forward token fractions.

        Starts (and restarts after :meth:`reset_stats`) at ``1 / num_tiles``.
        """
        return self.usage_ema.detach().cpu().numpy().astype(np.float64)

    def reset_stats(self) -> None:
        """Reset usage counts, usage EMA and claim tracking."""
        with torch.no_grad():
            self.usage_counts.zero_()
            self.usage_ema.fill_(1.0 / self.num_tiles)
        self.reset_claim_tracking()
