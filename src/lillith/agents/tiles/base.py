"""The tile FFN's parameters, buffers and configuration: the bottom of
:class:`~lillith.agents.tiles.SparseLookupFFNv2`, which the other modules of
this package build on (fitness, statistics, the model, surgery, apoptosis,
state), each a class above the one before.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from lillith.agents.tiles.common import (
    FITNESS_NAMES,
    ROUTER_GRADS,
    TileError,
    check_positive_int,
    check_weight,
    make_generator,
    uniform,
)
from lillith.agents.tiles.spline import ScoreCalibrationSpline


class TileBase(nn.Module):
    """Parameters, buffers, hyper-parameters and the surgery log of a tile FFN
    (the constructor's arguments are documented on :class:`SparseLookupFFNv2`)."""

    frozen_mask: Tensor
    frozen_values: Tensor
    usage_counts: Tensor
    usage_ema: Tensor
    unit_importance: Tensor
    unit_fitness_obs: Tensor
    unit_act_mean: Tensor
    unit_act_sq: Tensor
    unit_act_cross: Tensor
    _offdiag: Tensor

    HISTORY_LIMIT = 10_000
    """Surgery-history entries kept (oldest dropped first)."""

    def __init__(
        self,
        d_model: int = 128,
        num_tiles: int = 64,
        tiles_per_cluster: int = 8,
        grid_size: int = 16,
        compress_hidden: int | None = None,
        dropout: float = 0.1,
        use_score_calibration: bool = True,
        ternary_weight: float = 0.01,
        sparsity_weight: float = 0.01,
        diversity_weight: float = 0.01,
        balance_weight: float = 0.01,
        tile_hidden: int | None = None,
        temperature: float = 1.0,
        seed: int | None = None,
        usage_decay: float = 0.99,
        router_grad: str = "mixture",
        input_norm: bool = True,
        *,
        track_fitness: bool = True,
        fitness_decay: float = 0.99,
        fitness_importance: float = 1.0,
        fitness_diversity: float = 0.0,
        fitness_stability: float = 0.0,
        fitness_energy: float = 0.0,
    ) -> None:
        super().__init__()
        if router_grad not in ROUTER_GRADS:
            raise TileError(
                "router_grad must be 'mixture' or 'straight_through'", router_grad=router_grad
            )
        self.router_grad = router_grad
        d = check_positive_int("d_model", d_model)
        T = check_positive_int("num_tiles", num_tiles)
        K = check_positive_int("tiles_per_cluster", tiles_per_cluster)
        if T % K != 0:
            raise TileError(
                "num_tiles must be a multiple of tiles_per_cluster",
                num_tiles=T,
                tiles_per_cluster=K,
            )
        G = check_positive_int("grid_size", grid_size)
        if G < 2:
            raise TileError("grid_size must be >= 2", grid_size=G)
        Hc = max(1, d // 4) if compress_hidden is None else compress_hidden
        Hc = check_positive_int("compress_hidden", Hc)
        H = max(4, d // 4) if tile_hidden is None else tile_hidden
        H = check_positive_int("tile_hidden", H)
        self.d_model = d
        self.num_tiles = T
        self.tiles_per_cluster = K
        self.num_clusters = T // K
        self.grid_size = G
        self.compress_hidden = Hc
        self.tile_hidden = H
        self.use_score_calibration = bool(use_score_calibration)
        self._set_hyper(
            dropout=dropout,
            ternary_weight=ternary_weight,
            sparsity_weight=sparsity_weight,
            diversity_weight=diversity_weight,
            balance_weight=balance_weight,
            temperature=temperature,
            usage_decay=usage_decay,
        )
        self.seed = seed
        self._gen = make_generator(seed)
        gen = self._gen

        # input norm and compression (routing) net
        self.input_norm = bool(input_norm)
        self.norm_weight: nn.Parameter | None = None
        self.norm_bias: nn.Parameter | None = None
        if self.input_norm:
            self.norm_weight = nn.Parameter(torch.ones(d))
            self.norm_bias = nn.Parameter(torch.zeros(d))
        self.compress_w1 = nn.Parameter(uniform((Hc, d), 1.0 / math.sqrt(d), gen))
        self.compress_b1 = nn.Parameter(uniform((Hc,), 1.0 / math.sqrt(d), gen))
        self.compress_w2 = nn.Parameter(uniform((d, Hc), 1.0 / math.sqrt(Hc), gen))
        self.compress_b2 = nn.Parameter(uniform((d,), 1.0 / math.sqrt(Hc), gen))
        # signatures and tile experts
        self.signatures_raw = nn.Parameter(self._random_signatures(T))
        self.w1 = nn.Parameter(torch.empty(T, d, H))
        self.b1 = nn.Parameter(torch.empty(T, H))
        self.w2 = nn.Parameter(torch.empty(T, H, d))
        self.b2 = nn.Parameter(torch.empty(T, d))
        with torch.no_grad():
            for t in range(T):
                self._init_expert(t)
        self.calibration: ScoreCalibrationSpline | None = (
            ScoreCalibrationSpline(G) if self.use_score_calibration else None
        )

        self.register_buffer("frozen_mask", torch.zeros(T, dtype=torch.bool))
        self.register_buffer("frozen_values", torch.zeros(T, d))
        self.register_buffer("usage_counts", torch.zeros(T, dtype=torch.int64))
        self.register_buffer("usage_ema", torch.full((T,), 1.0 / T))
        self.register_buffer("_offdiag", 1.0 - torch.eye(T), persistent=False)
        self._any_frozen = False
        self._claims = torch.zeros(T, 0, dtype=torch.int64)
        self._history: list[dict[str, Any]] = []
        self._forward_calls = 0
        self._history_seq = 0

        # hidden-unit fitness (non-persistent buffers: get_state carries them,
        # state_dict() stays as it was) and lineage
        self.register_buffer("unit_importance", torch.zeros(T, H), persistent=False)
        self.register_buffer(
            "unit_fitness_obs", torch.zeros(T, dtype=torch.int64), persistent=False
        )
        self.register_buffer("unit_act_mean", torch.zeros(T, H), persistent=False)
        self.register_buffer("unit_act_sq", torch.zeros(T, H), persistent=False)
        self.register_buffer("unit_act_cross", torch.zeros(0, H, H), persistent=False)
        self.track_fitness = True
        self.fitness_decay = 0.99
        self.fitness_weights: dict[str, float] = {"importance": 1.0}
        self.configure_fitness(
            track=track_fitness,
            decay=fitness_decay,
            importance=fitness_importance,
            diversity=fitness_diversity,
            stability=fitness_stability,
            energy=fitness_energy,
        )
        self._lineage_ids = np.arange(T * H, dtype=np.int64).reshape(T, H)
        self._lineage_parents = np.full((T, H, 2), -1, dtype=np.int64)
        self._lineage_generation = np.zeros((T, H), dtype=np.int64)
        self._lineage_birth = np.zeros((T, H), dtype=np.int64)
        self._next_unit_id = T * H

    def _set_hyper(self, **values: float) -> None:
        dropout = float(values["dropout"])
        if not (math.isfinite(dropout) and 0.0 <= dropout < 1.0):
            raise TileError("dropout must be in [0, 1)", dropout=dropout)
        temperature = float(values["temperature"])
        if not (math.isfinite(temperature) and temperature > 0.0):
            raise TileError("temperature must be > 0", temperature=temperature)
        decay = float(values["usage_decay"])
        if not (math.isfinite(decay) and 0.0 <= decay < 1.0):
            raise TileError("usage_decay must be in [0, 1)", usage_decay=decay)
        weights = {
            k: check_weight(k, values[k])
            for k in ("ternary_weight", "sparsity_weight", "diversity_weight", "balance_weight")
        }
        self.dropout = dropout
        self.temperature = temperature
        self.usage_decay = decay
        self.ternary_weight = weights["ternary_weight"]
        self.sparsity_weight = weights["sparsity_weight"]
        self.diversity_weight = weights["diversity_weight"]
        self.balance_weight = weights["balance_weight"]
        self._score_scale = 1.0 / (math.sqrt(self.d_model) * temperature)

    def _random_signatures(self, n: int) -> Tensor:
        """``n`` random signatures, float32 (n, d), N(0, 0.5^2) from the init generator."""
        return torch.randn(n, self.d_model, generator=self._gen) * 0.5

    def _init_expert(self, t: int) -> None:
        """Re-initialise tile ``t``'s expert from the init generator (under no_grad)."""
        d, H, gen = self.d_model, self.tile_hidden, self._gen
        dev = self.w1.device
        self.w1[t].copy_(uniform((d, H), 1.0 / math.sqrt(d), gen).to(dev))
        self.b1[t].copy_(uniform((H,), 1.0 / math.sqrt(d), gen).to(dev))
        self.w2[t].copy_(uniform((H, d), 1.0 / math.sqrt(H), gen).to(dev))
        self.b2[t].zero_()

    @property
    def score_scale(self) -> float:
        """Factor of the tile logits: ``1 / (sqrt(d_model) * temperature)``."""
        return self._score_scale

    def effective_signatures(self) -> Tensor:
        """Effective signatures, float32 (T, d), not a copy: frozen rows from the
        buffer (see :mod:`lillith.agents.tiles.surgery_ops`). Read-only use; the
        tensor may be the parameter itself."""
        return self._effective_signatures()

    def _effective_signatures(self) -> Tensor:
        """Effective signatures, float32 (T, d): frozen rows from the buffer."""
        if not self._any_frozen:
            return self.signatures_raw
        return torch.where(self.frozen_mask.unsqueeze(1), self.frozen_values, self.signatures_raw)

    def _check_tile(self, tile_idx: int) -> int:
        if isinstance(tile_idx, bool):
            raise TileError("tile index must be an integer", tile_idx=tile_idx)
        try:
            t = operator.index(tile_idx)
        except TypeError as e:
            raise TileError("tile index must be an integer", tile_idx=tile_idx) from e
        if not 0 <= t < self.num_tiles:
            raise TileError("tile index out of range", tile_idx=t, num_tiles=self.num_tiles)
        return t

    def _as_signature(self, signature: Tensor | npt.ArrayLike) -> Tensor:
        try:
            sig = torch.as_tensor(signature, dtype=self.signatures_raw.dtype)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TileError("signature must be a numeric vector") from e
        if sig.shape != (self.d_model,):
            raise TileError(
                "signature has the wrong shape",
                shape=tuple(sig.shape),
                expected=(self.d_model,),
            )
        if not bool(torch.isfinite(sig).all()):
            raise TileError("signature contains non-finite values")
        return sig.to(self.signatures_raw.device)

    def _record(self, op: str, tile_idx: int, tag: str = "", **extra: Any) -> None:
        """Append a surgery-history entry; ``extra`` must be JSON-serialisable."""
        entry: dict[str, Any] = {
            "op": op,
            "tile_idx": int(tile_idx),
            "tag": str(tag),
            "step": self._forward_calls,
            "seq": self._history_seq,
            "frozen": bool(self.frozen_mask[tile_idx]),
        }
        entry.update(extra)
        self._history.append(entry)
        self._history_seq += 1
        if len(self._history) > self.HISTORY_LIMIT:  # the log has every entry; keep the newest
            del self._history[: len(self._history) - self.HISTORY_LIMIT]

    def _refresh_frozen_flag(self) -> None:
        self._any_frozen = bool(self.frozen_mask.any())

    def configure_fitness(
        self,
        *,
        track: bool | None = None,
        decay: float | None = None,
        importance: float | None = None,
        diversity: float | None = None,
        stability: float | None = None,
        energy: float | None = None,
    ) -> None:
        """Change how hidden-unit fitness is recorded and combined.

        Arguments left ``None`` keep their current value. Turning diversity
        on allocates the (T, H, H) cross-moment EMA (zeros: its correlations
        start uninformative and fill in with the decay).

        Parameters
        ----------
        track : bool, optional
            Record fitness during backward.
        decay : float, optional
            EMA decay per backward, in [0, 1).
        importance, diversity, stability, energy : float, optional
            Weights of the components of :meth:`unit_fitness` (>= 0; their
            sum must stay > 0).

        Raises
        ------
        TileError
            Invalid values; nothing is changed.
        """
        new_weights = dict(self.fitness_weights)
        for name, value in zip(
            FITNESS_NAMES, (importance, diversity, stability, energy), strict=True
        ):
            if value is not None:
                new_weights[name] = check_weight(f"fitness_{name}", value)
        new_weights = {k: new_weights.get(k, 0.0) for k in FITNESS_NAMES}
        if sum(new_weights.values()) <= 0.0:
            raise TileError("fitness weights must not all be 0", **new_weights)
        new_decay = self.fitness_decay if decay is None else float(decay)
        if not (math.isfinite(new_decay) and 0.0 <= new_decay < 1.0):
            raise TileError("fitness_decay must be in [0, 1)", fitness_decay=decay)
        self.fitness_weights = new_weights
        self.fitness_decay = new_decay
        if track is not None:
            self.track_fitness = bool(track)
        T, H = self.num_tiles, self.tile_hidden
        if new_weights["diversity"] > 0.0 and self.unit_act_cross.shape[0] != T:
            self.unit_act_cross = self.unit_importance.new_zeros(T, H, H)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_tiles={self.num_tiles}, "
            f"tiles_per_cluster={self.tiles_per_cluster}, tile_hidden={self.tile_hidden}, "
            f"compress_hidden={self.compress_hidden}, grid_size={self.grid_size}"
        )
