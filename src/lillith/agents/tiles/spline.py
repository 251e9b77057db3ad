"""The score calibration spline: a learnable monotone map from a cosine score to a gate."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from lillith.agents.tiles.common import TileError, check_positive_int, numpy_view


class ScoreCalibrationSpline(nn.Module):
    """Learnable monotone piecewise-linear map from a score to a gate in [0, 1].

    ``num_knots`` knots sit at fixed, evenly spaced positions
    ``x_0 = x_min < ... < x_{n-1} = x_max``. Their values are
    ``y_k = sum_{j <= k} w_j`` with ``w = softmax(logits)`` over ``n + 1``
    learnable logits, so ``0 < y_0 < y_1 < ... < y_{n-1} < 1``: monotone and
    bounded by construction, for any parameter values. Between knots the map
    interpolates linearly, ``min(y_k + f (y_{k+1} - y_k), y_{k+1})`` with
    ``f`` the position inside segment ``k``; outside ``[x_min, x_max]`` it is
    constant (``y_0`` resp. ``y_{n-1}``). Every output is computed by the same
    element-wise operations, each monotone under rounding, so the map is
    non-decreasing *in floating point* too (a matmul formulation is not: its
    summation order varies between rows). The gradient reaches the input
    (inside the domain) and every logit.

    With zero logits (the initial value) the map is a straight ramp from
    ``1 / (n + 1)`` to ``n / (n + 1)``.

    Parameters
    ----------
    num_knots : int, default 8
        Number of knots, >= 2.
    x_min, x_max : float, default -1.0, 1.0
        Domain of the knots (``x_min < x_max``). The tile FFN feeds cosine
        similarities, so the default covers their whole range.
    """

    def __init__(self, num_knots: int = 8, x_min: float = -1.0, x_max: float = 1.0) -> None:
        super().__init__()
        n = check_positive_int("num_knots", num_knots)
        if n < 2:
            raise TileError("num_knots must be >= 2", num_knots=n)
        lo, hi = float(x_min), float(x_max)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise TileError("spline domain must satisfy x_min < x_max", x_min=lo, x_max=hi)
        self.num_knots = n
        self.x_min = lo
        self.x_max = hi
        #: Knot intervals per unit of the score: ``(num_knots - 1) / (x_max - x_min)``.
        self.inv_h = (n - 1) / (hi - lo)
        #: Learnable logits, float32 (num_knots + 1,): softmax gives the knot increments.
        self.logits = nn.Parameter(torch.zeros(n + 1))

    def knot_positions(self) -> Tensor:
        """Knot positions ``x_k``, float32 (num_knots,)."""
        return torch.linspace(self.x_min, self.x_max, self.num_knots)

    def knot_values(self) -> Tensor:
        """Knot values ``y_k``, float (num_knots,), increasing, in (0, 1)."""
        w = torch.softmax(self.logits, 0)
        return torch.cumsum(w, 0)[: self.num_knots]

    def forward(self, scores: Tensor) -> Tensor:
        """Calibrate raw scores.

        Parameters
        ----------
        scores : Tensor, float, any shape
            Raw scores.

        Returns
        -------
        Tensor
            Gates, same shape and dtype as ``scores``, in [0, 1] (in (0, 1)
            unless a softmax weight underflows).
        """
        n = self.num_knots
        logits: Tensor = self.logits
        if scores.dtype != logits.dtype:
            logits = logits.to(scores.dtype)
        y = torch.cumsum(torch.softmax(logits, 0), 0)
        lo, hi = y[: n - 1], y[1:n]
        table = torch.stack((lo, hi - lo, hi), 1)  # (n - 1, 3): left, step, right
        u = ((scores - self.x_min) * self.inv_h).clamp(0.0, float(n - 1))
        with torch.no_grad():
            seg = u.floor().clamp_(max=float(n - 2))
        rows = table[seg.long()]  # (..., 3)
        return torch.minimum(torch.addcmul(rows[..., 0], u - seg, rows[..., 1]), rows[..., 2])

    def table(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32],
                             npt.NDArray[np.float32]]:
        """Per segment: left value, step and right value, float32 (num_knots - 1,) each."""
        n = self.num_knots
        logits = numpy_view(self.logits)
        w = np.exp(logits - logits.max())
        y = np.cumsum(w / w.sum()).astype(np.float32)
        lo, hi = y[: n - 1], y[1:n]
        return np.ascontiguousarray(lo), np.ascontiguousarray(hi - lo), np.ascontiguousarray(hi)

    def extra_repr(self) -> str:
        return f"num_knots={self.num_knots}, x_min={self.x_min}, x_max={self.x_max}"
