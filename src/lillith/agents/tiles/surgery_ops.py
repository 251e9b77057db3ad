"""Signature surgery on the tile FFN: insert, freeze, unfreeze, reseed.

Frozen signatures
-----------------
The learnable parameter ``signatures_raw`` (T, d) is never used directly:
every consumer (routing, regularisers, analysis, statistics, state) reads the
effective signatures ``torch.where(frozen_mask[:, None], frozen_values,
signatures_raw)``. A frozen row therefore receives no gradient and is
*bit-for-bit* the stored buffer, whatever the optimiser does to the raw row
(Adam momentum, AdamW weight decay). Unfreezing copies the buffer back into
the raw row, so learning resumes from the frozen value (the optimiser's
moment estimates for that row are stale; they decay away).
"""

from __future__ import annotations

import operator

import numpy.typing as npt
import torch
from torch import Tensor

from lillith.agents.tiles.model import TileModel


class TileSurgery(TileModel):
    """The surgery operations; each lands in the surgery history."""

    @property
    def signatures(self) -> Tensor:
        """Effective signatures, float32 (T, d), a detached copy."""
        return self._effective_signatures().detach().clone()

    def insert_signature(
        self,
        tile_idx: int,
        signature: Tensor | npt.ArrayLike,
        freeze: bool = True,
        tag: str = "",
    ) -> None:
        """Write a designed signature into a tile.

        Parameters
        ----------
        tile_idx : int
            Tile, ``0 <= tile_idx < num_tiles``.
        signature : Tensor or array-like, shape (d_model,)
            Finite values; stored as float32 exactly.
        freeze : bool, default True
            Freeze the tile afterwards; ``False`` leaves it trainable (and
            unfreezes it if it was frozen).
        tag : str
            Free text recorded in the surgery history.

        Raises
        ------
        TileError
            Bad tile index or signature shape / values.
        """
        t = self._check_tile(tile_idx)
        sig = self._as_signature(signature)
        with torch.no_grad():
            self.signatures_raw[t].copy_(sig)
            if freeze:
                self.frozen_values[t].copy_(sig)
            self.frozen_mask[t] = bool(freeze)
        self._refresh_frozen_flag()
        self._record("insert", t, tag)

    def freeze_signature(self, tile_idx: int, *, tag: str = "") -> None:
        """Freeze a tile's current effective signature (no-op value-wise if frozen).

        ``tag`` is free text for the surgery history.
        """
        t = self._check_tile(tile_idx)
        with torch.no_grad():
            if not bool(self.frozen_mask[t]):
                self.frozen_values[t].copy_(self.signatures_raw[t])
                self.frozen_mask[t] = True
        self._refresh_frozen_flag()
        self._record("freeze", t, tag)

    def unfreeze_signature(self, tile_idx: int, *, tag: str = "") -> None:
        """Unfreeze a tile; its raw signature restarts from the frozen value.

        ``tag`` is free text for the surgery history.
        """
        t = self._check_tile(tile_idx)
        with torch.no_grad():
            if bool(self.frozen_mask[t]):
                self.signatures_raw[t].copy_(self.frozen_values[t])
                self.frozen_mask[t] = False
        self._refresh_frozen_flag()
        self._record("unfreeze", t, tag)

    def is_frozen(self, tile_idx: int) -> bool:
        """Whether tile ``tile_idx``'s signature is frozen."""
        return bool(self.frozen_mask[self._check_tile(tile_idx)])

    def reseed_tile(
        self,
        tile_idx: int,
        signature: Tensor | npt.ArrayLike | None = None,
        *,
        step: int | None = None,
        tag: str = "",
    ) -> None:
        """Re-initialise a tile: new expert weights and a new (unfrozen) signature.

        The expert is drawn from the module's init generator; the signature
        is ``signature`` if given, else random N(0, 0.5^2). The tile's usage
        count and claim counts are zeroed and its usage EMA set to the
        uniform share ``1 / num_tiles`` (a grace period before it can look
        dead again). Its hidden units are new: fresh lineage ids (no parents,
        generation 0, birth ``step``, -1 when not given) and zero fitness.
        Optimiser moments of the tile's parameters are not touched (see
        :func:`reset_optimizer_moments`). Recorded in the surgery history as
        ``"reseed"`` with ``tag``.
        """
        t = self._check_tile(tile_idx)
        birth = -1 if step is None else operator.index(step)
        sig = (
            self._random_signatures(1)[0].to(self.signatures_raw.device)
            if signature is None
            else self._as_signature(signature)
        )
        with torch.no_grad():
            self._init_expert(t)
            self.signatures_raw[t].copy_(sig)
            self.frozen_mask[t] = False
            self.usage_counts[t] = 0
            self.usage_ema[t] = 1.0 / self.num_tiles
            if self._claims.shape[1] > 0:
                self._claims[t] = 0
        self._reset_units(t, birth)
        self._refresh_frozen_flag()
        self._record("reseed", t, tag)
