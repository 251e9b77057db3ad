"""The tile FFN's computation: routing, the chosen tile's expert, the gate, the
auxiliary losses; in torch (:meth:`forward`) and in numba (:meth:`infer`).

Model
-----
For a token ``x`` (``d = d_model``), with ``T = num_tiles`` tiles grouped in
``C = T / K`` clusters of ``K = tiles_per_cluster`` consecutive tiles::

    xn   = LayerNorm(x)                  (identity with input_norm=False)
    c    = W_c2 silu(W_c1 xn + b_c1) + b_c2                 routing code, (d,)
    z_t  = (c . s_t) / (sqrt(d) * temperature)              tile logits, (T,)
    z_C  = mean_{t in C} z_t                                (= c . mean signature of C)
    C*   = argmax_C z_C,   t* = argmax_{t in C*} z_t        hierarchical top-1
    P_t  = softmax_C(z_C)[C(t)] * softmax_{u in C(t)}(z_u)[t]   joint route probability
    g    = spline(cos(c, s_t*))                             gate in (0, 1)
    y_t  = W2[t] silu(W1[t] xn + b1[t]) + b2[t]             tile expert, d -> H -> d
    out  = x + g * dropout(y_t*)                            residual FFN

``s_t`` is the *effective* signature of tile ``t`` (see "Frozen signatures").
Only the chosen tile's expert is evaluated for the output (``O(N d H)``), and
the output value is exactly the top-1 output above. How the (non
differentiable) choice gets a gradient is ``router_grad``:

* ``"mixture"`` (default): ``y_t*`` is replaced by
  ``y_t* + (m - stop_grad(m))`` with ``m = sum_t P_t stop_grad(y_t)``; the
  added term is exactly zero in value, but its gradient is that of the soft
  mixture, ``dL/dP_t = g dL/dout . y_t``: the router is pushed toward the
  tiles whose output would have been better for this token (the
  straight-through softmax estimator). This needs every tile's output for
  every token *without* gradient (one extra batched pass, ``O(N T d H)``,
  skipped when no gradient is being recorded); expert weights themselves
  are trained by the chosen tile only.
* ``"straight_through"``: ``g`` is multiplied by ``P_t* / stop_grad(P_t*)``
  (value exactly 1, gradient ``dP / P``; ``P_t* >= 1 / T``, so it is
  bounded). Cheaper for many tiles, but the router only learns whether the
  chosen tile helped, not whether another would have helped more.

Either way the task loss reaches the compression net, the signatures (all
of them through ``P``, the chosen one also through ``cos``) and the spline.
With ``use_score_calibration=False``, ``g = 1``.

The input LayerNorm makes the tiles blind to the scale (and mean) of ``x``;
that is the usual pre-norm choice inside a transformer block, but a
standalone FFN on low-dimensional inputs whose amplitude matters should use
``input_norm=False``.

Aux losses
----------
All entries of ``aux_losses`` are already multiplied by their weight;
``total_aux`` is their sum. A term whose weight is 0 is not computed (its
entry is a zero tensor). The unweighted values come from
:meth:`SparseLookupFFNv2.compute_ternary_loss` and friends.

* ``balance`` = ``T * sum_t f_t P_t`` (Switch Transformer): ``f_t`` fraction
  of the batch's tokens routed to ``t`` (no gradient), ``P_t`` mean joint
  route probability ``softmax_C * softmax_{t in C}`` over the batch.
  Equals 1 for a perfectly uniform router.
* ``ternary`` = mean squared distance of each signature value to the nearest
  of {-1, 0, +1}.
* ``sparsity`` = mean absolute signature value (L1).
* ``diversity`` = mean over ordered pairs ``i != j`` of ``cos(s_i, s_j)^2``.

Performance
-----------
A forward pass is a fixed sequence of about 60 tensor operations whatever
``T`` is: no Python loop over tiles or tokens, no host synchronisation
(except ``labels.max()`` when claim tracking is requested). The output uses
only the chosen tiles, gathered and applied by one batched matmul
(``baddbmm``) per layer, ``O(N d H)``; the ``"mixture"`` router gradient adds
one no-grad pass over all tiles, ``O(N T d H)``, when gradients are recorded.
Usage and claim counters are updated under ``torch.no_grad``. Inputs are not checked
for non-finite values (the sensor layer rejects them before they get here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from lillith.agents._infer import _ffn_rows
from lillith.agents.tiles.common import TileError, numpy_view
from lillith.agents.tiles.stats import TileStats


class TileModel(TileStats):
    """Forward pass, inference kernel arguments, routing and regularisers."""

    @staticmethod
    def _ternary(sig: Tensor) -> Tensor:
        target = torch.round(sig.detach().clamp(-1.0, 1.0))
        return (sig - target).square().mean()

    @staticmethod
    def _sparsity(sig: Tensor) -> Tensor:
        return sig.abs().mean()

    def _diversity(self, sig: Tensor, norms: Tensor | None = None) -> Tensor:
        T = sig.shape[0]
        if T < 2:
            return sig.new_zeros(())
        if norms is None:
            norms = torch.linalg.vector_norm(sig, dim=1)
        sn = sig / norms.clamp_min(1e-8).unsqueeze(1)
        gram = sn @ sn.t()
        return (gram.square() * self._offdiag).sum() / (T * (T - 1))

    def forward(
        self, x: Tensor, labels: Tensor | None = None, *, track: bool = True
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Route each token to one tile and add its gated output.

        Parameters
        ----------
        x : Tensor, float32 (N, d) or (B, L, d)
            Tokens.
        labels : Tensor, integer, shape ``x.shape[:-1]``, optional
            Class labels for claim tracking (negative values are ignored).
            The class table grows to ``labels.max() + 1`` as needed.
        track : bool, default True
            Update usage counters (and claims when ``labels`` is given); when
            gradients are recorded, also hook the hidden-unit fitness update
            onto the backward pass (``track_fitness``).

        Returns
        -------
        output : Tensor, same shape and dtype as ``x``
            ``x + gate * tile_output`` (residual FFN).
        routing_info : dict of str to Tensor, each of shape ``x.shape[:-1]``
            ``tile_idx`` int64 chosen tile; ``cluster_idx`` int64 chosen
            cluster; ``gate`` float gate value; ``score`` float cosine of the
            routing code with the chosen signature; ``prob`` float route
            probability of the chosen tile. All detached.
        aux_losses : dict of str to Tensor (0-d, float)
            Weighted ``balance``, ``ternary``, ``sparsity``, ``diversity`` and
            their sum ``total_aux``.

        Raises
        ------
        TileError
            ``x`` is not 2-D/3-D with last dimension ``d_model`` or has no
            tokens; ``labels`` has the wrong shape or dtype.
        """
        d = self.d_model
        if x.dim() not in (2, 3) or x.shape[-1] != d:
            raise TileError(
                "x must have shape (N, d_model) or (B, L, d_model)",
                shape=tuple(x.shape),
                d_model=d,
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, d)
        N = x2.shape[0]
        if N == 0:
            raise TileError("x must contain at least one token", shape=tuple(x.shape))
        if labels is not None and (
            labels.shape != lead or labels.is_floating_point() or labels.dtype == torch.bool
        ):
            raise TileError(
                "labels must be an integer tensor of shape x.shape[:-1]",
                shape=tuple(labels.shape),
                dtype=str(labels.dtype),
                expected=tuple(lead),
            )
        T, C, K = self.num_tiles, self.num_clusters, self.tiles_per_cluster

        xn = F.layer_norm(x2, (d,), self.norm_weight, self.norm_bias) if self.input_norm else x2
        code = F.linear(
            F.silu(F.linear(xn, self.compress_w1, self.compress_b1)),
            self.compress_w2,
            self.compress_b2,
        )
        sig = self._effective_signatures()
        sig_norms = torch.linalg.vector_norm(sig, dim=1)  # (T,)
        dots = code @ sig.t()  # (N, T)
        z = (dots * self._score_scale).view(N, C, K)
        z_cluster = z.mean(-1)  # (N, C) == code . mean cluster signature
        joint = (torch.softmax(z_cluster, -1).unsqueeze(-1) * torch.softmax(z, -1)).view(N, T)
        with torch.no_grad():
            cl = z_cluster.argmax(-1, keepdim=True)  # (N, 1)
            idx1 = cl * K + z.argmax(-1).gather(1, cl)  # (N, 1)
            idx = idx1.view(N)
        p = joint.gather(1, idx1)  # (N, 1)
        cos = dots.gather(1, idx1) / (
            torch.linalg.vector_norm(code, dim=1, keepdim=True) * sig_norms[idx1]
        ).clamp_min(1e-8)

        hidden = F.silu(torch.baddbmm(self.b1[idx].unsqueeze(1), xn.unsqueeze(1), self.w1[idx]))
        y = torch.baddbmm(self.b2[idx].unsqueeze(1), hidden, self.w2[idx]).view(N, d)
        if self.dropout > 0.0 and self.training:
            y = F.dropout(y, self.dropout, True)
        if self.router_grad == "mixture" and joint.requires_grad:
            with torch.no_grad():
                hid_all = F.silu(torch.einsum("nd,tdh->tnh", xn, self.w1) + self.b1.unsqueeze(1))
                y_all = torch.baddbmm(self.b2.unsqueeze(1), hid_all, self.w2)  # (T, N, d)
            mix = torch.einsum("nt,tnd->nd", joint, y_all)
            y = y + (mix - mix.detach())  # value exactly y; gradient of the mixture to joint
        if self.router_grad == "mixture":
            gate = (
                torch.ones_like(cos) if self.calibration is None else self.calibration.forward(cos)
            )
        else:
            straight = p / p.detach()
            gate = (
                straight if self.calibration is None else self.calibration.forward(cos) * straight
            )
        out = torch.addcmul(x2, gate, y).view(x.shape)

        with torch.no_grad():
            counts = torch.bincount(idx, minlength=T)
        zero = x2.new_zeros(())
        aux: dict[str, Tensor] = {}
        total = zero
        if self.balance_weight > 0.0:
            frac = counts.to(joint.dtype) / N
            aux["balance"] = (self.balance_weight * T) * (frac @ joint.mean(0))
            total = total + aux["balance"]
        else:
            aux["balance"] = zero
        for name, weight in (
            ("ternary", self.ternary_weight),
            ("sparsity", self.sparsity_weight),
            ("diversity", self.diversity_weight),
        ):
            if weight > 0.0:
                if name == "ternary":
                    value = self._ternary(sig)
                elif name == "sparsity":
                    value = self._sparsity(sig)
                else:
                    value = self._diversity(sig, sig_norms)
                aux[name] = weight * value
                total = total + aux[name]
            else:
                aux[name] = zero
        aux["total_aux"] = total

        if track:
            with torch.no_grad():
                self._forward_calls += 1
                self.usage_counts.add_(counts)
                self.usage_ema.mul_(self.usage_decay).add_(
                    counts, alpha=(1.0 - self.usage_decay) / N
                )
                if labels is not None:
                    self._track_claims(idx, labels.reshape(-1))
            if self.track_fitness and hidden.requires_grad:
                hidden.register_hook(  # type: ignore[no-untyped-call]
                    self._fitness_hook(hidden.detach(), idx, counts)
                )

        info = {
            "tile_idx": idx.view(lead),
            "cluster_idx": cl.view(lead),
            "gate": gate.detach().view(lead),
            "score": cos.detach().view(lead),
            "prob": p.detach().view(lead),
        }
        return out, info, aux

    def infer(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The output of :meth:`forward` for tokens ``x``, without torch.

        No autograd, no counters, no auxiliary losses: the inference pass of
        a streaming agent, where torch's per-operation dispatch (about 40
        small operations) costs far more than the arithmetic. A numba kernel
        computes each row by the same loops whatever ``N``, so a row's result
        never depends on the others or on the shape of the call. Same
        equations as :meth:`forward`; the values agree to float32 rounding (a
        token whose two best routes score within rounding of each other may
        take the other one).

        Parameters
        ----------
        x : ndarray, float32, shape (N, d_model)
            Tokens.

        Returns
        -------
        ndarray, float32, shape (N, d_model)
            ``x + gate * tile_output``.
        """
        if x.ndim != 2 or x.shape[1] != self.d_model:
            raise TileError("x must have shape (N, d_model)", shape=x.shape, d_model=self.d_model)
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty_like(x)
        args = self.infer_args()
        work = np.empty(2 * self.d_model + self.compress_hidden + self.num_tiles
                        + self.tile_hidden, dtype=np.float32)
        _ffn_rows(*(x, *args, work, out))
        return out

    def infer_args(self) -> tuple[Any, ...]:
        """The arguments of the inference kernel after the tokens, as of now:
        float32 numpy views of the parameters (no copy: they follow in-place
        updates) and the arrays derived from them (effective signatures,
        calibration table), which do not. A caller that keeps them must take
        them again after a training step or any change of signatures."""
        d = self.d_model
        one = np.ones(d, dtype=np.float32)
        nw = one if self.norm_weight is None else numpy_view(self.norm_weight)
        nb = one if self.norm_bias is None else numpy_view(self.norm_bias)
        cal = self.calibration
        if cal is None:
            lo = step = hi = one[:1]
            x_min = inv_h = np.float32(0.0)
        else:
            lo, step, hi = cal.table()
            x_min, inv_h = np.float32(cal.x_min), np.float32(cal.inv_h)
        return (self.input_norm, nw, nb, numpy_view(self.compress_w1), numpy_view(self.compress_b1),
                numpy_view(self.compress_w2), numpy_view(self.compress_b2),
                np.ascontiguousarray(numpy_view(self._effective_signatures())),
                np.float32(self._score_scale), self.tiles_per_cluster, numpy_view(self.w1),
                numpy_view(self.b1), numpy_view(self.w2), numpy_view(self.b2), cal is not None,
                lo, step, hi, x_min, inv_h)

    def route(self, x: Tensor | npt.ArrayLike) -> dict[str, Tensor]:
        """Routing only: no gradient, no counters, no expert evaluated.

        Parameters
        ----------
        x : Tensor or array-like, float (N, d) or (B, L, d)
            Tokens.

        Returns
        -------
        dict of str to Tensor
            ``tile_idx`` int64 and ``cluster_idx`` int64 (the choice
            :meth:`forward` makes for the same tokens), ``score`` float32 (the
            cosine of the routing code with the chosen signature), each of
            shape ``x.shape[:-1]``; ``code`` float32 (N, d), the routing codes
            of the flattened tokens.

        Raises
        ------
        TileError
            ``x`` has the wrong shape or no tokens.
        """
        d = self.d_model
        try:
            xt = torch.as_tensor(x, dtype=self.compress_w1.dtype, device=self.compress_w1.device)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TileError("x must be a numeric array") from e
        if xt.dim() not in (2, 3) or xt.shape[-1] != d or xt.numel() == 0:
            raise TileError(
                "x must have shape (N, d_model) or (B, L, d_model) with tokens",
                shape=tuple(xt.shape),
                d_model=d,
            )
        lead = xt.shape[:-1]
        x2 = xt.reshape(-1, d)
        N = x2.shape[0]
        C, K = self.num_clusters, self.tiles_per_cluster
        with torch.no_grad():
            xn = F.layer_norm(x2, (d,), self.norm_weight, self.norm_bias) if self.input_norm else x2
            code = F.linear(
                F.silu(F.linear(xn, self.compress_w1, self.compress_b1)),
                self.compress_w2,
                self.compress_b2,
            )
            sig = self._effective_signatures()
            sig_norms = torch.linalg.vector_norm(sig, dim=1)
            dots = code @ sig.t()
            z = (dots * self._score_scale).view(N, C, K)
            cl = z.mean(-1).argmax(-1, keepdim=True)
            idx1 = cl * K + z.argmax(-1).gather(1, cl)
            cos = dots.gather(1, idx1) / (
                torch.linalg.vector_norm(code, dim=1, keepdim=True) * sig_norms[idx1]
            ).clamp_min(1e-8)
        return {
            "tile_idx": idx1.view(lead),
            "cluster_idx": cl.view(lead),
            "score": cos.view(lead),
            "code": code,
        }

    def compute_ternary_loss(self) -> Tensor:
        """Unweighted ternary loss, 0-d float32: mean squared distance to {-1, 0, +1}."""
        return self._ternary(self._effective_signatures())

    def compute_sparsity_loss(self) -> Tensor:
        """Unweighted sparsity loss, 0-d float32: mean absolute signature value."""
        return self._sparsity(self._effective_signatures())

    def compute_diversity_loss(self) -> Tensor:
        """Unweighted diversity loss, 0-d float32: mean off-diagonal squared cosine."""
        return self._diversity(self._effective_signatures())
