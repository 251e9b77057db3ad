"""The tile predictor: features to the next normalised frame, and its training step.

``forecast = z_t + head(tiles(tanh(proj(features))))`` with ``tiles`` a
:class:`~lillith.agents.tiles.SparseLookupFFNv2`. The per-frame forecast runs
in numba (:mod:`lillith.agents._infer`), each row alone, so a frame's forecast
is the same bits however the stream is cut into calls; the training step runs
in numba too (:mod:`lillith.agents._train`), the same step as torch autograd
and Adam to float rounding. Both read the tile FFN through its public methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from lillith.agents._infer import _predict_rows
from lillith.agents._train import _adam, _fit_rows
from lillith.agents.config import AgentConfig
from lillith.agents.tiles import SparseLookupFFNv2
from lillith.agents.tiles.common import numpy_view as _np
from lillith.errors import AgentError

F32 = npt.NDArray[np.float32]


class TilePredictor(nn.Module):
    """Features → next normalised frame: ``z_t + head(tiles(proj(features)))``.

    The head starts at zero, so the untrained forecast is persistence (the
    current frame); learning has to beat it.
    """

    def __init__(self, in_dim: int, out_dim: int, config: AgentConfig) -> None:
        super().__init__()
        pc = config.predictor
        gen = torch.Generator().manual_seed(config.seed)
        self.proj = nn.Linear(in_dim, pc.d_model)
        self.ffn = SparseLookupFFNv2(
            d_model=pc.d_model,
            num_tiles=pc.num_tiles,
            tiles_per_cluster=pc.tiles_per_cluster,
            dropout=0.0,
            seed=config.seed,
        )
        self.head = nn.Linear(pc.d_model, out_dim)
        self._grads: list[F32] | None = None  # fit_batch's gradient buffers
        with torch.no_grad():
            bound = 1.0 / math.sqrt(in_dim)
            self.proj.weight.copy_(torch.empty_like(self.proj.weight).uniform_(
                -bound, bound, generator=gen))
            self.proj.bias.zero_()
            self.head.weight.zero_()
            self.head.bias.zero_()

    def forward(
        self, feats: torch.Tensor, last: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forecast, shape (N, C), and the tile predictor's auxiliary losses."""
        h = torch.tanh(self.proj(feats))
        h, _, aux = self.ffn(h)
        return last + self.head(h), aux

    @property
    def fits_fast(self) -> bool:
        """True when :meth:`fit_batch` applies: the tile FFN's configuration the
        kernels implement (mixture routing gradient, input norm, no dropout) and
        no hidden-unit fitness to record (evolution needs autograd's hooks)."""
        f = self.ffn
        return (f.router_grad == "mixture" and f.input_norm and f.norm_weight is not None
                and f.norm_bias is not None and not f.track_fitness
                and not (f.dropout > 0.0 and self.training))

    def fit_batch(self, feats: F32, last: F32, target: F32, *,
                  optimizer: torch.optim.Optimizer, aux_weight: float,
                  grad_clip: float) -> float:
        """One training step in numba: the loss of :meth:`forward` (Huber, delta 1,
        plus ``aux_weight`` times the tile FFN's auxiliary losses), its gradient,
        clipping to total norm ``grad_clip`` and the Adam update of ``optimizer``
        (a ``torch.optim.Adam`` over these parameters, in one group), with its
        state kept where torch keeps it; the tile usage counters advance as in
        :meth:`forward`. The same step as autograd and ``optimizer.step()`` to
        float rounding, without holding the GIL for the arithmetic.

        Parameters
        ----------
        feats : ndarray, float32, shape (N, in_dim)
        last, target : ndarray, float32, shape (N, C)
            Last frames (the residual) and the frames to forecast.

        Returns
        -------
        float
            The loss before the update.
        """
        if not self.fits_fast:
            raise AgentError("fit_batch needs mixture routing, input norm, no dropout and no "
                             "fitness tracking")
        groups = optimizer.param_groups
        if not isinstance(optimizer, torch.optim.Adam) or len(groups) != 1:
            raise AgentError("fit_batch needs a torch.optim.Adam with one parameter group")
        group = groups[0]
        if group["amsgrad"] or group["maximize"] or group.get("decoupled_weight_decay"):
            raise AgentError("fit_batch implements plain Adam (no amsgrad, maximize, AdamW)")
        ffn = self.ffn
        assert ffn.norm_weight is not None and ffn.norm_bias is not None
        params = [self.proj.weight, self.proj.bias, ffn.norm_weight, ffn.norm_bias,
                  ffn.compress_w1, ffn.compress_b1, ffn.compress_w2, ffn.compress_b2,
                  ffn.signatures_raw, ffn.w1, ffn.b1, ffn.w2, ffn.b2]
        cal = ffn.calibration
        logits = cal.logits if cal is not None else None
        i_cal = len(params)  # the calibration's slot in the kernel's arguments
        if logits is not None:
            params.append(logits)
        params += [self.head.weight, self.head.bias]
        grads = self._grads
        if grads is None or len(grads) != len(params):
            grads = self._grads = [np.zeros(tuple(q.shape), dtype=np.float32) for q in params]
        else:
            for g in grads:
                g.fill(0.0)
        views = [_np(q) for q in params]
        if logits is None:  # the kernel skips the calibration: placeholders
            views.insert(i_cal, np.zeros(2, dtype=np.float32))
            grads_all = [*grads[:i_cal], np.zeros(2, dtype=np.float32), *grads[i_cal:]]
        else:
            grads_all = grads
        idx = np.empty(feats.shape[0], dtype=np.int64)
        args: tuple[Any, ...] = (
            np.ascontiguousarray(feats, dtype=np.float32), np.ascontiguousarray(last),
            np.ascontiguousarray(target), *views[:8],
            np.ascontiguousarray(_np(ffn.effective_signatures())), ffn.frozen_mask.numpy(),
            *views[9:], float(ffn.score_scale), ffn.tiles_per_cluster, cal is not None,
            float(cal.x_min) if cal is not None else 0.0,
            float(cal.inv_h) if cal is not None else 0.0, float(aux_weight),
            ffn.balance_weight, ffn.ternary_weight, ffn.sparsity_weight, ffn.diversity_weight,
            *grads_all, idx)
        loss = float(_fit_rows(*args))
        # clipping (torch.nn.utils.clip_grad_norm_): one factor for all gradients
        total = math.sqrt(sum(float(np.dot(g.reshape(-1), g.reshape(-1))) for g in grads))
        scale = min(grad_clip / (total + 1e-6), 1.0)
        by_id = {id(q): g for q, g in zip(params, grads, strict=True)}
        lr = float(group["lr"])
        beta1, beta2 = (float(b) for b in group["betas"])
        eps, wd = float(group["eps"]), float(group["weight_decay"])
        for q in group["params"]:
            g = by_id[id(q)]
            st = optimizer.state[q]
            if not st:  # what torch's fused Adam creates at its first step
                st["step"] = torch.zeros((), dtype=torch.float32)
                st["exp_avg"] = torch.zeros_like(q, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(q, memory_format=torch.preserve_format)
            step = st["step"].numpy()
            step += 1.0  # in place: the 0-d tensor torch keeps
            _adam(_np(q).reshape(-1), g.reshape(-1), st["exp_avg"].numpy().reshape(-1),
                  st["exp_avg_sq"].numpy().reshape(-1), float(step), lr, beta1, beta2, eps,
                  wd, scale)
        ffn.count_usage(torch.from_numpy(np.bincount(idx, minlength=ffn.num_tiles)))
        return loss

    def plan(self) -> InferencePlan:
        """The arrays :meth:`infer` reads, as of now (see :class:`InferencePlan`)."""
        ffn = self.ffn
        work = np.empty(4 * ffn.d_model + ffn.compress_hidden + ffn.num_tiles
                        + ffn.tile_hidden, dtype=np.float32)
        args = (_np(self.proj.weight), _np(self.proj.bias), *ffn.infer_args(),
                _np(self.head.weight), _np(self.head.bias), work)
        watch = [*self.parameters(), *ffn.buffers()]
        return InferencePlan(args, tuple((t, t._version) for t in watch),
                             float(ffn.score_scale))

    def infer(self, feats: F32, last: F32, plan: InferencePlan | None = None) -> F32:
        """:meth:`forward`'s forecast without torch, shape (N, C), each row
        computed alone by one numba kernel (see :meth:`SparseLookupFFNv2.infer`):
        the per-frame pass. ``plan``: arrays taken by :meth:`plan` and still
        current (taken afresh when omitted)."""
        if plan is None:
            plan = self.plan()
        out = np.empty((feats.shape[0], self.head.out_features), dtype=np.float32)
        _predict_rows(*(feats, last, *plan.args, out))
        return out


@dataclass(frozen=True)
class InferencePlan:
    """The inference kernel's arrays: views of a :class:`TilePredictor`'s
    parameters and the arrays derived from them (calibration table, effective
    signatures), with the version of every tensor they came from.

    :meth:`current` tells whether the tensors are still as they were: an
    in-place change (tile surgery, a restore) bumps a tensor's version. A
    fused optimizer step does not, so whoever trains the predictor takes a new
    plan after each step (the agent does at every micro-batch).
    """

    args: tuple[Any, ...]
    versions: tuple[tuple[torch.Tensor, int], ...]
    score_scale: float

    def current(self, ffn: SparseLookupFFNv2) -> bool:
        """True while no watched tensor has changed in place since the plan."""
        return (ffn.score_scale == self.score_scale
                and all(t._version == v for t, v in self.versions))
