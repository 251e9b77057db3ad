"""A pre-norm transformer block whose FFN is the tile FFN: :class:`SparseLookupBlockV2`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lillith.agents.tiles.common import TileError, check_positive_int, make_generator, uniform
from lillith.agents.tiles.ffn import SparseLookupFFNv2
from lillith.errors import StateError


class SparseLookupBlockV2(nn.Module):
    """Pre-norm transformer block whose FFN is a :class:`SparseLookupFFNv2`.

    ``h = x + dropout(Attn(LayerNorm(x)))``, then ``out = ffn(h)``. The FFN
    carries its own LayerNorm and residual (``ffn(h) = h + gate * tile(LN(h))``),
    so the second half is the usual ``LayerNorm -> FFN -> residual``; the
    second LayerNorm's parameters are ``block.ffn.norm_weight`` / ``norm_bias``.
    Attention is multi-head self-attention through
    :func:`torch.nn.functional.scaled_dot_product_attention`.

    Parameters
    ----------
    d_model : int, default 128
    n_heads : int, default 4
        Must divide ``d_model``.
    num_tiles, tiles_per_cluster, grid_size, compress_hidden, dropout,
    use_score_calibration, ternary_weight, sparsity_weight, diversity_weight,
    balance_weight, tile_hidden, temperature :
        As for :class:`SparseLookupFFNv2`; ``dropout`` also applies to the
        attention weights and output (training mode only).
    seed : int, optional
        Seeds the attention initialisation and (derived) the FFN's.

    Attributes
    ----------
    ffn : SparseLookupFFNv2
        The tile FFN, with the surgery API.
    """

    def __init__(
        self,
        d_model: int = 128,
        n_heads: int = 4,
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
    ) -> None:
        super().__init__()
        d = check_positive_int("d_model", d_model)
        h = check_positive_int("n_heads", n_heads)
        if d % h != 0:
            raise TileError("n_heads must divide d_model", d_model=d, n_heads=h)
        self.d_model = d
        self.n_heads = h
        gen = make_generator(seed)
        bound = 1.0 / math.sqrt(d)
        self.ln1_weight = nn.Parameter(torch.ones(d))
        self.ln1_bias = nn.Parameter(torch.zeros(d))
        self.qkv_weight = nn.Parameter(uniform((3 * d, d), bound, gen))
        self.qkv_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_weight = nn.Parameter(uniform((d, d), bound, gen))
        self.out_bias = nn.Parameter(torch.zeros(d))
        ffn_seed = None if seed is None else int(torch.randint(0, 2**62, (1,), generator=gen))
        self.ffn = SparseLookupFFNv2(
            d_model=d,
            num_tiles=num_tiles,
            tiles_per_cluster=tiles_per_cluster,
            grid_size=grid_size,
            compress_hidden=compress_hidden,
            dropout=dropout,
            use_score_calibration=use_score_calibration,
            ternary_weight=ternary_weight,
            sparsity_weight=sparsity_weight,
            diversity_weight=diversity_weight,
            balance_weight=balance_weight,
            tile_hidden=tile_hidden,
            temperature=temperature,
            seed=ffn_seed,
        )

    def forward(
        self, x: Tensor, is_causal: bool = True, labels: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Attention then tile FFN.

        Parameters
        ----------
        x : Tensor, float32 (B, L, d) or (L, d)
            Sequences (a 2-D input is one sequence).
        is_causal : bool, default True
            Causal attention mask.
        labels : Tensor, integer, shape ``x.shape[:-1]``, optional
            Passed to the FFN for claim tracking.

        Returns
        -------
        output : Tensor, same shape as ``x``
        routing_info, aux_losses : dict of str to Tensor
            From the FFN (routing entries have shape ``x.shape[:-1]``).
        """
        d = self.d_model
        if x.dim() not in (2, 3) or x.shape[-1] != d:
            raise TileError(
                "x must have shape (B, L, d_model) or (L, d_model)",
                shape=tuple(x.shape),
                d_model=d,
            )
        x3 = x if x.dim() == 3 else x.unsqueeze(0)
        B, L, _ = x3.shape
        hd = d // self.n_heads
        p = self.ffn.dropout if self.training else 0.0
        hn = F.layer_norm(x3, (d,), self.ln1_weight, self.ln1_bias)
        qkv = F.linear(hn, self.qkv_weight, self.qkv_bias).view(B, L, 3, self.n_heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        att = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=is_causal)
        att = att.transpose(1, 2).reshape(B, L, d)
        proj = F.linear(att, self.out_weight, self.out_bias)
        if p > 0.0:
            proj = F.dropout(proj, p, True)
        h = (x3 + proj).view(x.shape)
        return self.ffn.forward(h, labels)

    _ATTN_PARAMS = ("ln1_weight", "ln1_bias", "qkv_weight", "qkv_bias", "out_weight", "out_bias")

    def get_state(self) -> dict[str, npt.NDArray[Any]]:
        """Complete state as plain numpy arrays: the attention parameters
        (float32, under their own names) and the FFN's
        :meth:`SparseLookupFFNv2.get_state` entries prefixed with ``"ffn."``."""
        state: dict[str, npt.NDArray[Any]] = {
            name: getattr(self, name).detach().cpu().numpy().copy() for name in self._ATTN_PARAMS
        }
        for key, value in self.ffn.get_state().items():
            state["ffn." + key] = value
        return state

    def set_state(self, state: Mapping[str, npt.ArrayLike]) -> None:
        """Restore a state produced by :meth:`get_state`, exactly.

        Raises
        ------
        StateError
            Missing keys, wrong shapes, non-finite values, or an FFN state
            that does not fit (see :meth:`SparseLookupFFNv2.set_state`). The
            block is left unchanged.
        """
        arrays: dict[str, Tensor] = {}
        for name in self._ATTN_PARAMS:
            if name not in state:
                raise StateError("block state is missing keys", missing=[name])
            ref: Tensor = getattr(self, name)
            arr = np.asarray(state[name])
            if tuple(arr.shape) != tuple(ref.shape) or arr.dtype.kind != "f":
                raise StateError(
                    "block state array has wrong shape or dtype",
                    array=name,
                    shape=arr.shape,
                    expected=tuple(ref.shape),
                )
            if not np.all(np.isfinite(arr)):
                raise StateError("block state array has non-finite values", array=name)
            arrays[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).copy())
        self.ffn.set_state({k[4:]: v for k, v in state.items() if k.startswith("ffn.")})
        with torch.no_grad():
            for name, value in arrays.items():
                getattr(self, name).copy_(value)
